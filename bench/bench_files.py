#!/usr/bin/env python3
"""File transfer through the hub vs ``lxc file push``/``pull``, with the hub's memory growth.

    python bench/bench_files.py [--mb 50] [--reps 5] [--json]

Launches one busybox container (uniquely named, deleted at the end) and a real hub
(``claude-net serve``, every installed plugin, ``[lxd] include`` limited to that container),
makes a file of random bytes on the host, then for ``--reps`` rounds, interleaved:

* **upload**: ``lxc file push FILE c/tmp/...`` (baseline) vs the hub. The hub figure is what a
  client sees end to end: ``POST /api/file/write`` with the content base64 in JSON (encoding
  included in the time) and, when the hub has them, the raw endpoint
  ``PUT /api/file/raw?target=&path=`` with an ``application/octet-stream`` body;
* **download**: ``lxc file pull c/tmp/... FILE`` vs ``POST /api/file/read`` (``encoding: base64``,
  decoding included) and ``GET /api/file/raw``. Every download is checked byte for byte.

Throughput ratio = baseline time / hub time (medians; the baseline is the lxc runs interleaved
with that path's runs, so both saw the same load; per-round ratios are printed too). Target
>= 0.8 for the raw endpoints, which stream end to end (the client's leg overlaps LXD's, the hub
holds a few MiB). The JSON rows are informational: their time includes base64 encoding/decoding
of the whole file in the client (and JSON in the hub), which ``lxc`` does not do; they exist for
MCP and agents moving small files. Each hub path (JSON upload, JSON download, raw upload, raw
download) gets a fresh hub, so memory figures are not blurred by an earlier transfer: the hub's
peak RSS during a transfer (the kernel's VmHWM, reset with ``/proc/PID/clear_refs`` before each
one) minus that hub's idle RSS, and the RSS left once the transfers are over.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LXD_IMAGE, HubProcess, hwm_kib, lxd_available, reset_hwm, rss_kib  # noqa: E402

TARGET = 0.8
REMOTE = "/tmp/claude-net-bench.bin"


class Client:
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.auth = {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            conn.request(method, path, body=body, headers={**self.auth, **(headers or {})})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:300]!r}")
            return data
        finally:
            conn.close()

    def has_raw(self) -> bool:
        doc = json.loads(self.request("GET", "/api/openapi.json"))
        return "/api/file/raw" in doc.get("paths", {})


def measure(pid: int, fn) -> dict:
    """Time ``fn()`` and the hub's memory around it."""
    before = rss_kib(pid)
    can_reset = reset_hwm(pid)
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    peak = hwm_kib(pid) if can_reset else None
    return {"s": seconds, "rss_before_mib": before / 1024,
            "peak_growth_mib": (peak - before) / 1024 if peak is not None else None,
            "rss_after_mib": rss_kib(pid) / 1024}


