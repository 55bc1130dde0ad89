"""The core side of approvals: Grant answers, Hub.decide, authorize(approved=), guarded under ask.

The policy and the approval desk here are tiny plugins of this module that implement the two
hooks (``authorize`` answering a Grant, ``request_approval``) with scripted answers, so the
core's contract is proven on its own; the approvals plugin itself is tested end to end in
tests/plugins/approvals.
"""

from __future__ import annotations

import asyncio

import pytest

from claude_net import ApprovalPending, Conflict, Forbidden, Grant, hookimpl
from claude_net.types import Actor

from .testbox import Recorder, TestBox


class AskPolicy:
    """agent -> box1: exec needs approval (and a snapshot before when ``snapshot``); reads are plain."""

    __name__ = "askpolicy"

    def __init__(self, snapshot: bool = False) -> None:
        self.snapshot = snapshot
        self.revoked = False

    @hookimpl
    def authorize(self, actor, action, target):
        if actor.name != "agent" or target != "box1":
            return None
        if self.revoked:
            return False
        if action == "exec":
            return Grant(ask=True, snapshot_before=self.snapshot, rule="agent -> box1")
        if action == "file_write":
            return Grant(snapshot_before=self.snapshot)
        return True if action == "file_read" else None


class Desk:
    """Answers ``request_approval`` with what a test scripts: approve, or raise a refusal."""

    __name__ = "desk"

    def __init__(self) -> None:
        self.answer: object = {"id": "ap1", "state": "approved"}
        self.calls: list[dict] = []
        self.gate: asyncio.Event | None = None

    @hookimpl
    def request_approval(self, actor, action, target, detail, particulars, approval, wait):
        self.calls.append({"actor": actor.name, "action": action, "target": target, "detail": detail,
                           "particulars": particulars, "approval": approval, "wait": wait})

        async def run():
            if self.gate is not None:
                await self.gate.wait()
            if isinstance(self.answer, BaseException):
                raise self.answer
            return self.answer

        return run()


@pytest.fixture
def box():
    return TestBox()


@pytest.fixture
def rec():
    return Recorder()


async def test_decide_combines_grants_and_authorize_needs_approved_for_ask(hub_harness, box):
    async with hub_harness(plugins=[box, AskPolicy(snapshot=True)]) as h:
        agent = Actor("agent")
        decision = await h.hub.decide(agent, "exec", "box1", {})
        assert decision.allowed and decision.ask and decision.snapshot_before and decision.rule == "agent -> box1"
        assert await h.hub.authorize(agent, "exec", "box1") is False  # an ask is not a yes
        assert await h.hub.authorize(agent, "exec", "box1", approved=True) is True
        plain = await h.hub.decide(agent, "file_read", "box1", {})
        assert plain.allowed and not plain.ask and not plain.snapshot_before
        assert await h.hub.authorize(agent, "file_read", "box1") is True
        assert not (await h.hub.decide(agent, "exec", "box2", {})).allowed


async def test_ask_without_approvals_plugin_is_denied_and_recorded(hub_harness, box, rec):
    async with hub_harness(plugins=[box, rec, AskPolicy()]) as h:
        tok = await h.token("agent")
        status, body = await h.call("POST", "/api/exec", tok, {"target": "box1", "command": "echo hi"})
        assert status == 403 and body["code"] == "denied", body
        assert "no approvals plugin" in body["error"]
        assert box.calls == []
        assert [e[3] for e in rec.events if e[0] == "exec"] == ["denied"]


async def test_approved_exec_runs_once_and_carries_the_approval_id(hub_harness, box, rec):
    desk = Desk()
    async with hub_harness(plugins=[box, rec, AskPolicy(), desk]) as h:
        tok = await h.token("agent")
        status, body = await h.call("POST", "/api/exec", tok, {"target": "box1", "command": "echo hi",
                                                              "approval_wait": 7})
        assert status == 200 and body["stdout"] == "box1: echo hi\n", body
        assert desk.calls == [{"actor": "agent", "action": "exec", "target": "box1", "detail": "echo hi",
                               "particulars": {"command": "echo hi", "cwd": None}, "approval": None, "wait": 7}]
        rows = [(t, r, d.get("approval_id")) for t, r, d in rec.details if t == "exec"]
        assert rows == [("exec", "pending", "ap1"), ("exec", "ok", "ap1")]
        assert box.calls == [("exec", "box1", "echo hi")]


