"""Identity and authorization: who may call what, with which names, and what gets recorded.

Every case here must be *refused or confined*, *recorded* in the activity feed, and must reach no
backend (the in-test TestBox records every call it gets). Real-container cases (commands and
paths with shell syntax, symlinks to host paths) are in test_injection.py.
"""

from __future__ import annotations

import re

import pytest

import claude_net_activity
import claude_net_mcp
import claude_net_permissions
import claude_net_telegram
from claude_net import auth
from claude_net.builtin.capabilities import SNAPSHOT_RE
from claude_net.http import PUBLIC_PATHS
from tests.core.testbox import TestBox
from tests.plugins.telegram.tg_botapi import FakeBotAPI

pytestmark = pytest.mark.db("sqlite")

TG_TOKEN = "7000000001:AAFakeTokenOnlyForTests_abcdefghij12"
WEBHOOK_SECRET = "hardening-secret-0123456789"


async def _rows(hub, **filters):
    where = " AND ".join(f"{k} = :{k}" for k in filters) or "1 = 1"
    return await hub.db.fetch_all(f"SELECT * FROM activity_log WHERE {where} ORDER BY id", filters)


def _concrete(rule: str) -> str:
    return re.sub(r"<[^>]+>", "x", rule)


@pytest.fixture
async def everything(hub_harness):
    """A hub with every plugin that serves HTTP (Telegram in webhook mode against a local fake Bot
    API, MCP at /mcp), the TestBox backend, and a second, unrelated hub's token."""
    api = FakeBotAPI(TG_TOKEN)
    await api.start()
    box = TestBox()
    try:
        async with hub_harness(
            plugins=[box, claude_net_permissions, claude_net_activity, claude_net_telegram, claude_net_mcp],
            telegram={"token": TG_TOKEN, "chat_id": -100123, "admin_ids": [1], "base_url": api.base_url,
                      "mode": "webhook", "webhook_url": "https://hub.example.org/api/telegram/webhook",
                      "webhook_secret": WEBHOOK_SECRET, "request_timeout": 3.0},
        ) as h:
            h.box = box
            h.hub.auth_refusals.every = 0.0  # record every anonymous refusal (the throttle has its own test)
            yield h
    finally:
        await api.stop()


BAD_CREDENTIALS = {
    "none": None,
    "garbage": "Bearer garbage",
    "basic": "Basic YWxwaGE6YmV0YQ==",
    "empty bearer": "Bearer ",
    "well-formed unknown": "Bearer cn_000000000000_" + "A" * 43,
    "sql": "Bearer cn_' OR '1'='1",
    "huge": "Bearer " + "x" * 8000,
}


