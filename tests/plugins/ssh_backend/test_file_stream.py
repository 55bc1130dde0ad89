"""Streamed raw file transfers (GET/PUT /api/file/raw) over SFTP against a real sshd.

The SSH backend implements ``open_file_stream`` / ``write_file_stream``: 1 MiB SFTP reads and
writes, uploads into a temporary file renamed over the target. The sshd serves this machine's
filesystem, so the test checks the files directly.
"""

from __future__ import annotations

import asyncio
import os
import stat
from urllib.parse import urlencode

MiB = 1024 * 1024


def q(path, target="ser-8", **extra):
    return urlencode({"target": target, "path": str(path), **extra})


async def put(s, path, data, *, part=256 * 1024, length=True, disconnect_after=None, **extra):
    headers = {"Authorization": f"Bearer {s.admin}", "Content-Type": "application/octet-stream"}
    if length:
        headers["Content-Length"] = str(len(data))
    async with s.h.client.request(f"/api/file/raw?{q(path, **extra)}", method="PUT", headers=headers) as connection:
        for i, start in enumerate(range(0, len(data), part)):
            if disconnect_after is not None and i == disconnect_after:
                await asyncio.sleep(0.2)  # let the backend take what was sent
                await connection.disconnect()
                break
            await connection.send(data[start:start + part])
        else:
            await connection.send_complete()
    response = await connection.as_response()
    return response.status_code, await response.get_json()


async def get(s, path):
    response = await s.h.client.get(f"/api/file/raw?{q(path)}", headers={"Authorization": f"Bearer {s.admin}"})
    return response.status_code, response.headers, await response.get_data()


def finals(s, type_):
    """The final result of each ``type_`` action (the recorder keeps the event object, updated in place)."""
    return [e.result for e in {e.id: e for e in s.recorder.of_type(type_)}.values()]


def leftovers(directory):
    return [name for name in os.listdir(directory) if "claude-net" in name]


async def settle(directory, seconds=5.0):
    for _ in range(int(seconds / 0.05)):
        if not leftovers(directory):
            break
        await asyncio.sleep(0.05)
    return leftovers(directory)


async def test_stream_round_trip_keeps_mode_and_leaves_no_temp_file(ssh_hub, tmp_path):
    data = os.urandom(5 * MiB + 3)
    path = tmp_path / "big.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    inode = path.stat().st_ino
    async with ssh_hub() as s:
        status, body = await put(s, path, data, length=False)
        assert status == 200, body
        assert body["size"] == len(data) and body["mode"] == "0640"
        assert path.read_bytes() == data
        assert path.stat().st_ino != inode and stat.S_IMODE(path.stat().st_mode) == 0o640
        assert leftovers(tmp_path) == []
        status, headers, got = await get(s, path)
        assert status == 200 and headers["Content-Length"] == str(len(data))
        assert got == data
        assert finals(s, "file_read") == ["ok"] and finals(s, "file_write") == ["ok"]
        assert s.recorder.of_type("file_read", "ok")[0].data["bytes"] == len(data)
        assert s.recorder.of_type("file_write", "ok")[0].data["bytes"] == len(data)


async def test_stream_reads_follow_symlinks_and_files_of_unknown_size(ssh_hub, tmp_path):
    (tmp_path / "real.txt").write_text("through the link\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    async with ssh_hub() as s:
        status, _, data = await get(s, tmp_path / "link.txt")
        assert (status, data) == (200, b"through the link\n")
        status, headers, data = await get(s, "/proc/self/status")  # reports size 0: no Content-Length
        assert status == 200 and b"Name:" in data
        assert "Content-Length" not in headers or int(headers["Content-Length"]) == len(data)
        # an upload through the link writes the link's target; the link stays
        status, body = await put(s, tmp_path / "link.txt", b"new\n")
        assert status == 200 and body["resolvedPath"] == str(tmp_path / "real.txt"), body
        assert (tmp_path / "real.txt").read_text() == "new\n" and (tmp_path / "link.txt").is_symlink()


async def test_stream_download_errors_are_json(ssh_hub, tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 5000)
    async with ssh_hub(limits={"file_max_bytes": 4096}) as s:
        for path, want, code in ((tmp_path / "missing", 404, "no_such_file"), (tmp_path, 400, "is_directory"),
                                 (tmp_path / "big", 413, "too_large")):
            status, headers, data = await get(s, path)
            assert status == want and headers["Content-Type"] == "application/json", data
            assert f'"code":"{code}"' in data.decode(), data


async def test_stream_upload_past_the_limit_or_cut_off_leaves_the_target_untouched(ssh_hub, tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("original\n")
    async with ssh_hub(limits={"file_max_bytes": MiB}) as s:
        status, body = await put(s, target, os.urandom(3 * MiB), length=False)
        assert status == 413 and body["code"] == "too_large", body
        assert target.read_text() == "original\n"
        assert await settle(tmp_path) == []
        await put(s, target, os.urandom(MiB - 1), disconnect_after=2)
        for _ in range(100):
            if "pending" not in finals(s, "file_write"):
                break
            await asyncio.sleep(0.05)
        assert target.read_text() == "original\n"
        assert await settle(tmp_path) == []
        assert finals(s, "file_write") == ["error", "error"]
        status, body = await put(s, tmp_path / "no" / "dir" / "f", b"x")
        assert status == 404 and body["code"] == "no_such_directory", body
        status, body = await put(s, tmp_path / "no" / "dir" / "f", b"x", mkdirs="true")
        assert status == 200 and (tmp_path / "no" / "dir" / "f").read_bytes() == b"x", body