@pytest.mark.parametrize("refusal, status, code", [
    (ApprovalPending("still waiting", approval={"id": "ab12cd", "state": "pending"}), 202, "approval_pending"),
    (Forbidden("denied by chasclaude", code="approval_denied", decided_by="chasclaude"), 403, "approval_denied"),
    (Forbidden("expired", code="approval_expired"), 403, "approval_expired"),
    (Conflict("already ran", code="approval_used"), 409, "approval_used"),
])
async def test_refusals_from_the_desk_reach_the_caller_and_nothing_runs(hub_harness, box, rec, refusal, status,
                                                                        code):
    desk = Desk()
    desk.answer = refusal
    async with hub_harness(plugins=[box, rec, AskPolicy(), desk]) as h:
        tok = await h.token("agent")
        got, body = await h.call("POST", "/api/exec", tok, {"target": "box1", "command": "rm -rf /x",
                                                           "approval": "ab12cd"})
        assert got == status and body["code"] == code and body["ok"] is False, body
        assert box.calls == []
        if status == 202:
            assert body["pending"] is True and body["approval"]["id"] == "ab12cd"
            assert [e for e in rec.events if e[0] == "exec"] == []  # the approval's own row is the record
        else:
            rows = [(r, d.get("approval_id"), d.get("code")) for t, r, d in rec.details if t == "exec"]
            assert rows == [("denied", "ab12cd", code)]


async def test_reauthorize_after_queueing_accepts_the_held_approval(hub_harness, box, rec, make_settings):
    """An approved exec that had to wait for a slot still runs (its approval is held); a revoke
    while it waited stops it."""
    desk = Desk()
    policy = AskPolicy()
    settings = make_settings(limits={"exec_concurrency": 1})
    async with hub_harness(plugins=[box, rec, policy, desk], settings=settings) as h:
        admin = await h.token("chasclaude", admin=True)
        tok = await h.token("agent")
        box.gate = asyncio.Event()
        blocker = asyncio.ensure_future(h.call("POST", "/api/exec", admin, {"target": "box2", "command": "wait-gate"}))
        await asyncio.sleep(0.2)
        queued = asyncio.ensure_future(h.call("POST", "/api/exec", tok, {"target": "box1", "command": "echo q"}))
        await asyncio.sleep(0.2)
        box.gate.set()
        status, body = await queued
        assert status == 200 and body["stdout"] == "box1: echo q\n", body
        assert (await blocker)[0] == 200

        box.gate = asyncio.Event()
        blocker = asyncio.ensure_future(h.call("POST", "/api/exec", admin, {"target": "box2", "command": "wait-gate"}))
        await asyncio.sleep(0.2)
        queued = asyncio.ensure_future(h.call("POST", "/api/exec", tok, {"target": "box1", "command": "echo r"}))
        await asyncio.sleep(0.2)
        policy.revoked = True
        box.gate.set()
        status, body = await queued
        assert status == 403 and body["code"] == "revoked", body
        await blocker
        assert ("exec", "box1", "echo r") not in box.calls


async def test_snapshot_before_is_taken_and_recorded_and_its_failure_refuses(hub_harness, box, rec):
    desk = Desk()
    async with hub_harness(plugins=[box, rec, AskPolicy(snapshot=True), desk]) as h:
        tok = await h.token("agent")
        status, body = await h.call("POST", "/api/file/write", tok, {"target": "box1", "path": "/f", "content": "x"})
        assert status == 200, body
        final = [d for t, r, d in rec.details if t == "file_write" and r == "ok"][0]
        snap = final["snapshot"]
        assert snap.startswith("cn-before-") and box.snapshots["box1"] == [snap]
        assert ("snapshot", "box1", {"snapshot": snap, "expires": "24h"}) in box.calls



class NoSnapshotBox(TestBox):
    """A TestBox whose snapshots fail (a full disk, say)."""

    @hookimpl
    def container_op(self, node, op, args):
        if node.backend != "testbox":
            return None
        if op == "snapshot":
            async def fail():
                raise Conflict("the storage pool is full", code="pool_full")
            return fail()
        return super().container_op(node, op, args)


async def test_a_failed_snapshot_before_refuses_the_action_and_is_recorded(hub_harness, rec):
    box = NoSnapshotBox()
    async with hub_harness(plugins=[box, rec, AskPolicy(snapshot=True), Desk()]) as h:
        tok = await h.token("agent")
        status, body = await h.call("POST", "/api/exec", tok, {"target": "box1", "command": "echo after"})
        assert status == 503 and body["code"] == "snapshot_failed", body
        assert "the storage pool is full" in body["error"] and "was not run" in body["error"]
        assert box.calls == []
        rows = [(r, d.get("code")) for t, r, d in rec.details if t == "exec"]
        assert rows == [("pending", None), ("error", "snapshot_failed")]
