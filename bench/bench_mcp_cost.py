#!/usr/bin/env python3
"""MCP call cost: a ``claude_net_send`` tool call against the ``POST /api/send`` it wraps.

    python bench/bench_mcp_cost.py [--n 400] [--block 50] [--postgresql] [--json]

One real hub (``claude-net serve``, SQLite by default; the activity and mcp plugins) and, in this
process, three clients that send the same message to the same recipient, one call at a time:

* **api**: ``POST /api/send`` with httpx (one keep-alive connection) — the baseline;
* **/mcp**: the ``mcp`` SDK client on one session over the hub's streamable HTTP endpoint;
* **stdio**: the ``mcp`` SDK client on a ``claude-net-mcp`` subprocess (the stdio server an agent
  runs), which calls ``POST /api/send`` over one pooled connection.

The three are measured in alternated blocks (``--block`` calls each, api / /mcp / stdio, then the
next block in another order) until each made ``--n`` calls, so a drift of this VM's speed hits
them alike. Per path: latency p50/p99 at the client, and the hub's CPU per call (utime+stime of
the hub process over the path's blocks, divided by its calls); for stdio also the stdio server's
own CPU per call (it runs next to the agent, not in the hub). Targets (issue 16): hub CPU per MCP
call <= 2x the API call's, p50 <= 2x, on both transports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HubProcess, log, pct, pg_database  # noqa: E402

TARGET = 2.0
MESSAGE = "benchmark message body"
CONFIG = '[plugins]\nallow = ["activity", "mcp"]\n[limits]\nrate_per_minute = 0\n'
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (every thread), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _child_pid(name: str) -> int | None:
    """The pid of this process's child whose command line mentions ``name`` (the stdio server)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == me and name in (entry / "cmdline").read_bytes().decode(errors="replace"):
                return int(entry.name)
    return None


