#!/usr/bin/env python3
"""Exec latency and throughput: the hub's POST /api/exec vs the direct LXD REST floor vs `lxc exec`.

    python bench/bench_lxd_exec.py [--n 200] [--rounds 3] [--all-plugins]

Needs a running LXD daemon with the test image (``scripts/lxd-setup``). The benchmark

1. launches 4 busybox containers (uniquely named, always deleted at the end);
2. starts a real hub, ``claude-net serve`` on a free port with a temporary config and SQLite
   database (by default with only the LXD backend loaded, ``--all-plugins`` loads every
   installed plugin, e.g. the activity log, so each exec is also audited);
3. **latency**: in one loop, interleaves (rotating the order every iteration)
   - ``hub``:   POST /api/exec ``true`` over a keep-alive HTTP connection with an admin token;
   - ``floor``: the same LXD fast path straight to the unix socket with raw ``http.client``
     (POST exec with record-output and wait-for-websocket false, wait for the operation, read
     both output logs; deleting the logs afterwards is done but not timed, so this is the
     strictest floor);
   - ``lxc``:   ``lxc exec <c> -- true`` (what a human types on the host);
4. **throughput**: 20 concurrent clients over the 4 containers, each on its own keep-alive
   connection, hub and floor alternately for ``--rounds`` rounds; counts errors. A round ends
   when every answer is in *and* every recorded output log is deleted (the hub deletes them in
   the background; the floor's clients delete them inline).

Targets (issue 4): hub p50 <= 1.25 x floor p50; hub throughput >= 0.8 x floor throughput with
zero errors. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

IMAGE = os.environ.get("LXD_IMAGE_ALIAS", "claude-net-busybox")
SOCKET = os.environ.get("LXD_SOCKET", "/var/lib/lxd/unix.socket")
ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import exec_arguments  # noqa: E402


# -- direct LXD REST (the floor) ------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str = SOCKET, timeout: float = 60) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class LxdRest:
    """The fast path, minimal: one connection, no library."""

    def __init__(self) -> None:
        self.conn = UnixHTTPConnection()

    def request(self, method: str, path: str, body: object | None = None) -> tuple[int, bytes]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        self.conn.request(method, path, body=payload, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def exec(self, name: str, argv: list[str]) -> tuple[int, bytes, bytes, list[str]]:
        status, data = self.request("POST", f"/1.0/instances/{name}/exec", {
            "command": argv, "environment": {}, "interactive": False,
            "wait-for-websocket": False, "record-output": True})
        if status != 202:
            raise RuntimeError(f"exec: HTTP {status}: {data[:200]!r}")
        op = json.loads(data)["operation"]
        status, data = self.request("GET", f"{op}/wait?timeout=30")
        meta = json.loads(data)["metadata"]
        if meta["status_code"] != 200:
            raise RuntimeError(f"exec failed: {meta.get('err')}")
        logs = [meta["metadata"]["output"]["1"], meta["metadata"]["output"]["2"]]
        out = self.request("GET", logs[0])[1]
        err = self.request("GET", logs[1])[1]
        return meta["metadata"]["return"], out, err, logs

    def delete(self, logs: list[str]) -> None:
        for log in logs:
            self.request("DELETE", log)

    def exec_logs(self, names: list[str]) -> int:
        return sum(1 for n in names for p in json.loads(self.request("GET", f"/1.0/instances/{n}/logs")[1])["metadata"]
                   if "/exec_" in p)

    def settle(self, names: list[str], timeout: float = 60) -> None:
        """Wait until no exec output logs are left (the hub deletes its own in the background):
        so one path's deferred work never runs inside another path's measurement."""
        deadline = time.monotonic() + timeout
        while self.exec_logs(names) and time.monotonic() < deadline:
            time.sleep(0.005)


# -- the hub -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    def __init__(self, workdir: Path, prefix: str, all_plugins: bool) -> None:
        self.port = free_port()
        self.config = workdir / "claude-net.toml"
        lines = [
            f'database_url = "sqlite+aiosqlite:///{workdir / "hub.db"}"',
            'host = "127.0.0.1"',
            f"port = {self.port}",
            'log_level = "warning"',
            "",
        ]
        if not all_plugins:
            lines += ["[plugins]", 'allow = ["lxd"]', ""]
        lines += ["[lxd]", f'include = ["{prefix}-*"]', ""]
        self.config.write_text("\n".join(lines))
        self.exe = shutil.which("claude-net", path=str(Path(sys.executable).parent)) or "claude-net"
        self.env = {**os.environ, "CLAUDE_NET_CONFIG": str(self.config)}
        self.proc: subprocess.Popen | None = None
        self.log = open(workdir / "hub.log", "wb")

    def start(self) -> str:
        token = subprocess.run([self.exe, "token", "create", "bench", "--admin"], env=self.env, check=True,
                               capture_output=True, text=True).stdout.strip()
        self.proc = subprocess.Popen([self.exe, "serve"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"claude-net serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/api/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return token
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the hub did not come up within 30 s")

    def stop(self) -> None:
        if self.log.closed:
            return
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class HubClient:
    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def exec(self, target: str, command: str) -> dict:
        self.conn.request("POST", "/api/exec", body=json.dumps({"target": target, "command": command}),
                          headers=self.headers)
        response = self.conn.getresponse()
        body = json.loads(response.read())
        if response.status != 200 or body.get("exitCode") != 0:
            raise RuntimeError(f"hub exec: HTTP {response.status}: {body}")
        return body

    def get(self, path: str) -> dict:
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        return json.loads(response.read())


# -- measurements ------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency(n: int, target: str, hub: HubClient, rest: LxdRest) -> dict[str, list[float]]:
    cleanup: list[str] = []

    def hub_once() -> None:
        hub.exec(target, "true")

    def floor_once() -> None:
        code, _out, _err, logs = rest.exec(target, ["/bin/sh", "-c", "true"])
        if code != 0:
            raise RuntimeError(f"floor exit {code}")
        cleanup.extend(logs)

    def lxc_once() -> None:
        subprocess.run(["lxc", "exec", target, "--", "true"], check=True)

    kinds = {"hub": hub_once, "floor": floor_once, "lxc": lxc_once}
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for fn in kinds.values():  # warm-up
        fn()
    rest.delete(cleanup)
    cleanup.clear()
    order = list(kinds)
    settle = LxdRest()
    for _ in range(n):
        order = order[1:] + order[:1]  # rotate who goes first
        for kind in order:
            t0 = time.perf_counter()
            kinds[kind]()
            samples[kind].append((time.perf_counter() - t0) * 1000)
            rest.delete(cleanup)  # untimed
            cleanup.clear()
            settle.settle([target])  # untimed: the hub's background deletions are done
    return samples


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (0 when it is unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def lxd_pid() -> int | None:
    """The LXD daemon's pid (container monitors are also named lxd)."""
    for pid in subprocess.run(["pgrep", "-x", "lxd"], capture_output=True, text=True).stdout.split():
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"[lxc monitor]"):
                return int(pid)
        except OSError:
            continue
    return None


