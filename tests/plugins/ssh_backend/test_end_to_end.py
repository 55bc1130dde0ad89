"""The SSH node end to end on both databases: machines, exec, files, denial, audit events."""

from __future__ import annotations

import subprocess
import sys

import pytest


async def test_ser8_end_to_end(ssh_hub, tmp_path, db_kind):
    path = tmp_path / "hello.txt"
    async with ssh_hub() as s:
        status, body = await s.h.call("GET", "/api/machines", s.admin)
        assert status == 200
        assert [m["backend"] for m in body["machines"] if m["name"] == "ser-8"] == ["ssh"]

        body = await s.ok("uname -s; echo $((40 + 2))")
        assert body["stdout"] == "Linux\n42\n" and body["exitCode"] == 0

        status, body = await s.write(str(path), "from the hub\n")
        assert status == 200, body
        status, body = await s.read(str(path))
        assert status == 200 and body["content"] == "from the hub\n"

        status, body = await s.exec("id", token=s.plain)
        assert status == 403

        kinds = [(e.type, e.result) for e in s.recorder.events if e.type in ("exec", "file_read", "file_write")]
        assert ("exec", "ok") in kinds and ("exec", "denied") in kinds
        assert ("file_write", "ok") in kinds and ("file_read", "ok") in kinds


def test_importing_the_plugin_does_not_load_asyncssh():
    code = "import sys, claude_net_ssh; assert 'asyncssh' not in sys.modules, 'asyncssh imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_capability_hooks_are_plain_functions():
    import inspect

    import claude_net_ssh

    for name in ("execute", "read_file", "write_file", "container_op"):
        assert not inspect.iscoroutinefunction(getattr(claude_net_ssh, name)), name
