"""The dashboard in a real browser: headless Chromium (the system's) against a live call.

A live ``voxgate serve``; in the call, voxgate clients (in-process) and @discordjs/voice
(processes). Selenium drives Debian's chromium through its chromedriver. The page is
opened through the one-time login URL the node wrote to ``node.json``, and what it shows
is read from the DOM as a person would see it: rows, the speaking light, the plot, and
the disconnect button. Screenshots go to ``tests/console/artifacts/``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.console.conftest import ARTIFACTS, Heard, join_voxgate, node_file, until
from tests.support.drivers import VoiceChannel
from tests.support.server import RunningServer
from voxgate.client.connection import ConnectionClosed
from voxgate.client.player import AudioPlayer
from voxgate.client.sources import OggOpusSource

pytestmark = pytest.mark.interop

#: What the page shows, read in one go: each member row and each channel's plot.
READ_PAGE = """
const rows = {};
for (const row of document.querySelectorAll('tr.member')) {
  rows[row.dataset.user] = {
    speaking: row.dataset.speaking === 'true',
    lit: row.querySelector('.light').classList.contains('on'),
    in_per_s: Number(row.querySelector('td.in').textContent),
    out_per_s: Number(row.querySelector('td.out').textContent),
    dave: row.querySelector('td.dave').textContent,
    mode: row.querySelector('td.mode').textContent,
    tags: Array.from(row.querySelectorAll('.tag')).map((t) => t.textContent),
  };
}
const plot = document.querySelector('svg.rate-plot');
return {
  rows,
  status: document.getElementById('status').textContent,
  plot: plot && {points: plot.querySelector('polyline').getAttribute('points'),
                 max: Number(plot.dataset.max), last: Number(plot.dataset.last)},
  cpu_plot: !!document.querySelector('svg.cpu-plot polyline[points]'),
  sessions_plot: !!document.querySelector('svg.sessions-plot polyline[points]'),
};
"""


#: Download a link with the page's own cookie; answers its status and whether it is a WAV.
FETCH = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: 'same-origin'})
  .then(async (r) => done({status: r.status, riff: (await r.text()).startsWith('RIFF')}))
  .catch((e) => done({status: 0, error: String(e)}));
"""


async def _until_links(browser: Any, wanted: str, timeout: float = 30) -> dict[str, str]:
    """The file links of the newest recording once ``wanted`` is among them."""
    script = """return Object.fromEntries(Array.from(
        document.querySelectorAll('#recordings tr.recording.done td.files a'))
        .map((a) => [a.textContent, a.href]));"""
    async with asyncio.timeout(timeout):
        while True:
            links: dict[str, str] = await asyncio.to_thread(browser.execute_script, script)
            if wanted in links:
                return links
            await asyncio.sleep(0.2)


async def _click(browser: Any, selector: str) -> None:
    from selenium.webdriver.common.by import By

    button = await asyncio.to_thread(browser.find_element, By.CSS_SELECTOR, selector)
    await asyncio.to_thread(button.click)


async def _page(browser: Any) -> dict[str, Any]:
    result: dict[str, Any] = await asyncio.to_thread(browser.execute_script, READ_PAGE)
    return result


