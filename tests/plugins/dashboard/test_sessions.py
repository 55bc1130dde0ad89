"""Dashboard sessions over real HTTP (Hypercorn on loopback), on SQLite and PostgreSQL: sign-in,
refusals, rate limit, CSRF, revocation, sign-out, the security headers, and the core's
``authenticate_request`` hook that lets a session call the API."""

from __future__ import annotations

import asyncio
import re

from claude_net import Actor, Route, hookimpl
from claude_net.auth import revoke_tokens

from .conftest import Browserless


def _rows(hub, sql: str, values=None):
    return hub.run(hub.hub.db.fetch_all(sql, values or {}))


def test_admin_signs_in_and_the_session_calls_the_api_as_the_dashboard(served):
    with served() as hub:
        admin = hub.token("chasclaude", admin=True)
        hub.token("managerclaude")
        client = Browserless(hub.url)
        status, _, headers = client.sign_in(admin)
        assert status == 303 and headers["Location"].endswith("/ui/machines")
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert re.search(r"Max-Age=43200\b", cookie) and "Secure" not in cookie  # plain HTTP, 12 h default
        assert admin not in cookie and client.csrf
        # the database keeps a hash of the session id and the token's id, never the token or the cookie
        row = _rows(hub, "SELECT * FROM dashboard_sessions")[0]
        assert row["name"] == "chasclaude" and client.cookie not in str(row) and admin not in str(row)
        assert row["token_id"] == admin.split("_")[1]

        status, who = client.api("GET", "/api/whoami")
        assert status == 200 and who["name"] == "chasclaude"
        status, answer = client.api("POST", "/api/permit", {"source": "managerclaude", "target": "*",
                                                            "capabilities": ["file_read"]})
        assert status == 200, answer
        rows = _rows(hub, "SELECT from_machine, via, result FROM activity_log WHERE type = 'permit'")
        assert rows == [{"from_machine": "chasclaude", "via": "dashboard", "result": "ok"}]
        signin = _rows(hub, "SELECT from_machine, result FROM activity_log WHERE type = 'auth' AND via = 'dashboard'")
        assert {"from_machine": "chasclaude", "result": "ok"} in signin


def test_agent_and_wrong_tokens_are_refused_recorded_and_rate_limited(served):
    with served(dashboard={"signin_failures": 3, "signin_window_seconds": 60}) as hub:
        admin = hub.token("chasclaude", admin=True)
        agent = hub.token("managerclaude")
        client = Browserless(hub.url)
        status, html, headers = client.sign_in(agent)
        assert status == 403 and "Set-Cookie" not in headers and "only admins" in html
        status, html, headers = client.sign_in("cn_0123456789ab_" + "A" * 43)
        assert status == 401 and "Set-Cookie" not in headers and "not valid" in html
        status, _, _ = client.sign_in("")
        assert status == 401
        # three failures from this address: now even the admin's token is refused until the window passes
        status, html, headers = client.sign_in(admin)
        assert status == 429 and int(headers["Retry-After"]) > 0 and "Too many" in html
        assert client.cookie is None
        rows = _rows(hub, "SELECT from_machine, detail FROM activity_log WHERE type = 'auth' AND result = 'denied'")
        details = " | ".join(r["detail"] for r in rows)
        assert "managerclaude is not an admin" in details and "invalid or revoked token" in details
        assert "too many failed sign-ins" in details
        assert agent not in details and admin not in details


def test_a_forged_change_without_the_csrf_token_is_refused_and_recorded(served):
    with served() as hub:
        client = Browserless(hub.url)
        client.sign_in(hub.token("chasclaude", admin=True))
        hub.token("managerclaude")
        body = {"source": "managerclaude", "target": "*"}
        status, answer = client.api("POST", "/api/permit", body, csrf=False)
        assert status == 403 and answer["ok"] is False and answer["code"] == "csrf_failed"
        status, answer = client.api("POST", "/api/permit", body, headers={"X-CSRF-Token": "guessed"}, csrf=False)
        assert status == 403 and answer["code"] == "csrf_failed"
        # the right token from another origin (a page elsewhere that somehow learnt it) is refused too
        status, answer = client.api("POST", "/api/permit", body, headers={"Origin": "http://evil.example"})
        assert status == 403 and answer["code"] == "csrf_failed"
        assert not _rows(hub, "SELECT 1 FROM exec_permissions")
        rows = _rows(hub, "SELECT from_machine, via FROM activity_log WHERE type = 'auth' AND result = 'denied' "
                          "AND detail LIKE '%CSRF%'")
        assert len(rows) == 3 and rows[0] == {"from_machine": "chasclaude", "via": "dashboard"}
        # reads need no CSRF token (SameSite=Strict keeps other sites' pages from sending the cookie)
        assert client.api("GET", "/api/permissions")[0] == 200
        # a sign-in form posted from another site is refused
        status, _, headers = client.request("POST", "/ui/signin", form={"token": "x"},
                                            headers={"Origin": "http://evil.example"}, cookie=False)
        assert status == 403 and "Set-Cookie" not in headers


