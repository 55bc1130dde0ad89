"""File read and write over SFTP, through the hub's HTTP API, against a real sshd."""

from __future__ import annotations

import asyncio
import base64
import os
import stat


async def test_write_then_read_text_with_mode(ssh_hub, tmp_path):
    path = tmp_path / "notes.txt"
    async with ssh_hub() as s:
        status, body = await s.write(str(path), "héllo\nwörld\n", mode="0640")
        assert status == 200, body
        assert body["size"] == len("héllo\nwörld\n".encode())
        assert body["mode"] == "0640"
        assert path.read_text() == "héllo\nwörld\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        status, body = await s.read(str(path))
        assert status == 200 and body["content"] == "héllo\nwörld\n" and body["encoding"] == "utf-8"
        assert s.recorder.of_type("file_write", "ok") and s.recorder.of_type("file_read", "ok")


async def test_binary_round_trip(ssh_hub, tmp_path):
    data = bytes(range(256)) * 300
    path = tmp_path / "blob.bin"
    async with ssh_hub() as s:
        status, body = await s.write(str(path), base64.b64encode(data).decode(), encoding="base64")
        assert status == 200, body
        assert path.read_bytes() == data
        status, body = await s.read(str(path))
        assert body["encoding"] == "base64" and base64.b64decode(body["content"]) == data
        status, body = await s.read(str(path), encoding="utf-8")
        assert status == 400 and body["code"] == "not_utf8"


async def test_read_errors_missing_directory_too_large(ssh_hub, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    async with ssh_hub(limits={"file_max_bytes": 4096}) as s:
        status, body = await s.read(str(tmp_path / "missing"))
        assert status == 404, body
        status, body = await s.read(str(tmp_path))
        assert status == 400 and body["code"] == "is_directory", body
        status, body = await s.read(str(big))
        assert status == 413, body
        status, body = await s.write(str(tmp_path / "new"), "y" * 5000)
        assert status == 413, body
        # files that report size 0 (procfs) are still read, to their end
        status, body = await s.read("/proc/self/status")
        assert status == 200 and "Name:" in body["content"]


async def test_write_is_atomic_rename_and_leaves_no_temp_files(ssh_hub, tmp_path):
    (tmp_path / "d").mkdir()
    path = tmp_path / "d" / "config.ini"
    path.write_text("old")
    os.chmod(path, 0o600)
    inode = path.stat().st_ino
    async with ssh_hub() as s:
        status, body = await s.write(str(path), "new")
        assert status == 200, body
        assert path.read_text() == "new"
        assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # an existing file keeps its mode
        assert os.listdir(tmp_path / "d") == ["config.ini"]


async def test_concurrent_readers_never_see_half_a_file(ssh_hub, tmp_path):
    path = tmp_path / "big.txt"
    versions = [bytes([65 + i]) * (2 * 1024 * 1024) for i in range(4)]
    path.write_bytes(versions[0])
    seen: set[bytes] = set()
    async with ssh_hub() as s:
        done = asyncio.Event()

        async def reader():
            while not done.is_set():
                status, body = await s.read(str(path), encoding="base64")
                assert status == 200, body
                content = base64.b64decode(body["content"])
                assert content in versions, (len(content), content[:1], content[-1:])
                seen.add(content[:1])

        async def writer():
            for version in versions[1:] * 2:
                status, body = await s.write(str(path), base64.b64encode(version).decode(), encoding="base64")
                assert status == 200, body
            done.set()

        await asyncio.gather(writer(), reader(), reader())
        assert len(seen) >= 2


async def test_mkdirs_and_missing_parent(ssh_hub, tmp_path):
    nested = tmp_path / "a" / "b" / "c.txt"
    async with ssh_hub() as s:
        status, body = await s.write(str(nested), "x")
        assert status == 404 and body["code"] == "no_such_directory" and "mkdirs" in body["error"]
        status, body = await s.write(str(nested), "x", mkdirs=True)
        assert status == 200, body
        assert nested.read_text() == "x"


async def test_write_through_a_symlink_and_onto_a_directory(ssh_hub, tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("before")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    async with ssh_hub() as s:
        status, body = await s.write(str(link), "after")
        assert status == 200, body
        assert link.is_symlink() and real.read_text() == "after"
        assert body["resolvedPath"] == str(real)
        status, body = await s.write(str(tmp_path), "x")
        assert status == 400 and body["code"] == "is_directory", body
        dangling = tmp_path / "dangling"
        dangling.symlink_to(tmp_path / "nowhere")
        status, body = await s.write(str(dangling), "x")
        assert status == 404 and str(tmp_path / "nowhere") in body["error"], body


async def test_ownership_on_write(ssh_hub, tmp_path):
    path = tmp_path / "owned"
    async with ssh_hub() as s:  # the test sshd logs in as root, which may chown
        status, body = await s.write(str(path), "x", uid=4321, gid=4322)
        assert status == 200, body
        assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4322)
        status, body = await s.write(str(path), "y")  # replacing keeps the owner
        assert status == 200, body
        assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4322)


async def test_file_calls_need_a_grant(ssh_hub, tmp_path):
    path = tmp_path / "secret"
    path.write_text("s")
    async with ssh_hub() as s:
        status, body = await s.read(str(path), token=s.plain)
        assert status == 403 and body["code"] == "denied"
        status, body = await s.write(str(path), "x", token=s.plain)
        assert status == 403
        assert path.read_text() == "s"
