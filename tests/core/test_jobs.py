"""Background jobs and fan-out through the core request path (TestBox backend; the real backends are
exercised in tests/plugins/lxd_backend/test_jobs_lxd.py and tests/plugins/ssh_backend/test_jobs_ssh.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from claude_net import ExecResult, Node, hookimpl
from claude_net.testing import eventually

from .testbox import Allow, Recorder, TestBox


class Ticker:
    """A backend whose node ``tick`` prints ``line N`` every ``interval`` seconds through ``on_output``
    (the way LXD and SSH hand over live output) and stops when cancelled."""

    __name__ = "ticker"

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.cancelled = 0

    @hookimpl
    def list_nodes(self):
        return [Node("tick", "ticker", "running", frozenset({"exec"}))]

    @hookimpl
    def execute(self, node, command, options):
        if node.backend != "ticker":
            return None

        async def run():
            count = int(command.split()[1])
            out = b""
            try:
                for i in range(count):
                    line = f"line {i}\n".encode()
                    out += line
                    if options.on_output:
                        options.on_output("stdout", line)
                    await asyncio.sleep(self.interval)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return ExecResult(exit_code=0, stdout=out)

        return run()


class AllowOther(Allow):
    __name__ = "allow_other"


@pytest.fixture
def box():
    return TestBox()


async def _job(h, token, status_wanted=202, **body):
    status, answer = await h.call("POST", "/api/exec", token, {"background": True, **body})
    assert status == status_wanted, answer
    return answer


async def _ended(h, token, job_id, timeout=10.0):
    async def check():
        status, body = await h.call("GET", f"/api/jobs/{job_id}", token)
        assert status == 200, body
        return body["job"] if body["job"]["state"] != "running" else None

    return await eventually(check, timeout=timeout)


async def test_background_job_answers_202_and_ends_with_output(hub_harness, box):
    rec = Recorder()
    async with hub_harness(plugins=[box, rec, Allow("agent", "box1")]) as h:
        tok = await h.token("agent")
        answer = await _job(h, tok, target="box1", command="echo hi", thread="t-1")
        job = answer["job"]
        assert set(job) >= {"id", "owner", "target", "command", "state", "exit_code", "started_at", "ended_at",
                            "output_bytes", "truncated", "thread"}
        assert job["owner"] == "agent" and job["target"] == "box1" and job["thread"] == "t-1"
        done = await _ended(h, tok, job["id"])
        assert done["state"] == "exited" and done["exit_code"] == 0 and done["ended_at"]
        status, body = await h.call("GET", f"/api/jobs/{job['id']}", tok)
        assert body["job"]["output"] == "box1: echo hi\n"
        status, body = await h.call("GET", f"/api/jobs/{job['id']}/output?offset=6", tok)
        assert status == 200 and body["text"] == "echo hi\n" and body["next_offset"] == len("box1: echo hi\n")
        # the exec's own rows carry the job id; the final job event is recorded
        execs = [d for t, r, d in rec.details if t == "exec"]
        assert execs and all(d.get("job_id") == job["id"] for d in execs)
        finals = [d for t, r, d in rec.details if t == "job" and r == "ok"]
        assert finals and finals[-1]["state"] == "exited" and finals[-1]["exit_code"] == 0


async def test_denied_background_exec_makes_no_job(hub_harness, box):
    async with hub_harness(plugins=[box, Allow("agent", "box1")]) as h:
        tok = await h.token("agent")
        status, body = await h.call("POST", "/api/exec", tok, {"target": "box2", "command": "id", "background": True})
        assert status == 403 and body["code"] == "denied"
        status, body = await h.call("GET", "/api/jobs", tok)
        assert body["jobs"] == []


async def test_another_agents_job_is_invisible_and_uncancellable(hub_harness, box):
    async with hub_harness(plugins=[box, Allow("agent", "box1"), AllowOther("other", "box1")]) as h:
        tok, other, boss = await h.token("agent"), await h.token("other"), await h.token("boss", admin=True)
        job = (await _job(h, tok, target="box1", command="sleep 30"))["job"]
        for method, path in (("GET", f"/api/jobs/{job['id']}"), ("GET", f"/api/jobs/{job['id']}/output"),
                             ("POST", f"/api/jobs/{job['id']}/cancel")):
            status, body = await h.call(method, path, other)
            assert status == 404 and body["code"] == "unknown_job", (path, body)
        status, body = await h.call("GET", "/api/jobs", other)
        assert body["jobs"] == []
        status, body = await h.call("GET", "/api/jobs?state=running", boss)
        assert [j["id"] for j in body["jobs"]] == [job["id"]]
        status, body = await h.call("POST", f"/api/jobs/{job['id']}/cancel", boss)
        assert status == 200 and body["job"]["state"] == "cancelled" and body["job"]["ended_by"] == "boss"
        status, body = await h.call("POST", f"/api/jobs/{job['id']}/cancel", tok)
        assert status == 409 and body["code"] == "job_not_running"


async def test_follow_streams_lines_as_they_come_and_ends_with_the_job(hub_harness):
    ticker = Ticker(0.05)
    async with hub_harness(plugins=[ticker]) as h:
        boss = await h.token("boss", admin=True)
        job = (await _job(h, boss, target="tick", command="tick 10"))["job"]
        response = await h.client.get(f"/api/jobs/{job['id']}/output?follow=1",
                                      headers={"Authorization": f"Bearer {boss}"})
        assert response.status_code == 200
        assert response.content_type.startswith("text/event-stream")
        raw = (await response.get_data()).decode()
        events = [block for block in raw.split("\n\n") if block.startswith("event:")]
        texts = [json.loads(b.split("data: ", 1)[1]) for b in events if b.startswith("event: output")]
        assert "".join(t["text"] for t in texts) == "".join(f"line {i}\n" for i in range(10))
        assert len(texts) >= 3  # it arrived in pieces, while the job ran
        offsets = [t["offset"] for t in texts]
        assert offsets == sorted(offsets) and offsets[0] == 0
        end = json.loads(events[-1].split("data: ", 1)[1])
        assert events[-1].startswith("event: end") and end["state"] == "exited"


async def test_output_cap_marks_truncated(hub_harness):
    ticker = Ticker(0.0)
    async with hub_harness(plugins=[ticker], jobs={"max_output": 20}) as h:
        boss = await h.token("boss", admin=True)
        job = (await _job(h, boss, target="tick", command="tick 10"))["job"]
        done = await _ended(h, boss, job["id"])
        assert done["truncated"] is True and done["output_bytes"] == 20
        _, body = await h.call("GET", f"/api/jobs/{job['id']}", boss)
        assert body["job"]["output"].startswith("line 0\nline 1\nline 2\n"[:20])
        assert "output truncated at 20 bytes" in body["job"]["output"]


async def test_job_limits_answer_429(hub_harness, box):
    async with hub_harness(plugins=[box], jobs={"max_per_node": 1, "max_total": 2}) as h:
        boss = await h.token("boss", admin=True)
        await _job(h, boss, target="box1", command="sleep 30")
        status, body = await h.call("POST", "/api/exec", boss,
                                    {"target": "box1", "command": "sleep 30", "background": True})
        assert status == 429 and body["code"] == "too_many_jobs" and "max_per_node" in body["error"]
        await _job(h, boss, target="box2", command="sleep 30")
        status, body = await h.call("POST", "/api/exec", boss,
                                    {"target": "boxoff", "command": "true", "background": True})
        assert status == 429 and "max_total" in body["error"]


async def test_timeout_gives_timed_out(hub_harness, box):
    async with hub_harness(plugins=[box]) as h:
        boss = await h.token("boss", admin=True)
        job = (await _job(h, boss, target="box1", command="sleep 30", timeout=0.3))["job"]
        done = await _ended(h, boss, job["id"])
        assert done["state"] == "timed_out"


async def test_fanout_mixed_permitted_and_denied_in_order(hub_harness, box):
    rec = Recorder()
    async with hub_harness(plugins=[box, rec, Allow("agent", "box1")]) as h:
        tok = await h.token("agent")
        status, body = await h.call("POST", "/api/exec", tok, {"targets": ["box2", "box1", "nosuch"],
                                                                "command": "echo hi"})
        assert status == 200, body
        assert [r["target"] for r in body["results"]] == ["box2", "box1", "nosuch"]
        assert body["results"][0]["ok"] is False and body["results"][0]["code"] == "denied"
        assert body["results"][1]["ok"] is True and body["results"][1]["stdout"] == "box1: echo hi\n"
        assert body["results"][2]["code"] in ("denied", "unknown_node")
        assert body["summary"]["ok"] == 1 and body["summary"]["ok"] + body["summary"]["denied"] \
            + body["summary"]["failed"] == 3
        assert ("exec", "denied") in [(t, r) for t, r, d in rec.details]
        # a pattern over node names; background: each result carries its job
        status, body = await h.call("POST", "/api/exec", tok, {"targets": "box*", "command": "echo hi",
                                                                "background": True})
        assert status == 200, body
        assert [r["target"] for r in body["results"]] == ["box1", "box2", "boxoff"]
        assert body["results"][0]["ok"] and body["results"][0]["job"]["state"] in ("running", "exited")
        assert body["summary"]["denied"] == 2
        status, body = await h.call("POST", "/api/exec", tok, {"targets": "zz*", "command": "x"})
        assert status == 404 and body["code"] == "no_matching_nodes"
        status, body = await h.call("POST", "/api/exec", tok, {"targets": ["box1"], "target": "box1",
                                                                "command": "x"})
        assert status == 400


async def test_live_job_events_are_throttled_and_never_stored(hub_harness):
    ticker = Ticker(0.05)  # 40 lines over about 2 s
    rec = Recorder()
    live = []

    class Live:
        __name__ = "live"

        @hookimpl
        def on_event(self, event):
            if event.type == "job" and event.live_only:
                live.append((asyncio.get_running_loop().time(), event))

    async with hub_harness(plugins=[ticker, rec, Live()]) as h:
        boss = await h.token("boss", admin=True)
        job = (await _job(h, boss, target="tick", command="tick 40"))["job"]
        await _ended(h, boss, job["id"])
    assert 2 <= len(live) <= 4, [t for t, _ in live]  # at most one a second (the first at the start)
    times = [t for t, _ in live]
    assert all(b - a >= 0.95 for a, b in zip(times, times[1:]))
    first, last = live[0][1], live[-1][1]
    assert first.result == "pending" and first.data == {"job_id": job["id"], "state": "running"}
    assert "line" in last.transient["output_tail"] and len(last.transient["output_tail"]) <= 3000
    finals = [e for e in rec.events if e[0] == "job" and e[3] != "pending"]
    assert [e[3] for e in finals] == ["ok"]  # one final event, stored by the audit log (the live ones are not)


async def test_retention_deletes_finished_jobs_only(hub_harness, box):
    from datetime import datetime, timedelta, timezone

    from claude_net.builtin import jobs

    async with hub_harness(plugins=[box], jobs={"retention_days": 1}) as h:
        boss = await h.token("boss", admin=True)
        done = (await _job(h, boss, target="box1", command="echo old"))["job"]
        await _ended(h, boss, done["id"])
        running = (await _job(h, boss, target="box2", command="sleep 30"))["job"]
        assert await jobs.prune(h.hub) == 0  # nothing is a day old yet
        later = datetime.now(timezone.utc) + timedelta(days=2)
        assert await jobs.prune(h.hub, now=later) == 1
        status, _ = await h.call("GET", f"/api/jobs/{done['id']}", boss)
        assert status == 404
        status, body = await h.call("GET", f"/api/jobs/{running['id']}", boss)
        assert status == 200 and body["job"]["state"] == "running"


async def test_running_jobs_of_a_dead_life_become_interrupted(hub_harness, box):
    """What a restarted hub finds: a row left `running` by a process that is gone (SQLite: any other
    life; PostgreSQL: its advisory lock is free) is marked interrupted, with its output, and recorded."""
    from claude_net.builtin import jobs

    rec = Recorder()
    async with hub_harness(plugins=[box, rec]) as h:
        await h.hub.db.execute(
            "INSERT INTO jobs (id, owner, target, command, state, started_at, output, output_bytes, timeout,"
            " replica, via, event_id) VALUES ('00000000000000aa', 'agent', 'box1', 'make', 'running',"
            " '2026-01-01T00:00:00.000000Z', 'half of it', 10, 60, 'deadbeef', 'http', '')")
        assert await jobs.sweep(h.hub) == 1
        row = await h.hub.db.fetch_one("SELECT state, output, code, ended_at FROM jobs WHERE id = '00000000000000aa'")
        assert row["state"] == "interrupted" and row["output"] == "half of it" and row["code"] == "interrupted"
        assert row["ended_at"]
        finals = [d for t, r, d in rec.details if t == "job"]
        assert finals and finals[-1]["state"] == "interrupted" and finals[-1]["job_id"] == "00000000000000aa"
        assert await jobs.sweep(h.hub) == 0


class Reaper:
    """A backend's ``reap_exec`` for the test box: remembers the tags it was asked for and ends
    ``alive[tag]`` processes (or fails, for ``fail``)."""

    __name__ = "reaper"

    def __init__(self, alive=None, fail=None):
        self.alive = dict(alive or {})
        self.fail = fail
        self.asked = []

    @hookimpl
    def reap_exec(self, node, tag):
        if node.backend != "testbox":
            return None

        async def run():
            self.asked.append((node.name, tag))
            if self.fail is not None:
                raise self.fail
            return self.alive.pop(tag, 0)

        return run()


async def _dead_life_job(h, job_id: str, target: str, tag: str | None) -> None:
    await h.hub.db.execute(
        "INSERT INTO jobs (id, owner, target, command, state, started_at, output, output_bytes, timeout,"
        " replica, via, event_id, exec_tag) VALUES (:id, 'agent', :target, 'make', 'running',"
        " '2026-01-01T00:00:00.000000Z', '', 0, 60, 'deadbeef', 'http', '', :tag)",
        {"id": job_id, "target": target, "tag": tag})


async def test_the_interrupted_jobs_processes_are_ended_and_that_is_recorded(hub_harness, box):
    """After the sweep, the node's backend is asked (reap_exec, with the tag the job's exec carried) to
    end what is left; the job's error and a job_reap row say how many processes were ended."""
    from claude_net.builtin import jobs

    import claude_net_activity

    tag_a, tag_b = "a1" * 16, "b2" * 16
    reaper, rec = Reaper(alive={tag_a: 2}), Recorder()
    async with hub_harness(plugins=[box, reaper, rec, claude_net_activity]) as h:
        boss = await h.token("boss", admin=True)
        await _dead_life_job(h, "00000000000000b1", "box1", tag_a)
        await _dead_life_job(h, "00000000000000b2", "box2", tag_b)
        await _dead_life_job(h, "00000000000000b3", "box1", None)  # a row from before tags: nothing to ask
        assert await jobs.sweep(h.hub) == 3

        async def reaped():
            rows = [d for t, r, d in rec.details if t == "job_reap"]
            return rows if len(rows) == 2 else None

        rows = {d["job_id"]: d for d in await eventually(reaped, timeout=10)}
        assert sorted(reaper.asked) == [("box1", tag_a), ("box2", tag_b)]
        assert rows["00000000000000b1"]["processes"] == 2 and rows["00000000000000b2"]["processes"] == 0
        _, body = await h.call("GET", "/api/jobs/00000000000000b1", boss)
        assert body["job"]["state"] == "interrupted"
        assert body["job"]["error"] == ("the hub running this job stopped (or was killed) before the job ended; the "
                                        "output is what was captured until then. Its 2 processes still running on "
                                        "box1 were ended after the hub restarted."), body["job"]
        _, body = await h.call("GET", "/api/jobs/00000000000000b2", boss)
        assert "No process of it was left on box2" in body["job"]["error"]
        _, body = await h.call("GET", "/api/jobs/00000000000000b3", boss)
        assert "after the hub restarted" not in body["job"]["error"]
        # what an admin reads in the feed
        _, feed = await h.call("GET", "/api/activity?hours=1&type=job_reap", boss)
        stored = {e["data"]["job_id"]: e for e in feed["events"]}
        assert stored["00000000000000b1"]["detail"] == "job 00000000000000b1 on box1: 2 processes ended after the " \
                                                       "hub restarted"
        assert stored["00000000000000b1"]["from"] is None and stored["00000000000000b1"]["target"] == "box1"
        assert stored["00000000000000b2"]["detail"] == "job 00000000000000b2 on box2: no process of it was left " \
                                                       "after the hub restarted"
        assert all(r == "ok" for t, r, d in rec.details if t == "job_reap")


