"""Pure logic of the permissions matrix: names, capabilities, expiry, precedence. No I/O.

A *rule* is one row of ``exec_permissions``: ``(source, target)`` plus the capabilities it
grants (``can_exec``, ``can_read``, ``can_write``) and an optional expiry. ``*`` is a literal
value meaning "every node"; it is compared with ``=``, never as a pattern.

Resolution of ``source -> target`` for one capability, most specific first::

    (source, target)  ->  (source, *)  ->  (*, target)  ->  (*, *)  ->  no rule

The first rule that exists and has not expired decides, for every capability at once: it
allows the capabilities it grants and denies the others (so a narrower rule — read-only, or an
explicit deny stored by ``revoke SOURCE TARGET`` — beats any broader grant). No rule at all is
"no opinion", which the hub turns into a deny unless another policy plugin allows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from claude_net import BadRequest, isotime, validate_node_name

WILDCARD = "*"
#: words accepted for "every node" (the original spec says `permit managerclaude all`)
WILDCARD_WORDS = frozenset({"*", "all"})
#: the capabilities a rule can grant, in display order, and their columns
CAPABILITIES: tuple[str, ...] = ("exec", "file_read", "file_write")
COLUMNS: Mapping[str, str] = {"exec": "can_exec", "file_read": "can_read", "file_write": "can_write"}
LETTERS: Mapping[str, str] = {"exec": "x", "file_read": "r", "file_write": "w"}
#: the columns marking a capability as granted only with an admin's approval (the ``ask`` level);
#: the seed columns (``can_exec``...) stay False for it, so they keep meaning "granted outright"
ASK_COLUMNS: Mapping[str, str] = {"exec": "ask_exec", "file_read": "ask_read", "file_write": "ask_write"}
#: the capabilities a ``snapshot: before`` rule snapshots the target for
SNAPSHOT_CAPABILITIES = ("exec", "file_write")
#: the values of a rule's ``snapshot`` (None: no snapshot)
SNAPSHOT_WHEN = ("before",)
#: extra spellings accepted by the CLI (the HTTP API takes the canonical names only)
ALIASES: Mapping[str, str] = {
    "x": "exec", "execute": "exec", "r": "file_read", "read": "file_read",
    "w": "file_write", "write": "file_write",
}
#: the authorize actions this policy decides; everything else is left to other plugins
ACTIONS = frozenset(CAPABILITIES)

_RELATIVE = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_EXPIRY = timedelta(days=3660)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def normalize_name(value: object, field_name: str) -> str:
    """A node name, or ``*`` for ``*``/``all``. Anything else is a 400 (before any lookup)."""
    if isinstance(value, str) and value in WILDCARD_WORDS:
        return WILDCARD
    return validate_node_name(value, field_name=field_name)


def parse_capabilities(values: Iterable[str] | str | None, *, aliases: bool = False) -> tuple[str, ...]:
    """Canonical, ordered, de-duplicated capabilities; ``None`` means all of them."""
    if values is None:
        return CAPABILITIES
    if isinstance(values, str):
        values = [v for v in re.split(r"[,\s]+", values) if v]
    wanted: set[str] = set()
    for value in values:
        name = ALIASES.get(value, value) if aliases else value
        if name not in COLUMNS:
            raise BadRequest(f"unknown capability {value!r} (choose from {', '.join(CAPABILITIES)})",
                             code="invalid_field", field="capabilities")
        wanted.add(name)
    return tuple(c for c in CAPABILITIES if c in wanted)


def parse_expires(value: object, *, now: datetime | None = None) -> str | None:
    """``None``/``""``/``"never"`` -> no expiry; ``"90m"``, ``"2h"``, ``"7d"``, ``"1w"`` -> relative to now;
    otherwise an ISO 8601 moment (``2026-12-01T18:00:00Z``; without a zone it is UTC).

    Returns the fixed-width UTC timestamp stored in ``expires_at``. A moment in the past is a 400.
    """
    if value is None or value == "" or value == "never":
        return None
    if not isinstance(value, str):
        raise BadRequest("expires must be a string such as '2h', '7d' or '2026-12-01T18:00:00Z'",
                         code="invalid_field", field="expires")
    now = now or now_utc()
    match = _RELATIVE.fullmatch(value)
    try:
        if match:
            delta = timedelta(**{_UNIT[match.group(2)]: int(match.group(1))})
            if delta > MAX_EXPIRY:
                raise OverflowError
            moment = now + delta
        else:
            moment = datetime.fromisoformat(value.strip())
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        raise BadRequest(
            f"expires {value[:40]!r} is not understood: use a duration like '30m', '2h', '7d', '1w' "
            "(at most 10 years) or an ISO 8601 time like '2026-12-01T18:00:00Z'",
            code="invalid_field", field="expires") from None
    if moment <= now:
        raise BadRequest(f"expires {value[:40]!r} is in the past", code="invalid_field", field="expires")
    return isotime(moment)


def granted(row: Mapping[str, Any]) -> tuple[str, ...]:
    """Every capability the rule grants, outright or with approval."""
    return tuple(c for c in CAPABILITIES if row[COLUMNS[c]] or row.get(ASK_COLUMNS[c]))


def asked(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The capabilities the rule grants only with an admin's approval (the ``ask`` level)."""
    return tuple(c for c in CAPABILITIES if row.get(ASK_COLUMNS[c]))


