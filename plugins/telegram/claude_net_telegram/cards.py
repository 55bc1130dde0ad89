"""Cards: messages the bot keeps and edits — approval requests, background jobs, actions that
took a snapshot before they ran — each with its inline buttons.

An echo is sent once and forgotten (see :mod:`.outbox`); a card is one message per thing, sent
once and then edited as that thing changes: an approval is decided or expires, a job prints more
or ends. :class:`Cards` holds what each card should show; its task (:meth:`Cards.run`, part of
the bot's singleton work) makes the chat match, within Telegram's limits: every send and edit
waits for the chat's turn (the outbox's pacing, shared with echoes), a card is edited at most
once per ``edit_interval`` while it changes, and its final state goes out as soon as the chat
allows. Updates only ever set the wanted state, so a burst of job output costs one edit.

The render functions are pure (no telegram import, like :mod:`.render`); everything an agent
wrote goes through :func:`.render.esc`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .redact import redact
from .render import COMMAND_CHARS, MAX_ITEM, clip, esc, esc_block, utf16_len

log = logging.getLogger("claude_net.telegram")

#: rows of (label, callback data); callback data is at most 64 bytes (Telegram's limit)
Buttons = list[list[tuple[str, str]]]
CALLBACK_LIMIT = 64

APPROVAL_ICONS = {"requested": "🙋", "pending": "🙋", "approved": "✅", "denied": "⛔", "expired": "⌛",
                  "cancelled": "🚫"}
JOB_ICONS = {"running": "⏳", "cancelled": "🛑", "timed_out": "⌛", "interrupted": "⚠️", "failed": "❗"}
FINAL_APPROVAL = frozenset({"approved", "denied", "expired", "cancelled"})
FINAL_JOB = frozenset({"exited", "cancelled", "timed_out", "interrupted", "failed"})


@dataclass
class Card:
    key: str
    text: str = ""
    buttons: Buttons = field(default_factory=list)
    loud: bool = False
    final: bool = False
    #: what the card is about (approval id, job id, restore target and snapshot, output tail, ...)
    meta: dict[str, Any] = field(default_factory=dict)
    message_id: int | None = None
    shown: tuple[str, Buttons] | None = None
    last_edit: float = 0.0
    #: a tentative state waits until then for a better one (monotonic; 0: no wait)
    hold_until: float = 0.0

    @property
    def dirty(self) -> bool:
        return self.shown != (self.text, self.buttons)


class Cards:
    """The wanted state of every card, and the task that makes the chat show it."""

    def __init__(self, *, send: Callable[[str, Buttons, bool], Awaitable[int]],
                 edit: Callable[[int, str, Buttons], Awaitable[None]], turn: Callable[[], Awaitable[None]],
                 pace: Callable[[float | None], None], edit_interval: float, retry_initial: float,
                 retry_max: float, secrets: tuple[str, ...] = (), limit: int = 1000) -> None:
        self._send, self._edit, self._turn, self._pace = send, edit, turn, pace
        self.edit_interval = edit_interval
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self._secrets = secrets
        self.limit = limit
        self.cards: OrderedDict[str, Card] = OrderedDict()
        self._wake = asyncio.Event()
        self.sent = self.edited = self.failed = 0

    # -- the event path: synchronous, never waits ----------------------------------------------

    def get(self, key: str) -> Card | None:
        return self.cards.get(key)

    def update(self, key: str, text: str, buttons: Buttons, *, loud: bool = False, final: bool = False,
               meta: Mapping[str, Any] | None = None, create: bool = True, hold: float = 0.0) -> Card | None:
        """Set what card ``key`` should show. A final card does not go back to a non-final state
        (a late progress notice cannot undo a job's end). ``hold``: a tentative state, shown only
        if nothing replaces it within that many seconds."""
        card = self.cards.get(key)
        if card is None:
            if not create:
                return None
            card = self.cards[key] = Card(key)
            self._trim()
        elif card.final and not final:
            if meta:
                card.meta.update(meta)
            return card
        card.text, card.buttons, card.loud, card.final = text, buttons, loud or card.loud, final
        card.hold_until = time.monotonic() + hold if hold > 0 else 0.0
        if meta:
            card.meta.update(meta)
        self._wake.set()
        return card

    def _trim(self) -> None:
        while len(self.cards) > self.limit:
            for key, card in self.cards.items():
                if card.final and not card.dirty:
                    del self.cards[key]
                    break
            else:
                self.cards.popitem(last=False)

    def stats(self) -> dict[str, int]:
        return {"cards": len(self.cards), "pending": sum(1 for c in self.cards.values() if c.dirty),
                "sent": self.sent, "edited": self.edited, "failed": self.failed}

    # -- the sender task -----------------------------------------------------------------------

    def _due(self, card: Card, now: float) -> float:
        """When ``card`` may next be sent or edited (monotonic)."""
        if card.message_id is None or card.final:
            return max(now, card.hold_until)
        return max(card.last_edit + self.edit_interval, card.hold_until)

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            waiting = [(self._due(c, now), c) for c in list(self.cards.values()) if c.dirty]
            if not waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, card = min(waiting, key=lambda pair: pair[0])
            if due > now:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), due - now)
                except asyncio.TimeoutError:
                    pass
                continue
            await self._turn()
            await self._push(card)

    async def _push(self, card: Card) -> None:
        delay = self.retry_initial
        while card.dirty:
            text, buttons = card.text, card.buttons
            try:
                if card.message_id is None:
                    card.message_id = await self._send(text, buttons, not card.loud)
                    self.sent += 1
                else:
                    await self._edit(card.message_id, text, buttons)
                    self.edited += 1
                    card.last_edit = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                name, message = type(exc).__name__, str(exc).lower()
                if name == "RetryAfter":
                    from .outbox import retry_after_seconds

                    self._pace(retry_after_seconds(exc))
                    await self._turn()
                    continue
                if name == "BadRequest" and "not modified" in message:
                    pass  # it shows this already
                elif name == "BadRequest" and "not found" in message:
                    card.message_id = None  # deleted in the chat: send it anew
                    continue
                elif name == "BadRequest" or not _transient(exc):
                    self.failed += 1
                    log.error("telegram: the card %s was refused (%s); leaving it as it is", card.key,
                              redact(f"{name}: {exc}", self._secrets))
                    card.shown = (text, buttons)
                    return
                else:
                    self.failed += 1
                    log.warning("telegram: sending the card %s failed (%s); retrying", card.key,
                                redact(f"{name}: {exc}", self._secrets))
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, self.retry_max)
                    continue
            card.shown = (text, buttons)
            self._pace(None)
            if card.dirty and not card.final:
                return  # changed meanwhile: the next edit waits for its interval


def _transient(exc: BaseException) -> bool:
    from .outbox import _transient as transient

    return transient(exc)


# -- approvals ----------------------------------------------------------------------------------


def approval_from_event(event) -> dict[str, Any]:
    """The approval JSON (contract §2) as far as an ``approval`` event carries it."""
    data = event.data or {}
    return {"id": data.get("approval_id"), "kind": data.get("kind") or "action", "requester": event.actor,
            "action": data.get("action"), "target": event.target, "particulars": data.get("particulars") or {},
            "state": data.get("state"), "expires_at": data.get("expires_at"), "decided_by": data.get("decided_by"),
            "decided_via": data.get("decided_via"), "telegram_user": data.get("telegram_user"),
            "for": data.get("for"), "detail": event.detail}


def _hhmm(stamp: Any) -> str:
    text = str(stamp or "")
    return f"{text[11:16]} UTC" if len(text) >= 16 and text[10] == "T" else esc(text)


def _what(approval: Mapping[str, Any]) -> list[str]:
    """What is asked, one line each (agent text inert, in <code>)."""
    p = approval.get("particulars") or {}
    who, target = esc(approval.get("requester") or "?"), esc(approval.get("target") or "?")
    if approval.get("kind") == "agent_tool":
        lines = [f"<b>{who}</b>'s agent asks to use the tool <code>{esc(clip(str(p.get('tool_name') or '?'), 80))}"
                 "</code>"]
        if p.get("description"):
            lines.append(f"<code>{esc(clip(str(p['description']), COMMAND_CHARS))}</code>")
        if p.get("input_preview"):
            lines.append(f"<pre>{esc_block(clip(str(p['input_preview']), 600))}</pre>")
        return lines
    action = str(approval.get("action") or "?")
    verb = {"exec": "run a command on", "file_read": "read a file on", "file_write": "write a file on"}.get(
        action, f"{esc(action)} on")
    lines = [f"<b>{who}</b> asks to {verb} <b>{target}</b>"]
    if p.get("command") is not None:
        lines.append(f"<code>$ {esc(clip(str(p['command']), COMMAND_CHARS))}</code>")
    if p.get("path") is not None:
        size = f" · {p['size']} bytes" if isinstance(p.get("size"), int) else ""
        lines.append(f"<code>{esc(clip(str(p['path']), COMMAND_CHARS))}</code>{size}")
    if p.get("cwd"):
        lines.append(f"in <code>{esc(clip(str(p['cwd']), COMMAND_CHARS))}</code>")
    if len(lines) == 1 and approval.get("detail"):
        lines.append(f"<code>{esc(clip(str(approval['detail']), COMMAND_CHARS))}</code>")
    return lines


def _decided(approval: Mapping[str, Any]) -> str:
    state = approval.get("state")
    by = approval.get("decided_by")
    via = approval.get("decided_via")
    user = approval.get("telegram_user")
    who = ""
    if by:
        who = f" by <b>{esc(by)}</b>"
        if via:
            who += f" via {esc(via)}"
        if user:
            who += f" (Telegram user {esc(user)})"
    if state == "approved":
        span = f" for {esc(approval['for'])}" if approval.get("for") else (
            " once" if approval.get("kind", "action") == "action" else "")
        return f"✅ <b>approved{span}</b>{who}"
    if state == "denied":
        return f"⛔ <b>denied</b>{who}"
    if state == "expired":
        return "⌛ <b>expired</b>: nobody decided in time; the request was refused"
    if state == "cancelled":
        return f"🚫 <b>cancelled</b>{who or ' by the requester'}"
    return f"• {esc(state)}"


def approval_buttons(approval_id: str, kind: str = "action") -> Buttons:
    if kind != "action":  # an agent's tool prompt is answered once; there is no pathway to open
        return [[("✅ Approve", f"ap:{approval_id}:once"), ("⛔ Deny", f"ap:{approval_id}:deny")]]
    return [[("✅ Approve once", f"ap:{approval_id}:once"), ("✅ Approve for 1 h", f"ap:{approval_id}:1h")],
            [("⛔ Deny", f"ap:{approval_id}:deny")]]


def approval_card(approval: Mapping[str, Any]) -> tuple[str, Buttons, bool]:
    """``(html, buttons, final)`` for an approval in any state."""
    state = approval.get("state") or "requested"
    pending = state in ("requested", "pending")
    icon = APPROVAL_ICONS.get(state, "•")
    head = f"{icon} <b>approval</b> <code>{esc(approval.get('id') or '?')}</code>"
    lines = [head, *_what(approval)]
    if pending:
        if approval.get("expires_at"):
            lines.append(f"expires {_hhmm(approval['expires_at'])} unless decided")
        buttons = approval_buttons(str(approval.get("id")), str(approval.get("kind") or "action"))
        if any(len(data.encode()) > CALLBACK_LIMIT for row in buttons for _, data in row):
            buttons = []  # an id too long for Telegram's 64 bytes: decide with `approve ID`
            lines.append(f"decide with <code>approve {esc(approval.get('id'))}</code> or "
                         f"<code>deny {esc(approval.get('id'))}</code>")
    else:
        lines.append(_decided(approval))
        buttons = []
    text = "\n".join(lines)
    if utf16_len(text) > MAX_ITEM:
        text = "\n".join([head, *(clip(line, 400) for line in lines[1:])])
    return text, buttons, not pending


# -- jobs ---------------------------------------------------------------------------------------


def job_card(job: Mapping[str, Any], tail: str, *, tail_chars: int) -> tuple[str, Buttons, bool]:
    """``(html, buttons, final)`` for a background job: owner, target, command, state, the newest
    output; a Cancel button while it runs."""
    state = str(job.get("state") or "running")
    final = state in FINAL_JOB
    code = job.get("exit_code")
    if state == "exited":
        icon = "✅" if code == 0 else "❌"
        status = f"exit {esc(code)}"
    else:
        icon = JOB_ICONS.get(state, "•")
        status = {"timed_out": "timed out"}.get(state, state)
        if state == "cancelled" and job.get("ended_by"):
            status += f" by {job['ended_by']}"
    who = f"{esc(job.get('owner') or '?')} → {esc(job.get('target') or '?')}"
    lines = [f"{icon} <b>job</b> {who} · {esc(status)}",
             f"<code>$ {esc(clip(str(job.get('command') or ''), COMMAND_CHARS))}</code>"]
    tail = str(tail or "").rstrip("\n")
    if tail:
        if len(tail) > tail_chars:
            tail = "…" + tail[-tail_chars:]
        lines.append(f"<pre>{esc_block(tail)}</pre>")
    if job.get("truncated"):
        lines.append("(output capped by the hub)")
    if final and state in ("failed", "interrupted") and job.get("error"):
        lines.append(f"⚠️ {esc(clip(str(job['error']), 300))}")
    lines.append(f"job <code>{esc(job.get('id') or '?')}</code>")
    text = "\n".join(lines)
    if utf16_len(text) > MAX_ITEM:
        lines[2] = f"<pre>{esc_block(tail[-(MAX_ITEM // 4):])}</pre>" if tail else ""
        text = "\n".join(line for line in lines if line)
    buttons: Buttons = [] if final else [[("🛑 Cancel", f"jc:{job.get('id')}")]]
    if any(len(data.encode()) > CALLBACK_LIMIT for row in buttons for _, data in row):
        buttons = []
    return text, buttons, final


# -- snapshot before: the Restore button -----------------------------------------------------------


def restore_buttons(event_id: str, stage: str) -> Buttons:
    if stage == "offer":
        return [[("⏪ Restore", f"rs:{event_id}")]]
    if stage == "confirm":
        return [[("⚠️ Tap to confirm restore", f"rc:{event_id}"), ("Keep", f"rk:{event_id}")]]
    return []


def restore_note(target: str, snapshot: str) -> str:
    return f"📸 snapshot before: <code>{esc(snapshot)}</code> of <b>{esc(target)}</b>"
