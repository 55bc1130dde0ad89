"""Approvals in real `claude-net serve` processes: a wait on replica B released by a decision on
replica A (PostgreSQL), and SIGTERM ending a wait at once with the 202 answer."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from claude_net.testing import HubProcess
from tests.plugins.lxd_backend.conftest import fresh_container, lxc, lxd_available, run_id  # noqa: F401 (fixtures)

pytestmark = pytest.mark.lxd


def config(run_id: str) -> str:
    return ('[plugins]\nallow = ["permissions", "activity", "approvals", "lxd"]\n'
            f'[lxd]\ninclude = ["{run_id}-*"]\nshell = "/bin/sh"\n')


def call(hub, method, path, token, body=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(hub.url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def pending(hub, token, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = call(hub, "GET", "/api/approvals?state=pending", token)
        assert status == 200, body
        if body["approvals"]:
            return body["approvals"]
        time.sleep(0.05)
    raise AssertionError("no pending approval appeared")


@pytest.mark.postgres
@pytest.mark.db("postgresql")
def test_exec_waiting_on_replica_b_runs_when_the_admin_approves_on_replica_a(database_url, tmp_path, run_id,
                                                                             fresh_container):
    name = fresh_container("repl")
    for i in range(2):
        (tmp_path / f"r{i}").mkdir()
    hubs = [HubProcess(config(run_id), database_url=database_url, workdir=str(tmp_path / f"r{i}"))
            for i in range(2)]
    try:
        a = hubs[0].start()
        b = hubs[1].start()
        chas, alpha = a.token("chasclaude", admin=True), a.token("alpha")
        assert call(a, "POST", "/api/permit", chas, {"source": "alpha", "target": name, "ask": ["exec"]})[0] == 200
        result = {}

        def run():
            result["answer"] = call(b, "POST", "/api/exec", alpha, {"target": name, "command": "echo from-b",
                                                                    "approval_wait": 60}, timeout=90)
            result["done"] = time.monotonic()

        waiter = threading.Thread(target=run)
        waiter.start()
        approval = pending(a, chas)[0]
        time.sleep(0.5)
        assert waiter.is_alive()
        decided = time.monotonic()
        status, body = call(a, "POST", f"/api/approvals/{approval['id']}", chas, {"decision": "approve"})
        assert status == 200, body
        waiter.join(60)
        status, body = result["answer"]
        assert status == 200 and body["stdout"] == "from-b\n", body
        # released by the decision on A (NOTIFY, or at worst the 2 s re-check), not by the 60 s wait
        assert result["done"] - decided < 10
    finally:
        for hub in hubs:
            hub.stop()


def test_sigterm_ends_a_waiting_exec_at_once_with_the_pending_answer(database_url, tmp_path, run_id, fresh_container):
    name = fresh_container("term")
    hub = HubProcess(config(run_id), database_url=database_url, workdir=str(tmp_path))
    try:
        hub.start()
        chas, alpha = hub.token("chasclaude", admin=True), hub.token("alpha")
        assert call(hub, "POST", "/api/permit", chas, {"source": "alpha", "target": name, "ask": ["exec"]})[0] == 200
        result = {}

        def run():
            result["answer"] = call(hub, "POST", "/api/exec", alpha, {"target": name, "command": "touch /root/t",
                                                                      "approval_wait": 300}, timeout=90)
            result["done"] = time.monotonic()

        waiter = threading.Thread(target=run)
        waiter.start()
        approval = pending(hub, chas)[0]
        time.sleep(0.3)
        sent = time.monotonic()
        hub.proc.send_signal(signal.SIGTERM)
        waiter.join(30)
        status, body = result["answer"]
        assert result["done"] - sent < 3, result["done"] - sent  # at once, not at the 300 s wait
        assert status == 202 and body["code"] == "approval_pending" and body["approval"]["id"] == approval["id"]
        assert "shutting down" in body["error"] and approval["id"] in body["error"]
        assert hub.proc.wait(30) == 0
        assert lxc("exec", name, "--", "test", "-e", "/root/t", check=False).returncode != 0
    finally:
        hub.stop()
