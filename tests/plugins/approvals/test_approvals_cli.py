"""The CLI decides in another process and the waiting request in the hub notices; the raw file
endpoints take their approval fields as query parameters."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import claude_net_activity
import claude_net_approvals
import claude_net_permissions
from claude_net.testing import eventually


def plugins(box):
    return [claude_net_permissions, claude_net_activity, claude_net_approvals, box]


async def cli(config, *args: str) -> tuple[int, str, str]:
    exe = os.path.join(os.path.dirname(sys.executable), "claude-net")
    proc = await asyncio.create_subprocess_exec(exe, "-c", str(config), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_lists_approves_for_a_while_and_denies_across_processes(hub_harness, box, database_url, tmp_path):
    config = tmp_path / "claude-net.toml"
    config.write_text(f'database_url = "{database_url}"\n[plugins]\nallow = ["permissions", "activity", '
                      '"approvals"]\n')
    async with hub_harness(plugins=plugins(box)) as h:
        chas, alpha = await h.token("chasclaude", admin=True), await h.token("alpha")
        await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box1", "ask": ["exec"]})
        waiting = asyncio.ensure_future(h.call("POST", "/api/exec", alpha, {
            "target": "box1", "command": "echo via-cli", "approval_wait": 30}))
        rows = await eventually(lambda: h.hub.db.fetch_all("SELECT id FROM approvals WHERE state = 'pending'"))
        aid = rows[0]["id"]
        code, out, err = await cli(config, "approvals")
        assert code == 0, err
        assert aid in out and "pending" in out and "alpha asks to run on box1: 'echo via-cli'" in out
        code, out, err = await cli(config, "approvals", "approve", aid, "--for", "30m")
        decided = time.monotonic()
        assert code == 0, err
        assert "approved" in out and "by host via cli for 30m" in out
        status, body = await asyncio.wait_for(waiting, 15)
        assert status == 200 and body["stdout"] == "box1: echo via-cli", body
        assert time.monotonic() - decided < 5  # the row is read again within seconds, not at the 30 s wait
        code, out, err = await cli(config, "approvals", "deny", aid)
        assert code == 1 and "no longer pending: it is approved" in err
        code, out, err = await cli(config, "approvals", "approve", "zzzz0000")
        assert code == 1 and "no approval" in err


async def test_raw_file_endpoints_take_the_approval_as_query_parameters(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas, alpha = await h.token("chasclaude", admin=True), await h.token("alpha")
        await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box1",
                                                   "ask": ["file_read", "file_write"]})
        status, body = await h.call("PUT", "/api/file/raw?target=box1&path=/f&approval_wait=0", alpha, raw=b"data",
                                    headers={"Content-Type": "application/octet-stream"})
        assert status == 202 and body["approval"]["particulars"]["path"] == "/f", body
        aid = body["approval"]["id"]
        await h.call("POST", f"/api/approvals/{aid}", chas, {"decision": "approve"})
        status, body = await h.call("PUT", f"/api/file/raw?target=box1&path=/f&approval={aid}", alpha, raw=b"data",
                                    headers={"Content-Type": "application/octet-stream"})
        assert status == 200 and body["size"] == 4, body
        assert box.files[("box1", "/f")] == b"data"
        status, body = await h.call("GET", "/api/file/raw?target=box1&path=/f&approval_wait=0", alpha)
        assert status == 202 and body["approval"]["action"] == "file_read"
        rid = body["approval"]["id"]
        await h.call("POST", f"/api/approvals/{rid}", chas, {"decision": "approve"})
        response = await h.client.get(f"/api/file/raw?target=box1&path=/f&approval={rid}",
                                       headers={"Authorization": f"Bearer {alpha}"})
        assert response.status_code == 200 and await response.get_data() == b"data"
        # JSON writes: the approval covers the content, not just its size
        status, body = await h.call("POST", "/api/file/write", alpha, {"target": "box1", "path": "/g",
                                                                      "content": "good", "approval_wait": 0})
        wid = body["approval"]["id"]
        await h.call("POST", f"/api/approvals/{wid}", chas, {"decision": "approve"})
        status, body = await h.call("POST", "/api/file/write", alpha, {"target": "box1", "path": "/g",
                                                                      "content": "evil", "approval": wid})
        assert status == 409 and body["code"] == "approval_mismatch"
        assert ("box1", "/g") not in box.files
