"""``claude-net serve`` with an in-process event-loop lag probe (for the loop-stall benchmark).

    PYTHONPATH=bench python -m loopprobe serve      # same arguments as `claude-net ...`

Runs the real CLI unchanged, with one extra plugin registered in the hub's plugin manager:
a task that sleeps 5 ms in a loop and records how late it wakes up (the event loop's lag: how
long some other callback held the loop), and an authenticated route
``GET /api/bench/lag[?reset=1]`` returning ``{"n", "p50_ms", "p99_ms", "max_ms"}`` of the samples
since the last reset.
"""

from __future__ import annotations

import asyncio
import sys

from claude_net import Route, hookimpl

INTERVAL = 0.005


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class LoopLagProbe:
    __name__ = "bench_loop_lag_probe"

    def __init__(self) -> None:
        self.samples: list[float] = []

    @hookimpl
    def startup(self, hub):
        hub.spawn(self._run(), name="bench-loop-lag")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(INTERVAL)
            self.samples.append((loop.time() - started - INTERVAL) * 1000)
            if len(self.samples) > 400_000:
                del self.samples[:200_000]

    async def _report(self, ctx):
        samples = self.samples
        if ctx.query.get("reset"):
            self.samples = []
        return {"n": len(samples), "p50_ms": round(_pct(samples, 50), 3), "p99_ms": round(_pct(samples, 99), 3),
                "max_ms": round(max(samples, default=0.0), 3)}

    @hookimpl
    def register_routes(self, hub):
        return [Route("GET", "/api/bench/lag", self._report, summary="Event-loop lag samples (benchmark probe)",
                      tags=["bench"])]


def main() -> int:
    import claude_net.hub as hub_module

    probe = LoopLagProbe()
    make = hub_module.make_plugin_manager

    def with_probe(**kwargs):
        kwargs["plugins"] = (*tuple(kwargs.get("plugins") or ()), probe)
        return make(**kwargs)

    hub_module.make_plugin_manager = with_probe
    from claude_net.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
