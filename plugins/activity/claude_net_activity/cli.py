"""``claude-net activity [--hours N] [--follow] [filters] [--json]`` and
``claude-net activity export --format jsonl|csv [--hours N] [filters] [--output FILE]``.

Operator verbs: they read the database directly (``ctx.hub()``, not serving); ``--follow`` polls it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

CSV_FIELDS = ["id", "time", "from", "type", "target", "detail", "result", "via", "unauthenticated",
              "duration_ms", "exit_code", "completed_at", "event_id", "data", "thread"]
#: a cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet will show as text, never run: a leading ``'`` before a formula
    character (the written cells are all quoted as well). Numbers are the hub's own and stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _filters(p, *, default: Any) -> None:
    p.add_argument("--hours", type=float, default=default,
                   help="only the last N hours (listing default: 24; export default: everything; 0: no bound)")
    p.add_argument("--type", default=default, help="message, exec, file_read, file_write, permit, container, auth, ...")
    p.add_argument("--from", dest="from_", metavar="NODE", default=default, help="acting node")
    p.add_argument("--target", default=default, metavar="NODE", help="node acted upon")
    p.add_argument("--result", default=default, choices=["pending", "ok", "denied", "error"])
    p.add_argument("--thread", default=default, metavar="THREAD", help="only rows of this thread")
    p.add_argument("--search", default=default, metavar="TEXT",
                   help="only rows whose detail contains TEXT (ignoring case)")


def configure(p: argparse.ArgumentParser) -> None:
    _filters(p, default=None)
    p.add_argument("--limit", type=int, default=50, help="rows shown (newest; default 50)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new rows (and completions of pending ones) as they arrive")
    p.add_argument("--interval", type=float, default=1.0, help="--follow polling interval in seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    sub = p.add_subparsers(dest="activity_cmd", metavar="ACTION")
    e = sub.add_parser("export", help="write the audit trail as JSON lines or CSV (oldest first)")
    e.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    e.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")
    # SUPPRESS: options given before `export` still count; given after it, they override.
    _filters(e, default=argparse.SUPPRESS)


def _filter_args(args) -> dict[str, Any]:
    values = {"type": args.type, "from": args.from_, "target": args.target, "result": args.result,
              "thread": getattr(args, "thread", None), "q": getattr(args, "search", None)}
    return {k: v for k, v in values.items() if v is not None}


def _line(row: dict[str, Any]) -> str:
    """One row per line: every value an actor wrote (detail, target, errors) has its control
    characters escaped, so none can add a line, overwrite one or drive the terminal."""
    from claude_net import printable

    extra = []
    if row["exit_code"] is not None:
        extra.append(f"exit {row['exit_code']}")
    if row["duration_ms"] is not None:
        extra.append(f"{row['duration_ms']:g} ms")
    if row["data"].get("error"):
        extra.append(printable(row["data"]["error"]))
    if row.get("thread"):
        extra.append(f"thread {printable(row['thread'])}")
    tail = f"  ({'; '.join(extra)})" if extra else ""
    time = printable(row["time"][:19].replace("T", " "))
    return (f"{row['id']:>8}  {time}  {printable(row['from'] or '-'):<16} {printable(row['type']):<10} "
            f"{printable(row['target'] or '-'):<16} {printable(row['result']):<7} {printable(row['detail'])}{tail}")


HEADER = f"{'ID':>8}  {'TIME (UTC)':<19}  {'FROM':<16} {'TYPE':<10} {'TARGET':<16} {'RESULT':<7} DETAIL"


def _emit(row: dict[str, Any], as_json: bool) -> None:
    from claude_net import safe_json

    print(safe_json(row) if as_json else _line(row), flush=True)


async def show(hub, args, *, max_polls: int | None = None) -> int:
    """List the newest rows (oldest of them first); with ``--follow`` keep polling for more."""
    import asyncio

    from . import store

    filters = _filter_args(args)
    hours = 24 if args.hours is None else args.hours
    rows, _ = await store.query(hub, hours=hours, filters=filters, limit=max(1, args.limit))
    rows.reverse()
    if not args.json:
        print(HEADER)
    for row in rows:
        _emit(row, args.json)
    if not args.follow:
        if not rows and not args.json:
            print(f"(no activity in the last {hours:g} hours)" if hours else "(no activity)", file=sys.stderr)
        return 0
    last = max((r["id"] for r in rows), default=0)
    if last == 0:
        last = await hub.db.fetch_val("SELECT COALESCE(MAX(id), 0) FROM activity_log") or 0
    pending = [r["id"] for r in rows if r["result"] == "pending"]
    polls = 0
    while max_polls is None or polls < max_polls:
        polls += 1
        await asyncio.sleep(args.interval)
        for row in await store.rows_by_id(hub, pending):
            if row["result"] != "pending":
                pending.remove(row["id"])
                _emit(row, args.json)
        while True:
            new = await store.rows_after(hub, last, filters=filters, limit=500)
            for row in new:
                _emit(row, args.json)
                if row["result"] == "pending":
                    pending.append(row["id"])
            if new:
                last = new[-1]["id"]
            if len(new) < 500:
                break
    return 0


async def export(hub, args, out) -> int:
    """Every matching row, oldest first, streamed in batches of 1000."""
    import csv
    from datetime import datetime, timedelta, timezone

    from claude_net import isotime, safe_json

    from . import store

    filters = _filter_args(args)
    since = isotime(datetime.now(timezone.utc) - timedelta(hours=args.hours)) if args.hours else None
    writer = None
    if args.format == "csv":
        # every cell quoted, and formula cells neutralised: an admin opens this in a spreadsheet
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", quoting=csv.QUOTE_ALL)
        writer.writeheader()
    last, count = 0, 0
    while True:
        rows = await store.rows_after(hub, last, filters=filters, since=since, limit=1000)
        for row in rows:
            if writer is not None:
                cells = {**row, "data": safe_json(row["data"]) if row["data"] else ""}
                writer.writerow({key: csv_cell(value) for key, value in cells.items()})
            else:
                out.write(safe_json(row) + "\n")
        count += len(rows)
        if len(rows) < 1000:
            break
        last = rows[-1]["id"]
    out.flush()
    return count


async def run(args, ctx) -> int:
    async with ctx.hub() as hub:
        if getattr(args, "activity_cmd", None) == "export":
            if args.output:
                with open(args.output, "w", newline="", encoding="utf-8") as out:
                    count = await export(hub, args, out)
                print(f"exported {count} rows to {args.output}", file=sys.stderr)
            else:
                await export(hub, args, sys.stdout)
            return 0
        return await show(hub, args)
