"""Messaging throughput: send+inbox requests/s against a trivial endpoint on the same server(s).

Both are measured in the same run against real hubs (``claude-net serve``, Hypercorn, every
installed plugin loaded) with wrk, 50 connections in total. Target: send+inbox >= 0.5 x the
trivial endpoint (``GET /api/health``, which still goes through routing, the JSON error layer
and the response path, but touches no database).

* ``--replicas 1`` (default): one hub on SQLite (default) or PostgreSQL (``--postgresql`` makes a
  scratch database; ``--database-url`` uses yours).
* ``--replicas 2``: two ``claude-net serve`` processes on one PostgreSQL database; wrk can hit
  only one URL, so two wrk processes run at once, one per replica (25 connections each), and
  their requests/s are summed. Each replica has its own sender -> reader pair.

The two are measured in alternated pairs of short rounds (ten pairs of 3 s by default: trivial
then mix, mix then trivial, ...) and the result is the median of the per-pair ratios. This VM's
CPU speed drifts by itself, up to 2x within seconds (a busy loop in one process counts
2.5-5.5 M iterations per second from one second to the next, with nothing else running), so
rounds far apart in time compare different machines; two rounds side by side mostly do not.

    python bench/bench_messaging.py [--seconds 3] [--rounds 10] [--connections 50] [--postgresql] [--replicas 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HubProcess, log, pg_database  # noqa: E402

TARGET = 0.5

MIX_LUA = """
local n = 0
request = function()
  n = n + 1
  if n %% 2 == 1 then
    return wrk.format("POST", "/api/send", {["Authorization"] = "Bearer %(sender)s",
      ["Content-Type"] = "application/json"}, '{"to": "%(reader_name)s", "message": "benchmark message body"}')
  else
    return wrk.format("GET", "/api/inbox?limit=10&ack=true", {["Authorization"] = "Bearer %(reader)s"})
  end
