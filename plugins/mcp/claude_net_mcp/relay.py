"""The permission relay: Claude Code's own tool-approval prompts, decided by the hub's admin.

Opt-in (``claude-net-mcp --permission-relay`` or ``CLAUDE_NET_PERMISSION_RELAY=1``): the server then
declares ``claude/channel/permission``. Each ``notifications/claude/channel/permission_request``
(``request_id``, ``tool_name``, ``description``, ``input_preview``) is filed with the hub as an
approval of kind ``agent_tool`` (``POST /api/approvals``), waited on (``GET /api/approvals/{id}?wait=``)
and answered with ``notifications/claude/channel/permission`` ``{"request_id", "behavior"}``.

The terminal's own prompt stays open meanwhile and the first answer wins, so the relay errs on the
side of *no* answer when it cannot get a verdict (hub unreachable, token rejected): the person at
the terminal can still decide. It answers ``deny`` when the hub decides against the request: the
admin denied it, it expired undecided, the hub refused to file it (403 ``relay_refused``: this node
may not relay) or the approvals caps were reached (429).

Claude Code (2.1.197) does not tell the channel when a prompt was answered locally; such an
approval expires on the hub, and its late verdict is ignored by Claude Code (the request id is no
longer pending). When the session ends, the relay cancels its pending approvals on the hub.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from claude_net import printable

from .channel import Backoff, Say, say
from .client import HubCallError, HubClient

#: longest field lengths sent to the hub (Claude Code's input_preview is at most ~200 characters)
MAX_FIELD = {"request_id": 64, "tool_name": 200, "description": 2000, "input_preview": 2000}
#: seconds one approval long-poll asks the hub to wait
WAIT_SLICE = 60.0
#: relays in flight at once in one session (the hub's per-requester cap is lower: 5 by default)
MAX_IN_FLIGHT = 32
#: seconds filing may keep retrying an unreachable hub before the prompt is left to the terminal
FILE_PATIENCE = 30.0


class PermissionRelay:
    """Files each permission request with the hub and sends back the verdict.

    ``notify(method, params)`` writes a notification to the client. :meth:`submit` is called from
    the server's message loop and never blocks it: each request runs in ``task_group``.
    """

    def __init__(self, client: HubClient, notify: Callable[[str, dict[str, Any]], Awaitable[None]], *,
                 say: Say = say, wait_slice: float = WAIT_SLICE, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.client = client
        self.notify = notify
        self.say = say
        self.wait_slice = wait_slice
        self.max_in_flight = max_in_flight
        self.task_group: anyio.abc.TaskGroup | None = None
        #: request_id -> approval id on the hub (None while it is being filed)
        self.pending: dict[str, str | None] = {}
        self.answered: dict[str, str] = {}  # request_id -> behavior (bounded: the last 256)
        self.unsupported = False

    def submit(self, params: Mapping[str, Any] | None) -> None:
        fields = _fields(params)
        if fields is None:
            self.say("ignored a permission_request without a request_id and tool_name")
            return
        request_id = fields["request_id"]
        if request_id in self.pending or request_id in self.answered:
            return  # a repeat of a request already relayed
        if self.task_group is None:
            return
        if len(self.pending) >= self.max_in_flight:
            self.say(f"{len(self.pending)} permission prompts are already waiting for the admin: "
                     f"denying {printable(request_id)} ({printable(fields['tool_name'])})")
            self.task_group.start_soon(self._answer, request_id, "deny")
            return
        self.pending[request_id] = None
        self.task_group.start_soon(self._relay, fields)

    async def _answer(self, request_id: str, behavior: str) -> None:
        self.answered[request_id] = behavior
        while len(self.answered) > 256:
            self.answered.pop(next(iter(self.answered)))
        await self.notify("notifications/claude/channel/permission", {"request_id": request_id,
                                                                      "behavior": behavior})

    async def _relay(self, fields: dict[str, str]) -> None:
        request_id = fields["request_id"]
        try:
            approval = await self._file(fields)
            if approval is None:
                return
            if isinstance(approval, str):  # the hub's own refusal: deny now
                await self._answer(request_id, "deny")
                return
            self.pending[request_id] = str(approval["id"])
            behavior = await self._verdict(approval)
            if behavior is not None:
                await self._answer(request_id, behavior)
        finally:
            self.pending.pop(request_id, None)

    async def _file(self, fields: dict[str, str]) -> dict[str, Any] | str | None:
        """The filed approval; or "deny" (the hub refused to file it); or None (no verdict possible)."""
        if self.unsupported:
            return None
        body = {"kind": "agent_tool", **fields}
        backoff, deadline = Backoff(), time.monotonic() + FILE_PATIENCE
        while True:
            try:
                answer = await self.client.call("POST", "/api/approvals", json=body, timeout=15.0)
                return answer.get("approval") if isinstance(answer.get("approval"), dict) else answer
            except HubCallError as err:
                what = f"permission prompt {printable(fields['request_id'])} ({printable(fields['tool_name'])})"
                if err.status in (403, 429):
                    self.say(f"the hub refused to relay {what} ({err.message}): answered deny")
                    return "deny"
                if err.status == 404 or err.status == 405:
                    self.unsupported = True
                    self.say(f"the hub has no approvals service ({err.message}): permission prompts stay in the "
                             "terminal (install and enable the approvals plugin on the hub)")
                    return None
                if err.status in (400, 401) or time.monotonic() > deadline:
                    self.say(f"could not relay {what} to the hub ({err.message}): it stays with the terminal")
                    return None
            await anyio.sleep(backoff.next())

    async def _verdict(self, approval: Mapping[str, Any]) -> str | None:
        """"allow" / "deny" once the approval is decided, None when no verdict can be had."""
        approval_id = str(approval["id"])
        state = approval.get("state")
        backoff = Backoff(1.0, 30.0)
        give_up = time.monotonic() + _seconds_left(approval.get("expires_at")) + 60.0
        while state == "pending":
            try:
                answer = await self.client.call("GET", f"/api/approvals/{approval_id}",
                                                params={"wait": self.wait_slice}, timeout=self.wait_slice + 15.0)
                approval = answer.get("approval") if isinstance(answer.get("approval"), dict) else answer
                state = approval.get("state")
                backoff.reset()
                continue
            except HubCallError as err:
                if err.status in (401, 403, 404) or time.monotonic() > give_up:
                    self.say(f"lost track of approval {printable(approval_id)} ({err.message}); the prompt stays "
                             "with the terminal")
                    return None
            await anyio.sleep(backoff.next())
        if state == "approved":
            return "allow"
        if state in ("denied", "expired"):
            return "deny"
        return None  # cancelled: nobody decided; the terminal's prompt is the one that counts

    async def cancel_all(self) -> None:
        """The session is ending: nothing will read a verdict, so the admin need not give one."""
        with anyio.move_on_after(5.0):
            # a prompt whose filing is still in flight gets its id first (the hub may have stored it)
            while any(a is None for a in self.pending.values()):
                await anyio.sleep(0.05)
        with anyio.move_on_after(5.0):
            for approval_id in [a for a in self.pending.values() if a]:
                try:
                    await self.client.call("POST", f"/api/approvals/{approval_id}/cancel", json={}, timeout=3.0)
                except HubCallError:
                    pass


def _fields(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not isinstance(params, Mapping):
        return None
    out = {}
    for key, limit in MAX_FIELD.items():
        value = params.get(key)
        out[key] = value[:limit] if isinstance(value, str) else ""
    if not out["request_id"] or not out["tool_name"]:
        return None
    return out


def _seconds_left(expires_at: Any) -> float:
    """Seconds until an ISO timestamp (the approval's expiry); 600 when it cannot be read."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(str(expires_at).replace("Z", "+00:00"))
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except ValueError:
        return 600.0
