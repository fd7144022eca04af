"""The control API's routes for simulated users: what a suite in another language (or one
whose test process is not the sandbox's) does over HTTP: join, speak, and what was heard."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.audio import ogg_packets
from voxgate.testing import SandboxFixture

Tones = Callable[[float, int], tuple[Path, list[float]]]


class Control:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base

    async def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        async with self.http.request(method, self.base + path, json=body) as response:
            assert response.status == status, await response.text()
            assert response.headers["Content-Type"] == "application/json"
            return await response.json()


@pytest.fixture
async def control(voxgate_sandbox: SandboxFixture) -> AsyncIterator[Control]:
    key = voxgate_sandbox.info["control_key"]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        yield Control(http, voxgate_sandbox.info["control"])


async def test_users_join_speak_and_report_what_they_heard(
    voxgate_sandbox: SandboxFixture, control: Control, tones: Tones
) -> None:
    alice = (await control.call("POST", "/v1/users", {"name": "alice"}, 201))["id"]
    bob = (await control.call("POST", "/v1/users", {"name": "bob"}, 201))["id"]
    joined = await control.call("POST", f"/v1/users/{bob}/voice/join", {})
    assert joined["channel_id"] == voxgate_sandbox.voice_channel_id
    await control.call(
        "POST", f"/v1/users/{alice}/voice/join", {"channel_id": voxgate_sandbox.voice_channel_id}
    )
    states = await control.call("GET", f"/v1/guilds/{voxgate_sandbox.guild_id}/voice-states")
    assert {state["user_id"] for state in states} == {alice, bob}

    song, _ = tones(1.0, 9)
    played = await control.call("POST", f"/v1/users/{alice}/play", {"path": str(song)})
    assert played["frames"] == len(ogg_packets(song))
    for _ in range(100):  # what is still on its way, at most a few packets
        heard = await control.call("GET", f"/v1/users/{bob}/heard?from={alice}")
        if heard["audio_packets"] >= played["frames"]:
            break
        await asyncio.sleep(0.05)
    assert [bytes.fromhex(p) for p in heard["opus"]][: len(ogg_packets(song))] == ogg_packets(song)
    assert heard["audio_packets"] == len(ogg_packets(song))

    timeline = await control.call("GET", f"/v1/users/{bob}/timeline")
    assert timeline["speakers"] == [alice]
    assert [c["flags"] for c in timeline["speaking"] if c["user_id"] == alice][-2:] == [1, 0]
    assert [b["user_id"] for b in timeline["bursts"]] == [alice]

    saved = await control.call("POST", f"/v1/users/{bob}/recordings")
    assert Path(saved[alice]).stat().st_size > 48_000 * 4 * 0.9  # about a second of audio

    await control.call("POST", f"/v1/users/{alice}/play", {"tone": 550, "seconds": 0.4})
    await control.call("POST", f"/v1/users/{alice}/voice/leave")
    states = await control.call("GET", f"/v1/guilds/{voxgate_sandbox.guild_id}/voice-states")
    assert {state["user_id"] for state in states} == {bob}


async def test_user_routes_refuse_what_cannot_be_done(
    voxgate_sandbox: SandboxFixture, control: Control
) -> None:
    carol = (await control.call("POST", "/v1/users", {"name": "carol"}, 201))["id"]
    error = await control.call("POST", f"/v1/users/{carol}/play", {"tone": 440}, 409)
    assert "not in a voice channel" in error["error"]
    await control.call("POST", f"/v1/users/{carol}/play", {"volume": 2}, 400)
    await control.call("POST", f"/v1/users/{carol}/play", {"tone": 440, "seconds": -1}, 400)
    await control.call("POST", "/v1/users/12345/voice/join", {}, 404)
    bot = voxgate_sandbox.bots[0]["user_id"]
    await control.call("POST", f"/v1/users/{bot}/voice/join", {}, 400)
    await control.call("GET", f"/v1/users/{carol}/heard?from=nobody", status=400)
    async with aiohttp.ClientSession() as anonymous:
        url = f"{voxgate_sandbox.info['control']}/v1/users/{carol}/timeline"
        async with anonymous.get(url) as response:
            assert response.status == 401
