"""Admin commands: parsing the text of a Telegram message and running it against the hub.

No telegram import: a command is text in, HTML messages out. Every action goes through the same
service functions as the HTTP API (``hub.run_container_op`` and the permissions plugin's
``set_permission``/``revoke``, both on ``hub.guarded``), so it is authorized by every policy
plugin and recorded in the activity feed with ``via="telegram"``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from claude_net import Actor, BadRequest, Event, Forbidden, HubError, NotSupported

from .render import clip, esc, pre_messages, utf16_len

#: verbs and their one-line usage, in the order `help` lists them
USAGE: dict[str, str] = {
    "status": "status — every node, one line each",
    "permissions": "permissions [effective] — the permissions matrix",
    "permit": "permit SOURCE TARGET [read|write|exec [ask] ...] [snapshot-before] [for 2h] — grant a pathway "
              "(all = every node; ask after a capability: each use waits for an admin's approval)",
    "revoke": "revoke SOURCE TARGET — deny a pathway (revoke SOURCE all: remove every rule of SOURCE)",
    "start": "start NAME — start a container",
    "stop": "stop NAME [force] — stop a container",
    "snapshot": "snapshot NAME [SNAPSHOT] — snapshot a container (default name: today's date)",
    "snapshots": "snapshots NAME — list a container's snapshots",
    "restore": "restore NAME SNAPSHOT — restore a container to a snapshot",
    "activity": "activity [hours] — the newest activity (default: last 24 hours)",
    "approvals": "approvals — the approval requests waiting for a decision",
    "approve": "approve ID [for 1h] — approve a request once (or allow the pathway for a while)",
    "deny": "deny ID — deny a request",
    "help": "help — this list",
}
ALIASES = {"machines": "status", "nodes": "status", "perms": "permissions", "log": "activity"}
ACTIVITY_ROWS = 20


@dataclass
class Parsed:
    """A command addressed to this bot: ``verb`` (lowercase) and its arguments, as typed."""

    verb: str
    args: list[str] = field(default_factory=list)
    #: how it was addressed: "@chasclaude", "/", "/@BotName"
    address: str = ""
    #: True when the verb is not one we know (answered with a hint only when explicitly addressed)
    unknown: bool = False
    #: ``@NAME verb ...`` where NAME is neither the admin node nor the bot: never run, see
    #: ``TelegramRuntime._foreign_refusal`` for when it is answered
    foreign: bool = False

    @property
    def text(self) -> str:
        return " ".join([self.verb, *self.args])


_SPLIT = re.compile(r"\s+")


def parse(text: str | None, *, admin_node: str, bot_username: str) -> Parsed | None:
    """The command in ``text``, or ``None`` when the message is not addressed to this bot.

    Accepted: ``@chasclaude permit a all`` (the admin node's name, as in the original spec),
    ``@BotUserName permit a all``, ``/permit a all`` and ``/permit@BotUserName a all``. A slash
    command addressed to another bot (``/permit@OtherBot``) and ordinary chat are not ours.
    """
    if not text:
        return None
    words = [w for w in _SPLIT.split(text.strip()) if w]
    if not words:
        return None
    first = words[0]
    names = {n.lower() for n in (admin_node, bot_username) if n}
    if first.startswith("/") and len(first) > 1:
        verb, _, at = first[1:].partition("@")
        if at and (not bot_username or at.lower() != bot_username.lower()):
            return None
        address, args = (f"/@{at}" if at else "/"), words[1:]
    elif first.startswith("@") and first[1:].rstrip(":,").lower() in names:
        if len(words) == 1:
            return Parsed("help", [], first)
        verb, args, address = words[1], words[2:], first.rstrip(":,")
    elif first.startswith("@") and len(words) > 1 and ALIASES.get(words[1].lower(), words[1].lower()) in USAGE:
        # shaped like a command for another node ("@chasclaude permit ..." on a hub whose bot has
        # no admin node, or names another one): not run, perhaps answered
        verb = words[1].lower()
        return Parsed(ALIASES.get(verb, verb), words[2:], first.rstrip(":,"), foreign=True)
    else:
        return None
    verb = verb.lower()
    verb = ALIASES.get(verb, verb)
    parsed = Parsed(verb, args, address)
    if verb not in USAGE:
        if address == "/":  # a bare /command of some other bot or feature: not ours to answer
            return None
        parsed.unknown = True
    return parsed


def _plugin(hub, module_name: str):
    """The module of another claude-net plugin if it is installed *and* loaded in this hub."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return module if hub.pm.is_registered(module) else None


def _node(value: str) -> str:
    """Node names are lowercase; phones like to capitalise the first letter."""
    return value.lower()


def _everyone(name: str) -> str:
    return "every node" if name in ("*", "all") else name


async def _require(hub, actor: Actor, action: str, what: str) -> None:
    """The HTTP API's admin check for read-only views, through the policy plugins."""
    if not await hub.authorize(actor, action, None, {}):
        await hub.emit(Event("admin", actor.name, None, f"{what} (admin only)", "denied", via=actor.via))
        raise Forbidden(f"denied: {action} is an admin-only action and {actor.name} is not an admin", code="denied")


def usage(verb: str) -> str:
    return f"usage: <code>{esc(USAGE[verb].split(' — ')[0])}</code>"


# -- the commands -------------------------------------------------------------------------------


async def cmd_help(hub, actor, args, ctx) -> list[str]:
    name = esc(ctx.get("admin_node") or "admin")
    lines = [f"🤖 <b>claude-net</b> — commands act as <b>{name}</b> (admin). Write "
             f"<code>@{name} COMMAND</code> or <code>/COMMAND</code>:"]
    lines += [f"• <code>{esc(u.split(' — ')[0])}</code> — {esc(u.split(' — ')[1])}" for u in USAGE.values()]
    return ["\n".join(lines)]


def _ago(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "never seen"
    try:
        then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "seen ?"
    seconds = max(0, (now - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"seen {int(seconds // size)}{unit} ago"
    return "seen just now"


STATE_ICONS = {"running": "🟢", "reachable": "🟢", "registered": "🔵", "stopped": "🔴", "frozen": "🔵",
               "unreachable": "🟠", "error": "🟠"}


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)) or n <= 0:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _lines_to_messages(lines: Sequence[str]) -> list[str]:
    messages, current, size = [], [], 0
    for line in lines:
        cost = utf16_len(line) + 1
        if current and size + cost > 3900:
            messages.append("\n".join(current))
            current, size = [], 0
        current.append(line)
        size += cost
    if current:
        messages.append("\n".join(current))
    return messages


async def cmd_status(hub, actor, args, ctx) -> list[str]:
    nodes, errors = await hub.nodes.all(fresh=True)
    seen = await hub.last_seen()
    now = datetime.now(timezone.utc)
    lines = [f"📋 <b>status</b> — {len(nodes)} node{'s' if len(nodes) != 1 else ''}"]
    for node in nodes:
        info = dict(node.info or {})
        bits = [esc(node.state), esc(node.backend), _ago(seen.get(node.name), now)]
        memory = _size(info.get("memoryBytes"))
        if memory:
            bits.append(memory)
        if isinstance(info.get("processes"), int):
            bits.append(f"{info['processes']} procs")
        if info.get("error"):
            bits.append(esc(clip(str(info["error"]), 80)))
        icon = STATE_ICONS.get(node.state, "⚪")
        lines.append(f"{icon} <b>{esc(node.name)}</b> · " + " · ".join(bits))
    for backend, error in sorted(errors.items()):
        lines.append(f"⚠️ backend {esc(backend)} unavailable: {esc(clip(error, 200))}")
    if not nodes and not errors:
        lines.append("no nodes known")
    return _lines_to_messages(lines)


def _permissions_module(hub):
    module = _plugin(hub, "claude_net_permissions")
    if module is None:
        raise NotSupported("the permissions plugin (claude-net-permissions) is not installed on this hub",
                           code="no_permissions_plugin")
    return module


CAPABILITY_WORDS = {"read": "file_read", "write": "file_write", "read-only": "file_read", "readonly": "file_read",
                    "ro": "file_read"}


def _parse_grant(args: Sequence[str]) -> tuple[list[str] | None, str | None, list[str] | None, bool]:
    """``(capabilities, expires, ask, snapshot_before)``: ``ask`` after a capability word makes the
    capabilities of that word ask-level (``exec ask``, ``all ask``); a bare ``ask`` with no
    capability before it asks for every capability granted; ``snapshot-before`` snapshots the
    target before each exec or file write."""
    rest = list(args)
    expires = None
    if "for" in (a.lower() for a in rest):
        at = [a.lower() for a in rest].index("for")
        if at + 1 >= len(rest):
            raise BadRequest("`for` needs a duration such as 30m, 2h or 7d", code="invalid_field")
        expires = rest[at + 1]
        rest = rest[:at] + rest[at + 2:]
    caps: list[str] = []
    ask: list[str] = []
    asked_all = snapshot = False
    last: list[str] = []
    for word in rest:
        word = word.lower()
        if word in ("snapshot-before", "snapshot_before", "snapshot"):
            snapshot = True
            continue
        if word in ("ask", "asks", "approval"):
            if last:
                ask += [c for c in last if c not in ask]
            else:
                asked_all = True
            continue
        if word in ("all", "rwx"):
            last = ["exec", "file_read", "file_write"]
        else:
            last = [CAPABILITY_WORDS.get(w, w) for w in word.split(",") if w]
        caps += last
    if asked_all:
        ask = list(dict.fromkeys(caps or ["exec", "file_read", "file_write"]))
    return (caps or None), expires, (ask or None), snapshot


async def cmd_permit(hub, actor, args, ctx) -> list[str]:
    if len(args) < 2:
        return [usage("permit")]
    perms = _permissions_module(hub)
    caps, expires, ask, snapshot = _parse_grant(args[2:])
    extra: dict[str, Any] = {}
    accepted = inspect.signature(perms.set_permission).parameters
    if ask:
        if "ask" not in accepted:
            raise NotSupported("this hub's permissions plugin has no ask level (approvals)", code="no_ask_level")
        extra["ask"] = ask
    if snapshot:
        if "snapshot" not in accepted:
            raise NotSupported("this hub's permissions plugin cannot snapshot before actions", code="no_snapshot")
        extra["snapshot"] = "before"
    rule = await perms.set_permission(hub, actor, _node(args[0]), _node(args[1]), allow=True,
                                      capabilities=caps, expires=expires, aliases=True, **extra)
    until = f" until {esc(rule['expires_at'])}" if rule.get("expires_at") else ""
    asked = [c for c in rule.get("ask") or () if c in rule["capabilities"]]
    caps_text = ", ".join(f"{c} (ask)" if c in asked else c for c in rule["capabilities"])
    if rule.get("snapshot") == "before":
        caps_text += "; snapshot before each exec and file write"
    return [f"🔑 permitted <b>{esc(_everyone(rule['source']))}</b> → <b>{esc(_everyone(rule['target']))}</b>: "
            f"{esc(caps_text)}{until}"]


async def cmd_revoke(hub, actor, args, ctx) -> list[str]:
    if len(args) < 2:
        return [usage("revoke")]
    perms = _permissions_module(hub)
    inherit = len(args) > 2 and args[2].lower() == "inherit"
    result = await perms.revoke(hub, actor, _node(args[0]), _node(args[1]), inherit=inherit)
    source = esc(_everyone(result["source"]))
    if not result.get("stored"):
        removed = result.get("removed", 0)
        targets = ", ".join(_everyone(t) for t in result.get("removed_targets", ()))
        what = f": {esc(targets)}" if targets else ""
        return [f"🚫 revoked: removed {removed} rule{'s' if removed != 1 else ''} of <b>{source}</b>{what}"]
    return [f"🚫 revoked <b>{source}</b> → <b>{esc(_everyone(result['target']))}</b> "
            "(explicit deny; beats broader grants)"]


async def cmd_permissions(hub, actor, args, ctx) -> list[str]:
    perms = _permissions_module(hub)
    await _require(hub, actor, "permissions_view", "permissions via telegram")
    from claude_net_permissions import cli as render  # the CLI's matrix renderers

    effective = bool(args) and args[0].lower() in ("effective", "resolved", "all")
    view = await perms.permissions_view(hub, effective=effective)
    lines = render.render_effective(view["effective"]) if effective else render.render_rules(view["permissions"])
    footer = "\n".join(f"⚠️ backend {esc(b)} unavailable: {esc(clip(e, 200))}"
                       for b, e in sorted((view.get("unavailable") or {}).items()))
    title = "🔑 <b>permissions</b> (resolved)" if effective else "🔑 <b>permissions</b>"
    return pre_messages(title, lines, footer)


async def _container(hub, actor, op: str, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return await hub.run_container_op(actor, op, _node(name), extra or {})


async def cmd_start(hub, actor, args, ctx) -> list[str]:
    if len(args) != 1:
        return [usage("start")]
    result = await _container(hub, actor, "start", args[0])
    return [f"▶️ started <b>{esc(result['name'])}</b>"]


async def cmd_stop(hub, actor, args, ctx) -> list[str]:
    if not 1 <= len(args) <= 2 or (len(args) == 2 and args[1].lower() != "force"):
        return [usage("stop")]
    result = await _container(hub, actor, "stop", args[0], {"force": True} if len(args) == 2 else {})
    return [f"⏹ stopped <b>{esc(result['name'])}</b>"]


async def cmd_snapshot(hub, actor, args, ctx) -> list[str]:
    if not 1 <= len(args) <= 2:
        return [usage("snapshot")]
    result = await _container(hub, actor, "snapshot", args[0], {"snapshot": args[1]} if len(args) == 2 else {})
    snap = result.get("snapshot")
    named = f" <code>{esc(snap)}</code>" if snap else ""
    return [f"📸 snapshot{named} of <b>{esc(result['name'])}</b> taken"]


async def cmd_snapshots(hub, actor, args, ctx) -> list[str]:
    if len(args) != 1:
        return [usage("snapshots")]
    result = await _container(hub, actor, "list_snapshots", args[0])
    snaps = [s if isinstance(s, str) else str(s.get("name", s)) if isinstance(s, dict) else str(s)
             for s in result.get("snapshots") or ()]
    if not snaps:
        return [f"📸 <b>{esc(result['name'])}</b> has no snapshots"]
    return pre_messages(f"📸 snapshots of <b>{esc(result['name'])}</b>", snaps)


async def cmd_restore(hub, actor, args, ctx) -> list[str]:
    if len(args) != 2:
        return [usage("restore")]
    result = await _container(hub, actor, "restore", args[0], {"snapshot": args[1]})
    return [f"⏪ restored <b>{esc(result['name'])}</b> to <code>{esc(args[1])}</code>"]


def _hours(args: Sequence[str]) -> float:
    if not args:
        return 24.0
    try:
        hours = float(args[0].lower().rstrip("h"))
    except ValueError:
        raise BadRequest(f"hours must be a number, not {args[0][:20]!r}", code="invalid_field") from None
    if not math.isfinite(hours) or not 0 < hours <= 24 * 366:
        raise BadRequest("hours must be between 0 and 8784", code="invalid_field")
    return hours


def _activity_line(row: dict[str, Any], long: bool) -> str:
    stamp = row["time"] or ""
    when = f"{stamp[5:10]} {stamp[11:16]}" if long else stamp[11:19]
    extra = f" exit {row['exit_code']}" if row.get("exit_code") not in (None, 0) else ""
    via = f" ({row['via']})" if row.get("via") not in (None, "http") else ""
    target = f" → {row['target']}" if row.get("target") else ""
    return (f"{when} {row['from'] or '-'}{via} {row['type']}{target} {row['result']}{extra}: "
            f"{clip(' '.join((row.get('detail') or '').split()), 80)}")


async def cmd_activity(hub, actor, args, ctx) -> list[str]:
    if len(args) > 1:
        return [usage("activity")]
    hours = _hours(args)
    activity = _plugin(hub, "claude_net_activity")
    if activity is None:
        raise NotSupported("the activity plugin (claude-net-activity) is not installed on this hub",
                           code="no_activity_plugin")
    await _require(hub, actor, "activity_view", "activity via telegram")
    # the rows recording accepted Telegram commands only repeat what the chat already shows
    rows, cursor = await activity.query(hub, hours=hours, limit=ACTIVITY_ROWS * 3)
    rows = [r for r in rows if not (r["type"] == "telegram" and r["result"] == "ok")]
    more = cursor is not None or len(rows) > ACTIVITY_ROWS
    rows = rows[:ACTIVITY_ROWS]
    shown = f"{hours:g} h"
    if not rows:
        return [f"📜 no activity in the last {shown}"]
    rows.reverse()  # oldest of the newest first, like a chat
    title = f"📜 <b>activity</b>, last {shown}" + (f" (newest {len(rows)})" if more else "") + " — UTC"
    footer = (f"older rows: <code>claude-net activity --hours {hours:g}</code>" if more else "")
    return pre_messages(title, [_activity_line(r, hours > 24) for r in rows], footer)


def _approvals_service(hub):
    module = _plugin(hub, "claude_net_approvals")
    if module is None:
        raise NotSupported("the approvals plugin (claude-net-approvals) is not installed on this hub",
                           code="no_approvals_plugin")
    return importlib.import_module("claude_net_approvals.service")


def approval_line(a: dict[str, Any]) -> str:
    p = a.get("particulars") or {}
    what = p.get("command") or p.get("path") or p.get("tool_name") or a.get("action") or "?"
    return f"{a.get('id')} {a.get('requester')} {a.get('action') or a.get('kind')} → {a.get('target') or '-'}: {what}"


async def cmd_approvals(hub, actor, args, ctx) -> list[str]:
    if args:
        return [usage("approvals")]
    service = _approvals_service(hub)
    pending = await service.list_approvals(hub, state="pending")
    if not pending:
        return ["🙋 no approval requests are waiting"]
    return pre_messages(f"🙋 <b>approvals</b> waiting ({len(pending)})", [approval_line(a) for a in pending],
                        "decide: <code>approve ID</code> · <code>approve ID for 1h</code> · <code>deny ID</code>")


async def _decide(hub, actor, args, ctx, decision: str) -> list[str]:
    span = None
    if decision == "approve" and len(args) == 3 and args[1].lower() == "for":
        span = args[2].lower()
    elif len(args) != 1:
        return [usage(decision)]
    service = _approvals_service(hub)
    try:
        approval = await service.decide(hub, actor, args[0], decision, for_=span, via="telegram",
                                        telegram_user=ctx.get("telegram_user"))
    except HubError as exc:
        state = exc.extra.get("state") if exc.code == "already_decided" else None
        if state:
            return [f"⚠️ approval <code>{esc(args[0])}</code> is already {esc(state)}; nothing changed"]
        raise
    if approval.get("state") == "denied":
        return [f"⛔ denied <code>{esc(approval['id'])}</code>: {esc(approval_line(approval))}"]
    span_text = f"for {approval['for']}" if approval.get("for") else "once"
    return [f"✅ approved {esc(span_text)} <code>{esc(approval['id'])}</code>: {esc(approval_line(approval))}"]


async def cmd_approve(hub, actor, args, ctx) -> list[str]:
    return await _decide(hub, actor, args, ctx, "approve")


async def cmd_deny(hub, actor, args, ctx) -> list[str]:
    return await _decide(hub, actor, args, ctx, "deny")


HANDLERS = {
    "approvals": cmd_approvals, "approve": cmd_approve, "deny": cmd_deny,
    "help": cmd_help, "status": cmd_status, "permit": cmd_permit, "revoke": cmd_revoke,
    "permissions": cmd_permissions, "start": cmd_start, "stop": cmd_stop, "snapshot": cmd_snapshot,
    "snapshots": cmd_snapshots, "restore": cmd_restore, "activity": cmd_activity,
}


async def run(hub, actor: Actor, parsed: Parsed, **ctx: Any) -> list[str]:
    """Run ``parsed`` as ``actor``; returns the reply as HTML messages (errors included)."""
    if parsed.unknown:
        return [f"❓ unknown command <code>{esc(clip(parsed.verb, 40))}</code>; send <code>help</code> "
                "for the list"]
    if parsed.verb == "start" and not parsed.args and parsed.address.startswith("/"):
        parsed = Parsed("help", [], parsed.address)  # Telegram's conventional /start opens a chat
    try:
        return await HANDLERS[parsed.verb](hub, actor, parsed.args, ctx)
    except Forbidden as exc:
        return [f"⛔ {esc(exc.message)}"]
    except HubError as exc:
        return [f"⚠️ {esc(exc.message)}"]