async def test_a_reap_that_fails_or_cannot_be_done_is_recorded_as_an_error(hub_harness, box):
    from claude_net import Unavailable
    from claude_net.builtin import jobs

    rec = Recorder()
    async with hub_harness(plugins=[box, rec, Reaper(fail=Unavailable("the node is unreachable"))]) as h:
        await _dead_life_job(h, "00000000000000c1", "box1", "c3" * 16)
        await _dead_life_job(h, "00000000000000c2", "nosuchnode", "c4" * 16)
        assert await jobs.sweep(h.hub) == 2

        async def reaped():
            rows = [(r, d) for t, r, d in rec.details if t == "job_reap"]
            return rows if len(rows) == 2 else None

        rows = {d["job_id"]: (r, d) for r, d in await eventually(reaped, timeout=10)}
        assert rows["00000000000000c1"][0] == "error" and rows["00000000000000c1"][1]["processes"] is None
        assert "unreachable" in rows["00000000000000c1"][1]["error"]
        assert rows["00000000000000c2"][0] == "error" and "no node nosuchnode" in rows["00000000000000c2"][1]["error"]
        error = await h.hub.db.fetch_val("SELECT error FROM jobs WHERE id = '00000000000000c1'")
        assert "could not be ended after the hub restarted (the node is unreachable); check with ps" in error
    # a backend without reap_exec: said so, not silently skipped
    rec = Recorder()
    async with hub_harness(plugins=[box, rec]) as h:
        await _dead_life_job(h, "00000000000000c3", "box1", "c5" * 16)
        assert await jobs.sweep(h.hub) == 1
        row = await eventually(lambda: [d for t, r, d in rec.details if t == "job_reap" and r == "error"], timeout=10)
        assert "cannot find the processes of an earlier command" in row[0]["error"]


