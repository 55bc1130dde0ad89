"""A small backend plugin that lives in the tests: it proves the hook contract end to end.

It owns nodes ``box1``/``box2`` (running) and ``boxoff`` (stopped), keeps files in memory and
"executes" a tiny command language, so every core path (dispatch, errors, events) is exercised
without pretending to be LXD.
"""

from __future__ import annotations

import asyncio

from claude_net import (
    BadRequest,
    Conflict,
    ExecResult,
    FileStream,
    Node,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    hookimpl,
)

CAPS = frozenset({"exec", "file_read", "file_write", "container"})


class TestBox:
    __test__ = False
    __name__ = "testbox"

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.calls: list[tuple[str, str, object]] = []
        self.states = {"box1": "running", "box2": "running", "boxoff": "stopped"}
        self.snapshots: dict[str, list[str]] = {}
        self.gate: asyncio.Event | None = None
        self.down = False

    @hookimpl
    def list_nodes(self):
        if self.down:
            raise Unavailable("testbox daemon is down")
        return [Node(name, "testbox", state, CAPS, {"kind": "test"}) for name, state in self.states.items()]

    def _check(self, node):
        if self.states[node.name] != "running":
            raise Conflict(f"{node.name} is stopped; start it first", code="not_running")

    @hookimpl
    def execute(self, node, command, options):
        if node.backend != "testbox":
            return None

        async def run():
            self._check(node)
            self.calls.append(("exec", node.name, command))
            if command.startswith("sleep "):
                try:
                    await asyncio.wait_for(asyncio.sleep(float(command.split()[1])), options.timeout)
                except asyncio.TimeoutError:
                    return ExecResult(exit_code=None, stdout=b"partial", timed_out=True,
                                      duration_ms=options.timeout * 1000)
            if command == "wait-gate" and self.gate is not None:
                await self.gate.wait()
            if command.startswith("exit "):
                return ExecResult(exit_code=int(command.split()[1]), stderr=b"failed\n")
            if command.startswith("spew "):
                data = b"x" * int(command.split()[1])
                cap = options.max_output
                return ExecResult(exit_code=0, stdout=data[:cap], truncated=len(data) > cap)
            if command == "binary":
                return ExecResult(exit_code=0, stdout=b"\xff\xfe ok")
            if command == "env":
                return ExecResult(exit_code=0, stdout="\n".join(f"{k}={v}" for k, v in options.env.items()).encode())
            return ExecResult(exit_code=0, stdout=f"{node.name}: {command}\n".encode(), duration_ms=1.0)

        return run()

    def _stored(self, node, path: str, options) -> bytes:
        """The file's bytes, or what a backend raises for a directory, a missing or too large file."""
        if path.endswith("/"):
            raise BadRequest(f"{path} is a directory", code="is_directory")
        data = self.files.get((node.name, path))
        if data is None:
            raise NotFound(f"{path} does not exist on {node.name}", code="no_such_file")
        if len(data) > options.max_size:
            raise PayloadTooLarge("too large")
        return data

    @hookimpl
    def read_file(self, node, path, options):
        if node.backend != "testbox":
            return None

        async def run():
            self._check(node)
            self.calls.append(("read", node.name, path))
            return self._stored(node, path, options)

        return run()

    @hookimpl
    def write_file(self, node, path, data, options):
        if node.backend != "testbox":
            return None

        async def run():
            self._check(node)
            self.calls.append(("write", node.name, path))
            self.files[(node.name, path)] = data
            return {"mode": oct(options.mode) if options.mode is not None else None}

        return run()

    @hookimpl
    def container_op(self, node, op, args):
        if node.backend != "testbox":
            return None

        async def run():
            self.calls.append((op, node.name, dict(args)))
            if op == "start":
                self.states[node.name] = "running"
            elif op == "stop":
                self.states[node.name] = "stopped"
            elif op == "snapshot":
                name = args.get("snapshot") or "2026-01-01"
                self.snapshots.setdefault(node.name, []).append(name)
                return {"snapshot": name}
            elif op == "restore":
                if args["snapshot"] not in self.snapshots.get(node.name, []):
                    raise NotFound(f"{node.name} has no snapshot {args['snapshot']!r}", code="no_such_snapshot")
            elif op == "list_snapshots":
                return {"snapshots": self.snapshots.get(node.name, [])}
            return {}

        return run()


