"""A hub killed with SIGKILL while a job runs: after the restart the job is ``interrupted``, with the
output captured until then, its processes in the node are ended, and the feed says so (a real
``claude-net serve``, a real sshd and a real LXD container)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from claude_net.testing import HubProcess, require_component

from tests.replicas import call, wait_for
from tests.plugins.lxd_backend.conftest import RUN_ID, Containers, _lxd_state, lxc

#: seconds after a restart by which an interrupted job's processes are gone: the sweep (at once on
#: SQLite, within a few seconds on PostgreSQL) and then one kill script per node
REAP_BOUND = 30.0


@pytest.fixture
def container():
    ok, why = _lxd_state()
    require_component("LXD", ok, why)
    boxes = Containers(f"{RUN_ID}-restart")
    try:
        yield boxes.launch("c")
    finally:
        boxes.delete_all()


def in_container(name: str) -> str:
    return lxc("exec", name, "--", "ps", "-o", "pid,args").stdout


def on_ssh_host(pattern: str) -> str:
    """The private sshd's sessions run on this machine: their processes are ours to see."""
    return subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout


@pytest.mark.lxd
def test_kill_9_mid_job_gives_interrupted_after_restart_and_its_processes_are_ended(database_url, tmp_path,
                                                                                    sshd, container):
    """Jobs on the SSH node and in an LXD container; the hub is killed with SIGKILL, so nothing ends
    their commands, which run on. The restarted hub marks both jobs interrupted (with the output until
    then), then ends what they left running in each node (their tag), says so on each job and in the
    feed (a job_reap row), within REAP_BOUND seconds of the restart."""
    node = sshd.node_config()
    config = ('[plugins]\nallow = ["ssh", "lxd", "activity"]\n'
              f'[lxd]\ninclude = [{json.dumps(container)}]\nshell = "/bin/sh"\n'
              '[ssh.nodes.ser-8]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in node.items()))
    (tmp_path / "hub").mkdir()
    hub = HubProcess(config, database_url=database_url, workdir=str(tmp_path / "hub"))
    hub.start()
    try:
        admin = hub.token("boss", admin=True)
        job_ids = {}
        for target, pause in (("ser-8", "48.75"), (container, "3371")):
            status, body = call(hub, "POST", "/api/exec", admin, {
                "target": target, "background": True,
                "command": f"echo one; sleep 0.3; echo two; sleep {pause} & sleep {pause}; wait"})
            assert status == 202, body
            job_ids[target] = body["job"]["id"]

        def captured(job_id):
            _, got = call(hub, "GET", f"/api/jobs/{job_id}", admin)
            return got["job"]["output"] == "one\ntwo\n" and got

        for job_id in job_ids.values():
            wait_for(lambda: captured(job_id))
        time.sleep(0.8)  # the output's batch is written to the database (flush_seconds 0.5)
        hub.proc.send_signal(signal.SIGKILL)
        hub.proc.wait(10)
        hub.log.close()
        # nothing ended them: the orphans this is about
        assert "sleep 48.75" in on_ssh_host("^sleep 48[.]75") and "sleep 3371" in in_container(container)
        hub.start()
        restarted = time.monotonic()

        def ended(job_id):  # at once on SQLite; on PostgreSQL once the dead process's lock is gone (a few s)
            _, got = call(hub, "GET", f"/api/jobs/{job_id}", admin)
            return got["job"]["state"] != "running" and got["job"]

        for target, job_id in job_ids.items():
            job = wait_for(lambda: ended(job_id), timeout=20)
            assert job["state"] == "interrupted", job
            assert job["output"] == "one\ntwo\n" and job["ended_at"] and job["code"] == "interrupted"
        wait_for(lambda: "sleep 48.75" not in on_ssh_host("^sleep 48[.]75")
                 and "sleep 3371" not in in_container(container), timeout=REAP_BOUND)
        assert time.monotonic() - restarted < REAP_BOUND

        def reaped():
            _, feed = call(hub, "GET", "/api/activity?hours=1&type=job_reap", admin)
            rows = {e["data"]["job_id"]: e for e in feed["events"] if e["data"].get("job_id") in job_ids.values()}
            return len(rows) == 2 and rows

        rows = wait_for(reaped, timeout=10)
        for target, job_id in job_ids.items():
            row = rows[job_id]
            # the shell and both sleeps at least
            assert row["result"] == "ok" and row["target"] == target and row["data"]["processes"] >= 3, row
            assert row["detail"] == (f"job {job_id} on {target}: {row['data']['processes']} processes ended "
                                     "after the hub restarted")
            _, got = call(hub, "GET", f"/api/jobs/{job_id}", admin)
            assert got["job"]["error"].endswith(f"Its {row['data']['processes']} processes still running on "
                                                f"{target} were ended after the hub restarted."), got["job"]
        _, feed = call(hub, "GET", "/api/activity?hours=1&type=job", admin)
        finals = [e for e in feed["events"] if e["data"].get("job_id") in job_ids.values()]
        assert len(finals) == 2 and all(e["data"]["state"] == "interrupted" and e["result"] == "error"
                                        for e in finals), finals
    finally:
        hub.stop()
        # whatever happened above, nothing of this test stays behind
        subprocess.run(["pkill", "-f", "^sleep 48[.]75"], capture_output=True)


@pytest.mark.db("postgresql")
def test_a_follower_and_a_cancel_on_another_replica(database_url, tmp_path, sshd):
    """PostgreSQL, two replicas: the job runs on A; B follows its output live (the table, woken by A's
    NOTIFY after each batch) and cancels it (passed to A through the row and the bus)."""
    import http.client

    node = sshd.node_config()
    config = ('[plugins]\nallow = ["ssh", "activity"]\n'
              '[ssh.nodes.ser-8]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in node.items()))
    hubs = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            hubs.append(HubProcess(config, database_url=database_url, workdir=str(tmp_path / name)).start())
        a, b = hubs
        admin = a.token("boss", admin=True)
        status, body = call(a, "POST", "/api/exec", admin, {"target": "ser-8", "background": True,
                                                            "command": "for i in 1 2 3; do echo tick $i; sleep 0.7; "
                                                                       "done; sleep 49.25"})
        assert status == 202, body
        job_id = body["job"]["id"]
        conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=20)
        conn.request("GET", f"/api/jobs/{job_id}/output?follow=1", headers={"Authorization": f"Bearer {admin}"})
        response = conn.getresponse()
        assert response.status == 200
        started, seen, text = time.monotonic(), {}, ""
        while len(seen) < 3:
            line = response.readline().decode()
            assert line, "the stream ended early"
            if line.startswith("data: ") and '"text"' in line:
                text += json.loads(line[6:])["text"]
                for done in text.splitlines():
                    seen.setdefault(done, time.monotonic() - started)
        assert list(seen)[:3] == ["tick 1", "tick 2", "tick 3"]
        assert seen["tick 3"] - seen["tick 1"] > 0.8, seen  # live, not at the end
        status, body = call(b, "POST", f"/api/jobs/{job_id}/cancel", admin)
        assert status == 200 and body["job"]["state"] == "cancelled" and body["job"]["ended_by"] == "boss", body
        rest = response.read().decode()  # the stream ends with the job
        assert "event: end" in rest and '"cancelled"' in rest
        status, body = call(a, "POST", "/api/exec", admin,
                            {"target": "ser-8", "command": "pgrep -f 'sleep 49[.]25' || echo none"})
        assert body["stdout"] == "none\n", body
    finally:
        for hub in hubs:
            hub.stop()
