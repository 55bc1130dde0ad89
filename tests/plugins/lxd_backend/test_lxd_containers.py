"""Container operations through the hub's HTTP API against the real LXD daemon."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from .conftest import lxc, lxc_query
from .conftest import lxd_hub as hub

pytestmark = pytest.mark.lxd




def status_of(name: str) -> str:
    return lxc_query(f"/1.0/instances/{name}/state")["status"]


async def test_snapshot_list_restore(hub_harness, run_id, fresh_container):
    name = fresh_container("snap")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    async with hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        await h.call("POST", "/api/file/write", token, {"target": name, "path": "/root/state", "content": "one"})
        status, body = await h.call("POST", "/api/container/snapshot", token, {"name": name})
        assert status == 200, body
        assert body == {"ok": True, "name": name, "snapshot": today}
        status, body = await h.call("POST", "/api/container/snapshot", token, {"name": name})
        assert body["snapshot"] == f"{today}-2"
        status, body = await h.call("POST", "/api/container/snapshot", token,
                                    {"name": name, "snapshot": "before-upgrade", "expires": "7d"})
        assert status == 200, body
        assert body["snapshot"] == "before-upgrade"
        expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
        assert timedelta(days=6.9) < expires - datetime.now(timezone.utc) < timedelta(days=7.1)
        status, body = await h.call("POST", "/api/container/snapshot", token,
                                    {"name": name, "snapshot": "before-upgrade"})
        assert status == 409 and body["code"] == "snapshot_exists", body
        status, body = await h.call("POST", "/api/container/snapshot", token,
                                    {"name": name, "expires": "yesterday"})
        assert status == 400, body

        status, body = await h.call("GET", f"/api/container/snapshots?name={name}", token)
        assert status == 200, body
        snaps = body["snapshots"]
        assert [s["name"] for s in snaps] == [today, f"{today}-2", "before-upgrade"]
        assert snaps[0]["expiresAt"] is None and snaps[2]["expiresAt"]
        assert all(s["createdAt"] for s in snaps)

        await h.call("POST", "/api/file/write", token, {"target": name, "path": "/root/state", "content": "two"})
        status, body = await h.call("POST", "/api/container/restore", token, {"name": name, "snapshot": today})
        assert status == 200, body
        assert body["snapshot"] == today
        status, body = await h.call("POST", "/api/file/read", token, {"target": name, "path": "/root/state"})
        assert status == 200, body
        assert body["content"] == "one"

        status, body = await h.call("POST", "/api/container/restore", token, {"name": name, "snapshot": "nope"})
        assert status == 404 and body["code"] == "no_such_snapshot", body


async def test_stop_start(hub_harness, run_id, fresh_container):
    name = fresh_container("stopstart")
    async with hub(hub_harness, run_id, nodes={"cache_seconds": 0.0}) as h:
        token = await h.token("boss", admin=True)
        started = time.monotonic()
        status, body = await h.call("POST", "/api/container/stop", token, {"name": name, "timeout": 10})
        assert status == 200, body
        assert body["state"] == "stopped" and body["changed"] is True
        assert time.monotonic() - started < 12
        assert status_of(name) == "Stopped"
        status, body = await h.call("POST", "/api/container/stop", token, {"name": name})
        assert status == 200 and body["changed"] is False
        status, body = await h.call("POST", "/api/exec", token, {"target": name, "command": "true"})
        assert status == 409, body

        status, body = await h.call("POST", "/api/container/start", token, {"name": name})
        assert status == 200 and body["state"] == "running", body
        assert status_of(name) == "Running"
        status, body = await h.call("POST", "/api/exec", token, {"target": name, "command": "echo back"})
        assert status == 200 and body["stdout"] == "back\n", body
        status, body = await h.call("POST", "/api/container/start", token, {"name": name})
        assert status == 200 and body["changed"] is False

        status, body = await h.call("POST", "/api/container/stop", token, {"name": name, "force": True})
        assert status == 200 and body["forced"] is True, body
        assert status_of(name) == "Stopped"


async def test_stop_forces_after_the_grace_period(hub_harness, run_id, fresh_container):
    """A container whose init ignores the shutdown signal is forced off after `timeout`."""
    name = fresh_container("stubborn")
    # busybox init reacts to SIGPWR (LXD's halt signal); make LXD send one init ignores
    lxc("config", "set", name, "raw.lxc", "lxc.signal.halt=SIGURG")
    lxc("restart", "--force", name)
    async with hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        started = time.monotonic()
        status, body = await h.call("POST", "/api/container/stop", token, {"name": name, "timeout": 1})
        elapsed = time.monotonic() - started
        assert status == 200, body
        assert body["forced"] is True
        assert status_of(name) == "Stopped"
        assert elapsed < 10, elapsed


async def test_container_ops_need_admin_and_known_nodes(hub_harness, run_id, containers):
    name = containers.launch("ops")
    async with hub(hub_harness, run_id) as h:
        worker = await h.token("worker")
        boss = await h.token("boss", admin=True)
        for path, body in (("/api/container/snapshot", {"name": name}), ("/api/container/start", {"name": name})):
            status, answer = await h.call("POST", path, worker, body)
            assert status == 403, answer
        status, body = await h.call("POST", "/api/container/start", boss, {"name": "no-such-box"})
        assert status == 404, body
