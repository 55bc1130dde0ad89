#!/usr/bin/env python3
"""Exec latency and throughput over SSH: the hub's POST /api/exec vs a direct asyncssh floor vs `ssh`.

    python bench/bench_ssh_exec.py [--n 200] [--rounds 3] [--clients 20] [--all-plugins] [--json]

Starts a private OpenSSH ``sshd`` on a loopback port (its own host key, client key and
authorized_keys in a temporary directory; ``claude_net_ssh.testserver``), and a real hub
(``claude-net serve``) with that server as node ``ser-8`` (by default only the SSH backend is
loaded; ``--all-plugins`` loads every installed plugin, e.g. the activity log). Then

1. **latency**: in one loop, interleaved (rotating who goes first), n times each:
   - ``hub``:   POST /api/exec ``true`` over a keep-alive HTTP connection with an admin token;
   - ``floor``: ``conn.run("true")`` on one already-open asyncssh connection from this process
     (the same library and the same login-shell evaluation the backend uses, minus the hub);
   - ``ssh``:   ``ssh host true`` with OpenSSH (a new connection each time; what a human types);
2. **throughput**: 20 concurrent clients, hub and floor alternately for ``--rounds`` rounds. Hub
   clients each hold a keep-alive HTTP connection; the floor runs 20 concurrent tasks on one
   asyncssh connection limited to the same number of concurrent channels as the backend
   (``[ssh] max_channels``, 6 by default: OpenSSH's MaxSessions is 10).

Targets (as for LXD): hub p50 <= 1.25 x floor p50; hub throughput >= 0.8 x floor with zero errors.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lxd_exec import HubClient  # noqa: E402
from common import HubProcess, pct, sshd_available  # noqa: E402

LATENCY_TARGET = 1.25
THROUGHPUT_TARGET = 0.8
NODE = "ser-8"


class Floor:
    """One asyncssh connection driven from a private event loop thread (so sync code can time it)."""

    def __init__(self, sshd, channels: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sshd = sshd
        self.channels = channels
        self.conn = self.call(self._connect())
        self.slots = self.call(self._semaphore())

    async def _connect(self):
        import asyncssh

        return await asyncssh.connect(self.sshd.host, port=self.sshd.port, username=self.sshd.user,
                                      client_keys=[str(self.sshd.client_key)],
                                      known_hosts=str(self.sshd.known_hosts))

    async def _semaphore(self):
        return asyncio.Semaphore(self.channels)

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    async def exec_async(self, command: str) -> int:
        async with self.slots:
            result = await self.conn.run(command)
        return result.exit_status

    def exec(self, command: str) -> int:
        return self.call(self.exec_async(command))

    def many(self, clients: int, per_client: int) -> tuple[float, int, int]:
        async def batch():
            ok = errors = 0

            async def worker():
                nonlocal ok, errors
                for _ in range(per_client):
                    try:
                        code = await self.exec_async("true")
                        if code != 0:
                            raise RuntimeError(f"exit {code}")
                        ok += 1
                    except Exception as exc:  # noqa: BLE001 - counted
                        errors += 1
                        print(f"  floor error: {exc}", file=sys.stderr)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return ok / (time.perf_counter() - started), ok, errors

        return self.call(batch())

    def close(self) -> None:
        async def shut():
            self.conn.close()
            with contextlib.suppress(Exception):
                await self.conn.wait_closed()

        with contextlib.suppress(Exception):
            self.call(shut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def hub_throughput(port: int, token: str, clients: int, per_client: int) -> tuple[float, int, int]:
    errors = ok = 0
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker() -> None:
        nonlocal errors, ok
        client = HubClient(port, token)
        barrier.wait()
        for _ in range(per_client):
            try:
                client.exec(NODE, "true")
                with lock:
                    ok += 1
            except Exception as exc:  # noqa: BLE001 - counted and shown
                with lock:
                    errors += 1
                print(f"  hub error: {exc}", file=sys.stderr)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker) for _ in range(clients)]
        barrier.wait()
        started = time.perf_counter()
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - started
    return ok / elapsed, ok, errors


def run(*, n: int = 200, rounds: int = 3, clients: int = 20, per_client: int = 10, all_plugins: bool = False,
        say=print) -> dict:
    from claude_net_ssh.testserver import PrivateSshd

    workdir = Path(tempfile.mkdtemp(prefix="cn-bench-ssh-"))
    sshd = PrivateSshd(workdir / "sshd")
    hub = floor = None
    try:
        sshd.start()
        node = sshd.node_config()
        lines = [f'[ssh.nodes.{NODE}]'] + [f"{k} = {json.dumps(v)}" for k, v in node.items()]
        plugins = "" if all_plugins else '[plugins]\nallow = ["ssh"]\n'
        (workdir / "hub").mkdir()
        hub = HubProcess(plugins + "\n".join(lines) + "\n", workdir=str(workdir / "hub"))
        token = hub.token("bench", admin=True)
        hub.start()
        from claude_net_ssh.settings import SshSettings

        channels = SshSettings().max_channels
        client = HubClient(hub.port, token)
        client.exec(NODE, "true")  # connects the pool
        floor = Floor(sshd, channels)

        def hub_once() -> None:
            client.exec(NODE, "true")

        def floor_once() -> None:
            if floor.exec("true") != 0:
                raise RuntimeError("floor exit status")

        def ssh_once() -> None:
            subprocess.run(sshd.ssh_command("true"), check=True, capture_output=True, timeout=30)

        kinds = {"hub": hub_once, "floor": floor_once, "ssh": ssh_once}
        for fn in kinds.values():
            fn()
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        order = list(kinds)
        say(f"claude-net SSH exec benchmark — {os.cpu_count()} CPUs, hub plugins: "
            f"{'all installed' if all_plugins else 'ssh only'}; {channels} channels per node")
        for _ in range(n):
            order = order[1:] + order[:1]
            for kind in order:
                t0 = time.perf_counter()
                kinds[kind]()
                samples[kind].append((time.perf_counter() - t0) * 1000)
        labels = {"floor": "asyncssh floor (open connection)", "hub": "hub POST /api/exec (HTTP, auth, audit hooks)",
                  "ssh": "ssh host true (new connection)"}
        floor_p50 = statistics.median(samples["floor"])
        say(f"\nLatency of one exec of `true`, interleaved, n={n} each (ms)")
        say(f"  {'path':<44} {'p50':>7} {'p90':>7} {'p99':>7} {'x floor p50':>12}")
        for kind in ("floor", "hub", "ssh"):
            v = samples[kind]
            say(f"  {labels[kind]:<44} {statistics.median(v):7.1f} {pct(v, 90):7.1f} {pct(v, 99):7.1f} "
                f"{statistics.median(v) / floor_p50:11.2f}x")

        results: dict[str, list[float]] = {"floor": [], "hub": []}
        errors = {"floor": 0, "hub": 0}
        for _ in range(rounds):
            rate, _ok, errs = floor.many(clients, per_client)
            results["floor"].append(rate)
            errors["floor"] += errs
            rate, _ok, errs = hub_throughput(hub.port, token, clients, per_client)
            results["hub"].append(rate)
            errors["hub"] += errs
        floor_rate, hub_rate = statistics.median(results["floor"]), statistics.median(results["hub"])
        say(f"\nThroughput: {clients} concurrent clients, {clients * per_client} execs per round, {rounds} rounds")
        say(f"  {'path':<44} {'execs/s (median)':>17} {'rounds':>22} {'errors':>7}")
        for kind, rate in (("floor", floor_rate), ("hub", hub_rate)):
            rounds_text = " ".join(f"{r:.0f}" for r in results[kind])
            say(f"  {labels[kind]:<44} {rate:17.1f} {rounds_text:>22} {errors[kind]:>7}")
        lat_ratio = statistics.median(samples["hub"]) / floor_p50
        tp_ratio = hub_rate / floor_rate
        lat_ok = lat_ratio <= LATENCY_TARGET
        tp_ok = tp_ratio >= THROUGHPUT_TARGET and errors["hub"] == 0
        say("\nSummary")
        say(f"  hub p50 / floor p50        = {lat_ratio:.2f}x   (target <= {LATENCY_TARGET:.2f}x)  "
            f"{'PASS' if lat_ok else 'MISS'}")
        say(f"  hub / floor throughput     = {tp_ratio:.2f}x   (target >= {THROUGHPUT_TARGET:.2f}x, 0 errors: hub had "
            f"{errors['hub']})  {'PASS' if tp_ok else 'MISS'}")
        return {
            "plugins": "all" if all_plugins else "ssh", "channels": channels,
            "latency_ms": {kind: {"p50": round(statistics.median(v), 2), "p90": round(pct(v, 90), 2),
                                  "p99": round(pct(v, 99), 2), "n": len(v)} for kind, v in samples.items()},
            "latency_ratio": round(lat_ratio, 3), "latency_target": LATENCY_TARGET, "latency_pass": lat_ok,
            "throughput": {"floor": round(floor_rate, 1), "hub": round(hub_rate, 1),
                           "floor_rounds": [round(r, 1) for r in results["floor"]],
                           "hub_rounds": [round(r, 1) for r in results["hub"]]},
            "clients": clients, "execs_per_round": clients * per_client, "errors": errors,
            "throughput_ratio": round(tp_ratio, 3), "throughput_target": THROUGHPUT_TARGET, "throughput_pass": tp_ok,
        }
    finally:
        if floor is not None:
            floor.close()
        if hub is not None:
            hub.stop()
        sshd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="latency samples per path (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per path (default 3)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--per-client", type=int, default=10, help="execs per client per round (default 10)")
    parser.add_argument("--all-plugins", action="store_true", help="load every installed plugin in the hub")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the report")
    args = parser.parse_args()
    ok, why = sshd_available()
    if not ok:
        print(f"sshd is not available: {why}", file=sys.stderr)
        return 2
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result = run(n=args.n, rounds=args.rounds, clients=args.clients, per_client=args.per_client,
                 all_plugins=args.all_plugins, say=say)
    if args.json:
        print(json.dumps(result))
    return 0 if result["latency_pass"] and result["throughput_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
