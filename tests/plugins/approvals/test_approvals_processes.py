"""Approvals in real `claude-net serve` processes: a wait on replica B released by a decision on
replica A (PostgreSQL), and SIGTERM ending a wait at once with the 202 answer."""

from __future__ import annotations

import functools
import signal
import threading
import time

import pytest

from claude_net.testing import HubProcess
from tests import replicas
from tests.plugins.lxd_backend.conftest import fresh_container, lxc, lxd_available, run_id  # noqa: F401 (fixtures)

pytestmark = pytest.mark.lxd


def config(run_id: str) -> str:
    return ('[plugins]\nallow = ["permissions", "activity", "approvals", "lxd"]\n'
            f'[lxd]\ninclude = ["{run_id}-*"]\nshell = "/bin/sh"\n')


#: an exec on LXD under a loaded machine may take a while; the waiting exec gives itself 90 s
call = functools.partial(replicas.call, timeout=60)


def pending(hub, token, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = call(hub, "GET", "/api/approvals?state=pending", token)
        assert status == 200, body
        if body["approvals"]:
            return body["approvals"]
        time.sleep(0.05)
    raise AssertionError("no pending approval appeared")


def asking(hub, target: str) -> tuple[str, str]:
    """Tokens (chasclaude's, an admin; alpha's) with alpha's exec on ``target`` asking for approval."""
    chas, alpha = hub.token("chasclaude", admin=True), hub.token("alpha")
    assert call(hub, "POST", "/api/permit", chas, {"source": "alpha", "target": target, "ask": ["exec"]})[0] == 200
    return chas, alpha


def exec_waiting(hub, token: str, target: str, command: str, approval_wait: int) -> tuple[threading.Thread, dict]:
    """``POST /api/exec`` that waits for an approval, in a thread: ``result["answer"]`` is its
    (status, body) and ``result["done"]`` when it came, once the thread ends."""
    result: dict = {}

    def run():
        result["answer"] = call(hub, "POST", "/api/exec", token, {"target": target, "command": command,
                                                                  "approval_wait": approval_wait}, timeout=90)
        result["done"] = time.monotonic()

    waiter = threading.Thread(target=run)
    waiter.start()
    return waiter, result


@pytest.mark.postgres
@pytest.mark.db("postgresql")
def test_exec_waiting_on_replica_b_runs_when_the_admin_approves_on_replica_a(database_url, tmp_path, run_id,
                                                                             fresh_container):
    name = fresh_container("repl")
    with replicas.replicas(config(run_id), database_url, tmp_path) as (a, b):
        chas, alpha = asking(a, name)
        waiter, result = exec_waiting(b, alpha, name, "echo from-b", 60)
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


def test_sigterm_ends_a_waiting_exec_at_once_with_the_pending_answer(database_url, tmp_path, run_id, fresh_container):
    name = fresh_container("term")
    hub = HubProcess(config(run_id), database_url=database_url, workdir=str(tmp_path))
    try:
        hub.start()
        chas, alpha = asking(hub, name)
        waiter, result = exec_waiting(hub, alpha, name, "touch /root/t", 300)
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