def test_revoking_the_token_ends_its_sessions(served):
    with served() as hub:
        client = Browserless(hub.url)
        client.sign_in(hub.token("chasclaude", admin=True))
        assert client.api("GET", "/api/whoami")[0] == 200
        hub.run(revoke_tokens(hub.hub.db, "chasclaude"))
        status, answer = client.api("GET", "/api/whoami")
        assert status == 401 and answer["code"] == "session_ended"
        status, _, headers = client.request("GET", "/ui/activity")
        assert status == 303 and headers["Location"].endswith("/ui/signin")
        # a new token for the same admin does not revive the old session either
        hub.token("chasclaude", admin=True)
        assert client.api("GET", "/api/whoami")[0] == 401


def test_sign_out_ends_the_session_and_needs_the_csrf_token(served):
    with served() as hub:
        client = Browserless(hub.url)
        client.sign_in(hub.token("chasclaude", admin=True))
        status, _, _ = client.request("POST", "/ui/signout", form={"csrf": "wrong"}, headers={"Origin": client.origin})
        assert status == 403 and client.api("GET", "/api/whoami")[0] == 200
        status, _, headers = client.request("POST", "/ui/signout", form={"csrf": client.csrf},
                                            headers={"Origin": client.origin})
        assert status == 303 and "cn_dashboard=;" in headers["Set-Cookie"].replace('""', "")
        status, answer = client.api("GET", "/api/whoami")  # the old cookie value, replayed
        assert status == 401 and answer["code"] == "session_ended"
        assert _rows(hub, "SELECT 1 FROM activity_log WHERE type = 'auth' AND detail = 'dashboard sign-out'")


def test_sessions_expire_and_secure_cookie_when_configured(served):
    with served(dashboard={"session_hours": 0.0003, "secure_cookie": "always"}) as hub:  # ~1 s
        client = Browserless(hub.url)
        _, _, headers = client.sign_in(hub.token("chasclaude", admin=True))
        assert "Secure" in headers["Set-Cookie"] and re.search(r"Max-Age=1\b", headers["Set-Cookie"])
        assert client.api("GET", "/api/whoami")[0] == 200
        hub.run(asyncio.sleep(1.2))
        assert client.api("GET", "/api/whoami")[0] == 401


def test_pages_carry_a_strict_csp_and_load_nothing_from_elsewhere(served):
    with served() as hub:
        client = Browserless(hub.url)
        status, html, headers = client.request("GET", "/ui/signin")
        csp = headers["Content-Security-Policy"]
        assert status == 200 and "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
        client.sign_in(hub.token("chasclaude", admin=True))
        for name in ("machines", "activity", "permissions", "approvals", "containers"):
            status, html, headers = client.request("GET", f"/ui/{name}")
            assert status == 200 and "Content-Security-Policy" in headers, name
            assert "<script>" not in html and "style=" not in html and " on" + "click=" not in html
            assert not re.search(r'(src|href)="(https?:)?//', html), name  # nothing from another origin
        status, js, headers = client.request("GET", "/ui/static/dashboard.js")
        assert status == 200 and "javascript" in headers["Content-Type"] and "innerHTML" not in js
        assert client.request("GET", "/ui/nope")[0] == 404


class HeaderAuth:
    """A toy credential: X-Test-Node names the caller (the hook's contract, apart from the dashboard)."""

    __name__ = "header_auth"

    @hookimpl
    def authenticate_request(self, hub, request):
        name = request.headers.get("X-Test-Node")
        if name is None:
            return None

        async def check():
            return Actor(name=name, via="test") if name == "toynode" else None

        return check()

    @hookimpl
    def register_routes(self, hub):
        async def via(ctx):
            return {"name": ctx.actor.name, "via": ctx.actor.via}

        return [Route("GET", "/api/test-via", via, summary="who is calling, and through what")]


async def test_authenticate_request_is_consulted_only_without_a_bearer_token(hub_harness):
    async with hub_harness(plugins=[HeaderAuth()]) as h:
        token = await h.token("realnode")
        assert await h.call("GET", "/api/test-via", headers={"X-Test-Node": "toynode"}) == \
            (200, {"ok": True, "name": "toynode", "via": "test"})
        # a bearer token wins over any other credential
        status, body = await h.call("GET", "/api/test-via", token, headers={"X-Test-Node": "toynode"})
        assert (status, body["name"], body["via"]) == (200, "realnode", "http")
        status, body = await h.call("GET", "/api/test-via", headers={"X-Test-Node": "stranger"})
        assert status == 401 and body["ok"] is False
        status, body = await h.call("GET", "/api/test-via")
        assert status == 401 and body["code"] == "missing_token"
