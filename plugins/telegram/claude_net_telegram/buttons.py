"""Inline buttons: which events become cards (:mod:`.cards`), and what a press does.

Button presses are ``callback_query`` updates. A press is accepted only from a person in
``admin_ids``, on a message in the admin chat (``chat_id``) — the same rule as commands; anyone
else's press changes nothing, is answered with the reason and recorded (``telegram`` /
``denied``, ``update: callback_query``), and the admin chat is told. An accepted press is recorded
like a command (``telegram`` / ``ok`` with the Telegram user id) and acts as the admin node via
Telegram, through the same services as the HTTP API:

* ``ap:<approval id>:once|1h|deny`` — ``claude_net_approvals.service.decide`` (``via="telegram"``)
* ``jc:<job id>`` — ``claude_net.builtin.jobs.cancel``
* ``rs:<event id>`` then ``rc:<event id>`` — a second tap confirms ``Hub.run_container_op(...,
  "restore", target, {"snapshot": ...})`` of the snapshot taken before that action;
  ``rk:<event id>`` keeps the container as it is.
"""

from __future__ import annotations

import html
import importlib
import json
import logging
from typing import Any

from claude_net import Event, HubError

from .cards import (FINAL_JOB, approval_card, approval_from_event, job_card, restore_buttons, restore_note)
from .render import clip, esc, format_event

log = logging.getLogger("claude_net.telegram")

APPROVAL_STEPS = frozenset({"requested", "approved", "denied", "expired", "cancelled"})
CHOICES = {"once": ("approve", None), "1h": ("approve", "1h"), "deny": ("deny", None)}


# -- events -> card updates (on every replica; plain JSON, so they can cross the bus) --------------


def card_update(rt, event) -> dict[str, Any] | None:
    """The card update ``event`` makes, ``{"kind": "none"}`` for an event nothing should show,
    or ``None`` for an ordinary echo."""
    data = event.data or {}
    s = rt.s
    if event.type == "approval":
        if not s.approval_buttons or not data.get("approval_id") or data.get("state") not in APPROVAL_STEPS:
            return None  # a refusal about approvals (not one's step): an ordinary echo
        return {"kind": "approval", "approval": approval_from_event(event)}
    if event.type == "job":
        if not s.job_echo or not s.echo or not data.get("job_id"):
            return {"kind": "none"}  # progress notices are never plain echoes
        tail = event.transient.get("output_tail")
        job = {"id": data["job_id"], "owner": event.actor, "target": event.target, "command": event.detail or None,
               "state": data.get("state"), "truncated": data.get("truncated"), "ended_by": data.get("ended_by")}
        if "exit_code" in data:
            job["exit_code"] = data["exit_code"]
        return {"kind": "job", "job": job,
                "tail": None if tail is None else str(tail)[-max(0, s.job_output_chars) - 1:]}
    if data.get("job_id") and event.type == "exec" and event.result != "denied":
        if not s.job_echo or not s.echo:
            return {"kind": "none"}
        job = {"id": data["job_id"], "owner": event.actor, "target": event.target, "command": event.detail}
        if event.result == "pending":
            return {"kind": "job", "from_exec": True, "job": {**job, "state": "running"}}
        if event.result == "error":
            # the command is over; a refusal before the job existed (a limit, a stopped node) has
            # no job event of its own, and the job's final event (cancelled, ...) refines this
            return {"kind": "job", "tentative": True, "job": {**job, "state": "failed", "error": data.get("error")}}
        return {"kind": "none"}  # ok: the job's final event, right behind, says how it ended
    snapshot = data.get("snapshot")
    if isinstance(snapshot, str) and snapshot and event.target and event.result in ("ok", "error") and rt.wants(event):
        text, loud = format_event(event, output_chars=s.echo_output_chars)
        return {"kind": "action", "event_id": event.id, "html": text, "loud": loud or not s.echo_quiet_ok,
                "target": event.target, "snapshot": snapshot}
    return None


