"""``claude-net approvals`` and ``claude-net restore-before``: operator verbs acting on the database.

They open the hub without serving and act as the CLI's admin actor through the same service
functions as the HTTP API, so every decision is recorded. A hub serving on PostgreSQL learns of a
decision at once (NOTIFY); on SQLite its waiting request reads the row again within a couple of
seconds.
"""

from __future__ import annotations

import json

from claude_net import BadRequest, NotFound, printable


def _line(a) -> str:
    tail = ""
    if a["state"] == "pending":
        tail = f" expires {a['expires_at']}"
    elif a.get("decided_by"):
        tail = f" by {a['decided_by']} via {a['decided_via']}" + (f" for {a['for']}" if a.get("for") else "")
    return printable(f"{a['id']}  {a['state']:<9} {a['created_at']}  {a['detail']}{tail}")


async def run_approvals(args, ctx) -> int:
    from . import service

    async with ctx.hub() as hub:
        actor = ctx.cli_actor()
        if args.verb == "list":
            items = await service.list_approvals(hub, args.state)
            if args.json:
                print(json.dumps(items, indent=2))
            elif not items:
                print("no approvals" + (f" in state {args.state}" if args.state else ""))
            else:
                pending = [a for a in items if a["state"] == "pending"]
                others = [a for a in items if a["state"] != "pending"][:20 if not args.state else None]
                for a in pending + others:
                    print(_line(a))
            return 0
        if not args.id:
            raise BadRequest(f"{args.verb} needs the approval's id", code="invalid_field", field="id")
        if args.verb == "show":
            approval = await service.get(hub, args.id)
        else:
            approval = await service.decide(hub, actor, args.id, args.verb, for_=args.for_, via="cli")
    print(json.dumps(approval, indent=2) if args.json else _line(approval))
    return 0


async def run_restore_before(args, ctx) -> int:
    """Restore the target of an action to the snapshot taken just before it (a recorded container action).

    The hub is started in this process (as ``claude-net enroll`` does) so the backends can act,
    without the Telegram bot, which must not poll beside the serving hub's."""
    from claude_net.hub import Hub
    from claude_net.plugins import make_plugin_manager

    settings = ctx.settings
    hub = Hub(settings, make_plugin_manager(allow=settings.plugins.allow, deny=[*settings.plugins.deny, "telegram"]))
    await hub.start()
    try:
        key = args.activity_id.strip()
        if key.isdigit():  # the row's id as the feed shows it, or the action's event id
            row = await hub.db.fetch_one("SELECT id, target, data FROM activity_log WHERE id = :id", {"id": int(key)})
        else:
            row = await hub.db.fetch_one("SELECT id, target, data FROM activity_log WHERE event_id = :id", {"id": key})
        data = {}
        if row is not None:
            try:
                data = json.loads(row["data"] or "{}")
            except ValueError:
                data = {}
        snapshot = data.get("snapshot")
        if row is None or not snapshot:
            raise NotFound(f"activity {args.activity_id!r} has no snapshot taken before it", code="no_snapshot")
        result = await hub.run_container_op(ctx.cli_actor(), "restore", row["target"], {"snapshot": snapshot})
    finally:
        await hub.stop()
    print(json.dumps(result, indent=2) if args.json else printable(f"restored {row['target']} to {snapshot}"))
    return 0
