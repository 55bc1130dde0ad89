"""Streamed raw file transfers: the stream hooks, the fallback to the buffered hooks, limits and records.

``StreamBox`` (tests/core/testbox.py) implements ``open_file_stream`` / ``write_file_stream``;
``TestBox`` does not, so it shows the fallback to ``read_file`` / ``write_file``.
"""

import asyncio

import pytest

from claude_net import FileStream
from claude_net.http import BODY_HIGH_WATER
from claude_net.testing import eventually

from .testbox import Allow, Recorder, StreamBox, TestBox

MiB = 1024 * 1024
BLOB = bytes(range(256)) * (12 * 1024) + b"tail"  # 3 MiB and a bit, not a multiple of any chunk size


@pytest.fixture
def box():
    return StreamBox()


@pytest.fixture
def rec():
    return Recorder()


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def file_events(rec):
    return [(t, r, d) for t, r, d in rec.details if t.startswith("file")]


async def upload(h, token, query, parts, *, length=None, disconnect_after=None, pause=0.0):
    """PUT /api/file/raw sending ``parts`` one message each (no Content-Length unless given)."""
    headers = {**auth(token), "Content-Type": "application/octet-stream"}
    if length is not None:
        headers["Content-Length"] = str(length)
    async with h.client.request(f"/api/file/raw?{query}", method="PUT", headers=headers) as connection:
        for i, part in enumerate(parts):
            if disconnect_after is not None and i == disconnect_after:
                await connection.disconnect()
                break
            await connection.send(part)
            if pause:
                await asyncio.sleep(pause)
        else:
            await connection.send_complete()
    response = await connection.as_response()
    return response.status_code, await response.get_json()


def pieces(data, size=256 * 1024):
    return [data[i:i + size] for i in range(0, len(data), size)]


async def test_stream_hooks_carry_a_round_trip_in_chunks_and_record_the_bytes(hub_harness, box, rec):
    async with hub_harness(plugins=[box, rec, Allow("agent", "box1")]) as h:
        tok = await h.token("agent")
        status, body = await upload(h, tok, "target=box1&path=/tmp/blob.bin", pieces(BLOB), length=len(BLOB))
        assert status == 200, body
        assert body == {"ok": True, "path": "/tmp/blob.bin", "size": len(BLOB), "streamed": True}
        assert box.files[("box1", "/tmp/blob.bin")] == BLOB
        assert len(box.chunks_seen) > 1 and sum(box.chunks_seen) == len(BLOB)  # it arrived in pieces
        assert max(box.chunks_seen) <= BODY_HIGH_WATER + 256 * 1024

        response = await h.client.get("/api/file/raw?target=box1&path=/tmp/blob.bin", headers=auth(tok))
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(len(BLOB))
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert await response.get_data() == BLOB
        assert box.closed == ["/tmp/blob.bin"]
        assert [c[0] for c in box.calls] == ["write_stream", "open"]

        assert [(t, r) for t, r, _ in file_events(rec)] == [
            ("file_write", "pending"), ("file_write", "ok"), ("file_read", "pending"), ("file_read", "ok")]
        finals = [d for t, r, d in file_events(rec) if r == "ok"]
        assert [d["bytes"] for d in finals] == [len(BLOB), len(BLOB)]


async def test_backend_without_stream_hooks_gets_the_buffered_hooks(hub_harness, rec):
    box = TestBox()
    async with hub_harness(plugins=[box, rec]) as h:
        tok = await h.token("boss", admin=True)
        status, body = await upload(h, tok, "target=box1&path=/b.bin", pieces(BLOB))  # chunked
        assert status == 200 and body["size"] == len(BLOB), body
        assert box.files[("box1", "/b.bin")] == BLOB
        response = await h.client.get("/api/file/raw?target=box1&path=/b.bin", headers=auth(tok))
        assert response.status_code == 200 and response.headers["Content-Length"] == str(len(BLOB))
        assert await response.get_data() == BLOB
        assert [c[0] for c in box.calls] == ["write", "read"]
        assert [d.get("bytes") for t, r, d in file_events(rec) if r == "ok"] == [len(BLOB), len(BLOB)]