def apply(rt, update: dict[str, Any]) -> None:
    """Set the card an update describes (on the replica that talks to Telegram)."""
    kind = update.get("kind")
    if kind == "approval":
        show_approval(rt, update["approval"])
    elif kind == "job":
        show_job(rt, update["job"], update.get("tail"), from_exec=bool(update.get("from_exec")),
                 tentative=bool(update.get("tentative")))
    elif kind == "action":
        event_id = str(update["event_id"])
        rt.cards.update(f"rs:{event_id}", f"{update['html']}\n{restore_note(update['target'], update['snapshot'])}",
                        restore_buttons(event_id, "offer"), loud=bool(update.get("loud")), final=True,
                        meta={"target": update["target"], "snapshot": update["snapshot"], "html": update["html"]})


def show_approval(rt, approval: dict[str, Any], *, message_id: int | None = None) -> None:
    key = f"ap:{approval.get('id')}"
    text, rows, final = approval_card(approval)
    card = rt.cards.get(key)
    if card is None and message_id is not None:
        card = rt.cards.update(key, "", [], final=False)
        card.message_id = message_id  # adopt the message pressed (sent before this replica led)
    rt.cards.update(key, text, rows, loud=not final, final=final, meta={"approval": approval})


#: seconds a job card waits for the job's own final event before it shows the exec's failure
TENTATIVE_HOLD = 2.0


def show_job(rt, job: dict[str, Any], tail: str | None, *, from_exec: bool = False,
             message_id: int | None = None, tentative: bool = False) -> None:
    key = f"job:{job.get('id')}"
    card = rt.cards.get(key)
    if from_exec and card is not None:
        return  # the job's own events know better than the exec that started it
    if card is None and message_id is not None:
        card = rt.cards.update(key, "", [], final=False)
        card.message_id = message_id
    previous = dict(card.meta.get("job") or {}) if card is not None else {}
    merged = {**previous, **{k: v for k, v in job.items() if v is not None}}
    if tail is None:
        tail = card.meta.get("tail", "") if card is not None else ""
    text, rows, final = job_card(merged, tail, tail_chars=rt.s.job_output_chars)
    failed = final and not (merged.get("state") == "exited" and merged.get("exit_code") == 0)
    if tentative and card is not None and card.final:
        return
    # tentative: the exec failed; a job that had started ends with its own event right after
    # (cancelled, timed out, ...), which replaces this before it is shown
    rt.cards.update(key, text, rows, loud=failed, final=final and not tentative,
                    meta={"job": merged, "tail": tail}, hold=TENTATIVE_HOLD if tentative else 0.0)


# -- presses --------------------------------------------------------------------------------------


def _plugin_module(hub, package: str, module: str):
    try:
        root = importlib.import_module(package)
    except ImportError:
        return None
    if not hub.pm.is_registered(root):
        return None
    try:
        return importlib.import_module(f"{package}.{module}")
    except ImportError:
        return None


def approvals_service(hub):
    """``claude_net_approvals.service`` when the approvals plugin is loaded in this hub."""
    return _plugin_module(hub, "claude_net_approvals", "service")


def jobs_service():
    try:
        return importlib.import_module("claude_net.builtin.jobs")
    except ImportError:
        return None


def describe(data: str) -> str:
    """A press, in words, for the activity feed."""
    kind, _, rest = data.partition(":")
    if kind == "ap":
        approval_id, _, choice = rest.rpartition(":")
        words = {"once": "approve once", "1h": "approve for 1 h", "deny": "deny"}.get(choice, choice)
        return f"button: {words} (approval {approval_id})"
    if kind == "jc":
        return f"button: cancel job {rest}"
    if kind in ("rs", "rc", "rk"):
        words = {"rs": "restore", "rc": "confirm restore", "rk": "keep (no restore)"}[kind]
        return f"button: {words} (action {rest})"
    return f"button: {data}"


