"""File read/write through the hub's HTTP API against the real LXD daemon."""

from __future__ import annotations

import base64
import os
import secrets

import pytest

from .conftest import launch_file_box, lxc
from .conftest import lxd_hub as hub

pytestmark = pytest.mark.lxd


@pytest.fixture(scope="module")
def fbox(containers):
    return launch_file_box(containers, "files")


def cat(name: str, path: str) -> str:
    return lxc("exec", name, "--", "cat", path).stdout


def stat(name: str, path: str) -> str:
    return lxc("exec", name, "--", "stat", "-c", "%a %u %g", path).stdout.strip()


async def test_write_then_read_utf8(hub_harness, run_id, fbox):
    async with hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        text = "héllo wörld\nline 2\n"
        status, body = await h.call("POST", "/api/file/write", token, {"target": fbox, "path": "/tmp/hello.txt",
                                                                        "content": text})
        assert status == 200, body
        assert body["size"] == len(text.encode())
        assert cat(fbox, "/tmp/hello.txt") == text
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "/tmp/hello.txt"})
        assert status == 200, body
        assert body == {"ok": True, "content": text, "encoding": "utf-8", "size": len(text.encode())}
        assert stat(fbox, "/tmp/hello.txt") == "644 0 0"
        # no temporary file left next to it
        assert ".claude-net-" not in lxc("exec", fbox, "--", "ls", "-a", "/tmp").stdout


async def test_binary_roundtrip_base64(hub_harness, run_id, fbox):
    data = bytes(range(256)) * 40 + os.urandom(3000)
    async with hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/file/write", token, {
            "target": fbox, "path": "/tmp/blob.bin", "content": base64.b64encode(data).decode(), "encoding": "base64"})
        assert status == 200, body
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "/tmp/blob.bin"})
        assert status == 200
        assert body["encoding"] == "base64"
        assert base64.b64decode(body["content"]) == data


async def test_write_mode_owner_and_keep_existing(hub_harness, run_id, fbox):
    async with hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/file/write", token, {
            "target": fbox, "path": "/tmp/script.sh", "content": "#!/bin/sh\necho run\n", "mode": "0750",
            "uid": 1000, "gid": 1001})
        assert status == 200, body
        assert stat(fbox, "/tmp/script.sh") == "750 1000 1001"
        # overwriting without mode/uid/gid keeps what the file had
        status, body = await h.call("POST", "/api/file/write", token, {
            "target": fbox, "path": "/tmp/script.sh", "content": "#!/bin/sh\necho again\n"})
        assert status == 200, body
        assert stat(fbox, "/tmp/script.sh") == "750 1000 1001"
        assert cat(fbox, "/tmp/script.sh").endswith("again\n")
        status, body = await h.call("POST", "/api/exec", token, {"target": fbox, "command": "/tmp/script.sh"})
        assert body["stdout"] == "again\n"


async def test_mkdirs(hub_harness, run_id, fbox):
    async with hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        path = f"/tmp/new-{secrets.token_hex(3)}/deep/dir/f.txt"  # the container is shared by both database runs
        status, body = await h.call("POST", "/api/file/write", token, {
            "target": fbox, "path": path, "content": "x"})
        assert status == 404 and body["code"] == "no_such_directory", body
        assert "mkdirs" in body["error"]
        status, body = await h.call("POST", "/api/file/write", token, {
            "target": fbox, "path": path, "content": "x", "mkdirs": True})
        assert status == 200, body
        assert cat(fbox, path) == "x"


async def test_read_errors(hub_harness, run_id, fbox):
    async with hub(hub_harness, run_id, limits={"file_max_bytes": 1000}) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "/no/such/file"})
        assert status == 404, body
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "/tmp/adir"})
        assert status == 400 and body["code"] == "is_directory", body
        lxc("exec", fbox, "--", "sh", "-c", "head -c 5000 /dev/zero > /tmp/big")
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "/tmp/big"})
        assert status == 413 and body["code"] == "too_large", body
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "/tmp/dangling"})
        assert status == 404 and "symlink" in body["error"], body
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "/tmp/loop-a"})
        assert status == 400 and body["code"] == "symlink_loop", body
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "relative/path"})
        assert status == 400, body
        status, body = await h.call("POST", "/api/file/write", token, {"target": fbox, "path": "/tmp/adir",
                                                                        "content": "x"})
        assert status == 400 and body["code"] == "is_directory", body
        status, body = await h.call("POST", "/api/file/write", token, {"target": fbox, "path": "/etc/passwd/x",
                                                                        "content": "x", "mkdirs": True})
        assert status == 400, body
        status, body = await h.call("POST", "/api/file/write", token, {"target": fbox, "path": "/tmp/w-big",
                                                                        "content": "x" * 1001})
        assert status == 413, body


async def test_symlinks_resolve_inside_the_container(hub_harness, run_id, fbox):
    """A link to /etc/shadow yields the container's file, never the host's."""
    async with hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        for path in ("/tmp/to-shadow", "/tmp/etc-link/shadow"):
            status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": path})
            assert status == 200, body
            assert body["content"] == "container-shadow-marker\n"
        with open("/etc/shadow") as f:
            assert "container-shadow-marker" not in f.read()
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "/tmp/rel-passwd"})
        assert body["content"].startswith("root:x:0:0:")
        # writing through a link writes the link's target (inside the container); the link stays
        lxc("exec", fbox, "--", "sh", "-c", "echo old > /tmp/real-target; ln -sf /tmp/real-target /tmp/wlink")
        status, body = await h.call("POST", "/api/file/write", token, {"target": fbox, "path": "/tmp/wlink",
                                                                        "content": "new\n"})
        assert status == 200, body
        assert cat(fbox, "/tmp/real-target") == "new\n"
        assert lxc("exec", fbox, "--", "readlink", "/tmp/wlink").stdout.strip() == "/tmp/real-target"


async def test_large_file(hub_harness, run_id, fbox):
    data = os.urandom(8 * 1024 * 1024)
    async with hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/file/write", token, {
            "target": fbox, "path": "/tmp/large.bin", "content": base64.b64encode(data).decode(),
            "encoding": "base64"})
        assert status == 200, body
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "/tmp/large.bin",
                                                                       "encoding": "base64"})
        assert status == 200
        assert base64.b64decode(body["content"]) == data
        lxc("exec", fbox, "--", "rm", "/tmp/large.bin")


async def test_non_admin_file_access_denied(hub_harness, run_id, fbox):
    async with hub(hub_harness, run_id) as h:
        token = await h.token("worker")
        status, body = await h.call("POST", "/api/file/read", token, {"target": fbox, "path": "/etc/passwd"})
        assert status == 403
        status, body = await h.call("POST", "/api/file/write", token, {"target": fbox, "path": "/tmp/x",
                                                                        "content": "x"})
        assert status == 403