def throughput(kind: str, targets: list[str], clients: int, per_client: int, port: int,
               token: str) -> tuple[float, int, int]:
    """Run ``clients`` concurrent workers; returns (execs per second, successes, errors)."""
    errors = 0
    ok = 0
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        nonlocal errors, ok
        target = targets[i % len(targets)]
        hub = HubClient(port, token) if kind == "hub" else None
        rest = LxdRest() if kind == "floor" else None
        barrier.wait()
        for _ in range(per_client):
            try:
                if hub is not None:
                    hub.exec(target, "true")
                else:
                    code, _o, _e, logs = rest.exec(target, ["/bin/sh", "-c", "true"])
                    rest.delete(logs)  # a direct client must clean up too; the hub does it off-path
                    if code != 0:
                        raise RuntimeError(f"exit {code}")
                with lock:
                    ok += 1
            except Exception as exc:  # noqa: BLE001 - counted and shown
                with lock:
                    errors += 1
                print(f"  {kind} error: {exc}", file=sys.stderr)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker, i) for i in range(clients)]
        barrier.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        # the work is done when the output logs are deleted too (the hub defers that)
        LxdRest().settle(targets)
        elapsed = time.perf_counter() - t0
    return ok / elapsed, ok, errors


# -- main ----------------------------------------------------------------------------------------------