def refusal(rt, query) -> tuple[str, str] | None:
    """Why this press must not act, or ``None`` (the rules of commands, for buttons)."""
    message = query.message
    user = query.from_user
    chat_id = message.chat.id if message is not None else None
    if chat_id != rt.s.chat_id:
        return "wrong_chat", f"buttons work only in the admin chat, not in chat {chat_id}"
    if user is None or user.is_bot:
        return "bot", "bots cannot press buttons here"
    if user.id not in rt.admin_ids:
        return "not_admin", f"Telegram user {user.id} is not allowed to decide for this hub (admin_ids)"
    if not rt.admin_node:
        return "no_admin_node", "no admin node is configured, so buttons have no node to act as"
    return None


async def handle_press(rt, query) -> None:
    rt.counters["presses"] += 1
    data = query.data or ""
    message = query.message
    user = query.from_user
    info = {"user_id": user.id if user else None, "chat_id": message.chat.id if message is not None else None,
            "message_id": message.message_id if message is not None else None, "command": "button",
            "update": "callback_query", "button": clip(data, 80)}
    detail = clip(describe(data), 300)
    refused = refusal(rt, query)
    if refused is not None:
        code, reason = refused
        rt.counters["refused"] += 1
        event = Event("telegram", f"telegram:{info['user_id']}", None, detail, "denied", via="telegram",
                      data={**info, "reason": code, "reason_text": reason})
        event.transient["echo"] = True  # the presser alone sees the answer: tell the admin chat
        await rt.hub.emit(event)
        log.warning("telegram: refused a button press from user %s in chat %s: %s", info["user_id"],
                    info["chat_id"], code)
        await rt.answer_press(query.id, f"⛔ not done: {reason}", alert=True)
        return
    await rt.hub.emit(Event("telegram", rt.actor.name, None, detail, "ok", via="telegram", data=info))
    kind, _, rest = data.partition(":")
    handler = {"ap": _press_approval, "jc": _press_cancel, "rs": _press_restore, "rc": _press_restore,
               "rk": _press_restore}.get(kind)
    if handler is None:
        await rt.answer_press(query.id, "this button is no longer valid", alert=False)
        return
    try:
        await handler(rt, query, kind, rest, info)
    except HubError as exc:
        await rt.answer_press(query.id, f"⚠️ {exc.message}", alert=True)


async def _press_approval(rt, query, kind, rest, info) -> None:
    approval_id, _, choice = rest.rpartition(":")
    service = approvals_service(rt.hub)
    if service is None or choice not in CHOICES or not approval_id:
        await rt.answer_press(query.id, "approvals are not enabled on this hub" if service is None
                              else "this button is no longer valid", alert=True)
        return
    decision, span = CHOICES[choice]
    message_id = info["message_id"]
    try:
        approval = await service.decide(rt.hub, rt.actor, approval_id, decision, for_=span, via="telegram",
                                        telegram_user=info["user_id"])
    except HubError as exc:
        current = None
        try:
            current = await service.get(rt.hub, approval_id)
        except HubError:
            pass
        if current is not None:
            show_approval(rt, current, message_id=message_id)
            state = current.get("state")
            by = f" by {current['decided_by']}" if current.get("decided_by") else ""
            via = f" via {current['decided_via']}" if current.get("decided_via") else ""
            if state in ("approved", "denied", "cancelled"):
                text = f"already {state}{by}{via}; nothing changed"
            elif state == "expired":
                text = "this request expired; nothing changed"
            else:
                text = f"⚠️ {exc.message}"
        else:
            text = f"⚠️ {exc.message}"
        await rt.answer_press(query.id, text, alert=False)
        return
    show_approval(rt, approval, message_id=message_id)
    answer = {"once": "✅ approved once" if approval.get("kind", "action") == "action" else "✅ approved",
              "1h": "✅ approved for 1 h", "deny": "⛔ denied"}[choice]
    await rt.answer_press(query.id, answer)


