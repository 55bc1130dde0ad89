"""Background jobs on the SSH node (a real private sshd): live output, cancel ends the remote process
group, timeout."""

from __future__ import annotations

import asyncio
import json
import time

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
    async with ssh_hub() as s:
        job = await start_job(s, "sleep 46.25 & sleep 46.5; wait")

        async def running():
            return (await s.ok("pgrep -f 'sleep 46[.]5' || true"))["stdout"]

        await eventually(running, timeout=10)
        status, body = await s.h.call("POST", f"/api/jobs/{job['id']}/cancel", s.admin)
        assert status == 200 and body["job"]["state"] == "cancelled", body
        check = await s.ok("pgrep -f 'sleep 46[.][25]5?' || echo none")
        assert check["stdout"] == "none\n"
        cancels = s.recorder.of_type("job_cancel", "ok")
        assert cancels and cancels[-1].data["job_id"] == job["id"]


async def test_timeout_gives_timed_out_and_keeps_the_output(ssh_hub):
    async with ssh_hub() as s:
        job = await start_job(s, "echo before; sleep 47.25", timeout=1)
        done = await wait_ended(s, job["id"])
        assert done["state"] == "timed_out"
        _, body = await s.h.call("GET", f"/api/jobs/{job['id']}", s.admin)
        assert body["job"]["output"] == "before\n"
        assert (await s.ok("pgrep -f 'sleep 47[.]25' || echo none"))["stdout"] == "none\n"
