"""Plain data types shared by the core and plugins. No I/O, no heavy imports."""

from __future__ import annotations

import os
import re
import time
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

from .errors import BadRequest

NODE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
WILDCARD = "*"


def validate_node_name(name: object, *, field_name: str = "name", wildcard: bool = False) -> str:
    """Return ``name`` if it is a valid node name (or ``*`` when ``wildcard``), else raise 400."""
    if wildcard and name == WILDCARD:
        return WILDCARD
    if not isinstance(name, str) or not NODE_NAME_RE.fullmatch(name):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 70 else repr(name[:70] + "...")
        raise BadRequest(
            f"{field_name} {shown} is not a valid node name "
            "(lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters)",
            code="invalid_name",
        )
    return name


def validate_remote_path(path: object, *, field_name: str = "path") -> str:
    """A path inside a node: absolute, no NUL, no '..' component, bounded length."""
    if not isinstance(path, str) or not path:
        raise BadRequest(f"{field_name} must be a non-empty string", code="invalid_path")
    if "\x00" in path:
        raise BadRequest(f"{field_name} must not contain NUL bytes", code="invalid_path")
    if not path.startswith("/"):
        raise BadRequest(f"{field_name} must be absolute (start with '/'): {path[:100]!r}", code="invalid_path")
    if len(path.encode()) > 4096:
        raise BadRequest(f"{field_name} is longer than 4096 bytes", code="invalid_path")
    if ".." in path.split("/"):
        raise BadRequest(f"{field_name} must not contain '..' components", code="invalid_path")
    return path


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_second: tuple[int, str] = (-1, "")  # the last whole second isotime() formatted, and its text


def isotime(moment: datetime | None = None) -> str:
    """Fixed-width UTC ISO 8601 timestamp (``2026-11-26T18:42:32.123456Z``); sorts lexically in
    every database."""
    global _second
    if moment is None:  # now: the date and time of day are formatted once per second
        now = time.time()
        second, text = _second  # one tuple, so threads never see a second with another's text
        if int(now) != second:
            second = int(now)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            _second = (second, text)
        return f"{text}.{min(int((now - second) * 1e6), 999_999):06d}Z"
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def new_event_id() -> str:
    """32 hex digits: a nanosecond clock, then 64 random bits. Unique across replicas, and ids made
    later sort later, so the audit log's unique index on them grows at its end."""
    return f"{time.time_ns():016x}{os.urandom(8).hex()}"


@dataclass(frozen=True)
class Actor:
    """Who is acting. Always derived from an authenticated credential, never from a request field."""

    name: str
    admin: bool = False
    #: the channel the action came through: "http", "cli", "telegram", "mcp"
    via: str = "http"
    #: True only for legacy v1 messaging accepted without a token (opt-in, messaging only)
    unauthenticated: bool = False
    #: the public id of the token that authenticated this actor (None: the CLI, Telegram, v1):
    #: work admitted earlier checks that it still holds (:meth:`Hub.reauthorize`)
    token_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Node:
    """A machine the hub can reach. ``backend`` names the plugin that owns it."""

    name: str
    backend: str
    #: "running", "stopped", "reachable", "unreachable", "unknown", ...
    state: str = "unknown"
    #: whether exec/file calls are possible on this node at all (False for message-only nodes)
    capabilities: frozenset[str] = frozenset()
    #: backend-specific status (memory, processes, addresses, ...); JSON-serialisable
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecOptions:
    timeout: float
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    #: cap for stdout and for stderr, each, in bytes
    max_output: int = 1024 * 1024
    #: the agent whose fair share of what a backend bounds (threads, channels) this call counts
    #: against; None for the hub itself and for admins, whose calls count only against the totals
    source: str | None = None
    #: live output, for background jobs (docs/jobs.md): when set, the backend calls
    #: ``on_output("stdout" | "stderr", data)`` on the hub's event loop as the command's bytes
    #: arrive (within about a tenth of a second), each byte once and in order per stream, at most
    #: ``max_output`` bytes per stream, and still returns the whole :class:`ExecResult`. It must
    #: not block. A backend that cannot stream ignores it (the output then comes with the result).
    on_output: Callable[[str, bytes], None] | None = field(default=None, compare=False, repr=False)
    #: a hub-chosen id that the backend attaches to the command's processes (LXD and SSH: the
    #: environment variable ``CLAUDE_NET_EXEC``) so they can be found again later, by another
    #: process of the hub, through the ``reap_exec`` hook: a background job sets it, so a hub
    #: restarted after a crash can end the commands its previous life left running. ``None``: the
    #: backend names the processes its own way. Lowercase hex, 16 to 64 characters (it reaches
    #: scripts in the node): always generated by the hub, never caller input.
    tag: str | None = None

    #: what :attr:`tag` must match in full (backends check it again before it reaches a node)
    TAG_PATTERN: ClassVar[str] = r"[0-9a-f]{16,64}"

    def __post_init__(self) -> None:
        if self.tag is not None and not (isinstance(self.tag, str) and re.fullmatch(self.TAG_PATTERN, self.tag)):
            raise ValueError("ExecOptions.tag must be 16 to 64 lowercase hex characters")


