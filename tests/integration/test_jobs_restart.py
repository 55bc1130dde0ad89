"""A hub killed with SIGKILL while a job runs: after the restart the job is ``interrupted``, with the
output captured until then, and the feed says so (a real ``claude-net serve`` and a real sshd)."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest

from claude_net.testing import HubProcess, require_component
from claude_net_ssh.testserver import PrivateSshd, sshd_available


def call(hub, method, path, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(hub.url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def sshd(tmp_path):
    ok, why = sshd_available()
    require_component("OpenSSH sshd", ok, why)
    server = PrivateSshd(tmp_path / "sshd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("condition not met")


def test_kill_9_mid_job_gives_interrupted_after_restart(database_url, tmp_path, sshd):
    node = sshd.node_config()
    config = ('[plugins]\nallow = ["ssh", "activity"]\n'
              '[ssh.nodes.ser-8]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in node.items()))
    (tmp_path / "hub").mkdir()
    hub = HubProcess(config, database_url=database_url, workdir=str(tmp_path / "hub"))
    hub.start()
    try:
        admin = hub.token("boss", admin=True)
        status, body = call(hub, "POST", "/api/exec", admin, {"target": "ser-8", "background": True,
                                                              "command": "echo one; sleep 0.3; echo two; sleep 48.75"})
        assert status == 202, body
        job_id = body["job"]["id"]

        def captured():
            _, got = call(hub, "GET", f"/api/jobs/{job_id}", admin)
            return got["job"]["output"] == "one\ntwo\n" and got

        wait_for(captured)
        time.sleep(0.8)  # the output's batch is written to the database (flush_seconds 0.5)
        hub.proc.send_signal(signal.SIGKILL)
        hub.proc.wait(10)
        hub.log.close()
        hub.start()

        def ended():  # at once on SQLite; on PostgreSQL once the dead process's lock is gone (a few s)
            _, got = call(hub, "GET", f"/api/jobs/{job_id}", admin)
            return got["job"]["state"] != "running" and got["job"]

        job = wait_for(ended, timeout=20)
        assert job["state"] == "interrupted", job
        assert job["output"] == "one\ntwo\n" and job["ended_at"] and job["code"] == "interrupted"
        _, feed = call(hub, "GET", "/api/activity?hours=1&type=job", admin)
        finals = [e for e in feed["events"] if e["data"].get("job_id") == job_id]
        assert finals and finals[0]["data"]["state"] == "interrupted" and finals[0]["result"] == "error"
        # Not reattached: the command itself may outlive the hub that started it (docs/jobs.md,
        # "When the hub restarts"); end it here so nothing of the test stays behind
        call(hub, "POST", "/api/exec", admin, {"target": "ser-8", "command": "pkill -f 'sleep 48[.]75'; true"})
    finally:
        hub.stop()


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