def lxc(*args: str) -> None:
    subprocess.run(["lxc", *args], check=True, capture_output=True, text=True, timeout=120)


def run(*, n: int = 200, rounds: int = 3, clients: int = 20, per_client: int = 10, all_plugins: bool = False,
        say=print) -> dict:
    """Launch the containers and a hub, measure, clean up; returns the figures as a dict.

    ``say`` receives the human-readable report line by line (``print`` for the CLI).
    """
    LxdRest().request("GET", "/1.0")  # OSError when LXD is not there

    prefix = f"bench-{secrets.token_hex(3)}"
    names = [f"{prefix}-{i}" for i in range(4)]
    workdir = Path(tempfile.mkdtemp(prefix="cn-bench-"))
    hub = Hub(workdir, prefix, all_plugins)
    launched: list[str] = []
    try:
        for name in names:
            launched.append(name)
            lxc("launch", IMAGE, name)
        token = hub.start()
        client = HubClient(hub.port, token)
        machines = client.get("/api/machines")
        seen = {m["name"] for m in machines["machines"]}
        missing = set(names) - seen
        if missing:
            raise RuntimeError(f"the hub does not see {sorted(missing)}: {machines}")
        for name in names:  # warm each container's probe
            client.exec(name, "true")
        rest = LxdRest()

        say(f"claude-net LXD exec benchmark — {os.cpu_count()} CPUs, hub plugins: "
            f"{'all installed' if all_plugins else 'lxd only'}")
        say(f"\nLatency of one exec of `true`, interleaved, n={n} each (ms)")
        samples = latency(n, names[0], client, rest)
        floor_p50 = statistics.median(samples["floor"])
        say(f"  {'path':<44} {'p50':>7} {'p90':>7} {'p99':>7} {'x floor p50':>12}")
        labels = {"floor": "LXD REST floor (raw unix socket)", "hub": "hub POST /api/exec (HTTP, auth, audit hooks)",
                  "lxc": "lxc exec c -- true"}
        for kind in ("floor", "hub", "lxc"):
            v = samples[kind]
            say(f"  {labels[kind]:<44} {statistics.median(v):7.1f} {pct(v, 90):7.1f} {pct(v, 99):7.1f} "
                f"{statistics.median(v) / floor_p50:11.2f}x")

        total = clients * per_client
        say(f"\nThroughput: {clients} concurrent clients over {len(names)} containers, "
            f"{total} execs per round, {rounds} rounds alternating")
        results: dict[str, list[float]] = {"floor": [], "hub": []}
        errors = {"floor": 0, "hub": 0}
        # CPU per exec: the hub's process vs this process (the floor's clients), and the LXD daemon's
        cpu = {kind: {"client": 0.0, "lxd": 0.0, "n": 0} for kind in results}
        daemon = lxd_pid()
        for _ in range(rounds):
            for kind in ("floor", "hub"):
                rest.settle(names)
                c0 = cpu_seconds(hub.proc.pid) if kind == "hub" else time.process_time()
                l0 = cpu_seconds(daemon)
                rate, ok, errs = throughput(kind, names, clients, per_client, hub.port, token)
                cpu[kind]["client"] += (cpu_seconds(hub.proc.pid) if kind == "hub" else time.process_time()) - c0
                cpu[kind]["lxd"] += cpu_seconds(daemon) - l0
                cpu[kind]["n"] += ok
                results[kind].append(rate)
                errors[kind] += errs
        floor_rate = statistics.median(results["floor"])
        hub_rate = statistics.median(results["hub"])
        say(f"  {'path':<44} {'execs/s (median)':>17} {'rounds':>22} {'errors':>7}")
        for kind, rate in (("floor", floor_rate), ("hub", hub_rate)):
            rounds_text = " ".join(f"{r:.0f}" for r in results[kind])
            say(f"  {labels[kind]:<44} {rate:17.1f} {rounds_text:>22} {errors[kind]:>7}")

        per_exec = {kind: {part: round(cpu[kind][part] * 1000 / max(1, cpu[kind]["n"]), 2)
                           for part in ("client", "lxd")} for kind in cpu}
        say(f"  CPU ms per exec: floor client {per_exec['floor']['client']:.2f}, hub process "
            f"{per_exec['hub']['client']:.2f}; LXD daemon {per_exec['floor']['lxd']:.2f} (floor) / "
            f"{per_exec['hub']['lxd']:.2f} (hub)")

        lat_ratio = statistics.median(samples["hub"]) / floor_p50
        tp_ratio = hub_rate / floor_rate
        lxc_ratio = statistics.median(samples["hub"]) / statistics.median(samples["lxc"])
        say("\nSummary")
        lat_ok = lat_ratio <= 1.25
        tp_ok = tp_ratio >= 0.8 and errors["hub"] == 0
        say(f"  hub p50 / floor p50        = {lat_ratio:.2f}x   (target <= 1.25x)  {'PASS' if lat_ok else 'MISS'}")
        say(f"  hub p50 / lxc exec p50     = {lxc_ratio:.2f}x")
        say(f"  hub / floor throughput     = {tp_ratio:.2f}x   (target >= 0.80x, 0 errors: hub had "
            f"{errors['hub']})  {'PASS' if tp_ok else 'MISS'}")
        hub.stop()  # waits for the hub's pending background deletions
        leftover = rest.exec_logs(names)
        say(f"  exec output logs left behind once the hub stopped: {leftover}")
        return {
            "plugins": "all" if all_plugins else "lxd",
            "latency_ms": {kind: {"p50": round(statistics.median(v), 2), "p90": round(pct(v, 90), 2),
                                  "p99": round(pct(v, 99), 2), "n": len(v)} for kind, v in samples.items()},
            "latency_ratio": round(lat_ratio, 3), "latency_target": 1.25, "latency_pass": lat_ok,
            "lxc_ratio": round(lxc_ratio, 3),
            "throughput": {"floor": round(floor_rate, 1), "hub": round(hub_rate, 1),
                           "floor_rounds": [round(r, 1) for r in results["floor"]],
                           "hub_rounds": [round(r, 1) for r in results["hub"]]},
            "clients": clients, "execs_per_round": total, "errors": errors,
            "throughput_ratio": round(tp_ratio, 3), "throughput_target": 0.8, "throughput_pass": tp_ok,
            "leftover_logs": leftover, "cpu_ms_per_exec": per_exec,
        }
    finally:
        hub.stop()
        for name in launched:
            subprocess.run(["lxc", "delete", "--force", name], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    exec_arguments(parser)
    args = parser.parse_args()

    try:
        LxdRest().request("GET", "/1.0")
    except OSError as exc:
        print(f"LXD is not reachable at {SOCKET} ({exc}); run scripts/lxd-setup", file=sys.stderr)
        return 2
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result = run(n=args.n, rounds=args.rounds, clients=args.clients, per_client=args.per_client,
                 all_plugins=args.all_plugins, say=say)
    if args.json:
        print(json.dumps(result))
    return 0 if result["latency_pass"] and result["throughput_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
