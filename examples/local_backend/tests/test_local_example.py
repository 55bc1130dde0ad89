"""The local backend through a real hub (claude_net.testing's hub_harness), on SQLite and PostgreSQL.

Only public API: ``claude_net`` and ``claude_net.testing``. The harness loads the built-in
plugins and the ones named: without the permissions plugin only admins may exec, so the calls
use an admin token (and one test shows the refusal an agent gets).
"""

from __future__ import annotations

import os

import pytest

import claude_net_local
from claude_net.testing import eventually


@pytest.fixture
def root(tmp_path):
    (tmp_path / "web" / "sub").mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("secret of the host\n")
    return tmp_path / "web"


@pytest.fixture
def local(hub_harness, root):
    def start(limits=None, **extra):
        nodes = {"web": {"root": str(root)}, **extra.pop("nodes", {})}
        return hub_harness(plugins=[claude_net_local], local={"nodes": nodes, "kill_grace": 0.5, **extra},
                           limits=limits or {})
    return start


async def call(h, path, body):
    return await h.call("POST", path, await h.token("boss", admin=True), body)


async def test_exec_runs_in_the_root_with_only_the_environment_it_is_given(local, root, monkeypatch):
    monkeypatch.setenv("LOCAL_EXAMPLE_SECRET", "hub-only")
    async with local() as h:
        status, body = await call(h, "/api/exec", {"target": "web", "command": "pwd; echo ${LOCAL_EXAMPLE_SECRET:-none} $A"
                                                   , "env": {"A": "given"}})
        assert status == 200 and body["stdout"] == f"{root}\nnone given\n" and body["exitCode"] == 0, body
        status, body = await call(h, "/api/exec", {"target": "web", "command": "pwd; exit 3", "cwd": "/sub"})
        assert status == 200 and body["stdout"] == f"{root / 'sub'}\n" and body["exitCode"] == 3, body
        status, body = await call(h, "/api/exec", {"target": "web", "command": "kill -9 $$"})
        assert status == 200 and body["exitCode"] == 137, body  # 128 + SIGKILL


async def test_a_timeout_ends_the_whole_process_group(local, root):
    async with local() as h:
        command = "sleep 60 & echo $! > child.pid; echo started; sleep 60"
        status, body = await call(h, "/api/exec", {"target": "web", "command": command, "timeout": 0.5})
        assert status == 504 and body["code"] == "timeout" and body["stdout"] == "started\n", body
        assert body["exitCode"] == 128 + 15  # SIGTERM ended the shell
        child = int((root / "child.pid").read_text())

        def gone():
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            return open(f"/proc/{child}/stat").read().split()[2] == "Z"  # reaped by init later

        assert await eventually(gone, timeout=5)


async def test_output_is_capped_and_marked_truncated(local):
    async with local(limits={"exec_max_output": 1000}) as h:
        status, body = await call(h, "/api/exec", {"target": "web", "command": "head -c 5000 /dev/zero | tr '\\0' x"})
        assert status == 200 and body["stdout"] == "x" * 1000 and body["truncated"] is True, body


async def test_files_stay_inside_the_root(local, root):
    os.symlink(root.parent / "outside.txt", root / "escape")
    os.symlink(root.parent, root / "up")
    os.symlink("sub", root / "inner")
    async with local(limits={"file_max_bytes": 100}) as h:
        status, body = await call(h, "/api/file/write", {"target": "web", "path": "/new/a.txt", "content": "hi",
                                                         "mkdirs": True, "mode": "0600"})
        assert status == 200 and (root / "new" / "a.txt").read_text() == "hi", body
        assert (root / "new" / "a.txt").stat().st_mode & 0o777 == 0o600
        status, body = await call(h, "/api/file/read", {"target": "web", "path": "/new/a.txt"})
        assert status == 200 and body["content"] == "hi"
        status, body = await call(h, "/api/file/write", {"target": "web", "path": "/inner/b.txt", "content": "in"})
        assert status == 200 and (root / "sub" / "b.txt").read_text() == "in"  # a symlink inside is fine
        for path in ("/escape", "/up/outside.txt"):
            status, body = await call(h, "/api/file/read", {"target": "web", "path": path})
            assert status == 400 and body["code"] == "outside_root", body
            status, body = await call(h, "/api/file/write", {"target": "web", "path": path, "content": "x"})
            assert status == 400 and body["code"] == "outside_root", body
        assert (root.parent / "outside.txt").read_text() == "secret of the host\n"
        status, body = await call(h, "/api/file/read", {"target": "web", "path": "/../outside.txt"})
        assert status == 400 and body["code"] == "invalid_path"  # the hub refuses '..' before any backend
        status, body = await call(h, "/api/exec", {"target": "web", "command": "pwd", "cwd": "/up"})
        assert status == 400 and body["code"] == "outside_root", body
        status, body = await call(h, "/api/file/read", {"target": "web", "path": "/missing"})
        assert status == 404, body
        status, body = await call(h, "/api/file/read", {"target": "web", "path": "/sub"})
        assert status == 400 and body["code"] == "is_directory", body
        status, body = await call(h, "/api/file/write", {"target": "web", "path": "/no/dir.txt", "content": "x"})
        assert status == 404, body
        (root / "big").write_bytes(b"x" * 101)
        status, body = await call(h, "/api/file/read", {"target": "web", "path": "/big"})
        assert status == 413, body


async def test_nodes_are_listed_and_are_not_containers(local, root):
    async with local() as h:
        status, body = await h.call("GET", "/api/machines", await h.token("boss", admin=True))
        web = next(m for m in body["machines"] if m["name"] == "web")
        assert web["backend"] == "local" and web["state"] == "running"
        assert sorted(web["capabilities"]) == ["exec", "file_read", "file_write"]
        status, body = await call(h, "/api/container/snapshot", {"name": "web"})
        assert status == 400 and body["code"] == "not_a_container", body
        status, body = await h.call("POST", "/api/exec", await h.token("agent"), {"target": "web", "command": "true"})
        assert status == 403 and body["code"] == "denied"  # no permissions plugin: only admins


async def test_settings_are_validated(local, root):
    async with local(nodes={"gone": {"root": str(root / "missing")}, "rel": {"root": "web"}}) as h:
        problems = dict(claude_net_local.validate_config(h.hub.settings))
    assert problems == {"local.nodes.gone.root": f"must be an existing absolute directory, not {str(root / 'missing')!r}",
                        "local.nodes.rel.root": "must be an existing absolute directory, not 'web'"}
