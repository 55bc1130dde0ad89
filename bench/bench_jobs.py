#!/usr/bin/env python3
"""Fan-out and live job output against a real hub and real LXD containers.

    python bench/bench_jobs.py [--n 30] [--rounds 5] [--lines 20]

1. launches 20 busybox containers (uniquely named, always deleted at the end) and starts
   ``claude-net serve`` (LXD backend only, SQLite) with an admin token;
2. **single exec**: ``--n`` times ``POST /api/exec`` of ``true`` on one container: p50;
3. **fan-out**: ``--rounds`` times ``POST /api/exec`` with ``targets`` = the 20 containers and
   ``true``: wall time p50, against the single exec's p50 of the same run (target: at most 3x;
   the default ``[jobs] fanout_concurrency`` of 16 runs them in two waves), and against the
   floor: the same 20 execs sent at once straight to LXD's REST API from 20 threads (exec, wait,
   read both logs through the API), and against the CPU the fan-out needs: the CPU time LXD (its
   daemon and its reaped ``forkexec`` children) and the hub process used per round, divided by
   the machine's CPUs (no schedule of that work can finish sooner);
4. **live output delay**: a background job prints ``--lines`` lines 0.25 s apart, each stamped
   inside the container with the wall clock (busybox ``adjtimex``: microseconds; a container
   shares the host's clock); a client follows ``GET /api/jobs/{id}/output?follow=1`` (SSE) and
   takes, for each line, its arrival time minus its stamp: p50 and p99.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lxd_exec import LxdRest  # noqa: E402
from common import pct  # noqa: E402

IMAGE = os.environ.get("LXD_IMAGE_ALIAS", "claude-net-busybox")
FANOUT_TARGET = 3.0
STAMP = ("adjtimex | awk '/tv_sec/{s=$2} /tv_usec/{u=$2} END{printf \"t %d.%06d\\n\", s, u}'")


def lxc(*args: str) -> None:
    subprocess.run(["lxc", *args], check=True, capture_output=True, timeout=120)


def lxd_pid() -> int | None:
    out = subprocess.run(["pgrep", "-xo", "lxd"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU of a process and its reaped children (LXD's forkexec helpers), in seconds."""
    if pid is None:
        return 0.0
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def request(conn: http.client.HTTPConnection, token: str, method: str, path: str, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def run(n: int = 30, rounds: int = 5, lines: int = 20, say=print) -> dict:
    from claude_net.testing import HubProcess

    prefix = f"cnb-jobs-{secrets.token_hex(2)}"
    names = [f"{prefix}-{i:02d}" for i in range(20)]
    hub = None
    try:
        say(f"launching {len(names)} containers")
        for name in names:
            lxc("launch", IMAGE, name)
        hub = HubProcess(f'[plugins]\nallow = ["lxd"]\n[lxd]\ninclude = ["{prefix}-*"]\nshell = "/bin/sh"\n')
        hub.start()
        token = hub.token("bench", admin=True)
        conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the listing may be slow to come on a busy host
            status, body = request(conn, token, "GET", "/api/machines")
            if status == 200 and set(names) <= {m["name"] for m in body["machines"]}:
                break
            time.sleep(0.5)
        for name in names:  # warm: each container's first exec probes it
            status, body = request(conn, token, "POST", "/api/exec", {"target": name, "command": "true"})
            assert status == 200, body

        say(f"single exec x{n}")
        single = []
        for _ in range(n):
            t = time.perf_counter()
            status, body = request(conn, token, "POST", "/api/exec", {"target": names[0], "command": "true"})
            single.append((time.perf_counter() - t) * 1000)
            assert status == 200, body

        say(f"fan-out to {len(names)} x{rounds}")
        fan = []
        lxd = lxd_pid()
        cpu0 = (cpu_seconds(lxd), cpu_seconds(hub.proc.pid))
        for _ in range(rounds):
            t = time.perf_counter()
            status, body = request(conn, token, "POST", "/api/exec", {"targets": names, "command": "true"})
            fan.append((time.perf_counter() - t) * 1000)
            assert status == 200 and body["summary"]["ok"] == len(names), body
        lxd_cpu = (cpu_seconds(lxd) - cpu0[0]) * 1000 / rounds
        hub_cpu = (cpu_seconds(hub.proc.pid) - cpu0[1]) * 1000 / rounds

        say(f"floor: {len(names)} direct LXD REST execs at once x{rounds}")
        floor = []
        rests = [LxdRest() for _ in names]
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            for _ in range(rounds):
                t = time.perf_counter()
                logs = list(pool.map(lambda pair: pair[0].exec(pair[1], ["true"])[3], zip(rests, names)))
                floor.append((time.perf_counter() - t) * 1000)
                for rest, log_names in zip(rests, logs):  # not timed: the hub deletes its logs off the clock too
                    rest.delete(log_names)

        say(f"live output: {lines} lines 0.25 s apart")
        script = f"i=0; while [ $i -lt {lines} ]; do {STAMP}; i=$((i+1)); sleep 0.25; done"
        status, body = request(conn, token, "POST", "/api/exec",
                               {"target": names[1], "command": script, "background": True})
        assert status == 202, body
        follow = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=60)
        follow.request("GET", f"/api/jobs/{body['job']['id']}/output?follow=1",
                       headers={"Authorization": f"Bearer {token}"})
        stream = follow.getresponse()
        delays, text = [], ""
        while True:
            line = stream.readline().decode()
            if not line or line.startswith("event: end"):
                break
            if line.startswith("data: ") and '"text"' in line:
                now = time.time()
                text += json.loads(line[6:])["text"]
                *complete, text = text.split("\n")
                for item in complete:
                    if item.startswith("t "):
                        delays.append((now - float(item[2:])) * 1000)
        follow.close()
        conn.close()
        return {
            "single_ms": {"p50": round(statistics.median(single), 2), "p99": round(pct(single, 99), 2)},
            "fanout_ms": {"p50": round(statistics.median(fan), 2), "max": round(max(fan), 2)},
            "fanout_ratio": round(statistics.median(fan) / statistics.median(single), 2),
            "floor_ms": {"p50": round(statistics.median(floor), 2)},
            "fanout_vs_floor": round(statistics.median(fan) / statistics.median(floor), 2),
            "fanout_target": FANOUT_TARGET,
            # CPU spent per fan-out round, and the least wall time it allows on this machine's CPUs
            "fanout_cpu_ms": {"lxd": round(lxd_cpu, 1), "hub": round(hub_cpu, 1), "cpus": os.cpu_count(),
                              "floor": round((lxd_cpu + hub_cpu) / (os.cpu_count() or 1), 1),
                              "lxd_floor": round(lxd_cpu / (os.cpu_count() or 1), 1)},
            "targets": len(names),
            "live_delay_ms": {"p50": round(pct(delays, 50), 1), "p99": round(pct(delays, 99), 1),
                              "lines": len(delays)},
        }
    finally:
        if hub is not None:
            hub.stop()
        for name in names:
            subprocess.run(["lxc", "delete", "--force", name], capture_output=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lines", type=int, default=20)
    args = parser.parse_args()
    result = run(args.n, args.rounds, args.lines, say=lambda *a: print(*a, file=sys.stderr))
    print(json.dumps(result, indent=2))
    return 0 if result["fanout_ratio"] <= FANOUT_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
