#!/usr/bin/env python3
"""Event-loop stall while 20 execs run at once through the hub on LXD.

    python bench/bench_loop_stall.py [--execs 20] [--sleep 2] [--rounds 3] [--json]

Launches 4 busybox containers (deleted at the end) and a real hub (``claude-net serve``, every
installed plugin) carrying an in-process probe (``bench/loopprobe.py``): a task that sleeps 5 ms
in a loop and records how late it wakes, i.e. for how long other work held the event loop. Meanwhile
a client thread sends ``GET /api/health`` every 20 ms on a keep-alive connection and records the
latency (what any other agent would feel).

* **baseline**: the same probe and health poller for 4 s with no other load;
* **load**: ``--rounds`` times, ``--execs`` concurrent ``POST /api/exec`` of ``sleep 2``, spread
  over the containers, each from its own connection.

Targets: under load the loop's p99 lag <= 20 ms and its longest stall <= 100 ms; the ratio column is
loaded / idle.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LXD_IMAGE, ProbeHub, lxd_available, pct  # noqa: E402

P99_TARGET_MS = 20.0
MAX_TARGET_MS = 100.0


def _get(conn: http.client.HTTPConnection, path: str, token: str | None = None) -> dict:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    response = conn.getresponse()
    body = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}: {body}")
    return body


class HealthPoller(threading.Thread):
    def __init__(self, port: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.samples: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.halt.is_set():
            t0 = time.perf_counter()
            _get(conn, "/api/health")
            self.samples.append((time.perf_counter() - t0) * 1000)
            time.sleep(self.interval)
        conn.close()

    def stop(self) -> list[float]:
        self.halt.set()
        self.join(30)
        return self.samples


def exec_burst(port: int, token: str, targets: list[str], execs: int, sleep: float) -> tuple[float, int]:
    barrier = threading.Barrier(execs)

    def one(i: int) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        barrier.wait()
        conn.request("POST", "/api/exec", body=json.dumps({"target": targets[i % len(targets)],
                                                          "command": f"sleep {sleep:g}", "timeout": 30}),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        conn.close()
        return response.status == 200 and body.get("exitCode") == 0

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(execs) as pool:
        ok = sum(pool.map(one, range(execs)))
    return time.perf_counter() - started, execs - ok


def run(*, execs: int = 20, sleep: float = 2.0, rounds: int = 3, say=print) -> dict:
    prefix = f"bench-{secrets.token_hex(3)}"
    names = [f"{prefix}-{i}" for i in range(4)]
    workdir = Path(tempfile.mkdtemp(prefix="cn-bench-stall-"))
    launched: list[str] = []
    hub = None
    try:
        for name in names:
            launched.append(name)
            subprocess.run(["lxc", "launch", LXD_IMAGE, name], check=True, capture_output=True, timeout=120)
        (workdir / "hub").mkdir()
        hub = ProbeHub(f'[lxd]\ninclude = ["{prefix}-*"]\n', workdir=str(workdir / "hub"))
        token = hub.token("bench", admin=True)
        hub.start()
        conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=60)
        for name in names:  # warm: each container's first exec
            conn.request("POST", "/api/exec", body=json.dumps({"target": name, "command": "true"}),
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            conn.getresponse().read()
        time.sleep(1)

        _get(conn, "/api/bench/lag?reset=1", token)
        poller = HealthPoller(hub.port)
        poller.start()
        time.sleep(4)
        idle_health = poller.stop()
        idle = _get(conn, "/api/bench/lag?reset=1", token)

        poller = HealthPoller(hub.port)
        poller.start()
        walls, failures = [], 0
        for _ in range(rounds):
            wall, failed = exec_burst(hub.port, token, names, execs, sleep)
            walls.append(wall)
            failures += failed
        loaded_health = poller.stop()
        loaded = _get(conn, "/api/bench/lag?reset=1", token)
        conn.close()
    finally:
        if hub is not None:
            hub.stop()
        for name in launched:
            subprocess.run(["lxc", "delete", "--force", name], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)

    def health_stats(samples: list[float]) -> dict:
        return {"n": len(samples), "p50_ms": round(pct(samples, 50), 2), "p99_ms": round(pct(samples, 99), 2),
                "max_ms": round(max(samples), 2)}

    result = {
        "execs": execs, "sleep_s": sleep, "rounds": rounds, "burst_wall_s": [round(w, 2) for w in walls],
        "exec_failures": failures,
        "loop_lag_idle": idle, "loop_lag_loaded": loaded,
        "health_idle": health_stats(idle_health), "health_loaded": health_stats(loaded_health),
        "p99_target_ms": P99_TARGET_MS, "max_target_ms": MAX_TARGET_MS,
    }
    result["pass"] = (loaded["p99_ms"] <= P99_TARGET_MS and loaded["max_ms"] <= MAX_TARGET_MS and failures == 0)
    say(f"Event loop during {rounds} bursts of {execs} concurrent `sleep {sleep:g}` execs on LXD "
        f"(bursts took {', '.join(f'{w:.2f}' for w in walls)} s; {failures} failed)")
    say(f"  {'':<28}{'p50':>8}{'p99':>8}{'max':>8}  (ms)")
    say(f"  {'loop lag, idle':<28}{idle['p50_ms']:>8.2f}{idle['p99_ms']:>8.2f}{idle['max_ms']:>8.2f}")
    say(f"  {'loop lag, 20 execs':<28}{loaded['p50_ms']:>8.2f}{loaded['p99_ms']:>8.2f}{loaded['max_ms']:>8.2f}")
    for label, h in (("GET /api/health, idle", result["health_idle"]),
                     ("GET /api/health, 20 execs", result["health_loaded"])):
        say(f"  {label:<28}{h['p50_ms']:>8.2f}{h['p99_ms']:>8.2f}{h['max_ms']:>8.2f}")
    say(f"  target: loaded loop lag p99 <= {P99_TARGET_MS:g} ms and max <= {MAX_TARGET_MS:g} ms  "
        f"{'PASS' if result['pass'] else 'FAIL'}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ok, why = lxd_available()
    if not ok:
        print(f"LXD is not available: {why}", file=sys.stderr)
        return 2
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result = run(execs=args.execs, sleep=args.sleep, rounds=args.rounds, say=say)
    if args.json:
        print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
