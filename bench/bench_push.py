"""Channel push: how fast a message reaches an agent's session, and what 1,000 connected agents cost.

    .venv/bin/python bench/bench_push.py [--n 200] [--agents 1000] [--json]

1. **Latency.** One hub (SQLite), one real ``claude-net-mcp`` (stdio) driven by the MCP SDK's
   client session, whose incoming stream is tapped: the time from ``POST /api/send`` returning
   to the ``notifications/claude/channel`` arriving at the client, over ``--n`` messages. The
   baseline, measured in the same run and interleaved sample by sample: the hub's own long-poll
   wake, from ``POST /api/send`` returning to a parked ``GET /api/inbox?wait=25`` of another node
   answering. Target (issue 16): push p50 within 2x of the wake p50. Both are also given from the
   start of the send (a notification may arrive before the send's answer does).
2. **Scale.** The same hub with 10, then ``--agents`` connected agents: one real
   ``claude-net-mcp`` (measured) and the others simulated by raw clients making exactly the
   requests the server makes (its long-poll ``GET /api/inbox?wait=25&ack=false&authenticated_only=true&unpushed=true``),
   each on its own connection. Reported: the hub's RSS and open file descriptors with all waits
   parked, and the push p50/p99 to the real agent over 100 messages. (Running 1,000 real stdio
   servers would take ~45 GB here; the hub cannot tell the difference.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HubProcess, log, pct, rss_kib  # noqa: E402

TARGET = 2.0
POLL = {"wait": 25, "ack": "false", "authenticated_only": "true", "unpushed": "true", "limit": 100}


@contextlib.contextmanager
def running_hub(prefix: str):
    """A hub with only the core's messaging (no LXD), given time to start on a busy machine."""
    hub = HubProcess("[lxd]\nenabled = false\n", workdir=tempfile.mkdtemp(prefix=prefix))
    try:
        yield hub.start(timeout=120)
    finally:
        hub.stop()


def mcp_command() -> str:
    path = Path(sys.executable).parent / "claude-net-mcp"
    return str(path) if path.exists() else "claude-net-mcp"