def run(*, mb: int = 50, reps: int = 5, say=print) -> dict:
    prefix = f"bench-{secrets.token_hex(3)}"
    name = f"{prefix}-files"
    workdir = Path(tempfile.mkdtemp(prefix="cn-bench-files-"))
    hub = None
    launched = False
    try:
        local = workdir / "payload.bin"
        size = mb * 1024 * 1024
        data = os.urandom(size)
        local.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        del data
        launched = True
        subprocess.run(["lxc", "launch", LXD_IMAGE, name], check=True, capture_output=True, timeout=120)
        pulled = workdir / "pulled.bin"

        def check(blob: bytes) -> None:
            if hashlib.sha256(blob).hexdigest() != digest:
                raise RuntimeError("downloaded content differs from the uploaded file")

        def lxc_push() -> None:
            subprocess.run(["lxc", "file", "push", str(local), f"{name}{REMOTE}"], check=True, capture_output=True,
                           timeout=300)

        def lxc_pull() -> None:
            pulled.unlink(missing_ok=True)
            subprocess.run(["lxc", "file", "pull", f"{name}{REMOTE}", str(pulled)], check=True, capture_output=True,
                           timeout=300)

        def paths(client: Client) -> dict:
            def json_write() -> None:
                content = base64.b64encode(local.read_bytes()).decode("ascii")
                body = json.dumps({"target": name, "path": REMOTE, "content": content, "encoding": "base64"}).encode()
                client.request("POST", "/api/file/write", body, {"Content-Type": "application/json"})

            def json_read() -> None:
                body = json.dumps({"target": name, "path": REMOTE, "encoding": "base64"}).encode()
                answer = json.loads(client.request("POST", "/api/file/read", body,
                                                   {"Content-Type": "application/json"}))
                pulled.write_bytes(base64.b64decode(answer["content"]))

            def raw_write() -> None:
                with open(local, "rb") as f:
                    client.request("PUT", "/api/file/raw?" + urlencode({"target": name, "path": REMOTE}), f.read(),
                                   {"Content-Type": "application/octet-stream"})

            def raw_read() -> None:
                pulled.write_bytes(client.request("GET", "/api/file/raw?" + urlencode({"target": name,
                                                                                       "path": REMOTE})))

            return {("json", "upload"): json_write, ("json", "download"): json_read,
                    ("raw", "upload"): raw_write, ("raw", "download"): raw_read}

        lxc_push()  # warm-up, and the file downloads read
        baseline: dict[str, list[float]] = {"upload": [], "download": []}
        results: dict[str, dict] = {}
        raw = None
        idle_rss: list[float] = []
        for kind in ("json", "raw"):
            for direction in ("upload", "download"):
                # a fresh hub per path: its memory figures are not blurred by an earlier transfer
                hubdir = workdir / f"hub-{kind}-{direction}"
                hubdir.mkdir()
                hub = HubProcess(f'[lxd]\ninclude = ["{prefix}-*"]\n', workdir=str(hubdir))
                token = hub.token("bench", admin=True)
                hub.start()
                client = Client(hub.port, token)
                if raw is None:
                    raw = client.has_raw()
                if kind == "raw" and not raw:
                    hub.stop()
                    hub = None
                    continue
                # warm-up: connections and probes, with a tiny file
                client.request("POST", "/api/file/write", json.dumps(
                    {"target": name, "path": "/tmp/warm", "content": "x"}).encode(), {"Content-Type": "application/json"})
                time.sleep(0.5)
                pid = hub.proc.pid
                idle = rss_kib(pid) / 1024
                idle_rss.append(idle)
                fn = paths(client)[(kind, direction)]
                runs = []
                paired: list[float] = []  # the lxc runs next to this path's runs
                for _ in range(reps):
                    t0 = time.perf_counter()
                    (lxc_push if direction == "upload" else lxc_pull)()
                    baseline[direction].append(time.perf_counter() - t0)
                    paired.append(baseline[direction][-1])
                    if direction == "download":
                        check(pulled.read_bytes())
                    runs.append(measure(pid, fn))
                    if direction == "upload":
                        lxc_pull()  # every upload is checked too (not timed)
                    check(pulled.read_bytes())
                growth = [r["peak_growth_mib"] + r["rss_before_mib"] - idle for r in runs
                          if r["peak_growth_mib"] is not None]
                results[f"{direction}:{kind}"] = {"runs": runs, "idle": idle, "growth": growth, "lxc": paired}
                hub.stop()
                hub = None

        summary: dict[str, dict] = {}
        for direction in ("upload", "download"):
            base = statistics.median(baseline[direction])
            summary[f"{direction}:lxc"] = {"s": round(base, 3), "mb_per_s": round(mb / base, 1), "ratio": 1.0,
                                           "peak_growth_mib": None, "rss_after_mib": None,
                                           "runs_s": [round(x, 3) for x in baseline[direction]]}
            for kind in ("json", "raw"):
                got = results.get(f"{direction}:{kind}")
                if got is None:
                    continue
                seconds = statistics.median(r["s"] for r in got["runs"])
                # against the lxc runs interleaved with this path's (the load of that moment)
                lxc_seconds = statistics.median(got["lxc"])
                summary[f"{direction}:{kind}"] = {
                    "s": round(seconds, 3), "mb_per_s": round(mb / seconds, 1),
                    "ratio": round(lxc_seconds / seconds, 3), "lxc_s": round(lxc_seconds, 3),
                    "round_ratios": [round(b / r["s"], 2) for b, r in zip(got["lxc"], got["runs"])],
                    "peak_growth_mib": round(max(got["growth"]), 1) if got["growth"] else None,
                    "idle_rss_mib": round(got["idle"], 1),
                    "rss_after_mib": round(got["runs"][-1]["rss_after_mib"], 1),
                    "runs_s": [round(r["s"], 3) for r in got["runs"]],
                }
        say(f"File transfer of {mb} MiB, {reps} rounds (median seconds; ratio = lxc time / hub time; "
            "a fresh hub per path; peak RSS over that hub's idle RSS; target >= "
            f"{TARGET}x for raw, JSON informational)")
        for key, s in summary.items():
            growth = f"  peak RSS +{s['peak_growth_mib']} MiB" if s["peak_growth_mib"] is not None else ""
            runs = "  runs " + " ".join(f"{x:.3f}" for x in s["runs_s"])
            if "lxc_s" in s:
                runs += f" (lxc next to them: median {s['lxc_s']:.3f} s; per round " + \
                    " ".join(f"{x:.2f}x" for x in s["round_ratios"]) + ")"
            say(f"  {key:<16} {s['s']:7.3f} s {s['mb_per_s']:7.1f} MiB/s  {s['ratio']:5.2f}x{growth}{runs}")
        return {"mib": mb, "reps": reps, "raw_endpoints": bool(raw), "target": TARGET, "figures": summary,
                "hub_idle_rss_mib": round(statistics.median(idle_rss), 1) if idle_rss else None}
    finally:
        if hub is not None:
            hub.stop()
        if launched:
            subprocess.run(["lxc", "delete", "--force", name], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=50, help="file size in MiB (default 50)")
    parser.add_argument("--reps", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ok, why = lxd_available()
    if not ok:
        print(f"LXD is not available: {why}", file=sys.stderr)
        return 2
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result = run(mb=args.mb, reps=args.reps, say=say)
    if args.json:
        print(json.dumps(result))
    raw = [v["ratio"] for k, v in result["figures"].items() if k.endswith(":raw")]
    return 0 if raw and min(raw) >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
