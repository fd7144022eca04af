"""Unmodified discord.py and @discordjs/voice clients join voxgate and hear each other.

Every scenario runs the real clients as processes (``dpy_client.py`` and
``js/client.mjs``) against a real ``voxgate serve`` process, and compares the Opus packets
each receiver got with the packets of the file the sender played: same bytes, same order,
nothing lost (loopback), followed by the five silence frames a sender ends with.

These are about the relay and the gateway without end-to-end encryption, so every node here
runs ``--dave off``: both clients then get ``dave_protocol_version: 0`` and send plain Opus,
as they did against voxgate before DAVE. With DAVE the first frames around a transition are
not byte-exact by design (discord.py encrypts as soon as its group is ready, before op 22,
and @discordjs/voice drops a plain frame once its own group is: DAVE.md §4.2 step 7), which
``test_dave_interop.py`` asserts instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.audio import SILENCE, ogg_packets, without_trailing_silence
from tests.support.drivers import VoiceChannel
from tests.support.proxy import CuttableProxy
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.interop

# Receivers start listening this long before a sender starts: a join takes well under it.
LEAD_S = 1.5


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One node without DAVE (see the module docstring), shared by this module's tests."""
    server = start_server(tmp_path_factory.mktemp("voxgate-plain"), "--dave", "off")
    yield server
    server.stop()


async def _stream(
    server: RunningServer,
    tmp_path: Path,
    ids: Callable[[], str],
    sender_kind: str,
    receiver_kind: str,
    file: Path,
) -> tuple[list[bytes], str]:
    sender_id, receiver_id = ids(), ids()
    async with VoiceChannel(server, tmp_path, ids(), ids()) as channel:
        receiver = await channel.start(
            receiver_kind, "receive", receiver_id, out=True, seconds=LEAD_S + 4
        )
        await receiver.wait_for("listening")
        await channel.start(sender_kind, "play", sender_id, file=file)
        await channel.finish()
    return receiver.received(sender_id), sender_id


@pytest.mark.parametrize(("sender_kind", "receiver_kind"), [("js", "dpy"), ("dpy", "js")])
async def test_one_client_hears_the_other_byte_exact(
    plain_server, tmp_path, ids, tones, sender_kind, receiver_kind
) -> None:
    file, _ = tones(2.0, 1)
    sent = ogg_packets(file)
    received, _ = await _stream(plain_server, tmp_path, ids, sender_kind, receiver_kind, file)
    assert without_trailing_silence(received) == sent
    # Then the silence frames senders end with (receivers may swallow some of them).
    assert 0 < len(received) - len(sent) <= 5


async def test_mixed_modes_two_speaking_at_once_three_members(
    plain_server, tmp_path, ids, tones
) -> None:
    listener_id, js_id, dpy_id = ids(), ids(), ids()
    js_file, dpy_file = tones(2.0, 2)[0], tones(2.0, 3)[0]
    async with VoiceChannel(plain_server, tmp_path, ids(), ids()) as channel:
        listener = await channel.start("dpy", "receive", listener_id, out=True, seconds=LEAD_S + 5)
        await listener.wait_for("listening")
        js = await channel.start("js", "play", js_id, file=js_file, out=True, linger=1.0)
        dpy = await channel.start("dpy", "play", dpy_id, file=dpy_file, out=True, linger=1.0)
        assert (await js.wait_for("ready"))["mode"] == "aead_aes256_gcm_rtpsize"
        assert (await dpy.wait_for("ready"))["mode"] == "aead_xchacha20_poly1305_rtpsize"
        await channel.finish()
    js_sent, dpy_sent = ogg_packets(js_file), ogg_packets(dpy_file)
    assert without_trailing_silence(listener.received(js_id)) == js_sent
    assert without_trailing_silence(listener.received(dpy_id)) == dpy_sent
    # The two speakers hear each other, across modes, from the moment each is in: the one
    # that joined second missed the other's first packets, never any after.
    for heard, sent in (
        (without_trailing_silence(js.received(dpy_id)), dpy_sent),
        (without_trailing_silence(dpy.received(js_id)), js_sent),
    ):
        assert len(heard) > len(sent) // 2
        assert heard == sent[len(sent) - len(heard) :]