def make_tokens(hub: HubProcess, names: list[str]) -> dict[str, str]:
    """Many tokens at once (one CLI call each would take minutes)."""
    code = (
        "import argparse, asyncio, json, sys\n"
        "from claude_net import auth\n"
        "from claude_net.cli import CliContext\n"
        "names = json.loads(sys.stdin.read())\n"
        "async def main():\n"
        "    async with CliContext(argparse.Namespace(config=None)).hub() as hub:\n"
        "        return {n: await auth.create_token(hub.db, n, replace=True) for n in names}\n"
        "print(json.dumps(asyncio.run(main())))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(names), env=hub.env, cwd=hub.dir,
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


class ArrivalTap:
    """The client's read stream, passed through; notes when each channel notification arrives."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.arrived: dict[str, float] = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def receive(self):
        item = await self.inner.receive()
        message = getattr(item, "message", None)
        if getattr(message, "method", None) == "notifications/claude/channel":
            self.arrived[str(message.params["meta"]["message_id"])] = time.perf_counter()
        return item

    def __aiter__(self):
        return self

    async def __anext__(self):
        import anyio

        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.inner.aclose()


@contextlib.asynccontextmanager
async def agent(url: str, token: str):
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp_types import Implementation

    params = StdioServerParameters(command=mcp_command(), args=[],
                                   env={"CLAUDE_NET_URL": url, "CLAUDE_NET_TOKEN": token})
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            tap = ArrivalTap(read)
            # introduced as Claude Code, the client claude-net-mcp pushes to by default
            async with ClientSession(tap, write, client_info=Implementation(name="claude-code", version="2.1.197")) \
                    as session:
                await session.initialize()
                yield tap


async def push_sample(http: httpx.AsyncClient, tap: ArrivalTap, to: str, n: int) -> tuple[float, float]:
    await asyncio.sleep(0.05)  # the server's poll is parked again after the previous ack
    t0 = time.perf_counter()
    r = await http.post("/api/send", json={"to": to, "message": f"push {n}"})
    t1 = time.perf_counter()
    key = str(r.json()["id"])
    deadline = t1 + 30
    while key not in tap.arrived:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"message {key} was not pushed within 30 s")
        await asyncio.sleep(0.0005)
    t2 = tap.arrived.pop(key)
    return max(0.0, t2 - t1) * 1000, (t2 - t0) * 1000


async def wake_sample(http: httpx.AsyncClient, waiter: httpx.AsyncClient, to: str, n: int) -> tuple[float, float]:
    done: dict[str, float] = {}

    async def poll():
        r = await waiter.get("/api/inbox", params={"wait": 25, "ack": "true", "limit": 10})
        done["t"] = time.perf_counter()
        return r.json()

    task = asyncio.create_task(poll())
    await asyncio.sleep(0.05)  # parked on the hub
    t0 = time.perf_counter()
    await http.post("/api/send", json={"to": to, "message": f"wake {n}"})
    t1 = time.perf_counter()
    body = await task
    if not body.get("messages"):
        raise RuntimeError("the long-poll woke without the message")
    return max(0.0, done["t"] - t1) * 1000, (done["t"] - t0) * 1000


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 50), 3), "p99": round(pct(values, 99), 3)}


async def latency(n: int) -> dict:
    with running_hub("cn-bench-push-") as hub:
        tokens = make_tokens(hub, ["sender", "pushee", "waker"])
        auth = lambda t: {"Authorization": f"Bearer {tokens[t]}"}  # noqa: E731
        async with httpx.AsyncClient(base_url=hub.url, headers=auth("sender"), timeout=30) as http, \
                httpx.AsyncClient(base_url=hub.url, headers=auth("waker"), timeout=60) as waiter, \
                agent(hub.url, tokens["pushee"]) as tap:
            for i in range(10):  # warm-up of both paths
                await push_sample(http, tap, "pushee", -i)
                await wake_sample(http, waiter, "waker", -i)
            push_ret, push_start, wake_ret, wake_start = [], [], [], []
            for i in range(n):
                a, b = await push_sample(http, tap, "pushee", i)
                push_ret.append(a)
                push_start.append(b)
                a, b = await wake_sample(http, waiter, "waker", i)
                wake_ret.append(a)
                wake_start.append(b)
    push, wake = summary(push_ret), summary(wake_ret)
    ratio = push["p50"] / wake["p50"] if wake["p50"] > 0 else float("inf")
    return {"n": n, "push_from_return_ms": push, "wake_from_return_ms": wake,
            "push_from_start_ms": summary(push_start), "wake_from_start_ms": summary(wake_start),
            "ratio_p50": round(ratio, 2), "target": TARGET, "pass": ratio <= TARGET}


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def scale(agents: int, samples: int = 100) -> dict:
    with running_hub("cn-bench-push-scale-") as hub:
        names = ["sender", "pushee"] + [f"agent{i:04d}" for i in range(agents - 1)]
        tokens = make_tokens(hub, names)
        idle_rss, idle_fds = rss_kib(hub.proc.pid), fd_count(hub.proc.pid)
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

        async def simulated(name: str) -> None:
            async with httpx.AsyncClient(base_url=hub.url, limits=limits, timeout=60,
                                         headers={"Authorization": f"Bearer {tokens[name]}"}) as client:
                while not stop.is_set():
                    with contextlib.suppress(httpx.HTTPError):
                        await client.get("/api/inbox", params=POLL)

        tasks = [asyncio.create_task(simulated(n)) for n in names[2:]]
        async with httpx.AsyncClient(base_url=hub.url, timeout=30,
                                     headers={"Authorization": f"Bearer {tokens['sender']}"}) as http, \
                agent(hub.url, tokens["pushee"]) as tap:
            deadline = time.monotonic() + 120
            while fd_count(hub.proc.pid) < idle_fds + agents - 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            await asyncio.sleep(3.0)
            rss, fds = rss_kib(hub.proc.pid), fd_count(hub.proc.pid)
            values = [(await push_sample(http, tap, "pushee", i))[0] for i in range(samples)]
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"agents": agents, "hub_rss_mib": round(rss / 1024, 1), "hub_idle_rss_mib": round(idle_rss / 1024, 1),
            "hub_fds": fds, "hub_idle_fds": idle_fds, "push_ms": summary(values)}


async def main_async(n: int, agents: int) -> dict:
    log(f"push latency: {n} samples of each path, interleaved")
    result = {"latency": await latency(n)}
    log(f"scale: 10 connected agents, then {agents}")
    small = await scale(10)
    big = await scale(agents)
    per_agent = (big["hub_rss_mib"] - small["hub_rss_mib"]) * 1024 / max(1, agents - 10)
    result["scale"] = {"small": small, "big": big, "rss_kib_per_agent": round(per_agent, 1),
                       "p99_ratio": round(big["push_ms"]["p99"] / small["push_ms"]["p99"], 2)
                       if small["push_ms"]["p99"] else None}
    return result


def run(n: int = 200, agents: int = 1000) -> dict:
    return asyncio.run(main_async(n, agents))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="latency samples per path (default 200)")
    parser.add_argument("--agents", type=int, default=1000, help="connected agents in the scale run (default 1000)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = run(args.n, args.agents)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0 if r["latency"]["pass"] else 1
    lat, sc = r["latency"], r["scale"]
    print(f"push (send returned -> notification at the client), n={lat['n']}: p50 {lat['push_from_return_ms']['p50']:.2f} ms,"
          f" p99 {lat['push_from_return_ms']['p99']:.2f} ms")
    print(f"long-poll wake (send returned -> GET /api/inbox?wait answered):  p50 {lat['wake_from_return_ms']['p50']:.2f} ms,"
          f" p99 {lat['wake_from_return_ms']['p99']:.2f} ms")
    print(f"from the start of the send: push p50 {lat['push_from_start_ms']['p50']:.2f} ms, "
          f"wake p50 {lat['wake_from_start_ms']['p50']:.2f} ms")
    print(f"ratio push/wake p50 {lat['ratio_p50']:.2f}x (target <= {TARGET:.1f}x): {'PASS' if lat['pass'] else 'FAIL'}")
    for key in ("small", "big"):
        s = sc[key]
        print(f"{s['agents']:>5} agents connected: hub RSS {s['hub_rss_mib']} MiB (idle {s['hub_idle_rss_mib']} MiB), "
              f"{s['hub_fds']} fds (idle {s['hub_idle_fds']}), push p50 {s['push_ms']['p50']:.2f} ms "
              f"p99 {s['push_ms']['p99']:.2f} ms")
    print(f"per extra agent: {sc['rss_kib_per_agent']} KiB of hub RSS; push p99 {sc['p99_ratio']}x of the 10-agent run")
    return 0 if lat["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
