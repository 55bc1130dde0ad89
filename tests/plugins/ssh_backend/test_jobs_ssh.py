"""Background jobs on the SSH node (a real private sshd): live output, cancel ends the remote process
group, timeout."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time

import pytest

from claude_net.testing import eventually


async def start_job(s, command, **extra):
    status, body = await s.exec(command, background=True, **extra)
    assert status == 202, body
    return body["job"]


async def wait_ended(s, job_id, timeout=15.0):
    async def check():
        _, body = await s.h.call("GET", f"/api/jobs/{job_id}", s.admin)
        return body["job"] if body["job"]["state"] != "running" else None

    return await eventually(check, timeout=timeout, interval=0.05)


async def test_lines_stream_live_and_the_job_ends_exited(ssh_hub):
    async with ssh_hub() as s:
        job = await start_job(s, "for i in 0 1 2; do echo line $i; sleep 0.5; done; echo err >&2; exit 4")
        started = time.monotonic()
        arrivals, end = {}, None
        async with s.h.client.request(f"/api/jobs/{job['id']}/output?follow=1",
                                      headers={"Authorization": f"Bearer {s.admin}"}) as conn:
            await conn.send_complete()
            buffer = ""
            while end is None:
                buffer += (await asyncio.wait_for(conn.receive(), 10)).decode()
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    if block.startswith("event: output"):
                        for line in json.loads(block.split("data: ", 1)[1])["text"].splitlines():
                            arrivals[line] = time.monotonic() - started
                    elif block.startswith("event: end"):
                        end = json.loads(block.split("data: ", 1)[1])
        assert list(arrivals)[:3] == ["line 0", "line 1", "line 2"] and "err" in arrivals
        gap = arrivals["line 2"] - arrivals["line 0"]
        assert 0.7 < gap < 1.8, arrivals  # written 1 s apart; each delivered as it came
        assert end["state"] == "exited" and end["exit_code"] == 4


async def test_cancel_ends_the_remote_process_group(ssh_hub):
    n = unique_seconds()  # the other database's run of this test may run at the same time
    async with ssh_hub() as s:
        job = await start_job(s, f"sleep {n}.25 & sleep {n}.5; wait")

        async def running():
            return (await s.ok(f"pgrep -f 'sleep {n}[.]5' || true"))["stdout"]

        await eventually(running, timeout=10)
        status, body = await s.h.call("POST", f"/api/jobs/{job['id']}/cancel", s.admin)
        assert status == 200 and body["job"]["state"] == "cancelled", body
        check = await s.ok(f"pgrep -f 'sleep {n}[.][25]5?' || echo none")
        assert check["stdout"] == "none\n"
        cancels = s.recorder.of_type("job_cancel", "ok")
        assert cancels and cancels[-1].data["job_id"] == job["id"]


async def test_timeout_gives_timed_out_and_keeps_the_output(ssh_hub):
    n = unique_seconds()
    async with ssh_hub() as s:
        job = await start_job(s, f"echo before; sleep {n}.25", timeout=1)
        done = await wait_ended(s, job["id"])
        assert done["state"] == "timed_out"
        _, body = await s.h.call("GET", f"/api/jobs/{job['id']}", s.admin)
        assert body["job"]["output"] == "before\n"
        assert (await s.ok(f"pgrep -f 'sleep {n}[.]25' || echo none"))["stdout"] == "none\n"


@pytest.mark.parametrize("shell", ["", "/bin/sh"])
async def test_reap_ends_the_processes_carrying_the_tag_and_nothing_else(ssh_hub, sshd, shell):
    """``reap_exec`` (what a restarted hub calls for a job its dead life left running): the job's login
    shell, its children, and a child that left the session (setsid) all go; another job's stay; a
    tag that matches nothing ends nothing and answers 0. With the login shell and with [ssh] shell."""
    from claude_net import BadRequest
    from claude_net.builtin import jobs

    n = unique_seconds()  # other workers run this test at the same time on the same machine
    async with ssh_hub(nodes={"ser-8": sshd.node_config(shell=shell)}) as s:
        # the caller's own CLAUDE_NET_EXEC does not replace the job's tag
        job = await start_job(s, f"setsid sleep {n}.1 & sleep {n}.2 & sleep {n}.3; wait",
                              env={"CLAUDE_NET_EXEC": "0" * 32})
        other = await start_job(s, f"sleep {n}.4")

        async def count(pattern):
            out = (await s.ok(f"pgrep -f '^{pattern}' | wc -l"))["stdout"]
            return int(out.strip())

        await eventually(lambda: _equals(count(f"sleep {n}[.][1-4]"), 4), timeout=10)
        node = await s.hub.nodes.get("ser-8")
        assert await s.hub.pm.hook.reap_exec(hub=s.hub, node=node, tag="0" * 32) == 0
        assert await s.hub.pm.hook.reap_exec(hub=s.hub, node=node, tag="f" * 32) == 0
        assert await count(f"sleep {n}[.][1-4]") == 4
        with pytest.raises(BadRequest):  # never reaches the node
            await s.hub.pm.hook.reap_exec(hub=s.hub, node=node, tag="x' ; reboot")
        tag = jobs.state_of(s.hub).jobs[job["id"]].tag
        ended = await s.hub.pm.hook.reap_exec(hub=s.hub, node=node, tag=tag)
        assert ended >= 4, ended  # the login shell and the three sleeps (and sh -c with [ssh] shell)
        assert await count(f"sleep {n}[.][1-3]") == 0 and await count(f"sleep {n}[.]4") == 1
        done = await wait_ended(s, job["id"])  # its session ended with its shell
        assert done["state"] in ("exited", "failed"), done
        status, body = await s.h.call("POST", f"/api/jobs/{other['id']}/cancel", s.admin)
        assert status == 200 and body["job"]["state"] == "cancelled"


async def _equals(awaitable, wanted):
    return await awaitable == wanted


def unique_seconds() -> int:
    """A sleep length no other test (nor another worker's copy of this one) uses: pgrep tells them apart."""
    return 400000 + secrets.randbelow(500000)


async def test_cancel_and_a_stopping_hub_also_end_what_left_the_session(ssh_hub):
    """The process group of the job's session does not hold a child that called setsid; the job's tag
    does: a cancel, and the hub's own stop, end it too."""
    n = unique_seconds()
    async with ssh_hub() as s:
        job = await start_job(s, f"setsid sleep {n}.1 & sleep {n}.2; wait")

        async def running(pattern):
            return int((await s.ok(f"pgrep -f '^{pattern}' | wc -l"))["stdout"].strip())

        await eventually(lambda: _equals(running(f"sleep {n}[.][12]"), 2), timeout=10)
        status, body = await s.h.call("POST", f"/api/jobs/{job['id']}/cancel", s.admin)
        assert status == 200 and body["job"]["state"] == "cancelled", body
        assert await running(f"sleep {n}[.][12]") == 0
        await start_job(s, f"setsid sleep {n}.3 & sleep {n}.4; wait")
        await eventually(lambda: _equals(running(f"sleep {n}[.][34]"), 2), timeout=10)
        await s.hub.stop()  # what SIGTERM does
    # the private sshd runs on this machine: its sessions' processes are ours to see
    left = subprocess.run(["pgrep", "-f", f"^sleep {n}[.][34]"], capture_output=True, text=True).stdout
    assert left == "", left