async def test_a_look_at_another_agents_job_is_recorded_denied(hub_harness, box):
    """404 to the caller (the job stays hidden), but the decision is in the feed: a denied job_view row
    that names the owner (admins read the feed), throttled like other refusals."""
    rec = Recorder()
    async with hub_harness(plugins=[box, rec, Allow("agent", "box1"), AllowOther("other", "box1")]) as h:
        tok, other = await h.token("agent"), await h.token("other")
        job = (await _job(h, tok, target="box1", command="sleep 30"))["job"]
        for path in (f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/output"):
            status, body = await h.call("GET", path, other)
            assert status == 404 and body["code"] == "unknown_job"
        denied = [(e, d) for e, (_t, _r, d) in zip(rec.events, rec.details) if e[0] == "job_view"]
        assert len(denied) == 2 and all(e[3] == "denied" and e[1] == "other" for e, _ in denied), denied
        assert all(d["job_id"] == job["id"] and d["owner"] == "agent" and d["code"] == "unknown_job"
                   for _, d in denied)
        status, _ = await h.call("GET", "/api/jobs/00000000000000ff", other)  # no such job: also recorded
        assert status == 404
        assert [d for t, r, d in rec.details if t == "job_view"][-1] == {"job_id": "00000000000000ff",
                                                                         "code": "unknown_job"}
        for _ in range(40):  # a flood of probes: the first 20 of the window one by one, then quiet
            await h.call("GET", f"/api/jobs/{job['id']}", other)
        assert len([1 for t, r, d in rec.details if t == "job_view"]) == 20
        # the owner's own look is not a refusal
        status, _ = await h.call("GET", f"/api/jobs/{job['id']}", tok)
        assert status == 200 and len([1 for t, r, d in rec.details if t == "job_view"]) == 20


async def test_a_background_exec_under_an_ask_grant_waits_for_the_approval(hub_harness, box):
    """The job exists only once an admin approved it; a pending approval is the usual 202 without a job."""
    import claude_net_approvals
    import claude_net_permissions

    async with hub_harness(plugins=[claude_net_permissions, claude_net_approvals, box], admins=["chasclaude"]) as h:
        chas, alpha = await h.token("chasclaude"), await h.token("alpha")
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box1", "ask": ["exec"]})
        assert status == 200, body
        status, body = await h.call("POST", "/api/exec", alpha, {"target": "box1", "command": "echo hi",
                                                                  "background": True, "approval_wait": 0})
        assert status == 202 and body.get("pending") is True and "job" not in body, body
        approval = body["approval"]["id"]
        _, listing = await h.call("GET", "/api/jobs", alpha)
        assert listing["jobs"] == []

        async def approve_soon():
            await asyncio.sleep(0.5)
            return await h.call("POST", f"/api/approvals/{approval}", chas, {"decision": "approve"})

        approving = asyncio.ensure_future(approve_soon())
        status, body = await h.call("POST", "/api/exec", alpha, {"target": "box1", "command": "echo hi",
                                                                  "background": True, "approval": approval,
                                                                  "approval_wait": 10})
        assert (await approving)[0] == 200
        assert status == 202 and body["job"]["owner"] == "alpha", body
        done = await _ended(h, alpha, body["job"]["id"])
        assert done["state"] == "exited"