end
"""


def _wrk_args(url: str, seconds: int, connections: int, threads: int, script: str | None) -> list[str]:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency"]
    if script:
        args += ["-s", script]
    return args + [url]


def _parse(out: str) -> dict:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return {"rps": rps, "errors": errors,
            "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else None}


def wrk(url: str, seconds: int, connections: int, script: str | None = None, threads: int = 2) -> dict:
    out = subprocess.run(_wrk_args(url, seconds, connections, threads, script), capture_output=True, text=True,
                         check=True, timeout=seconds + 60).stdout
    return _parse(out)


def wrk_parallel(jobs: list[tuple[str, str | None]], seconds: int, connections: int) -> dict:
    """Run one wrk per (url, script) at the same time, ``connections`` split between them; sum."""
    per = max(1, connections // len(jobs))
    procs = [subprocess.Popen(_wrk_args(url, seconds, per, 1, script), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for url, script in jobs]
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        results.append(_parse(out))
    return {"rps": sum(r["rps"] for r in results), "errors": sum(r["errors"] for r in results),
            "per_replica_rps": [round(r["rps"]) for r in results],
            "p50_ms": max((r["p50_ms"] or 0) for r in results)}


def run(*, seconds: int = 3, connections: int = 50, database_url: str | None = None, postgresql: bool = False,
        replicas: int = 1, rounds: int = 10) -> dict:
    """Measure one setup; returns a dict with the figures (``ratio``: the median over ``rounds``
    alternated pairs of send+inbox / trivial)."""
    if replicas > 1 and not (postgresql or (database_url or "").startswith("postgres")):
        raise ValueError("several replicas need PostgreSQL (--postgresql or a postgresql database URL)")
    with contextlib.ExitStack() as stack:
        if postgresql and not database_url:
            database_url = stack.enter_context(pg_database())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cn-bench-msg-")))
        hubs = []
        for i in range(replicas):
            (tmp / f"r{i}").mkdir()
            hubs.append(HubProcess(database_url=database_url, workdir=str(tmp / f"r{i}")))
        for hub in hubs:
            hub.start()
            stack.callback(hub.stop)
        scripts = []
        for i, hub in enumerate(hubs):
            sender, reader = hubs[0].token(f"sender{i}"), hubs[0].token(f"reader{i}")
            script = tmp / f"mix{i}.lua"
            script.write_text(MIX_LUA % {"sender": sender, "reader": reader, "reader_name": f"reader{i}"})
            scripts.append(str(script))
        health = [(hub.url + "/api/health", None) for hub in hubs]
        mix = [(hub.url, script) for hub, script in zip(hubs, scripts)]
        if replicas == 1:
            def measure(jobs, secs):
                r = wrk(jobs[0][0], secs, connections, jobs[0][1])
                return {**r, "per_replica_rps": [round(r["rps"])]}
        else:
            def measure(jobs, secs):
                return wrk_parallel(jobs, secs, connections)
        measure(health, 2)  # warm-up
        measure(mix, 2)
        trivials, mixes = [], []
        pair = [(trivials, health), (mixes, mix)]
        for i in range(rounds):  # pairs side by side, in alternating order: drift hits both sides alike
            for results, jobs in (pair if i % 2 == 0 else pair[::-1]):
                results.append(measure(jobs, seconds))
        rss = [round(hub.rss_kib() / 1024) for hub in hubs]
    baseline = statistics.median(t["rps"] for t in trivials)
    mixed_rps = statistics.median(m["rps"] for m in mixes)
    middle = sorted(mixes, key=lambda m: m["rps"])[len(mixes) // 2]
    ratio = statistics.median(m["rps"] / t["rps"] for t, m in zip(trivials, mixes))
    errors = sum(m["errors"] for m in mixes) + sum(t["errors"] for t in trivials)
    return {"db": "postgresql" if database_url else "sqlite", "replicas": replicas, "seconds": seconds,
            "rounds": rounds, "connections": connections, "trivial_rps": round(baseline),
            "trivial_rps_runs": [round(t["rps"]) for t in trivials],
            "send_inbox_rps": round(mixed_rps), "send_inbox_rps_runs": [round(m["rps"]) for m in mixes],
            "ratio_runs": [round(m["rps"] / t["rps"], 3) for t, m in zip(trivials, mixes)],
            "per_replica_rps": middle["per_replica_rps"],
            "send_inbox_p50_ms": middle["p50_ms"], "ratio": round(ratio, 3), "target": TARGET,
            "errors": errors, "rss_mib": rss, "pass": ratio >= TARGET and errors == 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=3, help="length of each round (default 3)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--postgresql", action="store_true", help="run on a scratch PostgreSQL database")
    parser.add_argument("--replicas", type=int, default=1, help="hub processes on one PostgreSQL (default 1)")
    parser.add_argument("--rounds", type=int, default=10, help="alternated trivial/send+inbox pairs (default 10)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is required: apt-get install wrk", file=sys.stderr)
        return 2
    log(f"messaging: {args.replicas} replica(s), {'postgresql' if args.postgresql or args.database_url else 'sqlite'}")
    result = run(seconds=args.seconds, connections=args.connections, database_url=args.database_url,
                 postgresql=args.postgresql, replicas=args.replicas, rounds=args.rounds)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'figure':<34}{'req/s':>10}   ({result['db']}, {result['replicas']} replica(s))")
        print(f"{'trivial GET /api/health':<34}{result['trivial_rps']:>10}")
        print(f"{'send+inbox (1:1, ack)':<34}{result['send_inbox_rps']:>10}   errors={result['errors']}")
        print(f"ratio {result['ratio']:.2f} x (median of {result['rounds']} alternated pairs: "
              f"{', '.join(f'{r:.2f}' for r in result['ratio_runs'])}; target >= {TARGET:.2f})  "
              f"{'PASS' if result['pass'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
