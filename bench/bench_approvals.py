#!/usr/bin/env python3
"""Approvals: from an admin's decision to the waiting exec starting, against a plain exec.

    python bench/bench_approvals.py [--n 50] [--json]

One real hub (``claude-net serve``, SQLite; the permissions, activity, approvals and LXD plugins)
and two busybox containers: ``plain`` (alpha is granted exec outright) and ``ask`` (alpha's exec
needs an admin's approval). In the same run:

* **plain exec**: ``--n`` execs of ``true`` by alpha on ``plain`` — latency p50/p99 at the client;
* **decision to action**: ``--n`` times, alpha sends ``true`` to ``ask`` with ``approval_wait``
  (the request waits in the hub), the admin approves it over HTTP, and the figure is the time from
  the hub recording the approval (its ``approval`` row, state approved) to the hub starting the
  exec (the exec's own row, which carries the approval id) — both timestamps taken in the hub, so
  the client's scheduling is left out; the client-side time from sending the decision to the exec's
  answer is shown next to it.

Target (issue 15): decision-to-action p50 below the plain exec p50 (waking the waiting request
costs less than an exec itself), printed with the ratio.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LXD_IMAGE, HubProcess, log, pct  # noqa: E402

TARGET_RATIO = 1.0


class Client:
    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object | None = None) -> tuple[int, dict]:
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run(n: int = 50, say=log) -> dict:
    prefix = f"cnb-{secrets.token_hex(2)}"
    names = {"plain": f"{prefix}-plain", "ask": f"{prefix}-ask"}
    workdir = Path(tempfile.mkdtemp(prefix="cn-bench-approvals-"))
    hub = None
    try:
        for name in names.values():
            subprocess.run(["lxc", "launch", LXD_IMAGE, name], check=True, capture_output=True, timeout=120)
        config = ('[plugins]\nallow = ["lxd", "permissions", "activity", "approvals"]\n'
                  f'[lxd]\ninclude = ["{prefix}-*"]\nshell = "/bin/sh"\n[limits]\nrate_per_minute = 0\n'
                  '[approvals]\nmax_pending_per_requester = 100\n')
        hub = HubProcess(config, workdir=str(workdir))
        hub.start()
        admin_token, alpha_token = hub.token("chasclaude", admin=True), hub.token("alpha")
        admin, alpha = Client(hub.port, admin_token), Client(hub.port, alpha_token)
        assert admin.call("POST", "/api/permit", {"source": "alpha", "target": names["plain"]})[0] == 200
        assert admin.call("POST", "/api/permit", {"source": "alpha", "target": names["ask"], "ask": ["exec"]})[0] == 200

        say(f"approvals: {n} plain execs")
        plain = []
        for i in range(n + 5):
            started = time.perf_counter()
            status, body = alpha.call("POST", "/api/exec", {"target": names["plain"], "command": "true"})
            if status != 200:
                raise RuntimeError(f"plain exec: {status} {body}")
            if i >= 5:  # warm-up left out
                plain.append((time.perf_counter() - started) * 1000)

        say(f"approvals: {n} approved execs")
        client_side = []
        ids = []
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            for i in range(n):
                waiting = pool.submit(Client(hub.port, alpha_token).call, "POST", "/api/exec",
                                      {"target": names["ask"], "command": f"true {i}", "approval_wait": 60})
                deadline = time.monotonic() + 30
                pending = []
                while not pending and time.monotonic() < deadline:
                    pending = admin.call("GET", "/api/approvals?state=pending")[1]["approvals"]
                    if not pending:
                        time.sleep(0.005)
                if not pending:
                    raise RuntimeError("no pending approval appeared")
                time.sleep(0.05)  # the request is waiting in the hub now
                sent = time.perf_counter()
                status, body = admin.call("POST", f"/api/approvals/{pending[0]['id']}", {"decision": "approve"})
                if status != 200:
                    raise RuntimeError(f"decision: {status} {body}")
                status, body = waiting.result(60)
                if status != 200:
                    raise RuntimeError(f"approved exec: {status} {body}")
                client_side.append((time.perf_counter() - sent) * 1000)
                ids.append(pending[0]["id"])

        rows = admin.call("GET", "/api/activity?hours=1&limit=1000")[1]["events"]
        approved = {r["data"].get("approval_id"): _stamp(r["time"]) for r in rows
                    if r["type"] == "approval" and r["data"].get("state") == "approved"}
        started = {r["data"].get("approval_id"): _stamp(r["time"]) for r in rows
                   if r["type"] == "exec" and r["data"].get("approval_id")}
        to_action = [(started[i] - approved[i]) * 1000 for i in ids if i in approved and i in started]
        if len(to_action) != n:
            raise RuntimeError(f"found {len(to_action)} of {n} approval/exec row pairs in the feed")
        result = {
            "n": n,
            "plain_p50_ms": round(pct(plain, 50), 2), "plain_p99_ms": round(pct(plain, 99), 2),
            "decision_to_action_p50_ms": round(pct(to_action, 50), 2),
            "decision_to_action_p99_ms": round(pct(to_action, 99), 2),
            "decision_to_answer_p50_ms": round(pct(client_side, 50), 2),
            "decision_to_answer_p99_ms": round(pct(client_side, 99), 2),
            "target_ratio": TARGET_RATIO,
        }
        result["ratio"] = round(result["decision_to_action_p50_ms"] / result["plain_p50_ms"], 2)
        result["pass"] = result["ratio"] <= TARGET_RATIO
        return result
    finally:
        if hub is not None:
            hub.stop()
        for name in names.values():
            subprocess.run(["lxc", "delete", "--force", name], capture_output=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = run(n=args.n)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"plain exec             p50 {r['plain_p50_ms']:7.2f} ms  p99 {r['plain_p99_ms']:7.2f} ms")
        print(f"decision -> action     p50 {r['decision_to_action_p50_ms']:7.2f} ms  "
              f"p99 {r['decision_to_action_p99_ms']:7.2f} ms  ({r['ratio']}x plain p50, target <= {TARGET_RATIO}x)")
        print(f"decision -> answer     p50 {r['decision_to_answer_p50_ms']:7.2f} ms  "
              f"p99 {r['decision_to_answer_p99_ms']:7.2f} ms  (client side, includes the exec)")
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
