"""Service functions of the permissions matrix, shared by the HTTP routes, the CLI and other
plugins (Telegram, MCP). Every change goes through ``hub.guarded`` with action ``permit``: it is
authorized (admin-only, by the built-in roles policy), recorded (pending + final event, fail
closed) and takes effect on the very next call (nothing is cached).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from claude_net import Actor, BadRequest, Grant, HubError, isotime

from . import model
from .model import COLUMNS, WILDCARD, Decision

_RULE_COLUMNS = ("source, target, can_exec, can_read, can_write, granted_by, granted_at, expires_at,"
                 " ask_exec, ask_read, ask_write, snapshot")

#: the one query of the hot path: at most four primary-key lookups, '*' compared literally
_APPLICABLE = (
    f"SELECT {_RULE_COLUMNS} FROM exec_permissions"
    " WHERE source IN (:source, '*') AND target IN (:target, '*')"
    " AND (expires_at IS NULL OR expires_at > :now)"
)

_UPSERT = (
    f"INSERT INTO exec_permissions ({_RULE_COLUMNS})"
    " VALUES (:source, :target, :can_exec, :can_read, :can_write, :granted_by, :granted_at, :expires_at,"
    " :ask_exec, :ask_read, :ask_write, :snapshot)"
    " ON CONFLICT (source, target) DO UPDATE SET can_exec = excluded.can_exec, can_read = excluded.can_read,"
    " can_write = excluded.can_write, granted_by = excluded.granted_by, granted_at = excluded.granted_at,"
    " expires_at = excluded.expires_at, ask_exec = excluded.ask_exec, ask_read = excluded.ask_read,"
    " ask_write = excluded.ask_write, snapshot = excluded.snapshot"
    f" RETURNING {_RULE_COLUMNS}"
)


def _now_iso(now: datetime | None) -> str:
    return isotime(now) if now is not None else isotime()


async def applicable_rules(hub, source: str, target: str, *, now: datetime | None = None) -> dict:
    """Unexpired rules that could decide ``source -> target``, keyed by ``(source, target)``."""
    rows = await hub.db.fetch_all(_APPLICABLE, {"source": source, "target": target, "now": _now_iso(now)})
    return {(r["source"], r["target"]): r for r in rows}


async def resolve_permission(hub, source: str, target: str, capability: str, *,
                             now: datetime | None = None) -> Decision:
    """What the matrix says about ``source`` using ``capability`` on ``target`` (see :mod:`.model`).

    ``Decision.allowed`` is True (a rule grants it), False (the deciding rule does not grant it)
    or None (no rule applies: deny by default). Admin status is not considered here.
    """
    if capability not in COLUMNS:
        raise ValueError(f"unknown capability {capability!r}")
    return model.decide(await applicable_rules(hub, source, target, now=now), source, target, capability)


_ALLOWANCE = ("SELECT expires_at FROM permission_allowances WHERE source = :source AND target = :target"
              " AND capability = :capability AND expires_at > :now")


async def authorize(hub, actor: Actor, action: str, target: Any) -> bool | Grant | None:
    """The ``authorize`` hook's answer for exec/file_read/file_write (see ``__init__``): True, a
    :class:`claude_net.Grant` (ask, snapshot before), False or None."""
    if not isinstance(target, str) or target == WILDCARD:
        return False  # capabilities always name one node; never let a literal '*' through
    decision = await resolve_permission(hub, actor.name, target, action)
    if not decision.allowed or not (decision.ask or decision.snapshot_before):
        return decision.allowed
    ask = decision.ask
    if ask and await hub.db.fetch_one(_ALLOWANCE, {"source": actor.name, "target": target, "capability": action,
                                                    "now": isotime()}):
        ask = False  # an admin approved "for 1 h": a recorded, expiring allowance for this pair
    rule = f"{decision.rule[0]} -> {decision.rule[1]}" if decision.rule else None
    return Grant(ask=ask, snapshot_before=decision.snapshot_before, rule=rule)


async def set_permission(
    hub,
    actor: Actor,
    source: str,
    target: str,
    *,
    allow: bool = True,
    capabilities: Iterable[str] | None = None,
    expires: str | None = None,
    inherit: bool = False,
    aliases: bool = False,
    ask: Iterable[str] | str | None = None,
    snapshot: str | None = None,
) -> dict[str, Any]:
    """Grant, narrow or revoke a pathway; returns the resulting rule (or what was removed).

    * ``allow=True``: store ``(source, target)`` granting ``capabilities`` (default: all three),
      optionally until ``expires``; replaces an existing rule for the same pair.
    * ``allow=False`` with a node ``target``: store an explicit deny for the pair, which beats
      every broader grant (``revoke managerclaude chasclaude`` under ``permit managerclaude all``).
    * ``allow=False`` with ``target`` ``*``/``all``: delete every rule of ``source`` (no residue).
    * ``allow=False, inherit=True``: delete only the ``(source, target)`` rule, so broader rules
      apply to the pair again.

    ``source``/``target`` accept ``*`` and ``all`` for every node. Raises ``BadRequest`` (400),
    ``Forbidden`` (403, not an admin: recorded as a denied ``permit`` event) or ``Unavailable``
    (503, the audit log cannot be written: nothing was changed).
    """
    source = model.normalize_name(source, "source")
    target = model.normalize_name(target, "target")
    if not isinstance(allow, bool):
        raise BadRequest("allow must be true or false", code="invalid_field", field="allow")
    if allow:
        if inherit:
            raise BadRequest("inherit applies to revokes (allow: false) only", code="invalid_field", field="inherit")
        caps = model.parse_capabilities(capabilities, aliases=aliases)
        if not caps:
            raise BadRequest("a grant needs at least one capability; to take rights away use allow: false",
                             code="invalid_field", field="capabilities")
        expires_at = model.parse_expires(expires)
        asks = model.parse_capabilities(ask, aliases=aliases) if ask else ()
        if set(asks) - set(caps):
            raise BadRequest(f"ask must be a subset of the granted capabilities ({', '.join(caps)}); "
                             f"{', '.join(c for c in asks if c not in caps)} is not granted",
                             code="invalid_field", field="ask")
        if snapshot is not None:
            await _check_snapshot(hub, target, snapshot, caps)
    else:
        if ask:
            raise BadRequest("ask applies to grants only", code="invalid_field", field="ask")
        if snapshot is not None:
            raise BadRequest("snapshot applies to grants only", code="invalid_field", field="snapshot")
        asks = ()
        if capabilities:
            raise BadRequest("capabilities apply to grants; to narrow a grant, permit the pair with fewer "
                             "capabilities", code="invalid_field", field="capabilities")
        if expires:
            raise BadRequest("expires applies to grants only", code="invalid_field", field="expires")
        caps, expires_at = (), None
    delete_all = not allow and not inherit and target == WILDCARD
    detail = model.describe(source, target, allow=allow, capabilities=caps, expires_at=expires_at, inherit=inherit,
                            ask=asks, snapshot=snapshot)

    async def run() -> dict[str, Any]:
        now = isotime()
        if not allow and (inherit or delete_all):
            sql = "DELETE FROM exec_permissions WHERE source = :source" + (
                "" if delete_all else " AND target = :target") + " RETURNING target"
            params = {"source": source} if delete_all else {"source": source, "target": target}
            removed = await hub.db.fetch_all(sql, params)
            await _drop_allowances(hub, source, None if delete_all else target)
            return {"source": source, "target": target, "allow": False, "capabilities": [], "stored": False,
                    "removed": len(removed), "removed_targets": sorted(r["target"] for r in removed)}
        plain = [c for c in caps if c not in asks]
        row = await hub.db.fetch_one(_UPSERT, {
            "source": source, "target": target,
            "can_exec": "exec" in plain, "can_read": "file_read" in plain, "can_write": "file_write" in plain,
            "ask_exec": "exec" in asks, "ask_read": "file_read" in asks, "ask_write": "file_write" in asks,
            "snapshot": snapshot, "granted_by": actor.name, "granted_at": now, "expires_at": expires_at,
        })
        if not allow:
            await _drop_allowances(hub, source, target)
        return {**model.rule_json(row, now), "stored": True}

    def result_data(permission: dict[str, Any]) -> dict[str, Any]:
        data = {"source": source, "target": target, "allow": allow, "capabilities": list(caps)}
        if asks:
            data["ask"] = list(asks)
        if snapshot:
            data["snapshot"] = snapshot
        if expires_at:
            data["expires_at"] = expires_at
        if "removed" in permission:
            data["removed"] = permission["removed"]
        return data

    return await hub.guarded(
        actor, action="permit", event_type="permit", target=source, detail=detail, run=run,
        request={"source": source, "target": target, "allow": allow, "capabilities": list(caps),
                 "expires_at": expires_at, "inherit": inherit, "ask": list(asks), "snapshot": snapshot},
        result_data=result_data,
    )


_MESSAGE_RULES = ("SELECT source, target, allow FROM message_rules"
                  " WHERE source IN (:source, '*') AND target IN (:target, '*')")


async def authorize_message(hub, actor: Actor, target: Any) -> bool | None:
    """Who may message whom: the most specific message rule decides; none is no opinion (open)."""
    target = target if isinstance(target, str) and target not in ("all", "") else WILDCARD
    rows = await hub.db.fetch_all(_MESSAGE_RULES, {"source": actor.name, "target": target})
    if not rows:
        return None
    rule = model.most_specific({(r["source"], r["target"]): r for r in rows}, actor.name, target)
    return None if rule is None else bool(rule["allow"])


async def set_message_rule(hub, actor: Actor, source: str, target: str, allow: bool | None) -> dict[str, Any]:
    """Store (allow True/False) or remove (None) the message rule ``source -> target``; a recorded permit."""
    source = model.normalize_name(source, "source")
    target = model.normalize_name(target, "target")
    if allow is not None and not isinstance(allow, bool):
        raise BadRequest("message must be true, false or null", code="invalid_field", field="message")
    word = {True: "may send messages to", False: "may not send messages to", None: "message rule removed for"}[allow]
    detail = f"permit {source} -> {target}: {word} {target}" if allow is not None else \
        f"permit {source} -> {target}: message rule removed (broader message rules apply again)"

    async def run() -> dict[str, Any]:
        now = isotime()
        if allow is None:
            removed = await hub.db.fetch_all("DELETE FROM message_rules WHERE source = :source AND target = :target"
                                             " RETURNING target", {"source": source, "target": target})
            return {"source": source, "target": target, "message": None, "removed": len(removed)}
        await hub.db.execute(
            "INSERT INTO message_rules (source, target, allow, granted_by, granted_at)"
            " VALUES (:source, :target, :allow, :by, :now) ON CONFLICT (source, target) DO UPDATE SET"
            " allow = excluded.allow, granted_by = excluded.granted_by, granted_at = excluded.granted_at",
            {"source": source, "target": target, "allow": allow, "by": actor.name, "now": now})
        return {"source": source, "target": target, "message": allow, "granted_by": actor.name, "granted_at": now}

    return await hub.guarded(
        actor, action="permit", event_type="permit", target=source, detail=detail, run=run,
        request={"source": source, "target": target, "message": allow},
        result_data=lambda r: {"source": source, "target": target, "message": allow})


async def list_message_rules(hub) -> list[dict[str, Any]]:
    rows = await hub.db.fetch_all("SELECT source, target, allow, granted_by, granted_at FROM message_rules"
                                  " ORDER BY source, target")
    return [{**r, "allow": bool(r["allow"])} for r in rows]


async def _check_snapshot(hub, target: str, snapshot: object, caps) -> None:
    """``snapshot: before`` needs exec or file_write and a target that has snapshots."""
    if snapshot not in model.SNAPSHOT_WHEN:
        raise BadRequest(f"snapshot must be one of {', '.join(model.SNAPSHOT_WHEN)}", code="invalid_field",
                         field="snapshot")
    if not set(caps) & set(model.SNAPSHOT_CAPABILITIES):
        raise BadRequest("snapshot before applies to exec and file_write; this grant has neither",
                         code="invalid_field", field="snapshot")
    if target == WILDCARD:
        return  # checked per action: a node without snapshots is then refused (fail closed)
    try:
        node = await hub.nodes.get(target)
    except HubError:
        return  # not listed (yet): checked when an action runs
    if "container" not in node.capabilities:
        raise BadRequest(
            f"snapshot before is not possible on {target}: it is a {node.backend} node, not a container, "
            "and has no snapshots to restore; permit it without snapshot (every action there would be refused)",
            code="snapshot_not_supported", field="snapshot")


async def _drop_allowances(hub, source: str, target: str | None) -> None:
    """A revoke also ends the "approved for 1 h" allowances it covers (they would outlive it otherwise)."""
    if target is None:
        await hub.db.execute("DELETE FROM permission_allowances WHERE source = :source", {"source": source})
    else:
        await hub.db.execute("DELETE FROM permission_allowances WHERE source = :source AND target = :target",
                             {"source": source, "target": target})


async def allow_for(hub, actor: Actor, source: str, target: str, capability: str, expires: str, *,
                    approval_id: str | None = None) -> dict[str, Any]:
    """Let ``source`` use ``capability`` on ``target`` without asking until ``expires`` ('1h', ...).

    What *approve for 1 h* does: an expiring allowance for that pair and capability that lifts
    only the ``ask`` of the rule that decides it (a deny or a revoke still wins, and a revoke
    removes it). A recorded ``permit`` action (admin only). Returns the allowance.
    """
    source = model.normalize_name(source, "source")
    target = model.normalize_name(target, "target")
    if WILDCARD in (source, target):
        raise BadRequest("an allowance names one source and one target", code="invalid_field", field="target")
    capability = model.parse_capabilities([capability])[0]
    expires_at = model.parse_expires(expires)
    detail = f"permit {source} -> {target}: {capability} without asking until {expires_at}"

    async def run() -> dict[str, Any]:
        now = isotime()
        await hub.db.execute(
            "INSERT INTO permission_allowances (source, target, capability, expires_at, granted_by, granted_at,"
            " approval_id) VALUES (:source, :target, :capability, :expires_at, :by, :now, :approval_id)"
            " ON CONFLICT (source, target, capability) DO UPDATE SET expires_at = excluded.expires_at,"
            " granted_by = excluded.granted_by, granted_at = excluded.granted_at, approval_id = excluded.approval_id",
            {"source": source, "target": target, "capability": capability, "expires_at": expires_at,
             "by": actor.name, "now": now, "approval_id": approval_id})
        return {"source": source, "target": target, "capability": capability, "expires_at": expires_at,
                "granted_by": actor.name, "granted_at": now, "approval_id": approval_id}

    return await hub.guarded(
        actor, action="permit", event_type="permit", target=source, detail=detail, run=run,
        request={"source": source, "target": target, "allow": True, "capabilities": [capability],
                 "expires_at": expires_at, "allowance": True},
        data={"approval_id": approval_id} if approval_id else None,
        result_data=lambda a: {"source": source, "target": target, "allowance": capability,
                               "expires_at": expires_at})


async def list_allowances(hub) -> list[dict[str, Any]]:
    """Unexpired "approved for a while" allowances, sorted."""
    rows = await hub.db.fetch_all(
        "SELECT source, target, capability, expires_at, granted_by, granted_at, approval_id"
        " FROM permission_allowances WHERE expires_at > :now ORDER BY source, target, capability",
        {"now": isotime()})
    return [dict(r) for r in rows]


async def revoke(hub, actor: Actor, source: str, target: str, *, inherit: bool = False) -> dict[str, Any]:
    """``revoke SOURCE TARGET`` (explicit deny) / ``revoke SOURCE all`` (delete every rule of SOURCE)."""
    return await set_permission(hub, actor, source, target, allow=False, inherit=inherit)


async def list_permissions(hub, *, include_expired: bool = True, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every stored rule (sorted by source, target; ``*`` first), each flagged ``expired``."""
    now_iso = _now_iso(now)
    rows = await hub.db.fetch_all(f"SELECT {_RULE_COLUMNS} FROM exec_permissions ORDER BY source, target")
    rules = [model.rule_json(r, now_iso) for r in rows]
    return [r for r in rules if include_expired or not r["expired"]]


