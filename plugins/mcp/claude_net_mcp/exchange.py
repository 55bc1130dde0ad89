"""The hot path of ``/mcp``: a tool call answered in one exchange, and tools reaching the API in-process.

Measured (bench/bench_mcp_cost.py), a ``claude_net_send`` over ``/mcp`` cost the hub 4.4x the CPU of
the ``POST /api/send`` it wraps. Most of the difference was machinery around the call, not the call:

* the SDK's stateless streamable HTTP transport builds, for every POST, a transport, a JSON-RPC
  dispatcher with its task group and memory streams, and an SSE response (sse_starlette: three more
  tasks and several socket writes) — for one request and one answer;
* the tools reached the API through ``httpx.ASGITransport``: an HTTP client's request and response
  objects around an in-process call, and (with ``sniffio`` not installed) a failed ``import sniffio``,
  each a walk of ``sys.path``, several times per request.

:class:`ToolCallExchange` answers the common message — one ``tools/call`` request POSTed without a
session, at a handshake-era protocol version — itself, the way the SDK's own single-exchange entry
answers a 2026-07-28 request: the SDK's :func:`mcp.server.runner.serve_one` runs the same server,
middleware and tool (arguments validated by the tool's schema, errors mapped as the SDK maps them),
and the answer is one JSON body. A call whose client asked for progress (``_meta.progressToken``)
gets an SSE stream as soon as the tool sends its first notification (a call that finishes first still
gets JSON); pings keep a silent stream open. Everything else (initialize, notifications, lists,
sessions, other versions, malformed bodies) goes to the SDK's session manager unchanged, with the body
replayed.

:class:`InProcessClient` is :class:`~claude_net_mcp.client.HubClient`'s interface onto the hub's ASGI
app directly: the same request (path, query, JSON body, the caller's bearer token) through the same
routing, authentication, validation, authorization and recording, without an HTTP client.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import anyio
from mcp.server.runner import serve_one
from mcp.server.connection import Connection
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data, progress_token_from_params
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import ErrorData
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request

from .client import HubCallError

log = logging.getLogger("claude_net_mcp")

VIA_SCOPE_KEY = "claude_net.via"  # claude_net.http.VIA_SCOPE_KEY (kept literal: http imports Quart)
#: seconds a progress stream may stay silent before a keepalive comment (as the SDK's own SSE paths)
PING_INTERVAL = 15.0
#: bodies above this go to the SDK (which applies its own limit); a tool call is a few hundred bytes
FAST_BODY_MAX = 1024 * 1024
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform"),
                (b"connection", b"keep-alive"), (b"x-accel-buffering", b"no")]


def skip_absent_sniffio() -> None:
    """Make the failed ``import sniffio`` of httpx/httpcore instant when sniffio is not installed.

    Both libraries try it on every request (to tell trio from asyncio); Python does not remember a
    failed import, so each try searches every ``sys.path`` entry again (measured: about 15% of the
    stdio server's CPU per tool call). ``sys.modules[name] = None`` is Python's documented way to
    make an import fail at once; it changes nothing when sniffio is installed (then it is left alone).
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# Tools -> the hub's API, in-process
# ---------------------------------------------------------------------------------------------


class InProcessClient:
    """Calls ``/api/...`` on the hub's own ASGI app; answers and errors exactly as :class:`HubClient`."""

    def __init__(self, app: Any, *, timeout: float = 60.0, where: str = "the hub's own API") -> None:
        self.app = app
        self.url = "(in-process)"
        self.timeout = timeout
        self.where = where

    async def call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                   token: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        wait = self.timeout if timeout is None else timeout
        query = urlencode({k: _query_value(v) for k, v in (params or {}).items() if v is not None})
        headers = [(b"host", b"claude-net.internal"), (b"user-agent", b"claude-net-mcp (in-process)")]
        if token is not None:
            headers.append((b"authorization", f"Bearer {token}".encode("latin-1")))
        body = b""
        if json is not None:
            body = _dumps(json)
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": query.encode(), "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 0), "server": ("claude-net.internal", 80), VIA_SCOPE_KEY: "mcp"}
        done = asyncio.Event()
        sent_body = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        try:
            async with asyncio.timeout(wait):
                await self.app(scope, receive, send)
        except TimeoutError:
            raise HubCallError(0, "hub_timeout", f"{self.where} did not answer within {wait:g}s") from None
        finally:
            done.set()
        try:
            answer = _loads(b"".join(chunks))
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise HubCallError(status, "bad_answer", f"{self.where} answered {method} {path} with HTTP {status} "
                                                     "and no JSON")
        if status >= 400 or answer.get("ok") is False:
            raise HubCallError(status, str(answer.get("code") or "error"),
                               str(answer.get("error") or f"HTTP {status}"), answer)
        return answer


