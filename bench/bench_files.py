#!/usr/bin/env python3
"""File transfer through the hub vs ``lxc file push``/``pull``, with the hub's memory growth.

    python bench/bench_files.py [--mb 50] [--reps 3] [--json]

Launches one busybox container (uniquely named, deleted at the end) and a real hub
(``claude-net serve``, every installed plugin, ``[lxd] include`` limited to that container),
makes a file of random bytes on the host, then for ``--reps`` rounds, interleaved:

* **upload**: ``lxc file push FILE c/tmp/...`` (baseline) vs the hub. The hub figure is what a
  client sees end to end: ``POST /api/file/write`` with the content base64 in JSON (encoding
  included in the time) and, when the hub has them, the raw endpoint
  ``PUT /api/file/raw?target=&path=`` with an ``application/octet-stream`` body;
* **download**: ``lxc file pull c/tmp/... FILE`` vs ``POST /api/file/read`` (``encoding: base64``,
  decoding included) and ``GET /api/file/raw``. Every download is checked byte for byte.

Throughput ratio = baseline time / hub time (median of the rounds); target >= 0.8. Memory: the
hub's peak RSS during each transfer minus its RSS just before it (the kernel's VmHWM, reset with
``/proc/PID/clear_refs`` before each transfer), and the RSS left once the transfer is over.
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


def run(*, mb: int = 50, reps: int = 3, say=print) -> dict:
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
        launched = True
        subprocess.run(["lxc", "launch", LXD_IMAGE, name], check=True, capture_output=True, timeout=120)
        (workdir / "hub").mkdir()
        hub = HubProcess(f'[lxd]\ninclude = ["{prefix}-*"]\n', workdir=str(workdir / "hub"))
        token = hub.token("bench", admin=True)
        hub.start()
        client = Client(hub.port, token)
        raw = client.has_raw()
        pid = hub.proc.pid
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

        def json_write() -> None:
            content = base64.b64encode(local.read_bytes()).decode("ascii")
            body = json.dumps({"target": name, "path": REMOTE, "content": content, "encoding": "base64"}).encode()
            client.request("POST", "/api/file/write", body, {"Content-Type": "application/json"})

        def json_read() -> None:
            body = json.dumps({"target": name, "path": REMOTE, "encoding": "base64"}).encode()
            answer = json.loads(client.request("POST", "/api/file/read", body, {"Content-Type": "application/json"}))
            pulled.write_bytes(base64.b64decode(answer["content"]))

        def raw_write() -> None:
            with open(local, "rb") as f:
                client.request("PUT", "/api/file/raw?" + urlencode({"target": name, "path": REMOTE}), f.read(),
                               {"Content-Type": "application/octet-stream"})

        def raw_read() -> None:
            pulled.write_bytes(client.request("GET", "/api/file/raw?" + urlencode({"target": name, "path": REMOTE})))

        uploads = {"lxc": lxc_push, "json": json_write, **({"raw": raw_write} if raw else {})}
        downloads = {"lxc": lxc_pull, "json": json_read, **({"raw": raw_read} if raw else {})}
        # warm-up: one small round trip each way (connections, probes)
        client.request("POST", "/api/file/write", json.dumps({"target": name, "path": "/tmp/warm", "content": "x"})
                       .encode(), {"Content-Type": "application/json"})
        lxc_push()
        results: dict[str, dict[str, list[dict]]] = {"upload": {k: [] for k in uploads},
                                                     "download": {k: [] for k in downloads}}
        for rep in range(reps):
            for kind in list(uploads)[rep % len(uploads):] + list(uploads)[:rep % len(uploads)]:
                results["upload"][kind].append(measure(pid, uploads[kind]))
                lxc_pull()  # every upload is checked too (not timed)
                check(pulled.read_bytes())
            for kind in list(downloads)[rep % len(downloads):] + list(downloads)[:rep % len(downloads)]:
                results["download"][kind].append(measure(pid, downloads[kind]))
                check(pulled.read_bytes())

        summary: dict[str, dict] = {}
        for direction, kinds in results.items():
            base = statistics.median(r["s"] for r in kinds["lxc"])
            for kind, runs in kinds.items():
                seconds = statistics.median(r["s"] for r in runs)
                growth = [r["peak_growth_mib"] for r in runs if r["peak_growth_mib"] is not None]
                summary[f"{direction}:{kind}"] = {
                    "s": round(seconds, 3), "mb_per_s": round(mb / seconds, 1),
                    "ratio": round(base / seconds, 3) if kind != "lxc" else 1.0,
                    "peak_growth_mib": round(max(growth), 1) if growth and kind != "lxc" else None,
                    "rss_after_mib": round(runs[-1]["rss_after_mib"], 1),
                    "runs_s": [round(r["s"], 3) for r in runs],
                }
        say(f"File transfer of {mb} MiB, {reps} rounds (median seconds; ratio = lxc time / hub time)")
        for key, s in summary.items():
            growth = f"  peak RSS +{s['peak_growth_mib']} MiB" if s["peak_growth_mib"] is not None else ""
            say(f"  {key:<16} {s['s']:7.3f} s {s['mb_per_s']:7.1f} MiB/s  {s['ratio']:5.2f}x{growth}")
        return {"mib": mb, "reps": reps, "raw_endpoints": raw, "target": TARGET, "figures": summary,
                "hub_idle_rss_mib": round(results["upload"]["json"][0]["rss_before_mib"], 1)}
    finally:
        if hub is not None:
            hub.stop()
        if launched:
            subprocess.run(["lxc", "delete", "--force", name], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=50, help="file size in MiB (default 50)")
    parser.add_argument("--reps", type=int, default=3, help="rounds (default 3)")
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
    best = max(v["ratio"] for k, v in result["figures"].items() if not k.endswith(":lxc"))
    return 0 if best >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