async def known_nodes(hub) -> tuple[list[str], dict[str, str]]:
    nodes, errors = await hub.nodes.all()
    return [n.name for n in nodes], errors


def _as_row(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule dict (as :func:`list_permissions` gives it) in the shape of a stored row."""
    return {**rule, **{model.ASK_COLUMNS[c]: c in rule.get("ask", ()) for c in model.CAPABILITIES}}


def effective_matrix(rules: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """Resolved capabilities for every ordered pair of ``names`` from rule dicts (expired ones ignored)."""
    live = {(r["source"], r["target"]): _as_row(r) for r in rules if not r["expired"]}
    return model.effective(live, names, names)


async def permissions_view(hub, *, effective: bool = False) -> dict[str, Any]:
    """What ``GET /api/permissions`` answers: the rules, the known nodes, optionally the resolved matrix."""
    rules = await list_permissions(hub)
    names, errors = await known_nodes(hub)
    names = sorted(set(names) | {r[k] for r in rules for k in ("source", "target")} - {WILDCARD})
    out: dict[str, Any] = {"permissions": rules, "nodes": names, "capabilities": list(model.CAPABILITIES),
                           "allowances": await list_allowances(hub), "message_rules": await list_message_rules(hub)}
    if errors:
        out["unavailable"] = errors
    if effective:
        out["effective"] = effective_matrix(rules, names)
        live = {(r["source"], r["target"]): _as_row(r) for r in rules if not r["expired"]}
        out["effective_ask"] = model.effective_ask(live, names, names)
    return out
