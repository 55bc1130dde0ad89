"""Several `claude-net serve` processes on one PostgreSQL behave as one hub (real processes)."""

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from claude_net.testing import HubProcess
from tests.replicas import call, holder_pid
from tests.replicas import replicas as started_replicas

pytestmark = [pytest.mark.postgres, pytest.mark.db("postgresql")]

PLUGINS = '[plugins]\nallow = ["permissions", "activity"]\n[activity]\nretention_days = 30\n'


@pytest.fixture
def replicas(database_url, tmp_path):
    with started_replicas(PLUGINS, database_url, tmp_path) as hubs:
        yield hubs


def test_send_on_a_wakes_long_poll_on_b(replicas):
    a, b = replicas
    alpha, beta = a.token("alpha"), a.token("beta")
    result = {}

    def poll():
        started = time.monotonic()
        result["inbox"] = call(b, "GET", "/api/inbox?wait=20&ack=true", beta)
        result["elapsed"] = time.monotonic() - started

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(1.0)
    sent_at = time.monotonic()
    assert call(a, "POST", "/api/send", alpha, {"to": "beta", "message": "across replicas"})[0] == 200
    t.join(25)
    status, body = result["inbox"]
    assert status == 200 and [m["message"] for m in body["messages"]] == ["across replicas"]
    assert result["elapsed"] < 1.0 + (time.monotonic() - sent_at) + 0.5  # woke at once, not at timeout


def test_activity_stream_on_b_shows_actions_on_a(replicas):
    a, b = replicas
    admin, alpha = a.token("chief", admin=True), a.token("alpha")
    a.token("beta")
    lines = []

    def stream():
        req = urllib.request.Request(b.url + "/api/activity/stream", headers={"Authorization": f"Bearer {admin}"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            for raw in resp:
                lines.append(raw.decode())
                if "from replica a" in raw.decode():
                    return

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    time.sleep(1.0)
    assert call(a, "POST", "/api/send", alpha, {"to": "beta", "message": "from replica a"})[0] == 200
    t.join(15)
    assert any("from replica a" in line for line in lines), lines


def test_revoke_on_a_is_enforced_on_b_at_the_next_call(replicas):
    a, b = replicas
    admin, alpha = a.token("chief", admin=True), a.token("alpha")
    body = {"target": "ghost", "command": "id"}
    assert call(b, "POST", "/api/exec", alpha, body)[0] == 403
    assert call(a, "POST", "/api/permit", admin, {"source": "alpha", "target": "ghost", "allow": True})[0] == 200
    status, answer = call(b, "POST", "/api/exec", alpha, body)
    assert status == 404 and answer["code"] == "unknown_node"  # authorized now; no such node
    assert call(a, "POST", "/api/permit", admin, {"source": "alpha", "target": "all", "allow": False})[0] == 200
    assert call(b, "POST", "/api/exec", alpha, body)[0] == 403


def test_singleton_runs_once_and_moves_when_its_replica_dies(replicas, database_url):
    pids = {h.proc.pid: h for h in replicas}
    holder = holder_pid(database_url, "activity-retention", time.monotonic() + 15)
    assert holder in pids
    pids[holder].proc.send_signal(signal.SIGKILL)
    pids[holder].proc.wait(10)
    killed_at = time.monotonic()
    new_holder = holder_pid(database_url, "activity-retention", time.monotonic() + 20)
    assert new_holder is not None and new_holder != holder and new_holder in pids
    assert time.monotonic() - killed_at < 15


def test_workers_share_one_hub(database_url, tmp_path):  # noqa: D103
    hub = HubProcess(PLUGINS, database_url=database_url, workdir=str(tmp_path))
    hub.proc = subprocess.Popen([sys.executable, "-m", "claude_net.cli", "serve", "--workers", "2"], env=hub.env,
                                cwd=hub.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(hub.url + "/api/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        alpha, beta = hub.token("alpha"), hub.token("beta")
        for i in range(10):  # new connections land on either worker
            assert call(hub, "POST", "/api/send", alpha, {"to": "beta", "message": f"m{i}"})[0] == 200
        status, body = call(hub, "GET", "/api/inbox?limit=100", beta)
        assert [m["message"] for m in body["messages"]] == [f"m{i}" for i in range(10)]
    finally:
        hub.proc.send_signal(signal.SIGTERM)
        hub.proc.wait(30)


def test_workers_refuse_sqlite(tmp_path):
    out = subprocess.run([sys.executable, "-m", "claude_net.cli", "serve", "--workers", "2"], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)}, timeout=60)
    assert out.returncode == 2 and "needs PostgreSQL" in out.stderr