async def test_empty_file_streams_both_ways(hub_harness, box):
    async with hub_harness(plugins=[box]) as h:
        tok = await h.token("boss", admin=True)
        status, body = await upload(h, tok, "target=box1&path=/empty", [], length=0)
        assert status == 200 and body["size"] == 0
        assert box.files[("box1", "/empty")] == b""
        response = await h.client.get("/api/file/raw?target=box1&path=/empty", headers=auth(tok))
        assert response.status_code == 200 and response.headers["Content-Length"] == "0"
        assert await response.get_data() == b""


@pytest.mark.parametrize("length", [None, "declared"])
async def test_upload_past_the_limit_is_413_and_leaves_the_target_untouched(hub_harness, box, rec, length):
    async with hub_harness(plugins=[box, rec], limits={"file_max_bytes": 1000}) as h:
        tok = await h.token("boss", admin=True)
        box.files[("box1", "/keep")] = b"old content"
        parts = [b"x" * 400] * 5
        declared = 900 if length else None  # a client that lies about its length is cut off too
        status, body = await upload(h, tok, "target=box1&path=/keep", parts, length=declared)
        if length:
            # h11 would stop a body longer than its Content-Length; the test client does not,
            # so the hub's own count is what stops it
            assert status == 413, body
        assert status == 413 and body["code"] == "too_large", body
        assert box.files[("box1", "/keep")] == b"old content"
        assert box.temps == {}
        assert sum(box.chunks_seen) <= 1000 + 400
        events = file_events(rec)
        assert [(t, r) for t, r, _ in events] == [("file_write", "pending"), ("file_write", "error")]
        assert events[-1][2]["code"] == "too_large"


async def test_declared_length_over_the_limit_is_413_before_the_backend(hub_harness, box, rec):
    async with hub_harness(plugins=[box, rec], limits={"file_max_bytes": 1000}) as h:
        tok = await h.token("boss", admin=True)
        status, body = await upload(h, tok, "target=box1&path=/a", [b"x" * 10], length=5000)
        assert status == 413 and body["code"] == "too_large"
        assert box.calls == [] and box.temps == {}
        assert [(e[0], e[3]) for e in rec.events] == [("request", "denied")]  # the refusal is recorded


async def test_client_disconnect_mid_upload_removes_the_temporary_file(hub_harness, box, rec):
    async with hub_harness(plugins=[box, rec]) as h:
        tok = await h.token("boss", admin=True)
        box.files[("box1", "/keep")] = b"old content"
        await upload(h, tok, "target=box1&path=/keep", [b"y" * 1000] * 10, disconnect_after=5, pause=0.01)
        await eventually(lambda: file_events(rec) and file_events(rec)[-1][1] != "pending", timeout=1, interval=0.01)
        assert box.files[("box1", "/keep")] == b"old content"
        assert box.temps == {}
        assert 0 < sum(box.chunks_seen) <= 5000
        events = file_events(rec)
        assert [(t, r) for t, r, _ in events] == [("file_write", "pending"), ("file_write", "error")]
        assert events[-1][2]["code"] == "cancelled"


async def test_a_stalled_upload_is_408(hub_harness, box, rec):
    async with hub_harness(plugins=[box, rec], limits={"body_timeout": 0.3}) as h:
        tok = await h.token("boss", admin=True)
        headers = {**auth(tok), "Content-Type": "application/octet-stream"}
        async with h.client.request("/api/file/raw?target=box1&path=/slow", method="PUT",
                                    headers=headers) as connection:
            await connection.send(b"first part")
            # the hub answers while the client still holds the connection
            await eventually(lambda: connection.status_code is not None, timeout=2, interval=0.02)
            status = connection.status_code
            await connection.send_complete()
        response = await connection.as_response()
        assert status == 408, await response.get_data()
        assert (await response.get_json())["code"] == "request_timeout"
        assert ("box1", "/slow") not in box.files and box.temps == {}
        events = file_events(rec)
        assert [(t, r) for t, r, _ in events] == [("file_write", "pending"), ("file_write", "error")]
        assert events[-1][2]["code"] == "request_timeout"


