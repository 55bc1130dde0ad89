"""Background jobs on real LXD containers: live output to a follower, cancel that really ends the
processes (checked with ``ps`` inside the container), timeout, output cap."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import claude_net_lxd
from claude_net.testing import eventually

from .conftest import lxc

pytestmark = pytest.mark.lxd


@pytest.fixture(scope="module")
def box(containers):
    return containers.launch("jobs")


def jobs_hub(hub_harness, run_id, **overrides):
    return hub_harness(plugins=[claude_net_lxd], lxd={"include": [f"{run_id}-*"], "shell": "/bin/sh"}, **overrides)


def ps(name: str) -> str:
    return lxc("exec", name, "--", "ps", "-o", "pid,args").stdout


async def start_job(h, token, target, command, **extra):
    status, body = await h.call("POST", "/api/exec", token,
                                {"target": target, "command": command, "background": True, **extra})
    assert status == 202, body
    return body["job"]


async def wait_ended(h, token, job_id, timeout=30.0):
    async def check():
        _, body = await h.call("GET", f"/api/jobs/{job_id}", token)
        return body["job"] if body["job"]["state"] != "running" else None

    return await eventually(check, timeout=timeout, interval=0.05)


async def test_each_line_reaches_a_follower_while_the_job_runs(hub_harness, run_id, box):
    """A job printing a line a second: each line is at the follower within a second of the next
    second's tick (the bound: the 0.1 s tail of the recorded output plus the hub's own work)."""
    async with jobs_hub(hub_harness, run_id) as h:
        boss = await h.token("boss", admin=True)
        script = "for i in 0 1 2; do echo line $i; sleep 1; done"
        started = time.monotonic()
        job = await start_job(h, boss, box, script)
        arrivals: dict[str, float] = {}
        end = None
        async with h.client.request(f"/api/jobs/{job['id']}/output?follow=1",
                                    headers={"Authorization": f"Bearer {boss}"}) as conn:
            await conn.send_complete()
            buffer = ""
            while end is None:
                chunk = await asyncio.wait_for(conn.receive(), 10)
                buffer += chunk.decode()
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    if block.startswith("event: output"):
                        text = json.loads(block.split("data: ", 1)[1])["text"]
                        for line in text.splitlines():
                            arrivals[line] = time.monotonic() - started
                    elif block.startswith("event: end"):
                        end = json.loads(block.split("data: ", 1)[1])
        assert list(arrivals) == ["line 0", "line 1", "line 2"]
        assert arrivals["line 0"] < 3.0, arrivals  # the job's start-up, under a loaded CI machine
        for i in (1, 2):
            # line i is written i seconds after line 0; it reaches the follower within 0.8 s of that
            # (0.1 s tail of LXD's recorded output, the hub's own work, and the machine's load)
            gap = arrivals[f"line {i}"] - arrivals["line 0"]
            assert i - 0.3 < gap < i + 0.8, arrivals
        assert end["state"] == "exited" and end["exit_code"] == 0


async def test_cancel_ends_the_process_tree_in_the_container(hub_harness, run_id, box):
    async with jobs_hub(hub_harness, run_id) as h:
        boss = await h.token("boss", admin=True)
        job = await start_job(h, boss, box, "sleep 3331 & sleep 3332; wait")
        await eventually(lambda: "sleep 3331" in ps(box) and "sleep 3332" in ps(box), timeout=10)
        status, body = await h.call("POST", f"/api/jobs/{job['id']}/cancel", boss)
        assert status == 200, body
        assert body["job"]["state"] == "cancelled" and body["job"]["ended_by"] == "boss"
        listing = ps(box)
        assert "sleep 3331" not in listing and "sleep 3332" not in listing, listing
        _, feed = await h.call("GET", f"/api/jobs?state=cancelled", boss)
        assert job["id"] in [j["id"] for j in feed["jobs"]]


async def test_a_job_that_outlives_its_timeout_is_timed_out(hub_harness, run_id, box):
    async with jobs_hub(hub_harness, run_id) as h:
        boss = await h.token("boss", admin=True)
        job = await start_job(h, boss, box, "echo before; sleep 3341", timeout=1)
        done = await wait_ended(h, boss, job["id"])
        assert done["state"] == "timed_out"
        _, body = await h.call("GET", f"/api/jobs/{job['id']}", boss)
        assert body["job"]["output"] == "before\n"
        assert "sleep 3341" not in ps(box)


async def test_output_cap_keeps_the_start_and_says_truncated(hub_harness, run_id, box):
    async with jobs_hub(hub_harness, run_id, jobs={"max_output": 1000}) as h:
        boss = await h.token("boss", admin=True)
        job = await start_job(h, boss, box, "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done")
        done = await wait_ended(h, boss, job["id"])
        assert done["state"] == "exited" and done["truncated"] is True and done["output_bytes"] == 1000
        _, body = await h.call("GET", f"/api/jobs/{job['id']}", boss)
        assert body["job"]["output"].startswith("line-0\nline-1\n")
        assert "[claude-net: output truncated at 1000 bytes" in body["job"]["output"]


async def test_a_hub_that_stops_ends_its_jobs_as_interrupted(hub_harness, run_id, box):
    from claude_net import hookimpl

    class Finals:
        __name__ = "finals"

        def __init__(self):
            self.events = []

        @hookimpl
        def on_event(self, event):
            if event.type == "job" and event.result != "pending":
                self.events.append(event)

    finals = Finals()
    async with hub_harness(plugins=[claude_net_lxd, finals], lxd={"include": [f"{run_id}-*"], "shell": "/bin/sh"}) as h:
        boss = await h.token("boss", admin=True)
        job = await start_job(h, boss, box, "echo up; sleep 3351")
        await eventually(lambda: "sleep 3351" in ps(box), timeout=10)
        await h.hub.stop()  # what SIGTERM does; the harness's own stop then finds it stopped
    assert [e.data["job_id"] for e in finals.events] == [job["id"]]
    assert finals.events[0].data["state"] == "interrupted" and finals.events[0].transient["output_tail"] == "up\n"
    assert "sleep 3351" not in ps(box)


@pytest.mark.parametrize("guard", ["hub", "container"])
async def test_reap_ends_the_processes_carrying_the_tag_and_nothing_else(hub_harness, run_id, box, guard):
    """``reap_exec`` (what a restarted hub calls for a job its dead life left running): every process of
    the job's exec goes, another job's stay; a tag that matches nothing ends nothing and answers 0.
    With either output guard (the in-container wrapper hands the tag to the command only)."""
    from claude_net import BadRequest
    from claude_net.builtin import jobs

    async with hub_harness(plugins=[claude_net_lxd], lxd={"include": [f"{run_id}-*"], "shell": "/bin/sh",
                                                          "output_guard": guard}) as h:
        boss = await h.token("boss", admin=True)
        # the caller's own CLAUDE_NET_EXEC does not replace the job's tag
        job = await start_job(h, boss, box, "sleep 3361 & sleep 3362; wait", env={"CLAUDE_NET_EXEC": "0" * 32})
        other = await start_job(h, boss, box, "sleep 3363")
        await eventually(lambda: all(f"sleep 336{i}" in ps(box) for i in (1, 2, 3)), timeout=10)
        node = await h.hub.nodes.get(box)
        assert await h.hub.pm.hook.reap_exec(hub=h.hub, node=node, tag="0" * 32) == 0
        assert await h.hub.pm.hook.reap_exec(hub=h.hub, node=node, tag="f" * 32) == 0
        assert all(f"sleep 336{i}" in ps(box) for i in (1, 2, 3))
        with pytest.raises(BadRequest):  # never reaches the container
            await h.hub.pm.hook.reap_exec(hub=h.hub, node=node, tag="$(reboot)")
        tag = jobs.state_of(h.hub).jobs[job["id"]].tag
        ended = await h.hub.pm.hook.reap_exec(hub=h.hub, node=node, tag=tag)
        assert ended >= 3, ended  # its shell and both sleeps
        listing = ps(box)
        assert "sleep 3361" not in listing and "sleep 3362" not in listing and "sleep 3363" in listing, listing
        done = await wait_ended(h, boss, job["id"])
        assert done["state"] == "exited" and done["exit_code"] == 137  # killed, as the job sees it
        status, body = await h.call("POST", f"/api/jobs/{other['id']}/cancel", boss)
        assert status == 200 and body["job"]["state"] == "cancelled"


async def test_reap_on_a_stopped_container_ends_nothing(hub_harness, run_id, fresh_container):
    name = fresh_container("reapstop")
    lxc("stop", "--force", name)
    async with jobs_hub(hub_harness, run_id) as h:
        node = await h.hub.nodes.get(name)
        assert await h.hub.pm.hook.reap_exec(hub=h.hub, node=node, tag="ab" * 16) == 0
