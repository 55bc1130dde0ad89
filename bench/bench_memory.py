#!/usr/bin/env python3
"""Idle memory: RSS of a hub with every installed plugin loaded vs a hub with only the core.

    python bench/bench_memory.py [--json]

Starts ``claude-net serve`` twice on fresh SQLite databases: once with every plugin of the
``claude_net`` entry-point group (lxd, ssh, permissions, activity, mcp, telegram, ...; unconfigured
plugins still import their libraries and register their routes) and once with every entry-point
plugin denied (the core and its built-ins: messaging, capabilities, meta). Each answers a few
requests (health, whoami, machines, openapi) so lazy imports happen, then idles 3 s before its
RSS is read. Target: the all-plugins hub idles at <= 150 MiB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HubProcess  # noqa: E402

TARGET_MIB = 150


def plugin_names() -> list[str]:
    return sorted({ep.name for ep in metadata.entry_points(group="claude_net")})


def idle_rss(config: str) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="cn-bench-mem-"))
    hub = HubProcess(config, workdir=str(workdir))
    try:
        token = hub.token("bench", admin=True)
        hub.start()
        for path in ("/api/health", "/api/whoami", "/api/machines", "/api/openapi.json"):
            req = urllib.request.Request(hub.url + path, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=30) as response:
                response.read()
        time.sleep(3)
        return {"rss_mib": round(hub.rss_kib() / 1024, 1)}
    finally:
        hub.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run(*, say=print) -> dict:
    names = plugin_names()
    everything = idle_rss("")
    core = idle_rss("[plugins]\ndeny = [" + ", ".join(json.dumps(n) for n in names) + "]\n")
    ratio = everything["rss_mib"] / core["rss_mib"]
    result = {"plugins": names, "all_plugins_rss_mib": everything["rss_mib"], "core_rss_mib": core["rss_mib"],
              "ratio": round(ratio, 2), "plugins_cost_mib": round(everything["rss_mib"] - core["rss_mib"], 1),
              "target_mib": TARGET_MIB, "pass": everything["rss_mib"] <= TARGET_MIB}
    say(f"Idle RSS: every plugin ({', '.join(names)}) {everything['rss_mib']} MiB; core only {core['rss_mib']} MiB "
        f"({ratio:.2f}x); target <= {TARGET_MIB} MiB  {'PASS' if result['pass'] else 'FAIL'}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result = run(say=say)
    if args.json:
        print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
