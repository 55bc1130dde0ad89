#!/usr/bin/env python3
"""Exec latency and throughput over SSH: the hub's POST /api/exec vs a direct asyncssh floor vs `ssh`.

    python bench/bench_ssh_exec.py [--n 200] [--rounds 3] [--clients 20] [--burst 50] [--all-plugins] [--json]

Starts a private OpenSSH ``sshd`` on a loopback port (its own host key, client key and
authorized_keys in a temporary directory; ``claude_net_ssh.testserver``), and a real hub
(``claude-net serve``) with that server as node ``ser-8`` (by default only the SSH backend is
loaded; ``--all-plugins`` loads every installed plugin, e.g. the activity log). Then

1. **latency**: in one loop, interleaved (rotating who goes first), n times each:
   - ``hub``:   POST /api/exec ``true`` over a keep-alive HTTP connection with an admin token;
   - ``floor``: ``conn.run("true")`` on one already-open asyncssh connection from this process
     (same library and ciphers as the backend, minus the hub);
   - ``mux``:   ``ssh host true`` through an OpenSSH ControlMaster (OpenSSH's own connection reuse);
   - ``ssh``:   ``ssh host true`` with OpenSSH (a new connection each time; what a human types);
2. **burst**: ``--burst`` (50) execs sent to the hub at the same instant, each on its own HTTP
   connection, ``--rounds`` times: every one must succeed (the backend queues what exceeds
   ``[ssh] max_channels`` and retries channels the server is still tearing down);
3. **throughput**: 20 concurrent clients, hub and floor alternately for ``--rounds`` rounds. Hub
   clients each hold a keep-alive HTTP connection; the floor runs 20 concurrent tasks on one
   asyncssh connection limited to the same number of concurrent channels as the backend
   (``[ssh] max_channels``, 6 by default: OpenSSH's MaxSessions is 10).

Targets: issue 5 — hub p50 within 3 ms of the floor p50, and the 50-exec burst without a single
error; the suite's exec targets (as for LXD) — hub p50 <= 1.25 x floor p50, hub throughput
>= 0.8 x floor with zero errors.

The private sshd sets SHLVL=1 in its sessions so bash skips ~/.bashrc (root's runs `pyenv init`
here, ~100 ms per command); that applies to every path alike. ``--with-bashrc`` keeps it.
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
from common import HubProcess, exec_arguments, pct, sshd_available  # noqa: E402

LATENCY_TARGET = 1.25
LATENCY_GAP_TARGET_MS = 3.0
THROUGHPUT_TARGET = 0.8
BURST = 50
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

        from claude_net_ssh.connection import PREFERRED_CIPHERS

        return await asyncssh.connect(self.sshd.host, port=self.sshd.port, username=self.sshd.user,
                                      client_keys=[str(self.sshd.client_key)], config=None,
                                      known_hosts=str(self.sshd.known_hosts),
                                      encryption_algs=list(PREFERRED_CIPHERS))

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


def hub_burst(port: int, token: str, size: int) -> tuple[float, int, list[str]]:
    """``size`` execs released at the same instant, each on its own connection: (wall ms, ok, errors)."""
    clients = [HubClient(port, token) for _ in range(size)]
    barrier = threading.Barrier(size + 1)
    errors: list[str] = []
    ok = 0
    lock = threading.Lock()

    def one(client: HubClient, i: int) -> None:
        nonlocal ok
        barrier.wait()
        try:
            body = client.exec(NODE, f"echo {i}")
            if body.get("stdout") != f"{i}\n":
                raise RuntimeError(f"wrong output {body.get('stdout')!r}")
            with lock:
                ok += 1
        except Exception as exc:  # noqa: BLE001 - counted and shown
            with lock:
                errors.append(str(exc)[:300])

    with concurrent.futures.ThreadPoolExecutor(size) as pool:
        futures = [pool.submit(one, c, i) for i, c in enumerate(clients)]
        barrier.wait()
        started = time.perf_counter()
        for f in futures:
            f.result()
        wall = (time.perf_counter() - started) * 1000
    for c in clients:
        c.conn.close()
    return wall, ok, errors


class Mux:
    """An OpenSSH ControlMaster owned by this process (``ssh -M -N``), stopped by pid."""

    def __init__(self, sshd, directory: Path) -> None:
        self.socket = directory / "mux.sock"
        self.sshd = sshd
        base = sshd.ssh_command()
        self.proc = subprocess.Popen([*base[:-1], "-M", "-N", "-o", f"ControlPath={self.socket}", base[-1]],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the OpenSSH ControlMaster did not start")
            time.sleep(0.02)

    def command(self, *argv: str) -> list[str]:
        base = self.sshd.ssh_command()
        return [*base[:-1], "-o", "ControlMaster=no", "-o", f"ControlPath={self.socket}", base[-1], *argv]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run(*, n: int = 200, rounds: int = 3, clients: int = 20, per_client: int = 10, all_plugins: bool = False,
        burst: int = BURST, with_bashrc: bool = False, say=print) -> dict:
    from claude_net_ssh.testserver import PrivateSshd

    workdir = Path(tempfile.mkdtemp(prefix="cn-bench-ssh-"))
    sshd = PrivateSshd(workdir / "sshd", skip_bashrc=not with_bashrc)
    hub = floor = mux = None
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
        mux = Mux(sshd, workdir)

        def hub_once() -> None:
            client.exec(NODE, "true")

        def floor_once() -> None:
            if floor.exec("true") != 0:
                raise RuntimeError("floor exit status")

        def ssh_once() -> None:
            subprocess.run(sshd.ssh_command("true"), check=True, capture_output=True, timeout=30)

        def mux_once() -> None:
            subprocess.run(mux.command("true"), check=True, capture_output=True, timeout=30)

        def health_once() -> None:
            client.get("/api/health")

        kinds = {"hub": hub_once, "floor": floor_once, "mux": mux_once, "ssh": ssh_once, "health": health_once}
        for fn in kinds.values():
            fn()
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        order = list(kinds)
        cipher = floor.conn.get_extra_info("send_cipher")
        say(f"claude-net SSH exec benchmark — {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
            f"hub plugins: {'all installed' if all_plugins else 'ssh only'}; {channels} channels per node; "
            f"cipher {cipher}; login shell rc files {'sourced' if with_bashrc else 'skipped (SHLVL=1)'}")
        for _ in range(n):
            order = order[1:] + order[:1]
            for kind in order:
                t0 = time.perf_counter()
                kinds[kind]()
                samples[kind].append((time.perf_counter() - t0) * 1000)
        labels = {"floor": "asyncssh floor (open connection)", "hub": "hub POST /api/exec (HTTP, auth, audit hooks)",
                  "mux": "ssh host true (OpenSSH ControlMaster)", "ssh": "ssh host true (new connection)",
                  "health": "hub GET /api/health (HTTP alone, no exec)"}
        floor_p50 = statistics.median(samples["floor"])
        say(f"\nLatency of one exec of `true`, interleaved, n={n} each (ms)")
        floor_p90 = pct(samples["floor"], 90)
        say(f"  {'path':<44} {'p50':>7} {'p90':>7} {'p99':>7} {'x floor p50':>12} {'p50 - floor':>12}")
        for kind in ("floor", "hub", "mux", "ssh", "health"):
            v = samples[kind]
            say(f"  {labels[kind]:<44} {statistics.median(v):7.1f} {pct(v, 90):7.1f} {pct(v, 99):7.1f} "
                f"{statistics.median(v) / floor_p50:11.2f}x {statistics.median(v) - floor_p50:+11.1f}")
        gap = statistics.median(samples["hub"]) - floor_p50
        gap90 = pct(samples["hub"], 90) - floor_p90

        bursts: list[float] = []
        burst_errors: list[str] = []
        for _ in range(rounds):
            wall, _ok, errs = hub_burst(hub.port, token, burst)
            bursts.append(wall)
            burst_errors += errs
        say(f"\nBurst: {burst} execs sent to the hub at once, each on its own HTTP connection, {rounds} rounds")
        say(f"  wall time per burst (ms): {' '.join(f'{w:.0f}' for w in bursts)}; errors: {len(burst_errors)}")
        for err in burst_errors[:5]:
            say(f"    error: {err}")

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
        gap_ok = gap <= LATENCY_GAP_TARGET_MS
        burst_ok = not burst_errors
        mux_p50 = statistics.median(samples["mux"])
        say("\nSummary")
        say(f"  hub p50 - floor p50        = {gap:+.2f} ms (p90: {gap90:+.2f} ms)  (issue 5 target <= "
            f"{LATENCY_GAP_TARGET_MS:g} ms)  {'PASS' if gap_ok else 'MISS'}")
        say(f"  hub p50 vs OpenSSH mux p50 = {statistics.median(samples['hub']):.2f} vs {mux_p50:.2f} ms "
            f"({'faster' if statistics.median(samples['hub']) < mux_p50 else 'slower'} than OpenSSH's own reuse)")
        say(f"  {burst} simultaneous execs     = {len(burst_errors)} errors in {rounds} rounds  "
            f"{'PASS' if burst_ok else 'MISS'}")
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
            "latency_gap_ms": round(gap, 2), "latency_gap_p90_ms": round(gap90, 2),
            "latency_gap_target_ms": LATENCY_GAP_TARGET_MS, "latency_gap_pass": gap_ok,
            "burst": {"size": burst, "rounds": rounds, "wall_ms": [round(w, 1) for w in bursts],
                      "errors": len(burst_errors)}, "burst_pass": burst_ok,
            "cipher": cipher, "bashrc": with_bashrc, "load_average": round(os.getloadavg()[0], 2),
        }
    finally:
        if mux is not None:
            mux.close()
        if floor is not None:
            floor.close()
        if hub is not None:
            hub.stop()
        sshd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    exec_arguments(parser)
    parser.add_argument("--burst", type=int, default=BURST, help=f"simultaneous execs in the burst test (default {BURST})")
    parser.add_argument("--with-bashrc", action="store_true",
                        help="let bash source the login user's ~/.bashrc in every session (slow here: pyenv init)")
    args = parser.parse_args()
    ok, why = sshd_available()
    if not ok:
        print(f"sshd is not available: {why}", file=sys.stderr)
        return 2
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result = run(n=args.n, rounds=args.rounds, clients=args.clients, per_client=args.per_client,
                 all_plugins=args.all_plugins, burst=args.burst, with_bashrc=args.with_bashrc, say=say)
    if args.json:
        print(json.dumps(result))
    passed = all(result[k] for k in ("latency_gap_pass", "burst_pass", "latency_pass", "throughput_pass"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