async def test_every_route_and_mount_refuses_bad_credentials_and_records_it(everything):
    h = everything
    revoked = await h.token("gone")
    await auth.revoke_tokens(h.hub.db, "gone")
    credentials = {**BAD_CREDENTIALS, "revoked": f"Bearer {revoked}"}
    routes = [(rule.rule, method) for rule in h.app.url_map.iter_rules() if rule.endpoint != "static"
              for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    assert {r for r, _ in routes} >= {"/api/exec", "/api/file/read", "/api/file/write", "/api/permit",
                                      "/api/permissions", "/api/activity", "/api/activity/stream",
                                      "/api/telegram/status", "/api/telegram/webhook", "/api/container/restore"}
    mounts = ["/mcp"]
    checked = 0
    for path, method in routes + [(m, "POST") for m in mounts]:
        for label, header in credentials.items():
            headers = {"Authorization": header} if header is not None else {}
            status, body = await h.call(method, _concrete(path), None, {} if method != "GET" else None,
                                        headers=headers)
            checked += 1
            if path == "/api/telegram/webhook":  # public, but authenticated by Telegram's secret header
                assert status == 401 and body["code"] == "webhook_secret_missing", (label, body)
            elif path in PUBLIC_PATHS:
                assert status == 200, (path, label, body)
            else:
                assert status == 401, f"{method} {path} with {label}: {status} {body}"
                assert body["ok"] is False and body["code"] in ("missing_token", "bad_auth_header", "invalid_token")
    assert checked > 100
    assert h.box.calls == []  # nothing reached a backend
    denied = await _rows(h.hub, type="auth", result="denied")
    details = [r["detail"] for r in denied]
    assert any(d.startswith("invalid or revoked token on POST /api/exec") for d in details)
    assert any(d.startswith("no token on POST /api/exec") for d in details)
    assert any("/mcp" in d for d in details)
    assert all("cn_" not in d and "garbage" not in d for d in details)  # tokens are never recorded
    # the secret-header route: wrong secret is 403, and a hub bearer token is no substitute
    status, body = await h.call("POST", "/api/telegram/webhook", None, {"update_id": 1},
                                headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"})
    assert status == 403


async def test_anonymous_refusals_are_recorded_but_cannot_flood_the_log(hub_harness):
    """Without a token nobody can write more than one audit row per address every 10 s."""
    async with hub_harness(plugins=[claude_net_activity]) as h:
        for i in range(200):
            await h.call("POST", "/api/exec", f"cn_{i:012x}_" + "A" * 43, {"target": "x", "command": "y"})
            await h.call("GET", "/api/inbox")
        rows = await _rows(h.hub, type="auth")
        assert len(rows) == 1, [r["detail"] for r in rows]
        h.hub.auth_refusals.every = 0.0  # next window
        await h.call("GET", "/api/inbox")
        rows = await _rows(h.hub, type="auth")
        assert len(rows) == 2 and "(400 refused)" in rows[1]["detail"], rows[1]["detail"]


async def test_agents_on_admin_routes_are_refused_and_recorded(everything):
    h = everything
    agent = await h.token("alpha")
    admin_routes = [(plugin, r) for plugin, r in h.app.extensions["claude_net_routes"] if r.admin]
    assert {r.path for _, r in admin_routes} >= {"/api/permissions", "/api/activity", "/api/activity/stream",
                                                 "/api/telegram/status"}
    for _, route in admin_routes:
        status, body = await h.call(route.method, route.path, agent, {} if route.method != "GET" else None)
        assert status == 403 and body["code"] == "admin_only", (route.path, body)
    # admin-only *actions* behind ordinary routes: the roles policy refuses them
    for path, body in [("/api/container/start", {"name": "box1"}), ("/api/container/stop", {"name": "box1"}),
                       ("/api/container/snapshot", {"name": "box1"}),
                       ("/api/container/restore", {"name": "box1", "snapshot": "s1"}),
                       ("/api/permit", {"source": "alpha", "target": "box1"}),
                       ("/api/permit", {"source": "alpha", "target": "all"}),
                       ("/api/permit", {"source": "*", "target": "*", "allow": False})]:
        status, answer = await h.call("POST", path, agent, body)
        assert status == 403 and answer["code"] == "denied", (path, answer)
    status, answer = await h.call("GET", "/api/container/snapshots?name=box1", agent)
    assert status == 403
    assert h.box.calls == []
    assert await h.hub.db.fetch_all("SELECT * FROM exec_permissions") == []
    admin_rows = await _rows(h.hub, type="admin", result="denied", from_machine="alpha")
    assert len(admin_rows) == len(admin_routes)
    assert len(await _rows(h.hub, type="container", result="denied", from_machine="alpha")) == 5
    assert len(await _rows(h.hub, type="permit", result="denied", from_machine="alpha")) == 3


async def test_spoofed_from_on_every_body_route_is_refused_and_recorded(everything):
    h = everything
    alpha = await h.token("alpha")
    await h.token("beta")
    body_routes = [r for _, r in h.app.extensions["claude_net_routes"]
                   if r.auth and r.body_schema is not None and r.method != "GET"]
    assert len(body_routes) >= 9
    for route in body_routes:
        status, body = await h.call(route.method, route.path, alpha, {"from": "beta"})
        assert status == 403 and body["code"] == "from_mismatch", (route.path, body)
    rows = await _rows(h.hub, type="auth", result="denied", from_machine="alpha")
    assert len(rows) == len(body_routes) and all("does not match" in r["detail"] for r in rows)
    # a query-string `from` never changes who you are: alpha reads alpha's inbox
    await h.call("POST", "/api/send", alpha, {"to": "beta", "message": "for beta only"})
    status, body = await h.call("GET", "/api/inbox?from=beta", alpha)
    assert status == 200 and body["messages"] == []
    assert h.box.calls == []


async def test_another_nodes_token_is_that_node_and_nothing_more(everything):
    h = everything
    alpha, beta = await h.token("alpha"), await h.token("beta")
    status, body = await h.call("POST", "/api/send", alpha, {"to": "beta", "message": "secret for beta"})
    mid = body["id"]
    # alpha cannot read or ack beta's messages
    status, body = await h.call("GET", "/api/inbox", alpha)
    assert body["messages"] == []
    status, body = await h.call("POST", "/api/inbox/ack", alpha, {"ids": [mid]})
    assert status == 200 and body["acked"] == [] and body["ignored"] == [mid]
    status, body = await h.call("GET", "/api/inbox", beta)
    assert [m["message"] for m in body["messages"]] == ["secret for beta"]
    # no grant: neither may act on the other's machine, nor on a box
    for token, target in [(alpha, "box1"), (beta, "box2")]:
        for path, extra in [("/api/exec", {"command": "id"}), ("/api/file/read", {"path": "/etc/passwd"}),
                            ("/api/file/write", {"path": "/tmp/x", "content": "x"})]:
            status, body = await h.call("POST", path, token, {"target": target, **extra})
            assert status == 403 and body["code"] == "denied", body
    assert h.box.calls == []
    # a token of another hub (another database) is just an invalid token here
    from claude_net.auth import create_token

    other_db = type(h.hub.db)(h.hub.db.url.replace("hub.db", "other.db"))
    await other_db.connect()
    try:
        await other_db.migrate([m for batch in h.hub.pm.hook.migrations() for m in (batch or ())])
        foreign = await create_token(other_db, "alpha", admin=True)
    finally:
        await other_db.disconnect()
    status, body = await h.call("GET", "/api/permissions", foreign)
    assert status == 401 and body["code"] == "invalid_token"


#: names that must never be accepted as a node name (or reach a backend) anywhere
HOSTILE_NAMES = {
    "star": "*",
    "percent": "%",
    "underscore": "_",
    "like": "box%",
    "like_one": "box_",
    "dotdot": "..",
    "traversal": "../box1",
    "slash": "box1/../box2",
    "semicolon": "box1;id",
    "dash_h": "-h",
    "double_dash": "--help",
    "space": "box 1",
    "leading_space": " box1",
    "newline": "box1\n",
    "nul": "box1\x00",
    "cyrillic_a": "b\u043ex1",  # Cyrillic о
    "fullwidth": "\uff42ox1",  # ｂ
    "zero_width": "box\u200b1",
    "upper": "BOX1",
    "dollar": "$(id)",
    "backtick": "`id`",
    "long": "a" * 300,
    "empty": "",
}


@pytest.mark.parametrize("label", list(HOSTILE_NAMES))
async def test_hostile_names_are_refused_everywhere_and_recorded(everything, label):
    h = everything
    name = HOSTILE_NAMES[label]
    boss = await h.token("boss", admin=True)
    agent = await h.token("alpha")
    await h.call("POST", "/api/permit", boss, {"source": "alpha", "target": "all"})
    calls = [
        (agent, "POST", "/api/exec", {"target": name, "command": "id"}),
        (agent, "POST", "/api/file/read", {"target": name, "path": "/etc/hostname"}),
        (agent, "POST", "/api/file/write", {"target": name, "path": "/tmp/x", "content": "x"}),
        (boss, "POST", "/api/exec", {"target": name, "command": "id"}),
        (boss, "POST", "/api/container/stop", {"name": name}),
    ]
    if not SNAPSHOT_RE.fullmatch(name):  # snapshot names also allow '_', '.' and capitals
        calls.append((boss, "POST", "/api/container/snapshot", {"name": "box1", "snapshot": name}))
    if name != "*":  # '*' is the documented broadcast of /api/send and "every node" in the matrix
        calls += [(agent, "POST", "/api/send", {"to": name, "message": "hi"}),
                  (boss, "POST", "/api/permit", {"source": name, "target": "box1"}),
                  (boss, "POST", "/api/permit", {"source": "alpha", "target": name})]
    for token, method, path, body in calls:
        status, answer = await h.call(method, path, token, body)
        assert status == 400, (path, body, answer)
        assert answer["code"] in ("invalid_field", "invalid_name", "missing_field"), answer
    assert h.box.calls == []  # refused before any backend
    stored = await h.hub.db.fetch_all("SELECT source, target FROM exec_permissions")
    assert stored == [{"source": "alpha", "target": "*"}]
    refused = await _rows(h.hub, type="request", result="denied")
    assert len(refused) == len(calls), [r["detail"] for r in refused]
    # the CLI refuses the name as a token holder too
    with pytest.raises(Exception, match="not a valid node name"):
        await auth.create_token(h.hub.db, name)


async def test_star_is_a_literal_broadcast_never_a_pattern(everything):
    """``to: "*"`` is the documented broadcast; as an exec/file target '*' is refused, and as a
    permissions row it is a literal (test_permissions_properties.py proves the resolution)."""
    h = everything
    alpha = await h.token("alpha")
    await h.token("beta")
    status, body = await h.call("POST", "/api/send", alpha, {"to": "*", "message": "all hands"})
    assert status == 200 and "alpha" not in body["recipients"] and "beta" in body["recipients"]