@dataclass
class ExecResult:
    """What a backend's ``execute`` awaitable returns. Output is raw bytes; the core decodes it."""

    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    truncated: bool = False
    timed_out: bool = False
    duration_ms: float = 0.0


@dataclass(frozen=True)
class ReadOptions:
    max_size: int
    #: the node that asked (see :attr:`ExecOptions.source`)
    source: str | None = None


@dataclass(frozen=True)
class WriteOptions:
    max_size: int
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mkdirs: bool = False
    #: the node that asked (see :attr:`ExecOptions.source`)
    source: str | None = None


class FileStream:
    """A file's content as it is read: what an ``open_file_stream`` awaitable returns.

    ``size`` is the file's length in bytes when the backend knows it (the core sends it as
    ``Content-Length`` and checks that exactly that many bytes arrive), else ``None``. Iterate the
    stream (``async for chunk in stream``) for the bytes in order, in chunks of any size (a few
    hundred KiB to a MiB keep per-chunk overhead low and memory bounded). ``aclose()`` releases
    what the backend holds (a connection, a file handle, a temporary file): it closes the chunk
    iterator (an async generator's ``finally`` runs) and then awaits ``close()``. It is safe to call
    twice, after an error, and before or after a partial iteration; the core always calls it.

        async def chunks():
            while block := await handle.read(1 << 20):
                yield block

        return FileStream(chunks(), size=length, close=handle.close)
    """

    def __init__(self, chunks: AsyncIterable[bytes], *, size: int | None = None,
                 close: Callable[[], Awaitable[None] | None] | None = None) -> None:
        self.size = size
        self._chunks: AsyncIterator[bytes] = chunks.__aiter__()
        self._close = close
        self._closed = False

    @classmethod
    def from_bytes(cls, data: bytes, *, chunk_size: int = 1024 * 1024) -> FileStream:
        """A stream over bytes already in memory (what a backend without streaming returns)."""

        async def chunks() -> AsyncIterator[bytes]:
            view = memoryview(data)
            for start in range(0, len(data), chunk_size):
                yield bytes(view[start:start + chunk_size])

        return cls(chunks(), size=len(data))

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> FileStream:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Release the backend's resources; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if self._close is not None:
                result = self._close()
                if inspect.isawaitable(result):
                    await result

    async def __aenter__(self) -> FileStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class Grant:
    """An ``authorize`` answer that allows, with conditions (``True`` is ``Grant()``).

    ``ask``: the action runs only once an admin approved this one request (the approvals
    plugin files it and the caller waits, see docs/approvals.md). ``snapshot_before``: the hub
    snapshots the target container before the action runs (a failed snapshot refuses it).
    ``rule`` names the deciding rule for the record (e.g. ``"alpha -> box1"``).
    """

    ask: bool = False
    snapshot_before: bool = False
    rule: str | None = None


@dataclass(frozen=True)
class Decision:
    """What every ``authorize`` answer adds up to (:meth:`claude_net.hub.Hub.decide`)."""

    allowed: bool
    ask: bool = False
    snapshot_before: bool = False
    rule: str | None = None


