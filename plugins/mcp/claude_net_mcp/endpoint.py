"""The ASGI app mounted at ``/mcp``: Origin check, bearer-token authentication, then the MCP transport.

Light on purpose (no mcp or httpx import): ``create_app`` builds it for every hub, including
for CLI commands that never serve. The MCP machinery lives in :mod:`claude_net_mcp.runtime`,
created when the hub starts.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any
from urllib.parse import urlsplit

from claude_net import Event

STATE_KEY = "mcp"
#: origins every hub accepts: pages served from this machine (any port, http or https)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def origin_allowed(origin: str, extra: list[str]) -> bool:
    """Whether a browser page at ``origin`` may call the endpoint (absent Origin is decided earlier)."""
    origin = origin.strip().rstrip("/").lower()
    try:
        parts = urlsplit(origin)
        local = (parts.scheme in ("http", "https") and parts.hostname in LOCAL_HOSTS and parts.username is None
                 and not parts.path and not parts.query and (parts.port is None or parts.port > 0))
    except ValueError:  # a malformed port or address
        return False
    if local:
        return True
    for allowed in extra:
        allowed = allowed.strip().rstrip("/").lower()
        if allowed == "*" or allowed == origin:
            return True
        if allowed.endswith(":*") and origin.startswith(allowed[:-2] + ":") and origin[len(allowed) - 1:].isdigit():
            return True
        if "*" in allowed and not allowed.endswith(":*") and fnmatch.fnmatchcase(origin, allowed):
            return True
    return False


class McpEndpoint:
    def __init__(self, hub: Any, prefix: str) -> None:
        self.hub = hub
        self.prefix = prefix.rstrip("/") or "/"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        if scope.get("path", "").rstrip("/") != self.prefix:
            await _json(send, 404, "not_found", f"no such endpoint: {scope.get('path')} (the MCP endpoint is "
                                                f"{self.prefix})")
            return
        settings = self.hub.settings.section("mcp")
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, settings.allowed_origins):
            await self.hub.emit(Event("auth", None, None, f"MCP request from disallowed Origin {origin[:100]!r}",
                                      "denied", via="mcp"))
            await _json(send, 403, "origin_not_allowed",
                        f"Origin {origin[:100]!r} may not use this MCP endpoint; an admin can allow it in "
                        "[mcp] allowed_origins")
            return
        runtime = self.hub.plugin_state.get(STATE_KEY)
        if runtime is None:
            await _json(send, 503, "unavailable", "the MCP endpoint is not running (the hub is starting or "
                                                  "stopping); retry in a moment")
            return
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if not auth:
            await _json(send, 401, "missing_token", "a bearer token is required (Authorization: Bearer <token>)")
            return
        if scheme.lower() != "bearer" or not token:
            await _json(send, 401, "bad_auth_header", "the Authorization header must be 'Bearer <token>'")
            return
        actor = await self.hub.authenticate(token, via="mcp")
        if actor is None:
            client = scope.get("client") or ("?", 0)
            # recorded at most once per address every few seconds, with a count: no flooding the audit log
            refused = self.hub.auth_refusals.should_record(str(client[0]))
            if refused:
                await self.hub.emit(Event("auth", None, None, f"invalid or revoked token on {scope.get('method')} "
                                          f"{self.prefix} from {client[0]}" + (f" ({refused} refused)" if refused > 1
                                                                              else ""),
                                          "denied", via="mcp", data={"refused": refused}))
            await _json(send, 401, "invalid_token", "the token is invalid or has been revoked")
            return
        await runtime.handle(scope, receive, send, actor, token)


async def _json(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps({"ok": False, "error": message, "code": code}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="claude-net"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