def _dumps(value: Any) -> bytes:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: escaped, the hub refuses it as it would from any client
        return json.dumps(value, separators=(",", ":")).encode()


def _loads(data: bytes) -> Any:
    return json.loads(data) if data else None


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


# ---------------------------------------------------------------------------------------------
# One tools/call, one exchange
# ---------------------------------------------------------------------------------------------


class _Exchange:
    """The dispatch context of one tool call (the SDK's ``DispatchContext`` protocol): no back-channel for
    server requests (stateless: a reply would have nowhere to land); notifications go to ``sink`` when the
    client asked for progress, else nowhere."""

    def __init__(self, request: Request, request_id: Any, progress_token: Any) -> None:
        self.transport = TransportContext(kind="streamable-http", can_send_request=False, headers=request.headers)
        self.request_id = request_id
        self.message_metadata = ServerMessageMetadata(request_context=request, can_send_request=False)
        self.progress_token = progress_token
        self.cancel_requested = anyio.Event()
        self.can_send_request = False
        self.sink: anyio.abc.ObjectSendStream[bytes] | None = None

    async def send_raw_request(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> dict:
        raise NoBackChannelError(method)

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> None:
        if self.sink is None:
            return
        message = {"jsonrpc": "2.0", "method": method, **({"params": dict(params)} if params is not None else {})}
        try:
            await self.sink.send(_sse(message))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.debug("dropped %s: the response stream is closed", method)

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        if self.progress_token is None:
            return
        params: dict[str, Any] = {"progressToken": self.progress_token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self.notify("notifications/progress", params)


def _sse(message: Mapping[str, Any]) -> bytes:
    return b"event: message\r\ndata: " + json.dumps(message, separators=(",", ":")).encode() + b"\r\n\r\n"


class ToolCallExchange:
    """Answers a stateless ``tools/call`` POST itself (see the module's docstring); anything else is the SDK's."""

    def __init__(self, servers: Mapping[bool, Any], lifespan_state: Any) -> None:
        self.servers = servers
        self.lifespan_state = lifespan_state
        #: tool calls answered here, and requests passed on to the SDK (for tests and the bench)
        self.answered = 0
        self.passed = 0

    async def handle(self, admin: bool, scope: dict[str, Any], receive: Any, send: Any, fallback: Any) -> None:
        """Serve one request of a caller (``admin``: which server); ``fallback(scope, receive, send)`` is the
        SDK's session manager."""
        decoded = None
        body = b""
        if scope.get("method") == "POST":
            headers = dict(scope.get("headers") or ())
            version = headers.get(b"mcp-protocol-version", b"").decode("latin-1")
            length = headers.get(b"content-length", b"")
            if (version in HANDSHAKE_PROTOCOL_VERSIONS and b"mcp-session-id" not in headers
                    and headers.get(b"content-type", b"").split(b";")[0].strip().lower() == b"application/json"
                    and length.isdigit() and int(length) <= FAST_BODY_MAX):
                body, more = await _read_body(receive, int(length))
                if more is not None:  # the client went away, or sent more than it announced
                    await fallback(scope, _replay(body, more, receive), send)
                    self.passed += 1
                    return
                decoded = _tool_call(body)
        if decoded is None:
            self.passed += 1
            await fallback(scope, _replay(body, None, receive) if body else receive, send)
            return
        request = Request(scope, receive)
        has_json, has_sse = check_accept_headers(request)
        if not (has_json and has_sse):  # the SDK answers 406 with its own wording
            self.passed += 1
            await fallback(scope, _replay(body, None, receive), send)
            return
        self.answered += 1
        # the low-level server the SDK's session manager serves (MCPServer wraps it)
        await self._answer(self.servers[admin].session_manager.app, request, decoded, version, scope, receive, send)

    async def _answer(self, server: Any, request: Request, message: dict[str, Any], version: str,
                      scope: dict[str, Any], receive: Any, send: Any) -> None:
        request_id, params = message["id"], message.get("params")
        exchange = _Exchange(request, request_id, progress_token_from_params(params))

        async def run() -> dict[str, Any]:
            connection = Connection.from_envelope(version, None, None)
            try:
                result = await serve_one(server, exchange, "tools/call", params, connection=connection,
                                         lifespan_state=self.lifespan_state)
            except Exception as exc:  # noqa: BLE001 - the JSON-RPC error the SDK's dispatcher would write
                error = handler_exception_to_error_data(exc)
                if error is None:
                    log.exception("tools/call raised")
                    error = ErrorData(code=0, message=str(exc))
                return {"jsonrpc": "2.0", "id": request_id,
                        "error": error.model_dump(mode="json", by_alias=True, exclude_none=True)}
            return {"jsonrpc": "2.0", "id": request_id, "result": result}

        if exchange.progress_token is None:
            await _json(send, await run())
            return
        # Progress asked for: JSON if the tool finishes before it says anything, else an SSE stream of
        # its notifications and then the answer; the call is cancelled if the client goes away.
        sink, source = anyio.create_memory_object_stream[bytes](16)
        exchange.sink = sink
        answer: list[dict[str, Any]] = []

        async def produce() -> None:
            async with sink:
                answer.append(await run())

        async def watch_disconnect(cancel: anyio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            cancel.cancel()

        async with source, anyio.create_task_group() as tg:
            tg.start_soon(produce)
            tg.start_soon(watch_disconnect, tg.cancel_scope)
            first: bytes | None = None
            finished = False
            with anyio.move_on_after(PING_INTERVAL):
                try:
                    first = await source.receive()
                except anyio.EndOfStream:
                    finished = True
            if finished:
                await _json(send, answer[0])
            else:
                await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
                while not finished:
                    await send({"type": "http.response.body", "body": first or b": ping\r\n\r\n", "more_body": True})
                    first = None
                    with anyio.move_on_after(PING_INTERVAL):
                        try:
                            first = await source.receive()
                        except anyio.EndOfStream:
                            finished = True
                await send({"type": "http.response.body", "body": _sse(answer[0]), "more_body": False})
            tg.cancel_scope.cancel()


def _tool_call(body: bytes) -> dict[str, Any] | None:
    """The decoded body if it is one well-formed ``tools/call`` request, else None (the SDK decides)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or message.get("method") != "tools/call":
        return None
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        return None
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("name"), str) or set(message) - {
            "jsonrpc", "id", "method", "params"}:
        return None
    return message


async def _read_body(receive: Any, length: int) -> tuple[bytes, list[dict[str, Any]] | None]:
    """The announced body, or what came and the messages to replay when it is not exactly that."""
    pieces: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(pieces), [message]
        piece = message.get("body", b"")
        pieces.append(piece)
        size += len(piece)
        if size > length:
            return b"".join(pieces), [{"type": "http.request", "body": b"", "more_body": message.get("more_body")}]
        if not message.get("more_body", False):
            return b"".join(pieces), None


def _replay(body: bytes, pending: list[dict[str, Any]] | None, receive: Any) -> Any:
    """A ``receive`` that hands out ``body`` (already read) first, then whatever was pending, then the rest."""
    queue: list[dict[str, Any]] = [{"type": "http.request", "body": body,
                                    "more_body": bool(pending and pending[0].get("more_body"))}]
    if pending and pending[0]["type"] != "http.request":
        queue = [{"type": "http.request", "body": body, "more_body": False}, *pending]

    async def replay() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        return await receive()

    return replay


async def _json(send: Any, message: Mapping[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
