"""The one approval model: file, wait, decide, cancel, expire — whatever the route.

Every route is a thin adapter over these functions: the hub's ``request_approval`` hook (an
action under an ``ask`` grant), the HTTP routes, the CLI, and other plugins in-process (Telegram
buttons, the dashboard through HTTP, the MCP relay through HTTP). Every step emits one
``approval`` event (stored in the activity feed) and publishes a wake-up on the bus channel
``approval:<id>`` so a request waiting on any replica learns of the decision at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from claude_net import (
    ApprovalPending,
    BadRequest,
    Conflict,
    Event,
    Forbidden,
    HubError,
    NotFound,
    RateLimited,
    Unavailable,
    isotime,
    printable,
)

from . import store
from .settings import ApprovalsSettings

log = logging.getLogger("claude_net.approvals")

STATE_KEY = "claude_net_approvals"
#: seconds between the checks a waiting request makes of its row even without a wake-up: a
#: decision from another process on SQLite (the CLI) or a lost NOTIFY on PostgreSQL
RECHECK_SECONDS = 2.0
#: the event result of each state's row in the activity feed
RESULTS = {"pending": "pending", "approved": "ok", "denied": "denied", "expired": "error", "cancelled": "error"}
STEP = {"pending": "requested"}
VERBS = {"exec": "run", "file_read": "read", "file_write": "write", "message": "message"}
DECISIONS = {"approve": "approved", "deny": "denied"}
PARTICULAR_TEXT = 300


def settings(hub) -> ApprovalsSettings:
    try:
        return hub.settings.section("approvals")
    except KeyError:
        return ApprovalsSettings()


class _State:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # filing: find-same + caps + insert as one step on this replica


def _state(hub) -> _State:
    state = hub.plugin_state.get(STATE_KEY)
    if state is None:
        state = hub.plugin_state[STATE_KEY] = _State()
    return state


def channel(approval_id: str) -> str:
    return f"approval:{approval_id}"


def _short(value: Any, limit: int = PARTICULAR_TEXT) -> str:
    text = printable(str(value))
    return text if len(text) <= limit else text[:limit] + "…"


def describe(kind: str, requester: str, action: str, target: str | None, particulars: Mapping[str, Any]) -> str:
    """One line: what is asked (framed, never the hub's words: values are escaped and quoted)."""
    if kind == "agent_tool":
        what = particulars.get("tool_name") or "a tool"
        preview = particulars.get("input_preview") or particulars.get("description") or ""
        return f"{requester} asks to use {_short(what, 80)}" + (f": {_short(preview, 200)!r}" if preview else "")
    if action == "exec":
        where = f" (in {_short(particulars['cwd'], 100)})" if particulars.get("cwd") else ""
        return f"{requester} asks to run on {target}{where}: {_short(particulars.get('command', ''))!r}"
    path = _short(particulars.get("path", ""), 200)
    if action == "file_write":
        size = particulars.get("size")
        return f"{requester} asks to write {path!r} on {target}" + (f" ({size} bytes)" if size is not None else "")
    return f"{requester} asks to {VERBS.get(action, action)} {path!r} on {target}"


async def emit(hub, row: Mapping[str, Any], *, via: str | None = None, extra: Mapping[str, Any] | None = None,
               pending_ok: bool = True) -> None:
    """The approval event of the row's current state, then the wake-up on every replica."""
    approval = store.to_json(row)
    state = approval["state"]
    data = {"approval_id": approval["id"], "state": STEP.get(state, state), "kind": approval["kind"],
            "action": approval["action"], "particulars": approval["particulars"],
            "expires_at": approval["expires_at"], "decided_by": approval["decided_by"],
            "decided_via": approval["decided_via"], "telegram_user": approval["telegram_user"],
            "for": approval["for"], **(extra or {})}
    if approval["request_id"]:
        data["request_id"] = approval["request_id"]
    await hub.emit(Event("approval", approval["requester"], approval["target"], approval["detail"],
                         RESULTS[state], via=via or approval["decided_via"] or row.get("via") or "http", data=data))
    await publish(hub, approval["id"], state)


async def publish(hub, approval_id: str, state: str) -> None:
    try:
        await hub.bus.publish(channel(approval_id), {"id": approval_id, "state": state})
    except Exception:  # a lost wake-up only delays a waiter until its next check
        log.warning("could not publish the decision of approval %s", approval_id)


# -- expiry -----------------------------------------------------------------------------------


async def expire(hub, approval_id: str | None = None) -> int:
    """Expire what is due (one approval, or all); each expiry is recorded once, by whoever wins."""
    rows = await store.expire_due(hub.db, approval_id)
    for row in rows:
        await emit(hub, row, via="hub")
    return len(rows)


FILED = "approvals:filed"


async def sweep_forever(hub) -> None:
    """Expire approvals as they fall due (the waiters expire their own; this covers the rest).

    Sleeps until the next expiry; a new approval filed on any replica (``approvals:filed``) wakes
    it to look again, since that one may fall due sooner."""
    async with hub.bus.subscribe(FILED, maxsize=1) as sub:
        while True:
            await expire(hub)
            nxt = await store.next_expiry(hub.db)
            delay = 30.0
            if nxt:
                with contextlib.suppress(ValueError):
                    due = datetime.fromisoformat(nxt.replace("Z", "+00:00"))
                    delay = min(30.0, max(0.05, (due - datetime.now(timezone.utc)).total_seconds() + 0.05))
            await sub.get(timeout=delay)


# -- filing and waiting -----------------------------------------------------------------------


def _clamp_wait(hub, wait: float | None) -> float:
    cfg = settings(hub)
    if wait is None:
        return min(cfg.wait_default, cfg.wait_max)
    return max(0.0, min(float(wait), cfg.wait_max))


async def file(hub, actor, *, kind: str, action: str, target: str | None, particulars: Mapping[str, Any],
               request_id: str | None = None) -> tuple[dict[str, Any], bool]:
    """The live approval for this request: an identical one (coalesced), or a new one.

    Returns ``(row, new)``. Raises :class:`RateLimited` (``too_many_approvals``) past the caps.
    """
    cfg = settings(hub)
    particulars = dict(particulars)
    fp = store.fingerprint(kind, actor.name, action, target, particulars)
    async with _state(hub).lock:
        async with hub.db.transaction() as tx:
            if not hub.db.is_sqlite:  # replicas file one at a time too: the caps hold across them
                await tx.execute("SELECT pg_advisory_xact_lock(:key)", {"key": 0x636E617070726F76})
            same = await store.find_same(tx, actor.name, fp, isotime())
            if same is not None:
                return same, False
            problem = None
            if await store.count_pending(tx, requester=actor.name) >= cfg.max_pending_per_requester:
                problem = (f"{actor.name} already has {cfg.max_pending_per_requester} approvals waiting for an admin "
                           "(the most one node may have); wait for their decisions, or cancel one, before asking again")
            elif (kind == "action" and target is not None
                  and await store.count_pending(tx, target=target) >= cfg.max_pending_per_target):
                problem = (f"{cfg.max_pending_per_target} approvals for actions on {target} are already waiting "
                           "for an admin; try again once they are decided")
            if problem is None:
                row = await store.insert(tx, {
                    "id": store.new_id(), "kind": kind, "requester": actor.name, "action": action,
                    "target": target, "detail": describe(kind, actor.name, action, target, particulars),
                    "particulars": json.dumps(particulars, default=str), "fingerprint": fp, "state": "pending",
                    "created_at": isotime(), "expires_at": store.later(cfg.expiry), "request_id": request_id,
                    "via": actor.via})
    if problem is not None:
        raise RateLimited(problem, code="too_many_approvals")
    try:
        await emit(hub, row, via=actor.via)
    except HubError:  # the audit log cannot record the request: it is not left waiting unrecorded
        await store.cancel(hub.db, row["id"], "hub", "hub")
        raise Unavailable("the approval could not be recorded in the activity feed, so it was not filed",
                          code="audit_unavailable") from None
    try:
        await hub.bus.publish(FILED, {"id": row["id"]})
    except Exception:  # the sweeper then finds it at its next look (at most 30 s later)
        log.warning("could not announce approval %s to the expiry sweeper", row["id"])
    return row, True


async def _wake(sub, stopping: asyncio.Event, timeout: float) -> None:
    """Until a wake-up on ``sub``, the hub stopping, or ``timeout`` seconds — whichever comes first."""
    if timeout <= 0:
        return
    getter = asyncio.ensure_future(sub.queue.get())
    stopper = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({getter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (getter, stopper):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(getter, stopper, return_exceptions=True)


def _seconds_until(stamp: str) -> float:
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (moment - datetime.now(timezone.utc)).total_seconds()


async def wait_decided(hub, approval_id: str, wait: float) -> dict[str, Any] | None:
    """The row once it is no longer pending, or as it is when ``wait`` seconds passed or the hub stops.

    No busy polling: a decision on any replica publishes ``approval:<id>``; the row is read again
    on that wake-up, at its expiry, and every :data:`RECHECK_SECONDS` (a decision taken by another
    process on SQLite, where there is no cross-process bus, or a lost notification).
    """
    deadline = time.monotonic() + wait
    async with hub.bus.subscribe(channel(approval_id), maxsize=4) as sub:
        row = await store.get(hub.db, approval_id)  # after subscribing: no decision slips between
        while row is not None and row["state"] == "pending" and not hub.stopping.is_set():
            until_expiry = _seconds_until(row["expires_at"])
            if until_expiry <= 0:
                await expire(hub, approval_id)
                row = await store.get(hub.db, approval_id)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await _wake(sub, hub.stopping, min(remaining, until_expiry + 0.05, RECHECK_SECONDS))
            row = await store.get(hub.db, approval_id)
    return row


def _pending_sentence(hub, approval: Mapping[str, Any]) -> str:
    then = (f"Re-send the same request with \"approval\": \"{approval['id']}\" to wait again (it runs once, "
            f"as soon as an admin approves); it expires at {approval['expires_at']}.")
    if hub.stopping.is_set():
        return f"approval {approval['id']} is still waiting for an admin, and the hub is shutting down. " + then
    return f"approval {approval['id']} is waiting for an admin's decision. " + then


def conclude(hub, row: Mapping[str, Any]) -> dict[str, Any]:
    """The approval's JSON when it is approved; else the refusal the contract names for its state."""
    approval = store.to_json(row)
    state, aid = approval["state"], approval["id"]
    if state == "approved":
        return approval
    if state == "pending":
        raise ApprovalPending(_pending_sentence(hub, approval), approval=approval)
    if state == "denied":
        raise Forbidden(f"approval {aid} was denied by {approval['decided_by']}"
                        + (f" (via {approval['decided_via']})" if approval["decided_via"] else "")
                        + "; the action was not run", code="approval_denied", decided_by=approval["decided_by"],
                        approval=approval)
    if state == "expired":
        raise Forbidden(f"approval {aid} expired at {approval['expires_at']} before it was "
                        + ("used" if approval["decided_by"] else "decided")
                        + "; the action was not run (send the request again to ask anew)",
                        code="approval_expired", approval=approval)
    raise Forbidden(f"approval {aid} was cancelled by {approval['decided_by']}; the action was not run",
                    code="approval_cancelled", approval=approval)


async def request_action(hub, actor, action: str, target: str | None, particulars: Mapping[str, Any],
                         approval_id: str | None, wait: float | None) -> dict[str, Any]:
    """What ``request_approval`` does (see the hookspec): file/join/resume, wait, claim or refuse."""
    wait_s = _clamp_wait(hub, wait)
    particulars = dict(particulars)
    if approval_id is not None:
        row = await store.get(hub.db, approval_id)
        if row is None or row["requester"] != actor.name or row["kind"] != "action":
            raise NotFound(f"there is no approval {approval_id!r} of {actor.name}", code="unknown_approval")
        if row["fingerprint"] != store.fingerprint("action", actor.name, action, target, particulars):
            raise Conflict(f"approval {approval_id} was given for another request ({row['detail']}); send exactly "
                           "that request with it, or send this one without \"approval\" to ask anew",
                           code="approval_mismatch", approval=store.to_json(row))
    else:
        row, _new = await file(hub, actor, kind="action", action=action, target=target, particulars=particulars)
    if row["state"] == "approved" and row["used_at"]:
        raise Conflict(f"approval {row['id']} was already used: the action ran once, at {row['used_at']}; "
                       "send the request again without \"approval\" to ask anew",
                       code="approval_used", approval=store.to_json(row))
    if row["state"] == "pending":
        if _seconds_until(row["expires_at"]) <= 0:
            await expire(hub, row["id"])
            row = await store.get(hub.db, row["id"])
        elif wait_s > 0:
            row = await wait_decided(hub, row["id"], wait_s)
    approval = conclude(hub, row)
    claimed = await store.claim(hub.db, approval["id"])
    if claimed is None:
        current = await store.get(hub.db, approval["id"])
        if current is not None and current["state"] == "expired":
            conclude(hub, current)
        raise Conflict(f"approval {approval['id']} was already used: the action ran once; send the request "
                       "again without \"approval\" to ask anew", code="approval_used", approval=approval)
    return store.to_json(claimed)


# -- the Python service of the contract -------------------------------------------------------


async def get(hub, approval_id: str) -> dict[str, Any]:
    """The approval as JSON (expiring it first when it is due). Raises NotFound."""
    row = await store.get(hub.db, approval_id)
    if row is None:
        raise NotFound(f"there is no approval {approval_id!r}", code="unknown_approval")
    if row["state"] in ("pending", "approved") and _seconds_until(row["expires_at"]) <= 0:
        await expire(hub, approval_id)
        row = await store.get(hub.db, approval_id)
    return store.to_json(row)


async def list_approvals(hub, state: str | None = None) -> list[dict[str, Any]]:
    """Approvals, newest first (``state`` filters), after expiring what is due."""
    if state is not None and state not in store.STATES:
        raise BadRequest(f"state must be one of {', '.join(store.STATES)}", code="invalid_field", field="state")
    await expire(hub)
    return [store.to_json(r) for r in await store.listing(hub.db, state)]


def _parse_for(hub, value: Any) -> str | None:
    """``"1h"`` and the like, within ``[approvals] max_for``; returned as given (it is recorded)."""
    if value is None or value == "":
        return None
    try:
        from claude_net_permissions.model import parse_expires  # one duration syntax for every expiry
    except ImportError:
        raise BadRequest("for needs the permissions plugin (it stores the allowance), which is not installed",
                         code="invalid_field", field="for") from None

    if not isinstance(value, str):
        raise BadRequest("for must be a duration such as '1h' or '30m'", code="invalid_field", field="for")
    until = parse_expires(value)
    limit = parse_expires(settings(hub).max_for)
    if until is not None and limit is not None and until > limit:
        raise BadRequest(f"for {value!r} is longer than the most an approval may allow ({settings(hub).max_for}, "
                         "[approvals] max_for)", code="invalid_field", field="for")
    return value


async def decide(hub, actor, approval_id: str, decision: str, *, for_: str | None = None, via: str,
                 telegram_user: str | int | None = None) -> dict[str, Any]:
    """An admin's decision, whatever the route. Returns the approval as JSON.

    Raises :class:`Forbidden` for a non-admin (recorded), :class:`BadRequest` for a decision other
    than approve/deny or a bad ``for_``, :class:`NotFound`, or :class:`Conflict` ``already_decided``
    (field ``state``) when it is no longer pending. ``for_`` (approve only, action approvals only):
    the requester may do the same action on the same target without asking for that long — an
    allowance created through the permissions service, itself a recorded ``permit``.
    """
    row = await store.get(hub.db, approval_id) if isinstance(approval_id, str) else None
    if not actor.admin:
        await hub.emit(Event("request", actor.name, row["target"] if row else None,
                             f"{actor.name} tried to decide approval {_short(approval_id, 40)} but is not an admin",
                             "denied", via=via, data={"approval_id": approval_id if row else None,
                                                      "code": "admin_only", "decision": _short(decision, 20)}))
        raise Forbidden("only an admin may decide approvals", code="admin_only")
    if decision not in DECISIONS:
        raise BadRequest("decision must be 'approve' or 'deny'", code="invalid_field", field="decision")
    if row is None:
        await _refused(hub, actor, None, approval_id, decision, via, "unknown_approval",
                       f"{actor.name} tried to {decision} approval {_short(approval_id, 40)!r}, which does not exist")
        raise NotFound(f"there is no approval {_short(approval_id, 40)!r}", code="unknown_approval")
    if for_ is not None and decision != "approve":
        raise BadRequest("for goes with approve only", code="invalid_field", field="for")
    if for_ is not None and row["kind"] != "action":
        raise BadRequest("for applies to approvals of actions (exec, file calls) only", code="invalid_field",
                         field="for")
    for_ = _parse_for(hub, for_)
    if row["state"] in ("pending", "approved") and _seconds_until(row["expires_at"]) <= 0:
        await expire(hub, approval_id)
    state = DECISIONS[decision]
    expires_at = store.later(settings(hub).expiry) if state == "approved" and row["kind"] == "action" else None
    decided = await store.decide(hub.db, approval_id, state, by=actor.name, via=via,
                                 telegram_user=str(telegram_user) if telegram_user is not None else None,
                                 for_duration=for_, expires_at=expires_at)
    if decided is None:
        current = await store.get(hub.db, approval_id)
        now_state = current["state"] if current else "unknown"
        await _refused(hub, actor, row, approval_id, decision, via, "already_decided",
                       f"{actor.name} tried to {decision} approval {approval_id}, which is already {now_state}",
                       state_now=now_state)
        raise Conflict(f"approval {approval_id} is no longer pending: it is {now_state}"
                       + (f" (decided by {current['decided_by']})" if current and current["decided_by"] else ""),
                       code="already_decided", state=now_state, approval=store.to_json(current) if current else None)
    await emit(hub, decided, via=via)
    if for_ is not None:
        from claude_net_permissions import allow_for

        await allow_for(hub, actor, decided["requester"], decided["target"], decided["action"], for_,
                        approval_id=approval_id)
    return store.to_json(decided)


async def _refused(hub, actor, row, approval_id, decision: str, via: str, code: str, detail: str,
                   state_now: str | None = None) -> None:
    """A decision that changed nothing (unknown id, already decided): recorded, never silent."""
    data = {"approval_id": row["id"] if row else None, "code": code, "decision": _short(decision, 20),
            "refused": True}
    if state_now is not None:
        data["current_state"] = state_now
    await hub.emit(Event("request", actor.name, row["target"] if row else None, detail, "denied", via=via,
                         data=data))


async def cancel(hub, actor, approval_id: str, *, via: str) -> dict[str, Any]:
    """Withdraw a pending approval (its requester or an admin). Others: NotFound (invisible)."""
    row = await store.get(hub.db, approval_id)
    if row is None or not (actor.admin or row["requester"] == actor.name):
        raise NotFound(f"there is no approval {approval_id!r}", code="unknown_approval")
    cancelled = await store.cancel(hub.db, approval_id, actor.name, via)
    if cancelled is None:
        current = await store.get(hub.db, approval_id)
        raise Conflict(f"approval {approval_id} is no longer pending: it is {current['state']}",
                       code="already_decided", state=current["state"], approval=store.to_json(current))
    await emit(hub, cancelled, via=via)
    return store.to_json(cancelled)


def relay_allowed(hub, name: str) -> bool:
    relay = settings(hub).relay
    if isinstance(relay, str):
        if relay == "all":
            return True
        if relay == "none":
            return False
        relay = [part.strip() for part in relay.split(",")]
    return name in relay


async def file_agent_tool(hub, actor, *, tool_name: str, description: str, input_preview: str,
                          request_id: str | None) -> tuple[dict[str, Any], bool]:
    """An agent's own permission prompt relayed to the admin (``kind: agent_tool``)."""
    if not relay_allowed(hub, actor.name):
        await hub.emit(Event("request", actor.name, None,
                             f"{actor.name} may not relay tool approvals ({_short(tool_name, 80)})", "denied",
                             via=actor.via, data={"code": "relay_refused", "kind": "agent_tool",
                                                  "tool_name": _short(tool_name, 80)}))
        raise Forbidden(f"{actor.name} may not relay tool approvals to the admin ([approvals] relay)",
                        code="relay_refused")
    particulars = {"tool_name": tool_name, "description": description, "input_preview": input_preview}
    try:
        row, new = await file(hub, actor, kind="agent_tool", action="agent_tool", target=actor.name,
                              particulars=particulars, request_id=request_id)
    except RateLimited as exc:
        await hub.emit(Event("request", actor.name, actor.name, f"{actor.name}: tool approval refused: "
                             f"{exc.message}"[:400], "denied", via=actor.via,
                             data={"code": exc.code, "kind": "agent_tool"}))
        raise
    return store.to_json(row), new


async def wait_view(hub, actor, approval_id: str, wait: float) -> dict[str, Any]:
    """``GET /api/approvals/{id}[?wait=]``: admins and its requester see it; others get 404."""
    row = await store.get(hub.db, approval_id)
    if row is None or not (actor.admin or row["requester"] == actor.name):
        raise NotFound(f"there is no approval {approval_id!r}", code="unknown_approval")
    if wait > 0 and row["state"] == "pending":
        await wait_decided(hub, approval_id, _clamp_wait(hub, wait))
    return await get(hub, approval_id)
