"""The hub's own MCP endpoint at runtime: two MCP servers (agent, admin), their session managers,
and an in-process client onto the hub's HTTP API.

Tools on ``/mcp`` act exactly like the stdio server's: each is a request to the hub's API with
the caller's bearer token, made in-process through ``hub.app`` (no network hop, no port to
know, no HTTP client: :class:`~claude_net_mcp.exchange.InProcessClient`), labelled ``via: mcp`` so
the activity feed shows the channel. Authorization, validation and recording are the API's,
unchanged. In stateless mode a plain tool call is answered in one exchange
(:class:`~claude_net_mcp.exchange.ToolCallExchange`); everything else goes to the SDK's session
managers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings

from claude_net import Actor, Event

from .exchange import InProcessClient, ToolCallExchange, skip_absent_sniffio
from .sessions import SessionCap, SessionLimitReached
from .settings import McpSettings
from .tools import Caller, ToolHost, build_server

log = logging.getLogger("claude_net_mcp")


class HubMcpRuntime:
    def __init__(self, hub: Any, settings: McpSettings) -> None:
        self.hub = hub
        self.settings = settings
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self.exchange: ToolCallExchange | None = None
        self.servers: dict[bool, Any] = {}
        #: stateful mode: the per-node session cap (None: stateless, nothing is kept between requests)
        self.sessions: SessionCap | None = None
        if not settings.stateless:
            self.sessions = SessionCap(max(1, settings.max_sessions_per_node), settings.session_idle_timeout,
                                       prefix=settings.path)

    async def start(self) -> None:
        if self.hub.app is None:
            raise RuntimeError("the hub has no HTTP app (hub.app); the MCP endpoint needs create_app")
        limits = self.hub.settings.limits
        skip_absent_sniffio()  # the hub's other httpx users (Telegram) gain too
        client = InProcessClient(self.hub.app, timeout=self.settings.request_timeout)
        host = ToolHost(client=client, via="http", max_output=self.settings.max_output, limits={
            "execTimeout": limits.exec_timeout, "execTimeoutMax": limits.exec_timeout_max,
            "execMaxOutput": limits.exec_max_output, "fileMaxBytes": limits.file_max_bytes,
        })
        # The SDK's own Host/Origin checks are off: the endpoint checks Origin itself (and answers in
        # the hub's error shape); Host is not pinned because agents reach the hub at bridge addresses.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        for admin in (False, True):
            server = build_server(host, admin=admin)
            server.streamable_http_app(
                stateless_http=self.settings.stateless, json_response=self.settings.json_response,
                session_idle_timeout=self.settings.session_idle_timeout, transport_security=security,
                max_request_body_size=max(4 * 1024 * 1024, limits.file_max_bytes * 4 // 3 + 65536),
            )
            self.servers[admin] = server
        if self.settings.stateless:
            self.exchange = ToolCallExchange(self.servers, host)
        self._task = self.hub.spawn(self._run_session_managers(), name="mcp-session-managers")
        self.hub.spawn(self._stop_with_hub(), name="mcp-stop-with-hub")
        await self._ready.wait()
        if self._error is not None:
            raise self._error

    async def _run_session_managers(self) -> None:
        """Owns both session managers' task groups for the hub's lifetime (one task enters and exits them)."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                for server in self.servers.values():
                    await stack.enter_async_context(server.session_manager.run())
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._ready.set()

    async def _stop_with_hub(self) -> None:
        """The hub is stopping (SIGTERM): close the sessions now, so their open SSE streams end
        at once instead of holding the shutdown for the server's graceful timeout."""
        await self.hub.stopping.wait()
        self._stop.set()

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any, actor: Actor, token: str) -> None:
        caller = Caller(name=actor.name, admin=actor.admin, token=token)
        # Sessions (stateful mode) belong to the credential that opened them: the SDK compares this user.
        digest = hashlib.sha256(token.encode()).hexdigest()[:32]
        user = AuthenticatedUser(AccessToken(token="", client_id=actor.name, scopes=["admin"] if actor.admin else [],
                                             subject=digest))
        scope = {**scope, "user": user, "claude_net.mcp.caller": caller}
        manager = self.servers[actor.admin].session_manager
        if self.sessions is None:
            if self.exchange is not None:
                await self.exchange.handle(actor.admin, scope, receive, send, manager.handle_request)
            else:
                await manager.handle_request(scope, receive, send)
            return

        async def evicted(_session_id: str, cap: int) -> None:
            await self._record(actor.name, f"closed the least recently used idle MCP session of {actor.name} to "
                               f"open a new one (at most {cap} per node)", "ok")

        try:
            await self.sessions.handle(actor.name, manager.handle_request, scope, receive, send, on_evict=evicted)
        except SessionLimitReached as exc:
            await self._record(actor.name, f"refused a new MCP session: {actor.name} already has {exc.cap} "
                               "sessions and none is idle", "denied")
            await _refuse(send, f"{actor.name} already has {exc.cap} MCP sessions open, all in use (the most one "
                                "node may hold, [mcp] max_sessions_per_node): close one (DELETE with its "
                                "Mcp-Session-Id) or wait for one to finish")

    async def _record(self, node: str, detail: str, result: str) -> None:
        """An audit row for a session decision, at most one per node and kind every few seconds (with
        the count): a client opening thousands of sessions must not become thousands of rows."""
        count = self.hub.auth_refusals.should_record(f"mcp-sessions:{result}:{node}")
        if count:
            await self.hub.emit(Event("mcp_session", node, node, detail + (f" ({count} times)" if count > 1 else ""),
                                      result, via="mcp", data={"count": count}))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._task), 10)


async def _refuse(send: Any, message: str) -> None:
    body = json.dumps({"ok": False, "error": message, "code": "too_many_sessions"}, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