async def _press_cancel(rt, query, kind, job_id, info) -> None:
    jobs = jobs_service()
    if jobs is None:
        await rt.answer_press(query.id, "jobs are not available on this hub", alert=True)
        return
    try:
        job = await jobs.cancel(rt.hub, rt.actor, job_id)
    except HubError as exc:
        await rt.answer_press(query.id, f"⚠️ {exc.message}", alert=False)
        return
    if isinstance(job, dict) and job.get("id"):
        show_job(rt, {k: job.get(k) for k in ("id", "owner", "target", "command", "state", "exit_code", "truncated")},
                 None, message_id=info["message_id"])
    state = job.get("state") if isinstance(job, dict) else None
    await rt.answer_press(query.id, "🛑 cancelled" if state == "cancelled" else
                          f"job is {state}" if state in FINAL_JOB else "🛑 cancelling")


async def _restore_target(rt, event_id: str, card) -> tuple[str, str] | None:
    """The container and snapshot of the action ``event_id``: from its card, else its activity row."""
    if card is not None and card.meta.get("snapshot"):
        return card.meta["target"], card.meta["snapshot"]
    try:
        row = await rt.hub.db.fetch_one("SELECT target, data FROM activity_log WHERE event_id = :id", {"id": event_id})
    except Exception as exc:  # no activity plugin (no table), or the database is down
        log.warning("telegram: cannot look up action %s: %s", event_id, type(exc).__name__)
        return None
    if row is None:
        return None
    try:
        data = json.loads(row["data"] or "{}") if isinstance(row["data"], str) else dict(row["data"] or {})
    except (ValueError, TypeError):
        return None
    snapshot = data.get("snapshot")
    return (row["target"], snapshot) if row["target"] and isinstance(snapshot, str) else None


async def _press_restore(rt, query, kind, event_id, info) -> None:
    key = f"rs:{event_id}"
    card = rt.cards.get(key)
    found = await _restore_target(rt, event_id, card)
    if found is None:
        await rt.answer_press(query.id, "this action's snapshot is not known here", alert=True)
        return
    target, snapshot = found
    if card is None:  # pressed on a message sent before this replica led: adopt it
        shown = html.escape(getattr(query.message, "text", "") or "", quote=False)
        base = shown.rsplit("\n📸", 1)[0] if shown else f"action {esc(event_id)}"
        card = rt.cards.update(key, "", [], final=True,
                               meta={"target": target, "snapshot": snapshot, "html": base})
        card.message_id = info["message_id"]
    base = f"{card.meta['html']}\n{restore_note(target, snapshot)}"
    if card.meta.get("restored"):
        await rt.answer_press(query.id, f"already restored by {card.meta['restored']}; nothing changed")
        return
    if kind == "rs":
        rt.cards.update(key, base, restore_buttons(event_id, "confirm"), final=True)
        await rt.answer_press(query.id, f"Tap ⚠️ to restore {target} to {snapshot}: changes made since are lost",
                              alert=False)
        return
    if kind == "rk":
        rt.cards.update(key, base, restore_buttons(event_id, "offer"), final=True)
        await rt.answer_press(query.id, "kept as it is")
        return
    await rt.answer_press(query.id, f"⏪ restoring {target} to {snapshot}…")
    who = f"<b>{esc(rt.actor.name)}</b> via telegram (Telegram user {esc(info['user_id'])})"
    try:
        await rt.hub.run_container_op(rt.actor, "restore", target, {"snapshot": snapshot})
    except HubError as exc:
        rt.cards.update(key, f"{base}\n⚠️ restore failed: {esc(clip(exc.message, 300))}",
                        restore_buttons(event_id, "offer"), final=True)
        return
    card.meta["restored"] = f"{rt.actor.name} (Telegram user {info['user_id']})"
    rt.cards.update(key, f"{base}\n⏪ <b>restored</b> by {who}", [], final=True)