async def _measure(hub_url: str, hub_pid: int, sender: str, reader: str, n: int, block: int, say) -> dict:
    import httpx
    from claude_net_mcp.testing import http_session, stdio_session

    paths = ("api", "mcp", "stdio")
    lat: dict[str, list[float]] = {p: [] for p in paths}
    hub_cpu = dict.fromkeys(paths, 0.0)
    side_cpu = 0.0
    errors = dict.fromkeys(paths, 0)
    async with httpx.AsyncClient(base_url=hub_url, headers={"Authorization": f"Bearer {sender}"},
                                 timeout=30) as api, \
            http_session(hub_url, sender, timeout=60) as over_http, \
            stdio_session(hub_url, sender, env=os.environ) as over_stdio:
        stdio_pid = _child_pid("claude-net-mcp")

        async def call(path: str) -> None:
            if path == "api":
                r = await api.post("/api/send", json={"to": reader, "message": MESSAGE})
                ok = r.status_code == 200
            else:
                session = over_http if path == "mcp" else over_stdio
                result = await session.call_tool("claude_net_send", {"to": reader, "message": MESSAGE})
                ok = not result.is_error
            if not ok:
                errors[path] += 1

        # warm-up: lazy imports, caches, the first connection of each client
        for path in paths:
            for _ in range(20):
                await call(path)
        orders = [paths, paths[::-1], paths[1:] + paths[:1], paths[2:] + paths[:2]]
        rounds = max(1, -(-n // block))
        for i in range(rounds):
            for path in orders[i % len(orders)]:
                count = min(block, n - len(lat[path]))
                cpu0 = cpu_seconds(hub_pid)
                side0 = cpu_seconds(stdio_pid) if path == "stdio" and stdio_pid else 0.0
                for _ in range(count):
                    t0 = time.perf_counter()
                    await call(path)
                    lat[path].append((time.perf_counter() - t0) * 1000)
                hub_cpu[path] += cpu_seconds(hub_pid) - cpu0
                if path == "stdio" and stdio_pid:
                    side_cpu += cpu_seconds(stdio_pid) - side0
            say(f"   round {i + 1}/{rounds}: p50 so far api {statistics.median(lat['api']):.2f} / "
                f"mcp {statistics.median(lat['mcp']):.2f} / stdio {statistics.median(lat['stdio']):.2f} ms")
    out: dict = {"n": n, "errors": errors, "paths": {}}
    for path in paths:
        calls = len(lat[path])
        out["paths"][path] = {"p50_ms": round(pct(lat[path], 50), 2), "p99_ms": round(pct(lat[path], 99), 2),
                              "hub_cpu_ms": round(hub_cpu[path] * 1000 / calls, 2)}
    if stdio_pid:
        out["paths"]["stdio"]["server_cpu_ms"] = round(side_cpu * 1000 / len(lat["stdio"]), 2)
    return out


def run(*, n: int = 400, block: int = 50, postgresql: bool = False, say=print) -> dict:
    workdir = tempfile.mkdtemp(prefix="cn-bench-mcp-")
    try:
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(pg_database()) if postgresql else None
            hub = HubProcess(CONFIG, workdir=workdir, database_url=url)
            sender = hub.token("mcp-sender")
            hub.token("mcp-reader")
            stack.enter_context(hub)
            say(f"   hub on {'PostgreSQL' if postgresql else 'SQLite'}, {n} sequential sends per path, "
                f"blocks of {block}")
            result = asyncio.run(_measure(hub.url, hub.proc.pid, sender, "mcp-reader", n, block, say))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    api = result["paths"]["api"]
    for path in ("mcp", "stdio"):
        p = result["paths"][path]
        p["cpu_ratio"] = round(p["hub_cpu_ms"] / api["hub_cpu_ms"], 2) if api["hub_cpu_ms"] else None
        p["p50_ratio"] = round(p["p50_ms"] / api["p50_ms"], 2)
        p["pass"] = (p["cpu_ratio"] is not None and p["cpu_ratio"] <= TARGET and p["p50_ratio"] <= TARGET
                     and not result["errors"][path])
    result.update(database="postgresql" if postgresql else "sqlite", target=TARGET)
    return result


def report(r: dict) -> str:
    lines = [f"MCP call cost ({r['database']}, {r['n']} sequential sends per path; target <= {r['target']:g}x "
             "the API call on hub CPU and p50)",
             f"  {'path':<28} {'hub CPU/call':>13} {'p50':>9} {'p99':>9}   ratios (CPU, p50)"]
    labels = {"api": "POST /api/send", "mcp": "claude_net_send over /mcp", "stdio": "claude_net_send over stdio"}
    for path in ("api", "mcp", "stdio"):
        p = r["paths"][path]
        extra = "" if path == "api" else (f"   {p['cpu_ratio']:.2f}x, {p['p50_ratio']:.2f}x  "
                                          f"{'PASS' if p['pass'] else 'FAIL'}")
        if path == "stdio" and "server_cpu_ms" in p:
            extra += f"  (stdio server's own CPU {p['server_cpu_ms']:.2f} ms/call)"
        lines.append(f"  {labels[path]:<28} {p['hub_cpu_ms']:>10.2f} ms {p['p50_ms']:>6.2f} ms "
                     f"{p['p99_ms']:>6.2f} ms{extra}")
    if any(r["errors"].values()):
        lines.append(f"  errors: {r['errors']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="calls per path (default 400)")
    parser.add_argument("--block", type=int, default=50, help="calls per block before switching path (default 50)")
    parser.add_argument("--postgresql", action="store_true", help="a scratch PostgreSQL database instead of SQLite")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    r = run(n=args.n, block=args.block, postgresql=args.postgresql, say=log)
    print(json.dumps(r, indent=1) if args.json else report(r))
    return 0 if all(r["paths"][p]["pass"] for p in ("mcp", "stdio")) else 1


if __name__ == "__main__":
    sys.exit(main())
