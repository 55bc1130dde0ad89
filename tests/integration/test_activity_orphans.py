"""A hub killed with SIGKILL mid-action leaves its activity row ``pending``; the next hub closes it
(``error``, code ``interrupted``), and never closes the row of a hub that is still alive.

Real ``claude-net serve`` processes on one database (SQLite and PostgreSQL) and a real sshd.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time

from claude_net.testing import HubProcess
from tests.replicas import call, wait_for


def exec_rows(hub, token, marker):
    status, body = call(hub, "GET", "/api/activity?type=exec&hours=1", token)
    assert status == 200, body
    return [row for row in body["events"] if marker in row["detail"]]


def test_a_row_left_pending_by_a_killed_hub_is_closed_by_the_next_one(database_url, tmp_path, sshd):
    config = ('[plugins]\nallow = ["ssh", "activity"]\n[ssh.nodes.orph-1]\n'
              + "".join(f"{k} = {json.dumps(v)}\n" for k, v in sshd.node_config().items()))
    hubs = []

    def start(label):
        (tmp_path / label).mkdir()
        hub = HubProcess(config, database_url=database_url, workdir=str(tmp_path / label))
        hubs.append(hub)
        return hub.start()

    try:
        first = start("first")
        admin = first.token("boss", admin=True)
        marker = f"orphan-{time.time_ns()}"
        # a foreground exec that outlives its hub: its row is pending until the hub completes it
        def run_it():
            with contextlib.suppress(OSError):  # the connection dies with the hub
                call(first, "POST", "/api/exec", admin, {"target": "orph-1", "command": f"sleep 45 # {marker}",
                                                         "timeout": 60}, timeout=90)

        threading.Thread(target=run_it, daemon=True).start()
        pending = wait_for(lambda: exec_rows(first, admin, marker))
        assert [r["result"] for r in pending] == ["pending"]

        # another hub on the same database, while the first lives: the row is not its to close
        second = start("second")
        time.sleep(3)  # its first look runs at startup
        assert [r["result"] for r in exec_rows(second, admin, marker)] == ["pending"]
        second.stop()

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)

        third = start("third")
        closed = wait_for(lambda: [r for r in exec_rows(third, admin, marker) if r["result"] != "pending"])
        row = closed[0]
        assert row["result"] == "error" and row["id"] == pending[0]["id"]
        assert row["data"]["code"] == "interrupted" and "killed" in row["data"]["error"]
        assert row["completed_at"] is not None and row["from"] == "boss" and row["target"] == "orph-1"
    finally:
        for hub in hubs:
            if hub.proc is not None and hub.proc.poll() is None:
                hub.stop()