ContainerOp = Literal["start", "stop", "snapshot", "restore", "list_snapshots"]
Result = Literal["pending", "ok", "denied", "error"]


@dataclass
class Event:
    """Something that happened (or is about to). Every action produces events; see docs/plugin-hooks.md.

    A guarded action emits one event with ``result="pending"`` before it runs and one with the
    final result (same ``id``) after. A denial emits a single event with ``result="denied"``.
    """

    type: str
    actor: str | None
    target: str | None = None
    detail: str = ""
    result: Result = "ok"
    via: str = "http"
    unauthenticated: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_event_id)
    time: str = field(default_factory=isotime)
    #: extra detail for live subscribers only (e.g. the start of an exec's output, for the
    #: Telegram echo). Never stored by the audit log and not part of :meth:`to_json`.
    transient: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: a progress notice for live subscribers only (a running job's output, say): the audit log
    #: does not store it; the action's own pending and final events are the record
    live_only: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "type": self.type,
            "from": self.actor,
            "target": self.target,
            "detail": self.detail,
            "result": self.result,
            "via": self.via,
            "unauthenticated": self.unauthenticated,
            "data": self.data,
        }


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    """An HTTP endpoint contributed by a plugin (or the core) through ``register_routes``.

    ``handler(request_ctx)`` is awaited with a :class:`claude_net.http.RequestContext` and returns
    a JSON-able dict (``"ok": True`` is added) or a Quart response (for streams).
    The core authenticates (unless ``auth=False``), checks ``admin``, parses and validates the
    body against ``body_schema`` and the query against ``query_schema`` (JSON Schema subset), and
    maps errors. Schemas also feed ``/api/openapi.json``.
    """

    method: str
    path: str
    handler: Handler
    summary: str = ""
    description: str = ""
    body_schema: Mapping[str, Any] | None = None
    query_schema: Mapping[str, Any] | None = None
    #: JSON Schema of each ``<name>`` path parameter, by name, for ``/api/openapi.json`` (the
    #: handler validates them; default: a string)
    path_schema: Mapping[str, Mapping[str, Any]] | None = None
    response_schema: Mapping[str, Any] | None = None
    auth: bool = True
    admin: bool = False
    #: maximum request body in bytes (None: the hub's default)
    max_body: int | None = None
    tags: Sequence[str] = ()
    #: a streaming response (SSE); documented as text/event-stream (and as JSON with
    #: ``response_schema`` as well, for a route that streams only when asked to)
    stream: bool = False
    #: the handler reads the request body itself, as raw bytes of this media type (no JSON parsing,
    #: no body schema); documented as a binary request body
    body_media_type: str | None = None
    #: media type of a successful answer that is not JSON (e.g. ``application/octet-stream``)
    response_media_type: str | None = None
    #: accept v1 clients that send only ``from`` and no token, when
    #: ``messaging.allow_unauthenticated`` is on (messaging routes only)
    legacy_v1: bool = False


@dataclass(frozen=True)
class Migration:
    """A versioned schema change owned by one plugin. Applied once, in (plugin, version) order.

    ``statements`` are portable SQL; ``{autoid}`` expands to the dialect's auto-increment
    primary key. ``postgresql`` optionally overrides the statements on PostgreSQL. A statement
    may also be an ``async`` callable ``step(tx, db)``, for a change SQL alone cannot say (the
    core's adoption of a v1 ``messages`` table inspects it first). A statement that fails stops
    the whole migration run: it is rolled back and a ``MigrationError`` names the plugin, the
    version and the statement.
    Migrations only add: existing tables of other plugins are never altered.
    """

    plugin: str
    version: int
    statements: Sequence[str]
    postgresql: Sequence[str] | None = None
    description: str = ""


@dataclass(frozen=True)
class Command:
    """A CLI verb contributed by ``register_commands``.

    ``configure(parser)`` adds arguments to an ``argparse`` sub-parser; ``run(args, ctx)`` does
    the work (may be async) and returns an exit code. Keep imports inside ``run``: the CLI must
    start fast.
    """

    name: str
    help: str
    configure: Callable[[Any], None]
    run: Callable[..., Any]
