"""Messaging throughput: send+inbox requests/s against a trivial endpoint on the same server.

Both are measured in the same run against one real hub (Hypercorn, 1 worker, SQLite by default)
with wrk, 50 connections. Target: send+inbox >= 0.5 x the trivial endpoint.

    python bench/bench_messaging.py [--seconds 10] [--connections 50] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hubproc import HubProcess  # noqa: E402

MIX_LUA = """
local n = 0
request = function()
  n = n + 1
  if n %% 2 == 1 then
    return wrk.format("POST", "/api/send", {["Authorization"] = "Bearer %(sender)s",
      ["Content-Type"] = "application/json"}, '{"to": "reader", "message": "benchmark message body"}')
  else
    return wrk.format("GET", "/api/inbox?limit=10&ack=true", {["Authorization"] = "Bearer %(reader)s"})
  end
end
response = function(status, headers, body)
  if status ~= 200 then errors_seen = (errors_seen or 0) + 1 end
end
"""


def wrk(url: str, seconds: int, connections: int, script: str | None = None) -> dict:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", script]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}
    return {"rps": rps, "errors": int(non2xx.group(1)) if non2xx else 0,
            "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is required: apt-get install wrk", file=sys.stderr)
        return 2
    with HubProcess(database_url=args.database_url) as hub:
        sender, reader = hub.token("sender"), hub.token("reader")
        script = Path(tempfile.mkdtemp()) / "mix.lua"
        script.write_text(MIX_LUA % {"sender": sender, "reader": reader})
        wrk(hub.url + "/api/health", 2, args.connections)  # warm-up
        trivial = wrk(hub.url + "/api/health", args.seconds, args.connections)
        mixed = wrk(hub.url, args.seconds, args.connections, str(script))
        trivial2 = wrk(hub.url + "/api/health", args.seconds, args.connections)
    baseline = (trivial["rps"] + trivial2["rps"]) / 2
    ratio = mixed["rps"] / baseline
    result = {"trivial_rps": round(baseline), "send_inbox_rps": round(mixed["rps"]), "ratio": round(ratio, 2),
              "target": 0.5, "errors": mixed["errors"], "db": args.database_url or "sqlite"}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'figure':<34}{'req/s':>10}")
        print(f"{'trivial GET /api/health':<34}{baseline:>10.0f}")
        print(f"{'send+inbox (1:1, ack)':<34}{mixed['rps']:>10.0f}   errors={mixed['errors']}")
        print(f"ratio {ratio:.2f} x (target >= 0.50)  {'PASS' if ratio >= 0.5 and not mixed['errors'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