async def test_upload_backpressure_holds_at_most_the_high_water_mark(hub_harness, box):
    """While the backend does not read, the hub stops taking the body from the client."""
    box.upload_gate = asyncio.Event()
    async with hub_harness(plugins=[box]) as h:
        tok = await h.token("boss", admin=True)
        headers = {**auth(tok), "Content-Type": "application/octet-stream"}
        part = b"z" * (64 * 1024)
        count = 64  # 4 MiB
        async with h.client.request("/api/file/raw?target=box1&path=/big", method="PUT",
                                    headers=headers) as connection:
            for _ in range(count):
                await connection.send(part)
            await connection.send_complete()
            await asyncio.sleep(0.3)
            # what the hub has not taken is still queued at the "client"
            taken = count + 1 - connection._send_queue.qsize()
            assert taken * len(part) <= BODY_HIGH_WATER + 2 * len(part), taken
            box.upload_gate.set()
        response = await connection.as_response()
        assert response.status_code == 200, await response.get_data()
        assert box.files[("box1", "/big")] == part * count


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_streams_are_authorized_and_denials_recorded(hub_harness, box, rec, method):
    async with hub_harness(plugins=[box, rec, Allow("agent", "box1")]) as h:
        tok = await h.token("agent")
        box.files[("box2", "/x")] = b"secret"
        if method == "PUT":
            status, body = await upload(h, tok, "target=box2&path=/x", [b"data"], length=4)
        else:
            status, body = await h.call("GET", "/api/file/raw?target=box2&path=/x", tok)
        assert status == 403 and body["code"] == "denied" and "agent -> box2" in body["error"]
        assert [(t, r) for t, r, _ in file_events(rec)] == [
            ("file_write" if method == "PUT" else "file_read", "denied")]
        assert box.calls == [] and box.files[("box2", "/x")] == b"secret"


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_streams_fail_closed_when_audit_cannot_be_written(hub_harness, box, rec, method):
    rec.fail_pending = True
    async with hub_harness(plugins=[box, rec]) as h:
        tok = await h.token("boss", admin=True)
        box.files[("box1", "/x")] = b"content"
        if method == "PUT":
            status, body = await upload(h, tok, "target=box1&path=/x", [b"data"], length=4)
        else:
            status, body = await h.call("GET", "/api/file/raw?target=box1&path=/x", tok)
        assert status == 503 and body["code"] == "audit_unavailable"
        assert box.calls == [] and box.files[("box1", "/x")] == b"content"


@pytest.mark.parametrize("path, status, code", [
    ("/missing", 404, "no_such_file"),
    ("/dir/", 400, "is_directory"),
    ("/big", 413, "too_large"),
])
async def test_download_errors_before_the_first_byte_are_json(hub_harness, box, rec, path, status, code):
    async with hub_harness(plugins=[box, rec], limits={"file_max_bytes": 100}) as h:
        tok = await h.token("boss", admin=True)
        box.files[("box1", "/big")] = b"b" * 101
        got, body = await h.call("GET", f"/api/file/raw?target=box1&path={path}", tok)
        assert (got, body["ok"], body["code"]) == (status, False, code)
        events = file_events(rec)
        assert [(t, r) for t, r, _ in events] == [("file_read", "pending"), ("file_read", "error")]
        assert events[-1][2]["code"] == code


@pytest.mark.parametrize("fault, code", [("fail", "testbox_gone"), ("short", "file_changed")])
async def test_a_download_that_fails_after_the_200_is_recorded_as_an_error(hub_harness, box, rec, fault, code):
    box.chunk = 1000
    if fault == "fail":
        box.fail_after = 3000
    else:
        box.short = True
    async with hub_harness(plugins=[box, rec]) as h:
        tok = await h.token("boss", admin=True)
        box.files[("box1", "/f")] = b"f" * 10_000
        async with h.client.request("/api/file/raw?target=box1&path=/f", headers=auth(tok)) as connection:
            await connection.send_complete()
        # the body is cut short: the client gets fewer bytes than Content-Length announced
        assert connection.status_code == 200
        assert int(connection.headers["Content-Length"]) == 10_000 + (10 if fault == "short" else 0)
        assert len(connection.response_data) < int(connection.headers["Content-Length"])
        assert box.closed == ["/f"]
        events = file_events(rec)
        assert [(t, r) for t, r, _ in events] == [("file_read", "pending"), ("file_read", "error")]
        assert events[-1][2]["code"] == code


