"""The job, fan-out and approval side of the MCP tools (issue 18 "MCP", contract §2-3), through real MCP
client sessions over stdio (``claude-net-mcp``) and the hub's /mcp, against a running hub (SQLite and
PostgreSQL) with the approvals plugin and two real LXD containers.

* a background exec answers at once with a job; claude_net_job_output follows it (waiting for more), its
  status shows the exit code; claude_net_job_cancel ends it and the process is gone from the container
  (``ps`` inside it); another agent's job is invisible and uncancellable;
* ``targets`` (a list, and a pattern) runs on each node with one result per node, a node without a grant
  reported denied without failing the others;
* an exec that needs an admin's approval answers, in words, that nothing ran and how to go on; re-sent
  with the approval id once an admin approved, it runs;
* a long foreground exec sends progress notifications to a client that gave a progress token.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request

import pytest

from claude_net.testing import database_for
from mcp_helpers import RUN, http_session, running_hub, stdio_session

pytestmark = pytest.mark.lxd

IMAGE_ALIAS = "claude-net-busybox"
ROLES = {"admin": True, "jobs-agent": False, "jobs-other": False}


def lxc(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["lxc", *args], check=check, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def box2(box):
    """A second container (no grant for the agent: the denied target of a fan-out)."""
    import os

    name = f"{RUN}-jobs2"
    try:
        lxc("launch", os.environ.get("LXD_IMAGE_ALIAS", IMAGE_ALIAS), name)
        yield name
    finally:
        for _ in range(20):
            with contextlib.suppress(subprocess.TimeoutExpired):
                if lxc("delete", "--force", name, check=False, timeout=60).returncode == 0:
                    break
            time.sleep(3)


@pytest.fixture(scope="module")
def jhub(box, box2, package_db_kind, tmp_path_factory):
    config = ('[plugins]\nallow = ["lxd", "permissions", "activity", "mcp", "approvals"]\n'
              f'[lxd]\ninclude = ["{RUN}-*"]\n')
    with database_for(package_db_kind, tmp_path_factory.mktemp("jobs-hub")) as url:
        with running_hub(config, roles=ROLES, database_url=url) as h:
            h.box, h.box2 = box, box2
            agent, _ = h.token("jobs-agent")
            h.cli("permit", agent, box, "--capabilities", "exec")
            yield h


def session(hub, transport: str, token: str):
    return stdio_session(hub.url, token) if transport == "stdio" else http_session(hub.url, token)


def api(hub, token: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(hub.url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", **({"Content-Type": "application/json"} if data else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def text(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def call(s, name: str, args: dict | None = None, *, error: bool = False, **kwargs):
    result = await s.call_tool(name, args or {}, **kwargs)
    assert result.is_error is error, f"{name}{args}: {text(result)}"
    return result


def processes(container: str) -> str:
    return lxc("exec", container, "--", "ps").stdout


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_background_job_status_output_cancel(jhub, transport):
    box = jhub.box
    _, token = jhub.token("jobs-agent")
    _, other_token = jhub.token("jobs-other")
    async with session(jhub, transport, token) as me, session(jhub, transport, other_token) as other:
        # a job that prints over three seconds: answered while it runs, then followed to its end
        result = await call(me, "claude_net_exec", {"target": box, "background": True,
                                                    "command": "echo first; sleep 3; echo second"})
        job = result.structured_content["job"]
        assert job["state"] == "running" and job["ended_at"] is None and job["target"] == box
        assert f'claude_net_job_output(job="{job["id"]}")' in text(result)
        seen, offset, state = "", 0, "running"
        deadline = time.monotonic() + 30
        while state == "running" and time.monotonic() < deadline:
            result = await call(me, "claude_net_job_output", {"job": job["id"], "offset": offset, "wait": 10})
            out = result.structured_content
            assert out["offset"] == offset and out["next_offset"] == offset + len(out["text"])
            seen += out["text"]
            offset, state = out["next_offset"], out["job"]["state"]
        assert seen.split() == ["first", "second"] and state == "exited"
        assert "this is all of its output" in text(result) and out["more"] is False
        result = await call(me, "claude_net_job_status", {"job": job["id"]})
        status = result.structured_content["job"]
        assert status["state"] == "exited" and status["exit_code"] == 0 and "second" in status["output_tail"]
        assert "exit code 0" in text(result)
        listing = await call(me, "claude_net_job_status")
        assert job["id"] in [j["id"] for j in listing.structured_content["jobs"]]

        # a long job: its first line arrives while it runs; cancel ends its process in the container
        marker = 3000 + (1 if transport == "stdio" else 2)
        result = await call(me, "claude_net_exec", {"target": box, "background": True,
                                                    "command": f"echo begin; sleep {marker}"})
        long_job = result.structured_content["job"]["id"]
        result = await call(me, "claude_net_job_output", {"job": long_job, "wait": 10})
        assert result.structured_content["text"].strip() == "begin" and result.structured_content["more"] is True
        assert "still running" in text(result)
        assert f"sleep {marker}" in processes(box)

        # another agent neither sees nor cancels it
        result = await call(other, "claude_net_job_status", {"job": long_job}, error=True)
        assert "no job" in text(result) and "lists your jobs" in text(result)
        await call(other, "claude_net_job_cancel", {"job": long_job}, error=True)
        assert f"sleep {marker}" in processes(box)

        result = await call(me, "claude_net_job_cancel", {"job": long_job})
        assert result.structured_content["job"]["state"] == "cancelled" and "Cancelled" in text(result)
        deadline = time.monotonic() + 15
        while f"sleep {marker}" in processes(box):
            assert time.monotonic() < deadline, processes(box)
            time.sleep(0.2)
        result = await call(me, "claude_net_job_cancel", {"job": long_job}, error=True)
        assert "no longer running" in text(result) and "cancelled" in text(result)

    # the cancel is in the activity feed, with the job's id
    _, admin_token = jhub.token("admin", admin=True)
    status, feed = api(jhub, admin_token, "GET", "/api/activity?type=job_cancel&limit=20")
    assert status == 200 and any(e.get("data", {}).get("job_id") == long_job for e in feed["events"]), feed


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_fanout_list_and_pattern_with_a_denied_target(jhub, transport):
    box, box2 = jhub.box, jhub.box2
    _, token = jhub.token("jobs-agent")
    async with session(jhub, transport, token) as me:
        result = await call(me, "claude_net_exec", {"targets": [box, box2], "command": "hostname"})
        out = result.structured_content
        assert [r["target"] for r in out["results"]] == [box, box2]
        assert out["results"][0]["ok"] is True and out["results"][0]["stdout"].strip() == box
        assert out["results"][1]["ok"] is False and out["results"][1]["code"] == "denied"
        assert out["summary"] == {"ok": 1, "failed": 0, "denied": 1}
        body = text(result)
        assert "1 ok, 0 failed, 1 denied" in body and f"== {box2}: not run (denied)" in body
        assert f"claude-net permit {jhub.names['jobs-agent']} NODE" in body

        # a pattern over node names, in the background: one job per permitted node
        result = await call(me, "claude_net_exec", {"targets": f"{RUN}-*", "command": "echo fanned",
                                                    "background": True})
        results = {r["target"]: r for r in result.structured_content["results"]}
        assert set(results) >= {box, box2} and results[box]["ok"] and "job" in results[box]
        assert results[box2]["code"] == "denied"
        job_id = results[box]["job"]["id"]
        result = await call(me, "claude_net_job_output", {"job": job_id, "wait": 10})
        assert "fanned" in result.structured_content["text"]

        # neither or both of target/targets: one sentence, nothing run
        result = await call(me, "claude_net_exec", {"command": "true"}, error=True)
        assert "give either target" in text(result)
        result = await call(me, "claude_net_exec", {"command": "true", "target": box, "targets": [box]}, error=True)
        assert "not both" in text(result)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_exec_that_needs_approval_says_what_happens_next(jhub, transport):
    box = jhub.box
    agent, token = jhub.token("jobs-agent")
    _, admin_token = jhub.token("admin", admin=True)
    jhub.cli("permit", agent, box, "--capabilities", "exec", "--ask", "exec")
    try:
        async with session(jhub, transport, token) as me:
            command = f"echo approved-{transport}"
            result = await call(me, "claude_net_exec", {"target": box, "command": command, "approval_wait": 0},
                                error=True)
            said = text(result)
            status, listing = api(jhub, admin_token, "GET", "/api/approvals?state=pending")
            pending = [a for a in listing["approvals"] if a["requester"] == agent and a["target"] == box]
            assert status == 200 and len(pending) == 1, listing
            approval_id = pending[0]["id"]
            assert said.startswith("Not done yet: this needs an admin's approval first") and "Nothing has run" in said
            assert f're-send this exact call with approval="{approval_id}"' in said and "approval_wait" in said

            status, decided = api(jhub, admin_token, "POST", f"/api/approvals/{approval_id}", {"decision": "approve"})
            assert status == 200, decided
            result = await call(me, "claude_net_exec", {"target": box, "command": command,
                                                        "approval": approval_id})
            assert result.structured_content["stdout"].strip() == f"approved-{transport}"

            # used once: the same id again is refused in words that say how to go on
            result = await call(me, "claude_net_exec", {"target": box, "command": command,
                                                        "approval": approval_id, "approval_wait": 0}, error=True)
            assert "without `approval`" in text(result)
    finally:
        jhub.cli("permit", agent, box, "--capabilities", "exec")


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_long_foreground_exec_sends_progress(jhub, transport):
    box = jhub.box
    _, token = jhub.token("jobs-agent")
    ticks: list[tuple[float, float | None, str | None, float]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        ticks.append((value, total, message, time.monotonic()))

    async with session(jhub, transport, token) as me:
        started = time.monotonic()
        result = await call(me, "claude_net_exec", {"target": box, "command": "sleep 5; echo fin", "timeout": 30},
                            progress_callback=progress)
        ended = time.monotonic()
        assert result.structured_content["stdout"].strip() == "fin"
        # one every 2 s while it ran, each received before the answer, counting up, against the timeout
        assert len(ticks) >= 2, ticks
        assert all(started < t[3] < ended for t in ticks)
        assert [t[0] for t in ticks] == sorted(t[0] for t in ticks) and ticks[0][0] >= 1.5
        assert all(t[1] == 30 and "still running" in (t[2] or "") for t in ticks)

        # without a progress token: no notifications, the same answer
        ticks.clear()
        result = await call(me, "claude_net_exec", {"target": box, "command": "sleep 3; echo fin"})
        assert result.structured_content["stdout"].strip() == "fin" and ticks == []
