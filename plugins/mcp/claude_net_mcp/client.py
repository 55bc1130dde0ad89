"""The one way the MCP tools reach the hub: its HTTP API, through one pooled ``httpx.AsyncClient``.

The stdio server talks to a hub over the network (``CLAUDE_NET_URL``, its token in a default
header). The hub's own ``/mcp`` endpoint uses the same class with an in-process ASGI transport
onto the hub's app and the caller's token on each request. Either way every tool call is an
ordinary API request: authenticated, validated, authorized and recorded by the hub.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

#: seconds an exec call waits beyond the command's own timeout (the hub answers by timeout + 5 s)
EXEC_MARGIN = 15.0


class HubCallError(Exception):
    """A failed hub call: the hub's error answer, or why the hub could not be reached.

    ``status`` is the HTTP status (0 when no answer came), ``code`` the hub's machine word
    (``unreachable`` / ``hub_timeout`` / ``bad_answer`` for transport failures), ``message`` the
    hub's sentence and ``body`` its whole JSON error (extra fields such as partial output).
    """

    def __init__(self, status: int, code: str, message: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body: dict[str, Any] = dict(body or {})


class HubClient:
    """Calls ``/api/...`` on a hub. ``url`` names it in messages only (``http`` knows where it goes)."""

    def __init__(self, http: httpx.AsyncClient, *, url: str, timeout: float = 60.0, where: str | None = None) -> None:
        self.http = http
        self.url = url
        self.timeout = timeout
        self.where = where or f"the hub at {url}"

    async def call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                   token: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """One API request; the answer's JSON on success, else :class:`HubCallError`."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        wait = self.timeout if timeout is None else timeout
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = await self.http.request(method, path, json=json, params=query or None, headers=headers,
                                               timeout=httpx.Timeout(wait, connect=min(wait, 10.0)))
        except httpx.TimeoutException:
            raise HubCallError(0, "hub_timeout", f"{self.where} did not answer within {wait:g}s") from None
        except httpx.HTTPError as exc:
            raise HubCallError(0, "unreachable", f"cannot reach {self.where} "
                                                 f"({type(exc).__name__}: {exc or 'no detail'})") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise HubCallError(response.status_code, "bad_answer",
                               f"{self.where} answered {method} {path} with HTTP {response.status_code} "
                               f"and no JSON (is {self.url} really a claude-net hub?)")
        if response.status_code >= 400 or body.get("ok") is False:
            raise HubCallError(response.status_code, str(body.get("code") or "error"),
                               str(body.get("error") or f"HTTP {response.status_code}"), body)
        return body


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