async def _until_page(browser: Any, check: Any, timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            page = await _page(browser)
            if check(page):
                return page
            await asyncio.sleep(0.1)


async def _screenshot(browser: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await asyncio.to_thread(browser.save_screenshot, str(path))
    print(f"screenshot: {path}")
    return path


async def test_dashboard_shows_the_call_live_and_its_disconnect_button_closes_with_4014(
    console_node: RunningServer, browser: Any, tmp_path, tones, ids
) -> None:
    from selenium.webdriver.common.by import By

    guild, channel = ids(), ids()
    long_song, _ = tones(45.0, 21)
    short_song, _ = tones(3.0, 22)
    streamer_id, kicked_id = ids(), ids()
    streamer = Heard(await join_voxgate(console_node, guild, channel, streamer_id))
    kicked = Heard(await join_voxgate(console_node, guild, channel, kicked_id))
    async with VoiceChannel(console_node, tmp_path, guild, channel) as call:
        listener = await call.start("js", "receive", ids(), seconds=90)
        listener_id = listener.name.rsplit(":", 1)[1]
        await listener.wait_for("listening")

        await asyncio.to_thread(browser.get, node_file(console_node)["dashboard_url"])
        assert await asyncio.to_thread(lambda: browser.current_url) == (
            console_node.admin_url + "/"
        )
        # The members of the call appear, with their DAVE state and mode.
        everyone = {streamer_id, kicked_id, listener_id}
        page = await _until_page(browser, lambda p: p["rows"].keys() == everyone and all(
            r["dave"] == "v1 member" for r in p["rows"].values()))  # fmt: skip
        assert page["status"] == "live"
        assert all(row["mode"].startswith("aead_") for row in page["rows"].values())
        assert page["cpu_plot"] and page["sessions_plot"]

        # One member streams on; another plays a short file: its light goes on, then out.
        streaming = AudioPlayer(streamer.connection, OggOpusSource(long_song)).start()
        speaker = await call.start("js", "play", ids(), file=short_song, flags=["--e2ee"],
                                   linger=8)  # fmt: skip
        speaker_id = speaker.name.rsplit(":", 1)[1]
        await speaker.wait_for("playing")
        page = await _until_page(browser, lambda p: speaker_id in p["rows"]
                                 and p["rows"][speaker_id]["lit"])  # fmt: skip
        assert page["rows"][speaker_id]["speaking"]
        first_plot = page["plot"]
        await _screenshot(browser, "dashboard-speaking.png")
        await speaker.wait_for("played")
        page = await _until_page(browser, lambda p: speaker_id in p["rows"]
                                 and not p["rows"][speaker_id]["lit"], timeout=6)  # fmt: skip
        assert not page["rows"][speaker_id]["speaking"]
        assert page["rows"][streamer_id]["lit"], "the streamer is still speaking"

        # The packet-rate plot moves: a new line, drawn to a scale set by a real rate.
        page = await _until_page(browser, lambda p: p["plot"]["points"] != first_plot["points"])
        assert page["plot"]["max"] >= 40  # two members sending 50 packets a second
        assert page["plot"]["last"] > 0

        # The disconnect button closes that member's socket with 4014 ...
        row = await asyncio.to_thread(
            browser.find_element, By.CSS_SELECTOR, f'tr.member[data-user="{kicked_id}"]'
        )
        button = await asyncio.to_thread(row.find_element, By.CSS_SELECTOR, "button.disconnect")
        await asyncio.to_thread(button.click)
        closed = await until(lambda: kicked.of(ConnectionClosed), 15)
        assert closed[0].code == 4014
        # ... its row goes, and the others keep streaming: the streamer's audio goes on
        # reaching the listener, on the page and at the listener itself.
        received = listener.saw("speaking")
        page = await _until_page(browser, lambda p: kicked_id not in p["rows"]
                                 and p["rows"][streamer_id]["in_per_s"] > 30
                                 and p["rows"][listener_id]["out_per_s"] > 30)  # fmt: skip
        await streamer.packets_grow(streamer_id, by=0)
        assert not streaming.done()
        assert received is not None
        message = await asyncio.to_thread(
            lambda: browser.find_element(By.ID, "message").text
        )
        assert f"disconnected {kicked_id}" in message

        # Record from the dashboard: the recorder shows as a member while it records, and
        # its files are listed as links that download (with the page's cookie).
        seconds = await asyncio.to_thread(browser.find_element, By.CSS_SELECTOR, "input.seconds")
        await asyncio.to_thread(seconds.clear)
        await asyncio.to_thread(seconds.send_keys, "3")
        record = await asyncio.to_thread(browser.find_element, By.CSS_SELECTOR, "button.record")
        await asyncio.to_thread(record.click)
        await _until_page(browser, lambda p: any(
            "recorder" in r["tags"] for r in p["rows"].values()))  # fmt: skip
        links = await _until_links(browser, f"{streamer_id}.wav")
        assert {f"{streamer_id}.wav", "mix.wav", "recording.json"} <= links.keys()
        fetched = await asyncio.to_thread(browser.execute_async_script, FETCH, links["mix.wav"])
        assert fetched["status"] == 200 and fetched["riff"], fetched
        path = await _screenshot(browser, "dashboard.png")
        assert path.stat().st_size > 10_000

        # Mute from the page: the streamer's audio stops reaching the listener.
        await _click(browser, f'tr.member[data-user="{streamer_id}"] button.mute')
        page = await _until_page(browser, lambda p: "server-muted" in p["rows"][streamer_id]["tags"]
                                 and p["rows"][listener_id]["out_per_s"] == 0)  # fmt: skip
        assert not page["rows"][streamer_id]["lit"]
        await _click(browser, f'tr.member[data-user="{streamer_id}"] button.mute')
        await _until_page(browser, lambda p: p["rows"][listener_id]["out_per_s"] > 30)
        # End the call from the page: every member is closed with 4022, the card goes.
        await _click(browser, "button.end")
        closed = await until(lambda: streamer.of(ConnectionClosed), 15)
        assert closed[0].code == 4022
        # discord.js answers anything but 4014 by joining again (its adapter replays the
        # same events): the session an operator ended stays out, with 4014.
        await until(lambda: listener.saw("state", to="disconnected", close_code=4014), 15)
        await _until_page(browser, lambda p: p["plot"] is None)
        streaming.cancel()
    for client in (streamer, kicked):
        client.stop()
        await client.connection.close()


async def test_dashboard_login_form_takes_the_admin_key(
    console_node: RunningServer, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    await asyncio.to_thread(browser.get, console_node.admin_url + "/")
    form_key = await asyncio.to_thread(browser.find_element, By.ID, "key")
    await asyncio.to_thread(form_key.send_keys, "wrong key")
    await asyncio.to_thread(form_key.submit)
    error = await asyncio.to_thread(lambda: browser.find_element(By.CSS_SELECTOR, ".error").text)
    assert "wrong admin key" in error
    form_key = await asyncio.to_thread(browser.find_element, By.ID, "key")
    await asyncio.to_thread(form_key.send_keys, console_node.admin_key)
    await asyncio.to_thread(form_key.submit)
    page = await _until_page(browser, lambda p: p["status"] == "live", timeout=15)
    assert page["rows"] == {}
    # The cookie is not readable by the page's scripts (HttpOnly).
    assert await asyncio.to_thread(browser.execute_script, "return document.cookie") == ""
