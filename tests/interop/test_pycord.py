"""py-cord 2.8, a third real client, plays to and records from the other two through voxgate.

py-cord runs from its own virtual environment (``.venv-pycord``, made by ``make pycord``:
it installs a ``discord`` package of its own) through ``pycord_client.py``, against a real
``voxgate serve`` process, beside the real discord.py and @discordjs/voice clients. As in
``test_interop.py``, what a receiver got is compared with the packets of the file the
sender played: same bytes, same order, nothing lost, then the sender's silence frames.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.audio import ogg_packets, without_trailing_silence
from tests.support.drivers import PYCORD_PYTHON, VoiceChannel
from tests.support.server import RunningServer

pytestmark = pytest.mark.interop

# Receivers start listening this long before a sender starts: a join takes well under it.
LEAD_S = 1.5
# What the node logs when it closes a connection for the shape of what a client sent.
DECODE_CLOSE = r"closing gateway: 4002"


@pytest.fixture(autouse=True)
def _pycord_installed() -> None:
    assert PYCORD_PYTHON.exists(), f"{PYCORD_PYTHON} is missing: run `make pycord`"


async def test_py_cord_plays_and_discord_py_and_discord_js_hear_it_byte_exact(
    voxgate_server: RunningServer, tmp_path: Path, ids: Callable[[], str], tones
) -> None:
    file, _ = tones(2.0, 7)
    sent = ogg_packets(file)
    closes_before = voxgate_server.log_count(DECODE_CLOSE)
    sender_id, dpy_id, js_id = ids(), ids(), ids()
    async with VoiceChannel(voxgate_server, tmp_path, ids(), ids()) as channel:
        dpy = await channel.start("dpy", "receive", dpy_id, out=True, seconds=LEAD_S + 6)
        js = await channel.start("js", "receive", js_id, out=True, seconds=LEAD_S + 6)
        await dpy.wait_for("listening")
        await js.wait_for("listening")
        sender = await channel.start("pycord", "play", sender_id, file=file)
        # py-cord 2.8 speaks without ssrc ({"speaking": 1, "delay": 0}): accepted (issue 16)
        assert (await sender.wait_for("ready"))["mode"] == "aead_xchacha20_poly1305_rtpsize"
        await channel.finish()
    assert voxgate_server.log_count(DECODE_CLOSE) == closes_before
    for receiver in (dpy, js):
        heard = receiver.received(sender_id)
        assert without_trailing_silence(heard) == sent, receiver.name
        assert 0 < len(heard) - len(sent) <= 5, receiver.name
    # The server relayed py-cord's Speaking (and its ssrc) to the others.
    assert dpy.saw("voice_member_speaking_state", user_id=sender_id)


@pytest.mark.parametrize("sender_kind", ["dpy", "js"])
async def test_py_cord_records_the_others_byte_exact_through_its_own_sink(
    voxgate_server: RunningServer, tmp_path: Path, ids: Callable[[], str], tones, sender_kind: str
) -> None:
    file, _ = tones(2.0, 8)
    sent = ogg_packets(file)
    sender_id, receiver_id = ids(), ids()
    async with VoiceChannel(voxgate_server, tmp_path, ids(), ids()) as channel:
        receiver = await channel.start(
            "pycord", "receive", receiver_id, out=True, seconds=LEAD_S + 5
        )
        await receiver.wait_for("listening")
        await channel.start(sender_kind, "play", sender_id, file=file)
        await channel.finish()
    heard = receiver.received(sender_id)
    assert without_trailing_silence(heard) == sent
    # py-cord's jitter buffer keeps the newest packet back: the last silence frame may stay
    assert 0 < len(heard) - len(sent) <= 5
    assert receiver.saw("voice_member_connect", user_id=sender_id)
    assert receiver.saw("voice_member_speaking_state_update", user_id=sender_id)
    [ready], [received] = receiver.saw("ready"), receiver.saw("received")
    if ready["dave"]:
        # On a DAVE call the audio came end-to-end encrypted and py-cord opened it (a sender's
        # first frames, before its group's transition is executed, go out plain by design).
        assert received["opened"]["dave"] >= len(sent) // 2


@pytest.mark.parametrize(
    "mode", ["xsalsa20_poly1305_lite", "xsalsa20_poly1305_suffix", "xsalsa20_poly1305"]
)
async def test_py_cord_to_py_cord_in_the_legacy_xsalsa20_modes(
    start_voxgate, tmp_path: Path, ids: Callable[[], str], tones, mode: str
) -> None:
    # py-cord's other three modes, its own decryptors for each (no work-around applies).
    # About transport modes, so without DAVE: byte-exact from the first frame, which a DAVE
    # call's transition does not promise (a frame or two there goes to a receiver not ready).
    server = start_voxgate("--modes", mode, "--dave", "off")
    file, _ = tones(1.0, 9)
    sender_id, receiver_id = ids(), ids()
    async with VoiceChannel(server, tmp_path, ids(), ids()) as channel:
        receiver = await channel.start(
            "pycord", "receive", receiver_id, out=True, seconds=LEAD_S + 3
        )
        await receiver.wait_for("listening")
        sender = await channel.start("pycord", "play", sender_id, file=file)
        assert (await sender.wait_for("ready"))["mode"] == mode
        await channel.finish()
    assert without_trailing_silence(receiver.received(sender_id)) == ogg_packets(file)
