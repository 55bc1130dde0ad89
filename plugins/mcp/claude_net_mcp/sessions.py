"""A cap on the stateful MCP sessions one node holds (``[mcp] max_sessions_per_node``).

Every stateful session costs the hub a transport, a server task and its streams until the client
deletes it or it idles out. Without a per-node cap one token could open thousands (the SDK's only
limit is hub-wide, so one agent reaching it would lock every other agent out). Here each node
has at most ``cap`` sessions:

* a request that would open a session beyond the cap first closes that node's least recently
  used **idle** session (no request in flight, no open event stream) — a client that forgets to
  delete its sessions, or reconnects after a crash, keeps working and only ever loses its own
  oldest session (which answers 404 from then on; MCP clients open a new one);
* if every one of its sessions is busy, the new one is refused with 429 ``too_many_sessions``.

Only the transport's public surface is used: the session id comes from the response header of the
request that opened it, activity is seen on the requests that pass through here, and a session is
closed the way a client closes it (a DELETE with its id and its owner's identity).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

SESSION_HEADER = b"mcp-session-id"
VERSION_HEADER = b"mcp-protocol-version"
#: a session the transport has not seen for its idle timeout plus this margin has expired there
EXPIRY_MARGIN = 5.0
#: seconds a close (made to room for a new session) may take before it is given up
CLOSE_TIMEOUT = 10.0

log = logging.getLogger("claude_net_mcp")

Handler = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@dataclass
class _Session:
    handler: Handler  # the session manager that holds it
    user: Any  # the identity that opened it: needed to close it as its owner would
    last_used: float
    in_flight: int = 0


class SessionLimitReached(Exception):
    def __init__(self, node: str, cap: int) -> None:
        super().__init__(f"{node} already has {cap} MCP sessions, all in use")
        self.node, self.cap = node, cap


class SessionCap:
    """Per-node bookkeeping of stateful sessions around session managers' ``handle_request``."""

    def __init__(self, cap: int, idle_timeout: float | None, prefix: str = "/mcp") -> None:
        self.cap = cap
        self.idle_timeout = idle_timeout
        self.prefix = prefix
        self.sessions: dict[str, dict[str, _Session]] = {}
        self._opening: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: sessions closed to make room, and requests refused, since the hub started
        self.evicted = 0
        self.refused = 0

    def count(self, node: str) -> int:
        return len(self.sessions.get(node, ())) + self._opening.get(node, 0)

    async def handle(self, node: str, handler: Handler, scope: dict[str, Any], receive: Any, send: Any,
                     on_evict: Callable[[str, int], Awaitable[None]] | None = None) -> None:
        """Serve one request of ``node`` with ``handler``; raises :class:`SessionLimitReached` (before anything is
        sent) when it would open a session and none of the node's sessions can make room."""
        headers = dict(scope.get("headers") or ())
        session_id = headers.get(SESSION_HEADER, b"").decode("latin-1") or None
        version = headers.get(VERSION_HEADER)
        if session_id is not None:
            await self._serve_in_session(node, handler, session_id, scope, receive, send)
        elif scope.get("method") == "POST" and (version is None or _handshake(version.decode("latin-1"))):
            await self._open(node, handler, scope, receive, send, on_evict)
        else:  # the single-exchange protocol, or a GET/DELETE without a session: nothing is kept
            await handler(scope, receive, send)

    async def _serve_in_session(self, node: str, handler: Handler, session_id: str, scope: dict[str, Any],
                                receive: Any, send: Any) -> None:
        session = self.sessions.get(node, {}).get(session_id)
        if session is None or session.handler != handler:  # not this node's: the transport answers 404
            await handler(scope, receive, send)
            return
        session.in_flight += 1
        session.last_used = time.monotonic()
        status = None

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await handler(scope, receive, watch)
        finally:
            session.in_flight -= 1
            session.last_used = time.monotonic()
            if status == 404 or (scope.get("method") == "DELETE" and status is not None and status < 400):
                self.sessions.get(node, {}).pop(session_id, None)  # ended (deleted, expired, closed)

    async def _open(self, node: str, handler: Handler, scope: dict[str, Any], receive: Any, send: Any,
                    on_evict: Callable[[str, int], Awaitable[None]] | None) -> None:
        async with self._locks.setdefault(node, asyncio.Lock()):
            self._forget_expired(node)
            if self.count(node) >= self.cap:
                victim = self._oldest_idle(node)
                if victim is None:
                    self.refused += 1
                    raise SessionLimitReached(node, self.cap)
                await self._close(node, victim)
                self.evicted += 1
                if on_evict is not None:
                    await on_evict(victim, self.cap)
            self._opening[node] = self._opening.get(node, 0) + 1
        opened: str | None = None

        async def watch(message: dict[str, Any]) -> None:
            nonlocal opened
            if message["type"] == "http.response.start" and message["status"] < 400:
                value = dict(message.get("headers") or ()).get(SESSION_HEADER)
                if value:
                    opened = value.decode("latin-1")
                    # registered before the client can see the id, so its next request finds it
                    self.sessions.setdefault(node, {})[opened] = _Session(handler, scope.get("user"),
                                                                           time.monotonic())
            await send(message)

        try:
            await handler(scope, receive, watch)
        finally:
            self._opening[node] -= 1
            if not self._opening[node]:
                del self._opening[node]
            if not self.sessions.get(node):
                self.sessions.pop(node, None)

    def _forget_expired(self, node: str) -> None:
        """Drop sessions the transport has already expired (idle longer than its timeout)."""
        if self.idle_timeout is None:
            return
        horizon = time.monotonic() - self.idle_timeout - EXPIRY_MARGIN
        mine = self.sessions.get(node, {})
        for session_id, session in list(mine.items()):
            if not session.in_flight and session.last_used < horizon:
                del mine[session_id]

    def _oldest_idle(self, node: str) -> str | None:
        idle = [(s.last_used, sid) for sid, s in self.sessions.get(node, {}).items() if not s.in_flight]
        return min(idle)[1] if idle else None

    async def _close(self, node: str, session_id: str) -> None:
        """End a session as its client would: DELETE with its id, under its owner's identity."""
        session = self.sessions[node].pop(session_id)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "DELETE",
                 "scheme": "http", "path": self.prefix, "raw_path": self.prefix.encode(), "query_string": b"",
                 "root_path": "", "headers": [(SESSION_HEADER, session_id.encode())],
                 "client": ("127.0.0.1", 0), "server": ("claude-net.internal", 80), "user": session.user}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def discard(_message: dict[str, Any]) -> None:
            return None

        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await session.handler(scope, receive, discard)
        except Exception:  # noqa: BLE001 - forgotten here either way; the transport's idle expiry remains
            log.warning("could not close MCP session %s of %s to make room", session_id[:12], node, exc_info=True)


def _handshake(version: str) -> bool:
    """Whether ``version`` is one of the protocol versions with an initialize handshake (sessions)."""
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

    return version in HANDSHAKE_PROTOCOL_VERSIONS
