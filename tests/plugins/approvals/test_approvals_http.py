"""Approvals end to end over HTTP: the permissions plugin's ask level, the approvals plugin, the
activity feed and a test backend, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import claude_net_activity
import claude_net_approvals
import claude_net_permissions
from claude_net.testing import eventually


def plugins(box):
    return [claude_net_permissions, claude_net_activity, claude_net_approvals, box]


async def _setup(h, *, ask=("exec",), caps=None, **permit):
    chas = await h.token("chasclaude", admin=True)
    alpha = await h.token("alpha")
    body = {"source": "alpha", "target": "box1", "ask": list(ask), **permit}
    if caps:
        body["capabilities"] = caps
    status, answer = await h.call("POST", "/api/permit", chas, body)
    assert status == 200, answer
    return chas, alpha


async def _exec(h, token, command="echo hi", **extra):
    return await h.call("POST", "/api/exec", token, {"target": "box1", "command": command, **extra})


async def _feed(h, type_=None):
    sql = "SELECT type, result, from_machine, data FROM activity_log"
    rows = await h.hub.db.fetch_all(sql + (" WHERE type = :t" if type_ else "") + " ORDER BY id",
                                    {"t": type_} if type_ else {})
    import json

    return [(r["type"], r["result"], json.loads(r["data"] or "{}")) for r in rows]


async def test_permit_ask_shows_in_rules_and_effective_view_and_keeps_seed_columns(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas, _ = await _setup(h, ask=("exec", "file_write"))
        status, view = await h.call("GET", "/api/permissions?effective=true", chas)
        assert status == 200, view
        rule = view["permissions"][0]
        assert rule["capabilities"] == ["exec", "file_read", "file_write"]
        assert rule["ask"] == ["exec", "file_write"] and rule["snapshot"] is None
        # the seed columns keep meaning "granted outright": an ask capability is not one
        assert rule["can_exec"] is False and rule["can_read"] is True and rule["can_write"] is False
        assert view["effective"]["alpha"]["box1"] == ["exec", "file_read", "file_write"]
        assert view["effective_ask"] == {"alpha": {"box1": ["exec", "file_write"]}}
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box2",
                                                                 "capabilities": ["file_read"], "ask": ["exec"]})
        assert status == 400 and body["field"] == "ask" and "subset" in body["error"]


async def test_pending_then_approved_runs_once_then_409_and_changed_command_409(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas, alpha = await _setup(h)
        status, body = await _exec(h, alpha, approval_wait=0)
        assert status == 202, body
        assert body["ok"] is False and body["pending"] is True and body["code"] == "approval_pending"
        approval = body["approval"]
        assert approval["state"] == "pending" and approval["requester"] == "alpha"
        assert approval["particulars"] == {"command": "echo hi", "cwd": None}
        assert f'"approval": "{approval["id"]}"' in body["error"]
        assert box.calls == []

        status, decided = await h.call("POST", f"/api/approvals/{approval['id']}", chas, {"decision": "approve"})
        assert status == 200 and decided["approval"]["state"] == "approved", decided
        assert decided["approval"]["decided_by"] == "chasclaude"

        status, body = await _exec(h, alpha, approval=approval["id"])
        assert status == 200 and body["stdout"] == "box1: echo hi", body
        status, body = await _exec(h, alpha, approval=approval["id"])
        assert status == 409 and body["code"] == "approval_used", body
        status, body = await _exec(h, alpha, command="echo other", approval=approval["id"])
        assert status == 409 and body["code"] == "approval_mismatch", body
        assert box.calls == [("exec", "box1", "echo hi")]

        steps = [(r, d["state"]) for t, r, d in await _feed(h, "approval")]
        assert steps == [("pending", "requested"), ("ok", "approved")]
        execs = [(r, d.get("approval_id"), d.get("code")) for t, r, d in await _feed(h, "exec")]
        assert execs == [("ok", approval["id"], None), ("denied", approval["id"], "approval_used"),
                         ("denied", approval["id"], "approval_mismatch")]


async def test_waiting_exec_runs_when_approved_and_denied_never_runs(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas, alpha = await _setup(h)
        waiting = asyncio.ensure_future(_exec(h, alpha, command="echo waited", approval_wait=20))
        pending = await eventually(lambda: _pending(h, chas))
        assert pending[0]["detail"] == "alpha asks to run on box1: 'echo waited'"
        status, _ = await h.call("POST", f"/api/approvals/{pending[0]['id']}", chas, {"decision": "approve"})
        assert status == 200
        status, body = await asyncio.wait_for(waiting, 10)
        assert status == 200 and body["stdout"] == "box1: echo waited", body

        waiting = asyncio.ensure_future(_exec(h, alpha, command="touch /marker", approval_wait=20))
        pending = await eventually(lambda: _pending(h, chas))
        status, _ = await h.call("POST", f"/api/approvals/{pending[0]['id']}", chas, {"decision": "deny"})
        assert status == 200
        status, body = await asyncio.wait_for(waiting, 10)
        assert status == 403 and body["code"] == "approval_denied" and body["decided_by"] == "chasclaude", body
        assert "denied by chasclaude" in body["error"]
        assert ("exec", "box1", "touch /marker") not in box.calls

        status, body = await h.call("POST", f"/api/approvals/{pending[0]['id']}", chas, {"decision": "approve"})
        assert status == 409 and body["code"] == "already_decided" and body["state"] == "denied", body


async def _pending(h, token):
    status, body = await h.call("GET", "/api/approvals?state=pending", token)
    assert status == 200, body
    return body["approvals"] or None


async def test_expiry_is_403_with_its_own_code_and_recorded(hub_harness, box, make_settings):
    settings = make_settings(approvals={"expiry": 0.5})
    async with hub_harness(plugins=plugins(box), settings=settings) as h:
        chas, alpha = await _setup(h)
        status, body = await _exec(h, alpha, approval_wait=5)
        assert status == 403 and body["code"] == "approval_expired", body
        aid = body["approval"]["id"]
        status, body = await h.call("POST", f"/api/approvals/{aid}", chas, {"decision": "approve"})
        assert status == 409 and body["state"] == "expired"
        status, body = await _exec(h, alpha, approval=aid)
        assert status == 403 and body["code"] == "approval_expired"
        assert [d["state"] for t, r, d in await _feed(h, "approval")] == ["requested", "expired"]
        assert box.calls == []


async def test_caps_burst_of_100_and_coalescing(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas, alpha = await _setup(h)
        # identical requests join one approval
        same = await asyncio.gather(*(_exec(h, alpha, command="echo same", approval_wait=0) for _ in range(10)))
        assert {s for s, _ in same} == {202}
        assert len({b["approval"]["id"] for _, b in same}) == 1
        # a burst of 100 different requests: 4 more fit under the cap of 5, the rest are 429
        burst = await asyncio.gather(*(_exec(h, alpha, command=f"echo {n}", approval_wait=0) for n in range(100)))
        statuses = [s for s, _ in burst]
        assert statuses.count(202) == 4 and statuses.count(429) == 96, statuses
        refused = next(b for s, b in burst if s == 429)
        assert refused["code"] == "too_many_approvals" and "5 approvals" in refused["error"]
        status, listing = await h.call("GET", "/api/approvals?state=pending", chas)
        assert len(listing["approvals"]) == 5
        denied = [d for t, r, d in await _feed(h, "exec") if d.get("code") == "too_many_approvals"]
        assert len(denied) == 96  # every refusal is in the feed
        assert box.calls == []


async def test_hostile_decisions_agent_token_junk_unknown(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas, alpha = await _setup(h)
        status, body = await _exec(h, alpha, approval_wait=0)
        aid = body["approval"]["id"]
        # the requester itself (an agent token) cannot decide
        status, body = await h.call("POST", f"/api/approvals/{aid}", alpha, {"decision": "approve"})
        assert status == 403 and body["code"] == "admin_only", body
        assert [r for t, r, d in await _feed(h, "admin")] == ["denied"]
        for junk in ({"decision": "yes"}, {"decision": "approve", "extra": 1}, {"decision": 1}, {},
                     {"decision": "approve", "for": "forever"}, {"decision": "deny", "for": "1h"}, [1, 2]):
            status, body = await h.call("POST", f"/api/approvals/{aid}", chas, junk)
            assert status == 400 and body["ok"] is False and body["code"], (junk, body)
        status, body = await h.call("POST", "/api/approvals/zzzz9999", chas, {"decision": "approve"})
        assert status == 404 and body["code"] == "unknown_approval"
        refused = [(r, d["code"]) for t, r, d in await _feed(h, "request")]
        assert ("denied", "unknown_approval") in refused  # a decision that changed nothing is recorded too
        status, body = await h.call("POST", "/api/approvals/NOT-AN-ID", chas, {"decision": "approve"})
        assert status == 400
        status, body = await h.call("GET", "/api/approvals/zzzz9999", alpha)
        assert status == 404
        # others' approvals are invisible to a non-admin that did not ask
        beta = await h.token("beta")
        status, body = await h.call("GET", f"/api/approvals/{aid}", beta)
        assert status == 404
        status, body = await h.call("GET", f"/api/approvals/{aid}", alpha)
        assert status == 200 and body["approval"]["state"] == "pending"
        status, body = await h.call("GET", "/api/approvals", alpha)
        assert status == 403
        # an id of someone else's approval cannot be used to run
        status, body = await h.call("POST", "/api/exec", beta, {"target": "box1", "command": "echo hi",
                                                                 "approval": aid})
        assert status == 403  # beta has no pathway at all
        assert box.calls == []


async def test_approve_for_an_hour_creates_a_recorded_expiring_allowance(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas, alpha = await _setup(h)
        status, body = await _exec(h, alpha, approval_wait=0)
        aid = body["approval"]["id"]
        status, body = await h.call("POST", f"/api/approvals/{aid}", chas, {"decision": "approve", "for": "1h"})
        assert status == 200 and body["approval"]["for"] == "1h", body
        status, body = await _exec(h, alpha, approval=aid)
        assert status == 200
        # within the hour: no asking, for this pair and capability only
        status, body = await _exec(h, alpha, command="echo free")
        assert status == 200 and body["stdout"] == "box1: echo free", body
        status, view = await h.call("GET", "/api/permissions", chas)
        allowance = view["allowances"][0]
        assert (allowance["source"], allowance["target"], allowance["capability"]) == ("alpha", "box1", "exec")
        assert allowance["approval_id"] == aid and allowance["expires_at"] > body.get("time", "")
        permits = [(r, d) for t, r, d in await _feed(h, "permit")]
        assert permits[-1][0] == "ok" and permits[-1][1]["allowance"] == "exec"
        assert permits[-1][1]["approval_id"] == aid
        # a revoke ends the allowance with the rule
        status, _ = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box1", "allow": False})
        status, view = await h.call("GET", "/api/permissions", chas)
        assert view["allowances"] == []


async def test_cancel_and_agent_tool_approvals_with_relay(hub_harness, box, make_settings):
    settings = make_settings(approvals={"relay": ["alpha"]})
    async with hub_harness(plugins=plugins(box), settings=settings) as h:
        chas, alpha = await _setup(h)
        beta = await h.token("beta")
        tool = {"kind": "agent_tool", "tool_name": "Bash", "description": "run a command",
                "input_preview": "rm -rf build", "request_id": "r1"}
        status, body = await h.call("POST", "/api/approvals", alpha, tool)
        assert status == 201 and body["approval"]["kind"] == "agent_tool", body
        aid = body["approval"]["id"]
        status, again = await h.call("POST", "/api/approvals", alpha, tool)
        assert status == 200 and again["coalesced"] is True and again["approval"]["id"] == aid
        status, body = await h.call("POST", "/api/approvals", beta, tool)
        assert status == 403 and body["code"] == "relay_refused"
        assert [d.get("code") for t, r, d in await _feed(h, "request") if r == "denied"] == ["relay_refused"]

        waiter = asyncio.ensure_future(h.call("GET", f"/api/approvals/{aid}?wait=20", alpha))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        status, _ = await h.call("POST", f"/api/approvals/{aid}", chas, {"decision": "deny"})
        status, body = await asyncio.wait_for(waiter, 10)
        assert status == 200 and body["approval"]["state"] == "denied"

        status, body = await _exec(h, alpha, approval_wait=0)
        eid = body["approval"]["id"]
        status, body = await h.call("POST", f"/api/approvals/{eid}/cancel", beta)
        assert status == 404
        status, body = await h.call("POST", f"/api/approvals/{eid}/cancel", alpha)
        assert status == 200 and body["approval"]["state"] == "cancelled"
        status, body = await _exec(h, alpha, approval=eid)
        assert status == 403 and body["code"] == "approval_cancelled"


async def test_python_service_for_in_process_callers(hub_harness, box):
    from claude_net import Conflict, Forbidden
    from claude_net.types import Actor
    from claude_net_approvals import service

    async with hub_harness(plugins=plugins(box)) as h:
        chas, alpha = await _setup(h)
        status, body = await _exec(h, alpha, approval_wait=0)
        aid = body["approval"]["id"]
        try:
            await service.decide(h.hub, Actor("alpha"), aid, "approve", via="telegram")
        except Forbidden as exc:
            assert exc.code == "admin_only"
        else:
            raise AssertionError("a non-admin decided")
        approval = await service.decide(h.hub, Actor("chasclaude", admin=True, via="telegram"), aid, "approve",
                                        via="telegram", telegram_user=4242)
        assert approval["decided_via"] == "telegram" and approval["telegram_user"] == "4242"
        try:
            await service.decide(h.hub, Actor("chasclaude", admin=True), aid, "deny", via="telegram")
        except Conflict as exc:
            assert exc.code == "already_decided" and exc.extra["state"] == "approved"
        else:
            raise AssertionError("decided twice")
        assert (await service.get(h.hub, aid))["state"] == "approved"
        assert [a["id"] for a in await service.list_approvals(h.hub, "approved")] == [aid]


async def test_the_sweeper_expires_an_approval_nobody_waits_for(hub_harness, box, make_settings):
    settings = make_settings(approvals={"expiry": 0.4})
    async with hub_harness(plugins=plugins(box), settings=settings) as h:
        _, alpha = await _setup(h)
        status, body = await _exec(h, alpha, approval_wait=0)
        assert status == 202
        aid = body["approval"]["id"]

        async def expired():
            return [d for t, r, d in await _feed(h, "approval") if d["state"] == "expired"]

        rows = await eventually(expired, timeout=10)  # no request touched it: the background task did
        assert rows[0]["approval_id"] == aid and rows[0]["decided_by"] is None
        state = await h.hub.db.fetch_val("SELECT state FROM approvals WHERE id = :id", {"id": aid})
        assert state == "expired"


async def test_every_approvals_route_answers_junk_with_the_error_shape(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas, alpha = await _setup(h)
        status, body = await _exec(h, alpha, approval_wait=0)
        aid = body["approval"]["id"]
        cases = [
            ("GET", "/api/approvals?state=bogus", chas, None, 400),
            ("GET", "/api/approvals?extra=1", chas, None, 400),
            ("GET", f"/api/approvals/{aid}?wait=soon", alpha, None, 400),
            ("GET", f"/api/approvals/{aid}?wait=-1", alpha, None, 400),
            ("GET", "/api/approvals/x", alpha, None, 400),
            ("GET", "/api/approvals/" + "a" * 41, alpha, None, 400),
            ("POST", "/api/approvals", alpha, {"kind": "action", "tool_name": "Bash"}, 400),
            ("POST", "/api/approvals", alpha, {"kind": "agent_tool"}, 400),
            ("POST", "/api/approvals", alpha, {"kind": "agent_tool", "tool_name": "x" * 201}, 400),
            ("POST", "/api/approvals", alpha, {"kind": "agent_tool", "tool_name": "B\u0000"}, 400),
            ("POST", "/api/approvals", None, {"kind": "agent_tool", "tool_name": "Bash"}, 401),
            ("POST", f"/api/approvals/{aid}", chas, {"decision": "approve", "for": 5}, 400),
            ("POST", f"/api/approvals/{aid}", chas, {"decision": "approve", "for": "999w"}, 400),
            ("POST", f"/api/approvals/{aid}/cancel", beta := await h.token("beta"), None, 404),
            ("POST", "/api/exec", alpha, {"target": "box1", "command": "x", "approval": "UPPER"}, 400),
            ("POST", "/api/exec", alpha, {"target": "box1", "command": "x", "approval_wait": -1}, 400),
            ("POST", "/api/exec", alpha, {"target": "box1", "command": "x", "approval_wait": "10"}, 400),
            ("POST", "/api/permit", chas, {"source": "alpha", "target": "box1", "ask": ["nope"]}, 400),
            ("POST", "/api/permit", chas, {"source": "alpha", "target": "box1", "allow": False, "ask": ["exec"]}, 400),
        ]
        for method, path, token, json_body, expected in cases:
            status, body = await h.call(method, path, token, json_body)
            assert status == expected, (method, path, json_body, status, body)
            assert body["ok"] is False and body["error"] and body["code"], body
        assert beta
        status, body = await h.call("GET", f"/api/approvals/{aid}", chas)
        assert body["approval"]["state"] == "pending"  # none of that changed it
        assert box.calls == []
