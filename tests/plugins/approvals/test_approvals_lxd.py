"""Approvals against the real LXD daemon: an exec under ask waits, runs after an API approval and
returns its output; a denied one never runs; snapshot before + restore-before bring a deleted file back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

import claude_net_activity
import claude_net_approvals
import claude_net_lxd
import claude_net_permissions
from claude_net.testing import eventually
from tests.plugins.lxd_backend.conftest import fresh_container, lxc, lxd_available, run_id  # noqa: F401 (fixtures)

pytestmark = pytest.mark.lxd


def lxd_hub(hub_harness, run_id, **overrides):
    return hub_harness(plugins=[claude_net_lxd, claude_net_permissions, claude_net_activity, claude_net_approvals],
                       lxd={"include": [f"{run_id}-*"], "shell": "/bin/sh"}, **overrides)


def exists(name: str, path: str) -> bool:
    return lxc("exec", name, "--", "test", "-e", path, check=False).returncode == 0


async def _pending(h, token):
    status, body = await h.call("GET", "/api/approvals?state=pending", token)
    assert status == 200, body
    return body["approvals"] or None


async def test_exec_under_ask_waits_runs_after_approval_and_denied_never_runs(hub_harness, run_id, fresh_container):
    name = fresh_container("ask")
    async with lxd_hub(hub_harness, run_id) as h:
        chas = await h.token("chasclaude", admin=True)
        alpha = await h.token("alpha")
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": name, "ask": ["exec"]})
        assert status == 200, body

        waiting = asyncio.ensure_future(h.call("POST", "/api/exec", alpha, {
            "target": name, "command": "echo approved-output; hostname", "approval_wait": 90}))
        pending = await eventually(lambda: _pending(h, chas))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # it waits for the decision
        status, _ = await h.call("POST", f"/api/approvals/{pending[0]['id']}", chas, {"decision": "approve"})
        assert status == 200
        status, body = await asyncio.wait_for(waiting, 80)
        assert status == 200, body
        assert body["stdout"] == f"approved-output\n{name}\n" and body["exitCode"] == 0

        waiting = asyncio.ensure_future(h.call("POST", "/api/exec", alpha, {
            "target": name, "command": "touch /root/marker", "approval_wait": 90}))
        pending = await eventually(lambda: _pending(h, chas))
        status, _ = await h.call("POST", f"/api/approvals/{pending[0]['id']}", chas, {"decision": "deny"})
        status, body = await asyncio.wait_for(waiting, 80)
        assert status == 403 and body["code"] == "approval_denied", body
        await asyncio.sleep(0.5)
        assert not exists(name, "/root/marker")  # the denied command never ran


async def test_snapshot_before_then_restore_before_brings_a_deleted_file_back(hub_harness, run_id, fresh_container,
                                                                              tmp_path, database_url):
    name = fresh_container("snapb")
    lxc("exec", name, "--", "sh", "-c", "echo precious > /root/keep")
    async with lxd_hub(hub_harness, run_id) as h:
        chas = await h.token("chasclaude", admin=True)
        alpha = await h.token("alpha")
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": name,
                                                                 "ask": ["exec"], "snapshot": "before"})
        assert status == 200 and body["permission"]["snapshot"] == "before", body
        status, body = await h.call("POST", "/api/exec", alpha, {"target": name, "command": "rm /root/keep",
                                                                 "approval_wait": 0})
        assert status == 202
        aid = body["approval"]["id"]
        assert (await h.call("POST", f"/api/approvals/{aid}", chas, {"decision": "approve"}))[0] == 200
        status, body = await h.call("POST", "/api/exec", alpha, {"target": name, "command": "rm /root/keep",
                                                                 "approval": aid})
        assert status == 200 and body["exitCode"] == 0, body
        assert not exists(name, "/root/keep")
        row = await h.hub.db.fetch_one("SELECT id, data FROM activity_log WHERE type = 'exec' AND result = 'ok'")
        data = json.loads(row["data"])
        snapshot = data["snapshot"]
        assert snapshot.startswith("cn-before-") and data["approval_id"] == aid
        snaps = json.loads(lxc("query", f"/1.0/instances/{name}/snapshots?recursion=1").stdout)
        snap = next(s for s in snaps if s["name"] == snapshot)
        assert snap["expires_at"] and not snap["expires_at"].startswith("0001")  # LXD's own expiry is set
        activity_id = row["id"]

    # the operator verb, on the same database, as a real process
    config = tmp_path / "hub.toml"
    config.write_text(f'database_url = "{database_url}"\n[lxd]\ninclude = ["{run_id}-*"]\nshell = "/bin/sh"\n')
    env = {**os.environ, "CLAUDE_NET_CONFIG": str(config)}
    cli = os.path.join(os.path.dirname(sys.executable), "claude-net")
    out = subprocess.run([cli, "restore-before", str(activity_id)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"restored {name} to {snapshot}" in out.stdout
    assert lxc("exec", name, "--", "cat", "/root/keep").stdout == "precious\n"


async def test_snapshot_before_is_refused_at_permit_time_for_a_node_without_snapshots(hub_harness, box_ssh_like):
    async with hub_harness(plugins=[claude_net_permissions, claude_net_activity, box_ssh_like]) as h:
        chas = await h.token("chasclaude", admin=True)
        status, body = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "ser-8",
                                                                 "snapshot": "before"})
        assert status == 400 and body["code"] == "snapshot_not_supported", body
        assert "has no snapshots" in body["error"] and "ser-8" in body["error"]


@pytest.fixture
def box_ssh_like():
    """A node listed without the container capability, as the SSH backend lists its servers."""
    from claude_net import Node, hookimpl

    class Servers:
        __name__ = "servers"

        @hookimpl
        def list_nodes(self):
            return [Node("ser-8", backend="ssh", state="reachable", capabilities=frozenset({"exec", "file_read",
                                                                                        "file_write"}))]

    return Servers()
