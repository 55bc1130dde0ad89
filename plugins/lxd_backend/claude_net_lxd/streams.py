"""Streamed file transfers with LXD: HTTP/1.1 over the daemon's unix socket, on the event loop.

pylxd and requests send and read a body whole: a 50 MiB file through them costs 50 MiB (or
more) of the hub's memory and holds a worker thread for the whole transfer, and the client's
leg of the transfer cannot overlap LXD's. Here a file goes through asyncio streams in chunks:
nothing blocks the event loop, no thread is held, and there is backpressure both ways (we read
from LXD only as fast as the client takes the bytes, and take the client's bytes only as fast
as LXD accepts them), so the hub holds a few MiB per transfer whatever the file's size.

One connection per exchange (a connect to a unix socket costs ~0.1 ms; a transfer is long), and
every wait (connect, each write, each read) is bounded by the ``[lxd]`` timeouts. Only the local
unix socket is spoken to this way; for an https endpoint :meth:`LxdBackend.streams` is ``None``
and the hub uses the buffered hooks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from urllib.parse import quote, urlencode

from claude_net import Unavailable

from .transport import RestError

#: bytes per chunk handed up the stack on downloads (and the reader's buffer limit)
CHUNK = 1024 * 1024
#: largest response head (status line and headers) accepted from LXD
MAX_HEAD = 64 * 1024


class StreamConnection:
    """One HTTP/1.1 request/response with LXD on its own connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeout: float,
                 shown: str) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.shown = shown
        self.status = 0
        self.headers: dict[str, str] = {}
        self._remaining: int | None = None  # body bytes left (Content-Length), None: chunked or until EOF
        self._chunked = False
        self._chunk_left = 0
        self._body_done = False

    # -- request ------------------------------------------------------------------------------

    async def send_head(self, method: str, target: str, headers: Mapping[str, str]) -> None:
        lines = [f"{method} {target} HTTP/1.1", "Host: lxd", "User-Agent: claude-net"]
        if "Connection" not in headers:
            lines.append("Connection: close")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self._drain()

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except TimeoutError:
            raise Unavailable(f"the LXD daemon at {self.shown} took no data for {self.timeout:g}s",
                              code="lxd_timeout") from None

    async def send_chunk(self, data: bytes) -> None:
        """One chunk of a ``Transfer-Encoding: chunked`` body (waits while LXD is behind)."""
        # three writes, not writelines(): that joins the pieces, a copy of every byte
        self.writer.write(b"%x\r\n" % len(data))
        self.writer.write(data)
        self.writer.write(b"\r\n")
        await self._drain()

    async def end_chunks(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self._drain()

    async def send_chunked(self, chunks: AsyncIterable[bytes]) -> int:
        """Send every chunk of ``chunks`` as a chunked body; returns the byte count."""
        sent = 0
        async for chunk in chunks:
            if chunk:
                await self.send_chunk(chunk)
                sent += len(chunk)
        await self.end_chunks()
        return sent

    # -- response -----------------------------------------------------------------------------

    async def read_head(self) -> int:
        """Read the status line and headers; returns the status."""
        try:
            async with asyncio.timeout(self.timeout):
                head = await self.reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            raise Unavailable(f"the LXD daemon at {self.shown} did not answer within {self.timeout:g}s",
                              code="lxd_timeout") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            raise Unavailable(f"the LXD daemon at {self.shown} closed the connection without an answer "
                              f"({type(exc).__name__})", code="lxd_unavailable") from None
        lines = head.decode("latin-1").split("\r\n")
        try:
            self.status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise Unavailable(f"unexpected answer from the LXD daemon at {self.shown}: {lines[0][:100]!r}",
                              code="lxd_unavailable") from None
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in self.headers:
            self._remaining = int(self.headers["content-length"])
        self._body_done = self._remaining == 0
        return self.status

    @property
    def length(self) -> int | None:
        """The body's announced length (None: chunked or until the connection closes)."""
        return int(self.headers["content-length"]) if "content-length" in self.headers and not self._chunked else None

    async def _read(self, most: int) -> bytes:
        """Up to ``most`` bytes of the body (at least one, unless it is over)."""
        if self._body_done:
            return b""
        async with asyncio.timeout(self.timeout):
            if self._chunked:
                if self._chunk_left == 0:
                    size_line = await self.reader.readuntil(b"\r\n")
                    self._chunk_left = int(size_line.split(b";", 1)[0].strip(), 16)
                    if self._chunk_left == 0:
                        with contextlib.suppress(asyncio.IncompleteReadError):
                            while (await self.reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                                pass
                        self._body_done = True
                        return b""
                data = await self.reader.readexactly(min(most, self._chunk_left))
                self._chunk_left -= len(data)
                if self._chunk_left == 0:
                    await self.reader.readexactly(2)  # CRLF after the chunk
                return data
            if self._remaining is None:  # until EOF
                data = await self.reader.read(most)
                if not data:
                    self._body_done = True
                return data
            data = await self.reader.readexactly(min(most, self._remaining))
            self._remaining -= len(data)
            if self._remaining == 0:
                self._body_done = True
            return data

    async def read_some(self, most: int) -> bytes:
        try:
            return await self._read(most)
        except TimeoutError:
            raise Unavailable(f"the LXD daemon at {self.shown} sent nothing for {self.timeout:g}s",
                              code="lxd_timeout") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as exc:
            raise Unavailable(f"the LXD daemon at {self.shown} broke off the transfer ({type(exc).__name__})",
                              code="lxd_unavailable") from None

    async def read_body(self, limit: int) -> bytes:
        """The body, or its first ``limit`` bytes (for small answers: errors, symlink targets)."""
        data = bytearray()
        while len(data) < limit:
            block = await self.read_some(limit - len(data))
            if not block:
                break
            data += block
        return bytes(data)

    async def iter_body(self, chunk: int = CHUNK) -> AsyncIterator[bytes]:
        while block := await self.read_some(chunk):
            yield block

    async def error(self) -> RestError:
        """The error answer as a :class:`RestError` with LXD's message."""
        data = await self.read_body(65536)
        try:
            message = json.loads(data).get("error") or f"HTTP {self.status}"
        except ValueError:
            message = f"HTTP {self.status}"
        return RestError(self.status, message)

    # -- end ----------------------------------------------------------------------------------

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    async def abandon(self) -> None:
        """End an unfinished request and wait (bounded) until LXD is done with it.

        Our side of the connection is shut without the body's last chunk, so LXD sees a broken
        body, fails the request and answers or closes; only then is the request really over
        (e.g. before a half-written file is removed).
        """
        try:
            if self.writer.can_write_eof() and not self.writer.is_closing():
                self.writer.write_eof()
            async with asyncio.timeout(self.timeout):
                while await self.reader.read(65536):
                    pass
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writer.close()


class LxdStreams:
    """Opens :class:`StreamConnection` s to the LXD daemon's unix socket."""

    def __init__(self, socket_path: str, *, project: str, connect_timeout: float, request_timeout: float) -> None:
        self.socket_path = socket_path
        self.project = project if project and project != "default" else None
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout

    def files_url(self, name: str, path: str) -> str:
        query = {"path": path}
        if self.project:
            query["project"] = self.project
        return f"/1.0/instances/{quote(name, safe='')}/files?{urlencode(query)}"

    async def connect(self) -> StreamConnection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=CHUNK)
        except TimeoutError:
            raise Unavailable(f"the LXD daemon at {self.socket_path} did not answer within "
                              f"{self.connect_timeout:g}s", code="lxd_timeout") from None
        except OSError as exc:
            raise Unavailable(f"the LXD daemon at {self.socket_path} is not reachable "
                              f"({exc.strerror or exc}); is it running?", code="lxd_unavailable") from None
        return StreamConnection(reader, writer, timeout=self.request_timeout, shown=self.socket_path)

    async def request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                      body: bytes = b"") -> StreamConnection:
        """Send a request with a small body; returns the connection with the response head read."""
        conn = await self.connect()
        try:
            await conn.send_head(method, url, {**(headers or {}), "Content-Length": str(len(body))}
                                 if method != "GET" else dict(headers or {}))
            if body:
                conn.writer.write(body)
                await conn._drain()
            await conn.read_head()
        except BaseException:
            conn.close()
            raise
        return conn

    async def upload(self, conn: StreamConnection, url: str, headers: Mapping[str, str],
                     chunks: AsyncIterable[bytes]) -> int:
        """POST ``chunks`` as a chunked body on ``conn``; returns the bytes sent or raises RestError.

        If LXD answers before the body is complete (an error: it closes the connection), the
        failed write is followed by a look at its answer, which is what gets raised.
        """
        await conn.send_head("POST", url, {**headers, "Transfer-Encoding": "chunked"})
        try:
            sent = await conn.send_chunked(chunks)
        except (ConnectionError, Unavailable) as exc:
            early = await self._early_answer(conn)
            if early is not None:
                raise early from None
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(f"the LXD daemon at {self.socket_path} closed the connection during the upload",
                              code="lxd_unavailable") from None
        status = await conn.read_head()
        if status >= 400:
            raise await conn.error()
        await conn.read_body(65536)
        return sent

    async def exec_status(self, name: str, argv: list[str], timeout: float) -> int | None:
        """Run ``argv`` in ``name`` (root, no output recorded) and return its exit status.

        Two requests on the event loop (the exec, then its operation's wait): no worker thread is
        held. ``None``: it did not end within ``timeout`` seconds. Raises :class:`RestError` when
        LXD refuses the exec.
        """
        body = json.dumps({"command": argv, "environment": {}, "interactive": False,
                           "wait-for-websocket": False, "record-output": False, "user": 0, "group": 0}).encode()
        query = f"?{urlencode({'project': self.project})}" if self.project else ""
        conn = await self.request("POST", f"/1.0/instances/{quote(name, safe='')}/exec{query}",
                                  {"Content-Type": "application/json"}, body)
        try:
            if conn.status >= 400:
                raise await conn.error()
            op_id = (json.loads(await conn.read_body(1 << 20)).get("metadata") or {})["id"]
        finally:
            conn.close()
        conn = await self.request("GET", f"/1.0/operations/{quote(op_id, safe='')}/wait?"
                                         f"{urlencode({'timeout': max(1, int(timeout))})}")
        try:
            if conn.status >= 400:
                raise await conn.error()
            op = json.loads(await conn.read_body(1 << 20)).get("metadata") or {}
        finally:
            conn.close()
        if op.get("status_code") == 103:  # still running
            return None
        return (op.get("metadata") or {}).get("return")

    async def _early_answer(self, conn: StreamConnection) -> RestError | None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                if await conn.read_head() >= 400:
                    return await conn.error()
        return None


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked WebSocket frame (a client's frames must be masked)."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (length // 4 + 1))[:length], "big")) \
        .to_bytes(length, "big") if length else b""
    return head + mask + masked


class WaitingExec:
    """A command started in the container ahead of time that waits for one line on its stdin.

    LXD's exec with ``wait-for-websocket``: one POST, then a WebSocket per stream (stdin, stdout,
    stderr, control); LXD starts the command once they are connected. :meth:`start` does that
    (typically while something else runs, e.g. an upload); :meth:`finish` sends the line and
    waits for the exit code; :meth:`close` ends everything, so a command still waiting reads EOF
    and gives up. The exec's own cost (a process spawned in the container, 10-50 ms) is then
    paid while the upload is still running instead of after it.
    """

    def __init__(self, streams: LxdStreams, name: str, argv: list[str]) -> None:
        self.streams = streams
        self.name = name
        self.argv = argv
        self.op_id: str | None = None
        self.sockets: dict[str, StreamConnection] = {}
        self.sent = False

    async def start(self) -> None:
        body = json.dumps({"command": self.argv, "environment": {}, "interactive": False,
                           "wait-for-websocket": True, "record-output": False, "user": 0, "group": 0}).encode()
        query = f"?{urlencode({'project': self.streams.project})}" if self.streams.project else ""
        conn = await self.streams.request("POST", f"/1.0/instances/{quote(self.name, safe='')}/exec{query}",
                                          {"Content-Type": "application/json"}, body)
        try:
            if conn.status >= 400:
                raise await conn.error()
            answer = json.loads(await conn.read_body(1 << 20))
        finally:
            conn.close()
        meta = answer.get("metadata") or {}
        self.op_id = meta["id"]
        for fd, secret in (meta.get("metadata") or {}).get("fds", {}).items():
            self.sockets[fd] = await self._websocket(f"/1.0/operations/{self.op_id}/websocket?"
                                                     f"{urlencode({'secret': secret})}")

    async def _websocket(self, url: str) -> StreamConnection:
        conn = await self.streams.connect()
        try:
            await conn.send_head("GET", url, {"Connection": "Upgrade", "Upgrade": "websocket",
                                              "Sec-WebSocket-Version": "13",
                                              "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()})
            if await conn.read_head() != 101:
                raise await conn.error()
        except BaseException:
            conn.close()
            raise
        return conn

    async def finish(self, line: bytes) -> int | None:
        """Send ``line`` on stdin, close it, and wait for the command's exit code."""
        stdin = self.sockets["0"]
        self.sent = True
        stdin.writer.write(ws_frame(0x2, line) + ws_frame(0x8, struct.pack("!H", 1000)))
        await stdin._drain()
        conn = await self.streams.request("GET", f"/1.0/operations/{self.op_id}/wait?"
                                                 f"{urlencode({'timeout': int(self.streams.request_timeout)})}")
        try:
            if conn.status >= 400:
                raise await conn.error()
            op = (json.loads(await conn.read_body(1 << 20)).get("metadata") or {})
        finally:
            conn.close()
        if op.get("status_code") == 103:  # still running
            raise Unavailable(f"LXD did not finish the command within {self.streams.request_timeout:g}s",
                              code="lxd_timeout")
        return (op.get("metadata") or {}).get("return")

    async def abort(self, timeout: float = 10.0) -> None:
        """Close stdin without the line (the command reads EOF and gives up) and wait until it has ended.

        Closing the connections alone would make LXD kill the command before it cleaned up.
        """
        if self.sent or self.op_id is None or "0" not in self.sockets:
            return
        self.sent = True
        with contextlib.suppress(Exception):
            stdin = self.sockets["0"]
            stdin.writer.write(ws_frame(0x8, struct.pack("!H", 1000)))
            await stdin._drain()
            conn = await self.streams.request("GET", f"/1.0/operations/{self.op_id}/wait?"
                                                     f"{urlencode({'timeout': int(timeout)})}")
            conn.close()  # the answer came: the command has ended

    def close(self) -> None:
        for conn in self.sockets.values():
            conn.close()