class StreamBox(TestBox):
    """TestBox with the stream hooks: files leave and arrive in chunks, uploads through a temporary entry.

    ``chunk`` is the size of the chunks downloads yield; ``fail_after`` makes a download raise
    once that many bytes were yielded; ``short`` makes it announce more bytes than it sends;
    ``download_gate`` holds a download after its first chunk, ``upload_gate`` an upload before
    its first chunk. ``temps`` holds uploads in progress, ``chunks_seen`` the size of every
    uploaded chunk, ``closed`` the paths whose download stream was released.
    """

    __name__ = "streambox"

    def __init__(self, chunk: int = 64 * 1024) -> None:
        super().__init__()
        self.chunk = chunk
        self.fail_after: int | None = None
        self.short = False
        self.download_gate: asyncio.Event | None = None
        self.upload_gate: asyncio.Event | None = None
        self.temps: dict[tuple[str, str], bytearray] = {}
        self.chunks_seen: list[int] = []
        self.closed: list[str] = []

    @hookimpl
    def open_file_stream(self, node, path, options):
        if node.backend != "testbox":
            return None

        async def run():
            self._check(node)
            self.calls.append(("open", node.name, path))
            data = self._stored(node, path, options)

            async def chunks():
                for start in range(0, len(data), self.chunk):
                    if self.fail_after is not None and start >= self.fail_after:
                        raise Unavailable("the testbox daemon went away", code="testbox_gone")
                    if start and self.download_gate is not None:
                        await self.download_gate.wait()
                    yield data[start:start + self.chunk]

            return FileStream(chunks(), size=len(data) + (10 if self.short else 0),
                              close=lambda: self.closed.append(path))

        return run()

    @hookimpl
    def write_file_stream(self, node, path, chunks, options):
        if node.backend != "testbox":
            return None

        async def run():
            self._check(node)
            self.calls.append(("write_stream", node.name, path))
            temp = (node.name, f"{path}.tmp")
            self.temps[temp] = bytearray()
            try:
                if self.upload_gate is not None:
                    await self.upload_gate.wait()
                async for chunk in chunks:
                    self.chunks_seen.append(len(chunk))
                    self.temps[temp] += chunk
                self.files[(node.name, path)] = bytes(self.temps[temp])
            finally:
                del self.temps[temp]
            return {"streamed": True}

        return run()


class Recorder:
    """Records every event it sees; can be told to fail like an unwritable audit log."""

    __name__ = "recorder"

    def __init__(self) -> None:
        self.events = []
        #: (type, result, data) of every event as it was emitted
        self.details = []
        self.fail_pending = False

    @hookimpl
    def on_event(self, event):
        from claude_net import AuditError

        if self.fail_pending and event.result == "pending":
            raise AuditError("disk full")
        self.events.append((event.type, event.actor, event.target, event.result, event.id))
        self.details.append((event.type, event.result, dict(event.data)))


class Allow:
    """A policy that allows one (source, target) pathway for exec and files."""

    __name__ = "allow"

    def __init__(self, source: str, target: str) -> None:
        self.source, self.target = source, target

    @hookimpl
    def authorize(self, actor, action, target):
        if action in ("exec", "file_read", "file_write") and (actor.name, target) == (self.source, self.target):
            return True
        return None


class BoxBackend:
    """A test backend plugin: owns ``names``; exec echoes, files live in a dict; records every call.

    ``gate`` (an asyncio.Event) makes exec wait until it is set; ``started`` is set when an exec
    reaches the backend.
    """

    CAPS = frozenset({"exec", "file_read", "file_write", "container"})

    def __init__(self, names=("box1", "box2")):
        self.names = tuple(names)
        self.calls: list[tuple[str, str, str]] = []
        self.files: dict[tuple[str, str], bytes] = {}
        self.gate: asyncio.Event | None = None
        self.started: asyncio.Event | None = None
        self.fail: Exception | None = None

    def _mine(self, node) -> bool:
        return node.backend == "testbox" and node.name in self.names

    @hookimpl
    def list_nodes(self):
        return [Node(n, backend="testbox", state="running", capabilities=self.CAPS) for n in self.names]

    @hookimpl
    def execute(self, node, command, options):
        if not self._mine(node):
            return None
        return self._exec(node, command)

    async def _exec(self, node, command):
        self.calls.append(("exec", node.name, command))
        if self.started is not None:
            self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return ExecResult(exit_code=0, stdout=f"{node.name}: {command}".encode(), duration_ms=1.0)

    @hookimpl
    def read_file(self, node, path, options):
        if not self._mine(node):
            return None
        return self._read(node, path)

    async def _read(self, node, path):
        self.calls.append(("file_read", node.name, path))
        try:
            return self.files[(node.name, path)]
        except KeyError:
            raise NotFound(f"{path} does not exist on {node.name}") from None

    @hookimpl
    def write_file(self, node, path, data, options):
        if not self._mine(node):
            return None
        return self._write(node, path, data)

    async def _write(self, node, path, data):
        self.calls.append(("file_write", node.name, path))
        self.files[(node.name, path)] = data
        return None

    @hookimpl
    def container_op(self, node, op, args):
        if not self._mine(node):
            return None
        return self._op(node, op)

    async def _op(self, node, op):
        self.calls.append(("container", node.name, op))
        return {"state": "running" if op != "stop" else "stopped"}