async def test_a_client_that_goes_away_mid_download_is_recorded_and_the_stream_released(hub_harness, box, rec):
    box.chunk = 1000
    box.download_gate = asyncio.Event()
    async with hub_harness(plugins=[box, rec]) as h:
        tok = await h.token("boss", admin=True)
        box.files[("box1", "/f")] = b"g" * 10_000
        async with h.client.request("/api/file/raw?target=box1&path=/f", headers=auth(tok)) as connection:
            await connection.send_complete()
            first = await asyncio.wait_for(connection.receive(), 5)
            assert first == b"g" * 1000
            await connection.disconnect()
        await eventually(lambda: box.closed, timeout=1, interval=0.01)
        assert box.closed == ["/f"]
        events = file_events(rec)
        assert [(t, r) for t, r, _ in events] == [("file_read", "pending"), ("file_read", "error")]
        assert events[-1][2]["code"] == "client_gone"


async def test_file_stream_aclose_is_idempotent_and_runs_the_generator_cleanup():
    cleaned = []

    async def chunks():
        try:
            yield b"a"
            yield b"b"
        finally:
            cleaned.append("generator")

    closes = []

    async def close():
        closes.append(1)

    stream = FileStream(chunks(), size=2, close=close)
    assert await stream.__anext__() == b"a"
    await stream.aclose()
    await stream.aclose()
    assert cleaned == ["generator"] and closes == [1] and stream.closed
    assert [c async for c in stream] == []
    whole = FileStream.from_bytes(b"x" * 10, chunk_size=4)
    assert whole.size == 10 and [c async for c in whole] == [b"xxxx", b"xxxx", b"xx"]


async def test_head_answers_the_headers_without_reading_the_file(hub_harness, box, rec):
    box.fail_after = 0  # reading any of it would fail
    async with hub_harness(plugins=[box, rec]) as h:
        tok = await h.token("boss", admin=True)
        box.files[("box1", "/f")] = b"h" * 5000
        async with h.client.request("/api/file/raw?target=box1&path=/f", method="HEAD",
                                    headers=auth(tok)) as connection:
            await connection.send_complete()
        assert connection.status_code == 200 and connection.headers["Content-Length"] == "5000"
        assert bytes(connection.response_data) == b""
        assert box.closed == ["/f"]
        assert [(t, r, d.get("bytes")) for t, r, d in file_events(rec)] == [
            ("file_read", "pending", None), ("file_read", "ok", 0)]
        status, body = await h.call("HEAD", "/api/file/raw?target=box1&path=/missing", tok)
        assert status == 404


async def test_a_download_whose_body_is_never_sent_is_closed_and_recorded(hub_harness, box, rec, monkeypatch):
    from claude_net import Actor
    from claude_net.builtin import capabilities

    monkeypatch.setattr(capabilities, "STREAM_START_TIMEOUT", 0.2)
    async with hub_harness(plugins=[box, rec]) as h:
        box.files[("box1", "/f")] = b"n" * 100
        download = capabilities.Download(h.hub, Actor("boss", admin=True), "box1", "/f")
        stream = await download.open()
        assert stream.size == 100
        # the response never starts (say, the client vanished before the headers went out)
        with pytest.raises(Exception) as caught:
            await asyncio.wait_for(download.task, 5)
        assert getattr(caught.value, "code", None) == "not_sent"
        assert box.closed == ["/f"]
        events = file_events(rec)
        assert [(t, r) for t, r, _ in events] == [("file_read", "pending"), ("file_read", "error")]
        assert events[-1][2]["code"] == "not_sent"
