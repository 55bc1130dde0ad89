"""``claude-net permit``, ``revoke`` and ``permissions``: operator verbs acting on the database.

They open the hub without serving (``ctx.hub()``) and act as ``ctx.cli_actor()`` through the same
service functions as the HTTP API, so every change is authorized and recorded in the activity feed.
Imported only when one of these verbs runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from claude_net import printable

from . import model, service

LEGEND = ("x exec, r file read, w file write (capital: only with an admin's approval); '-' explicit deny; "
          "'.' no rule (broader rules apply); '@' snapshot before; '~' expires; '*' every node")


def _print_change(permission: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(permission, indent=2))
        return
    # every value escaped (claude_net.printable): a line stays one line on the operator's terminal
    source, target = printable(permission["source"]), printable(permission["target"])
    if not permission.get("stored"):
        removed = permission.get("removed", 0)
        what = ", ".join(f"{source} -> {printable(t)}" for t in permission.get("removed_targets", ())) or "nothing"
        print(f"removed {removed} rule(s): {what}")
    elif permission["allow"]:
        until = f" until {printable(permission['expires_at'])}" if permission.get("expires_at") else ""
        caps = ", ".join(f"{c} (ask)" if c in permission.get("ask", ()) else c for c in permission["capabilities"])
        snap = f", snapshot {printable(permission['snapshot'])}" if permission.get("snapshot") else ""
        print(f"permitted {source} -> {target}: {printable(caps)}{snap}{until}")
    else:
        print(f"revoked {source} -> {target} (explicit deny; beats broader grants)")


async def run_permit(args, ctx) -> int:
    capabilities = ["file_read"] if args.read_only else args.capabilities
    if args.message:
        allow = {"allow": True, "deny": False, "inherit": None}[args.message]
        async with ctx.hub() as hub:
            rule = await service.set_message_rule(hub, ctx.cli_actor(), args.source, args.target, allow)
        if args.json:
            print(json.dumps(rule, indent=2))
        else:
            word = {True: "may send messages to", False: "may not send messages to",
                    None: "follows broader message rules for"}[allow]
            print(f"{printable(rule['source'])} {word} {printable(rule['target'])}")
        return 0
    async with ctx.hub() as hub:
        permission = await service.set_permission(
            hub, ctx.cli_actor(), args.source, args.target, allow=True,
            capabilities=capabilities, expires=args.expires, aliases=True, ask=args.ask,
            snapshot="before" if args.snapshot_before else None)
    _print_change(permission, args.json)
    return 0


async def run_revoke(args, ctx) -> int:
    async with ctx.hub() as hub:
        permission = await service.revoke(hub, ctx.cli_actor(), args.source, args.target, inherit=args.inherit)
    _print_change(permission, args.json)
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    cells = [[printable(v) for v in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]


def _ordered(names: set[str]) -> list[str]:
    return sorted(names, key=lambda n: (n != model.WILDCARD, n))


def render_rules(rules: Sequence[Mapping[str, Any]]) -> list[str]:
    """The stored rules as a matrix: rows are sources, columns targets (expired rules listed apart)."""
    live = [r for r in rules if not r["expired"]]
    expired = [r for r in rules if r["expired"]]
    lines: list[str] = []
    if not live:
        lines.append("no rules: every exec and file call by a non-admin is denied")
    else:
        sources = _ordered({r["source"] for r in live})
        targets = _ordered({r["target"] for r in live})
        by_key = {(r["source"], r["target"]): r for r in live}
        rows = []
        for source in sources:
            row = [source]
            for target in targets:
                rule = by_key.get((source, target))
                row.append(model.cell(rule["capabilities"], expiring=bool(rule["expires_at"]),
                                      ask=rule.get("ask", ()), snapshot=bool(rule.get("snapshot")))
                           if rule else model.cell((), rule_exists=False))
            rows.append(row)
        lines += _table(["SOURCE \\ TARGET", *targets], rows)
        expiring = [r for r in live if r["expires_at"]]
        for r in expiring:
            lines.append(f"~ {r['source']} -> {r['target']} expires {r['expires_at']}")
    for r in expired:
        lines.append(f"(expired, ignored) {r['source']} -> {r['target']} since {r['expires_at']}")
    lines.append(f"legend: {LEGEND}")
    return lines


def render_effective(matrix: Mapping[str, Mapping[str, Sequence[str]]],
                     ask: Mapping[str, Mapping[str, Sequence[str]]] | None = None) -> list[str]:
    """The resolved matrix for known nodes: what each source may do on each target right now."""
    names = list(matrix)
    if not names:
        return ["no known nodes"]
    ask = ask or {}

    def letters(s: str, t: str) -> str:
        asked = ask.get(s, {}).get(t, ())
        return "".join(model.LETTERS[c].upper() if c in asked else model.LETTERS[c]
                       for c in model.CAPABILITIES if c in matrix[s][t]) or "-"

    rows = [[s, *(letters(s, t) for t in names)] for s in names]
    return _table(["SOURCE \\ TARGET", *names], rows) + [
        "legend: x exec, r file read, w file write (capital: only with an admin's approval), '-' denied "
        "(admins may do everything regardless)"]


async def run_permissions(args, ctx) -> int:
    async with ctx.hub() as hub:
        view = await service.permissions_view(hub, effective=args.effective)
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    lines = (render_effective(view["effective"], view.get("effective_ask")) if args.effective
             else render_rules(view["permissions"]))
    for m in view.get("message_rules") or ():
        lines.append(f"message rule: {m['source']} -> {m['target']}: {'may' if m['allow'] else 'may not'} send "
                     "messages (no message rule at all: messaging is open)")
    for a in view.get("allowances") or ():
        lines.append(f"{a['source']} -> {a['target']}: {a['capability']} without asking until {a['expires_at']} "
                     f"(approved by {a['granted_by']})")
    print("\n".join(printable(line) for line in lines))
    for backend, error in (view.get("unavailable") or {}).items():
        print(f"(backend {printable(backend)} unavailable: {printable(error)})")
    return 0