@pytest.mark.parametrize(
    "mode", ["xsalsa20_poly1305_lite", "xsalsa20_poly1305_suffix", "xsalsa20_poly1305"]
)
async def test_legacy_xsalsa20_modes_carry_discord_py_audio(
    start_voxgate, tmp_path, ids, tones, mode
) -> None:
    server = start_voxgate("--modes", mode, "--dave", "off")
    file, _ = tones(1.0, 4)
    received, _ = await _stream(server, tmp_path, ids, "dpy", "dpy", file)
    assert without_trailing_silence(received) == ogg_packets(file)


async def test_late_joiner_is_told_who_is_here_and_hears_the_rest(
    plain_server, tmp_path, ids, tones
) -> None:
    sender_id, early_id, late_id = ids(), ids(), ids()
    file, _ = tones(4.0, 5)
    sent = ogg_packets(file)
    async with VoiceChannel(plain_server, tmp_path, ids(), ids()) as channel:
        early = await channel.start("dpy", "receive", early_id, out=True, seconds=LEAD_S + 6)
        await early.wait_for("listening")
        sender = await channel.start("js", "play", sender_id, file=file)
        await sender.wait_for("playing")
        await asyncio.sleep(1.0)
        late = await channel.start("dpy", "receive", late_id, out=True, seconds=5)
        await channel.finish()
    # Clients Connect told the late joiner about both members already there...
    assert late.saw("voice_member_connect", user_id=sender_id)
    assert late.saw("voice_member_connect", user_id=early_id)
    # ...Speaking told it whose ssrc the audio is, and it heard the rest of the stream.
    assert late.saw("voice_member_speaking_state", user_id=sender_id)
    heard = without_trailing_silence(late.received(sender_id))
    assert 10 < len(heard) < len(sent) - 10
    assert heard == sent[len(sent) - len(heard) :]
    assert without_trailing_silence(early.received(sender_id)) == sent
    # The others learnt of the newcomer (op 11) and of the sender leaving (op 13).
    assert early.saw("voice_member_connect", user_id=late_id)
    assert early.saw("voice_member_disconnect", user_id=sender_id)
    assert late.saw("voice_member_disconnect", user_id=sender_id)


async def test_sender_whose_websocket_is_cut_resumes_and_keeps_streaming(
    plain_server, tmp_path, ids, tones
) -> None:
    # discord.js resumes after losing its WebSocket; discord.py 2.7 resumes only after a
    # close 4015 and otherwise disconnects and joins again.
    server = plain_server
    proxy = CuttableProxy(server.port)
    await proxy.start()
    sender_id, receiver_id, joiner_id = ids(), ids(), ids()
    file, _ = tones(4.0, 6)
    sent = ogg_packets(file)
    resumed_before = server.log_count(r"resumed, \d+ messages replayed")
    try:
        async with VoiceChannel(server, tmp_path, ids(), ids()) as channel:
            receiver = await channel.start(
                "dpy", "receive", receiver_id, out=True, seconds=LEAD_S + 6
            )
            await receiver.wait_for("listening")
            sender = await channel.start(
                "js", "play", sender_id, file=file, endpoint=f"127.0.0.1:{proxy.port}"
            )
            await sender.wait_for("playing")
            await asyncio.sleep(0.5)
            cutting = asyncio.create_task(proxy.cut(hold_s=1.0))
            await asyncio.sleep(0.2)
            # Someone joins while the sender's WebSocket is dead: what the server tells
            # the sender about it must reach it through the replay.
            await channel.start("dpy", "receive", joiner_id, seconds=1)
            await cutting
            await channel.finish()
    finally:
        await proxy.close()
    assert proxy.accepted >= 2, "the sender came back through a new connection"
    assert server.log_count(r"resumed, \d+ messages replayed") > resumed_before
    ops = [event["op"] for event in sender.saw("ws")]
    resumed_at = ops.index(9)
    # Clients Connect about the joiner was sent during the cut and arrived as a replay,
    # before Resumed.
    connects = [
        index
        for index, event in enumerate(sender.saw("ws"))
        if event["op"] == 11 and joiner_id in event["d"]["user_ids"]
    ]
    assert connects and connects[0] < resumed_at
    # Nothing was lost: every packet of the file arrived, in order. discord.js pauses its
    # player while its WebSocket is down (with silence frames, as after any pause) and
    # picks up where it stopped once resumed.
    heard = [packet for packet in receiver.received(sender_id) if packet != SILENCE]
    assert heard == sent
