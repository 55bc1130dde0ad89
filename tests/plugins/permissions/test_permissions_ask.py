"""The ask level and snapshot before in the permissions matrix (CLI and resolution), and message rules."""

from __future__ import annotations

import json

import claude_net_activity
import claude_net_permissions
from claude_net import Grant
from claude_net.types import Actor


def plugins(box):
    return [claude_net_permissions, claude_net_activity, box]


def _config(tmp_path, database_url):
    path = tmp_path / "claude-net.toml"
    path.write_text(f'database_url = "{database_url}"\n[plugins]\nallow = ["permissions", "activity"]\n')
    return str(path)


def test_cli_permit_ask_and_snapshot_before(tmp_path, database_url, capsys):
    from claude_net.cli import main

    cfg = _config(tmp_path, database_url)
    assert main(["-c", cfg, "permit", "alpha", "all", "--ask", "exec,w", "--snapshot-before"]) == 0
    out = capsys.readouterr().out
    assert "permitted alpha -> *: exec (ask), file_read, file_write (ask), snapshot before" in out
    assert main(["-c", cfg, "permit", "beta", "all", "--caps", "r", "--ask", "exec"]) == 1
    assert "subset of the granted capabilities" in capsys.readouterr().err
    assert main(["-c", cfg, "permissions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["alpha", "XrW@"]
    assert "capital: only with an admin's approval" in lines[-1] and "'@' snapshot before" in lines[-1]
    assert main(["-c", cfg, "permissions", "--json"]) == 0
    rule = json.loads(capsys.readouterr().out)["permissions"][0]
    assert rule["ask"] == ["exec", "file_write"] and rule["snapshot"] == "before"
    assert (rule["can_exec"], rule["can_read"], rule["can_write"]) == (False, True, False)


async def test_resolution_answers_grants_and_a_narrower_rule_still_wins(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas = await h.token("chasclaude", admin=True)
        await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "*", "ask": ["exec"],
                                                   "snapshot": "before"})
        await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box2"})
        alpha = Actor("alpha")
        ask = await claude_net_permissions.service.authorize(h.hub, alpha, "exec", "box1")
        assert ask == Grant(ask=True, snapshot_before=True, rule="alpha -> *")
        read = await claude_net_permissions.service.authorize(h.hub, alpha, "file_read", "box1")
        assert read is True  # snapshot before is for exec and file_write only
        assert await claude_net_permissions.service.authorize(h.hub, alpha, "exec", "box2") is True
        decision = await h.hub.decide(alpha, "file_write", "box1", {})
        assert decision.allowed and decision.snapshot_before and not decision.ask
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box1",
                                                                 "capabilities": ["file_read"], "snapshot": "before"})
        assert status == 400 and body["field"] == "snapshot"
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box1",
                                                                 "snapshot": "after"})
        assert status == 400


async def test_message_rules_default_open_deny_and_specific_allow(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas = await h.token("chasclaude", admin=True)
        alpha, beta = await h.token("alpha"), await h.token("beta")
        await h.token("gamma")
        send = lambda tok, to: h.call("POST", "/api/send", tok, {"to": to, "message": "hi"})  # noqa: E731
        # no message rule at all: open, as before (exec rules do not touch messaging)
        await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box1", "allow": False})
        assert (await send(alpha, "beta"))[0] == 200
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "*",
                                                                 "message": False})
        assert status == 200 and body["message_rule"]["message"] is False, body
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "gamma",
                                                                 "message": True})
        assert status == 200
        status, body = await send(alpha, "beta")
        assert status == 403 and body["code"] == "denied" and "message rule" in body["error"], body
        assert (await send(alpha, "gamma"))[0] == 200
        assert (await send(beta, "alpha"))[0] == 200  # rules are per direction
        assert (await send(chas, "beta"))[0] == 200  # admins are never restricted
        rows = await h.hub.db.fetch_all("SELECT result FROM activity_log WHERE type = 'message' ORDER BY id")
        assert [r["result"] for r in rows] == ["ok", "denied", "ok", "ok", "ok"]
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "*",
                                                                 "message": None})
        assert status == 200 and body["message_rule"]["removed"] == 1
        assert (await send(alpha, "beta"))[0] == 200
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "*",
                                                                 "message": False, "capabilities": ["exec"]})
        assert status == 400 and body["field"] == "message"
        status, view = await h.call("GET", "/api/permissions", chas)
        assert [(r["source"], r["target"], r["allow"]) for r in view["message_rules"]] == [("alpha", "gamma", True)]
        status, body = await h.call("POST", "/api/permit", alpha, {"source": "alpha", "target": "*", "message": True})
        assert status == 403