def is_expired(row: Mapping[str, Any], now_iso: str) -> bool:
    expires = row.get("expires_at")
    return expires is not None and expires <= now_iso


def specificity(source: str, target: str) -> tuple[tuple[str, str], ...]:
    """The rule keys that apply to ``source -> target``, most specific first."""
    return ((source, target), (source, WILDCARD), (WILDCARD, target), (WILDCARD, WILDCARD))


def most_specific(rules: Mapping[tuple[str, str], Mapping[str, Any]], source: str,
                  target: str) -> Mapping[str, Any] | None:
    """The deciding rule among unexpired ``rules`` keyed by ``(source, target)``, or None."""
    for key in specificity(source, target):
        rule = rules.get(key)
        if rule is not None:
            return rule
    return None


@dataclass(frozen=True)
class Decision:
    """The matrix's answer for one capability: ``allowed`` True/False, or None (no rule applies)."""

    source: str
    target: str
    capability: str
    allowed: bool | None
    #: the deciding rule as ``(source, target)``, None when no rule applies
    rule: tuple[str, str] | None = None
    #: allowed only with an admin's approval of each request (the ``ask`` level)
    ask: bool = False
    #: the target is snapshotted before the action (``snapshot: before``)
    snapshot_before: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "capability": self.capability,
                "allowed": self.allowed, "rule": list(self.rule) if self.rule else None,
                "ask": self.ask, "snapshot_before": self.snapshot_before}


def decide(rules: Mapping[tuple[str, str], Mapping[str, Any]], source: str, target: str,
           capability: str) -> Decision:
    rule = most_specific(rules, source, target)
    if rule is None:
        return Decision(source, target, capability, None)
    ask = bool(rule.get(ASK_COLUMNS[capability]))
    allowed = bool(rule[COLUMNS[capability]]) or ask
    snapshot = allowed and rule.get("snapshot") == "before" and capability in SNAPSHOT_CAPABILITIES
    return Decision(source, target, capability, allowed, (rule["source"], rule["target"]), ask, snapshot)


def effective(rules: Mapping[tuple[str, str], Mapping[str, Any]], sources: Sequence[str],
              targets: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """``{source: {target: [granted capabilities]}}`` for every pair of the given names."""
    out: dict[str, dict[str, list[str]]] = {}
    for source in sources:
        row: dict[str, list[str]] = {}
        for target in targets:
            rule = most_specific(rules, source, target)
            row[target] = list(granted(rule)) if rule is not None else []
        out[source] = row
    return out


def effective_ask(rules: Mapping[tuple[str, str], Mapping[str, Any]], sources: Sequence[str],
                  targets: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """``{source: {target: [capabilities granted only with approval]}}``, pairs with none left out."""
    out: dict[str, dict[str, list[str]]] = {}
    for source in sources:
        for target in targets:
            rule = most_specific(rules, source, target)
            if rule is not None and asked(rule):
                out.setdefault(source, {})[target] = list(asked(rule))
    return out


def rule_json(row: Mapping[str, Any], now_iso: str) -> dict[str, Any]:
    caps = granted(row)
    return {
        "source": row["source"],
        "target": row["target"],
        "allow": bool(caps),
        "capabilities": list(caps),
        "can_exec": bool(row["can_exec"]),
        "can_read": bool(row["can_read"]),
        "can_write": bool(row["can_write"]),
        "granted_by": row["granted_by"],
        "granted_at": row["granted_at"],
        "expires_at": row["expires_at"],
        "expired": is_expired(row, now_iso),
        "ask": list(asked(row)),
        "snapshot": row.get("snapshot"),
    }


def cell(capabilities: Sequence[str], *, rule_exists: bool = True, expiring: bool = False,
         ask: Sequence[str] = (), snapshot: bool = False) -> str:
    """Matrix cell: letters of the granted capabilities (x exec, r read, w write; a capital letter
    when it needs an admin's approval), '-' for a rule that grants nothing (explicit deny), '.' for
    no rule; '@' marks a snapshot before, '~' a rule with an expiry."""
    if not rule_exists:
        return "."
    text = "".join(LETTERS[c].upper() if c in ask else LETTERS[c]
                   for c in CAPABILITIES if c in capabilities) or "-"
    return text + ("@" if snapshot else "") + ("~" if expiring else "")


def describe(source: str, target: str, *, allow: bool, capabilities: Sequence[str] = (),
             expires_at: str | None = None, inherit: bool = False, ask: Sequence[str] = (),
             snapshot: str | None = None) -> str:
    """The sentence recorded in the activity feed for a change."""
    if allow:
        text = f"permit {source} -> {target}: " + ", ".join(f"{c} (ask)" if c in ask else c for c in capabilities)
        if snapshot:
            text += f", snapshot {snapshot}"
        return text + (f" until {expires_at}" if expires_at else "")
    if inherit:
        return f"revoke {source} -> {target}: remove this rule (broader rules apply again)"
    if target == WILDCARD:
        return f"revoke {source} -> *: remove every rule of {source}"
    return f"revoke {source} -> {target}: explicit deny"
