"""Who may see and steer the node: the admin key, the console's cookie and its CSRF token.

Against a live ``voxgate serve`` with a real voxgate client in a call, over plain HTTP as a
browser (or an attacker's page) would send it.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp

from tests.console.conftest import bearer, channel_members, join_voxgate, node_file, until
from tests.support.server import RunningServer

CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


async def _log_in(server: RunningServer, http: aiohttp.ClientSession) -> str:
    """Log in with the admin key through the form; returns the page's CSRF token."""
    async with http.post(f"{server.admin_url}/login", data={"key": server.admin_key}) as page:
        assert page.status == 200  # after the redirect to the dashboard
        found = CSRF.search(await page.text())
    assert found is not None
    return found.group(1)


async def test_without_the_cookie_nothing_is_shown_or_done(
    console_node: RunningServer, http: aiohttp.ClientSession, ids
) -> None:
    guild, channel, user = ids(), ids(), ids()
    member = await join_voxgate(console_node, guild, channel, user)
    async with member:
        base = console_node.admin_url
        async with http.get(f"{base}/v1/console/events") as events:
            assert events.status == 401
            body = await events.read()
        assert b"data:" not in body and user.encode() not in body
        async with http.get(f"{base}/") as page:
            text = await page.text()
        assert "csrf-token" not in text and user not in text
        assert 'action="/login"' in text
        for path in ("/v1/channels", "/v1/recordings"):
            async with http.get(base + path) as listed:
                assert listed.status == 401
        kick = f"{base}/v1/channels/{guild}/{channel}/members/{user}/disconnect"
        async with http.post(kick) as refused:
            assert refused.status == 401
        async with http.post(f"{base}/login", data={"key": "not the key"}) as wrong:
            assert wrong.status == 401
            assert "wrong admin key" in await wrong.text()
        assert user in await channel_members(console_node, http)
        assert not member.closed.is_set()


async def test_the_cookie_is_httponly_samesite_and_opens_the_event_stream(
    console_node: RunningServer, http: aiohttp.ClientSession, ids
) -> None:
    guild, channel, user = ids(), ids(), ids()
    async with await join_voxgate(console_node, guild, channel, user):
        async with http.post(
            f"{console_node.admin_url}/login",
            data={"key": console_node.admin_key},
            allow_redirects=False,
        ) as login:
            assert login.status == 303
            cookie = login.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        async with http.get(f"{console_node.admin_url}/") as page:
            csp = page.headers["Content-Security-Policy"]
            assert "csrf-token" in await page.text()
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        async with http.get(f"{console_node.admin_url}/v1/console/events") as events:
            assert events.status == 200
            assert events.headers["Content-Type"].startswith("text/event-stream")
            async with asyncio.timeout(10):
                async for line in events.content:
                    if line.startswith(b"data:") and user.encode() in line:
                        break
        async with http.get(f"{console_node.admin_url}/console/console.js") as script:
            assert script.status == 200
            assert "EventSource" in await script.text()


async def test_a_forged_csrf_token_is_refused_and_the_real_one_acts(
    console_node: RunningServer, http: aiohttp.ClientSession, ids
) -> None:
    guild, channel, user = ids(), ids(), ids()
    member = await join_voxgate(console_node, guild, channel, user)
    csrf = await _log_in(console_node, http)
    kick = (
        f"{console_node.admin_url}/v1/channels/{guild}/{channel}/members/{user}/disconnect"
    )
    for headers in ({}, {"X-CSRF-Token": "forged" + csrf[6:]}, {"X-CSRF-Token": ""}):
        async with http.post(kick, headers=headers) as refused:
            assert refused.status == 403, headers
    # The right token from another origin's page: refused too.
    evil = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    async with http.post(kick, headers=evil) as refused:
        assert refused.status == 403
    assert user in await channel_members(console_node, http)
    assert not member.closed.is_set()
    async with http.post(kick, headers={"X-CSRF-Token": csrf}) as done:
        assert done.status == 200
    await until(member.closed.is_set)
    closed = await until(lambda: [e for e in member._events._queue if hasattr(e, "code")])
    assert closed[-1].code == 4014
    assert user not in await channel_members(console_node, http)


async def test_the_one_time_login_url_logs_in_once(
    console_node: RunningServer, http: aiohttp.ClientSession
) -> None:
    url = node_file(console_node)["dashboard_url"]
    assert url.startswith(f"{console_node.admin_url}/login?once=")
    async with http.get(url) as page:
        assert page.status == 200
        assert "csrf-token" in await page.text()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        async with other.get(url) as again:
            assert again.status == 401
        async with other.get(f"{console_node.admin_url}/v1/console/events") as events:
            assert events.status == 401


async def test_bearer_key_needs_no_csrf_token(
    console_node: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{console_node.admin_url}/v1/channels", headers=bearer(console_node)) as r:
        assert r.status == 200
        assert await r.json() == {"channels": []}
