"""Activity feed latency with 1,000,000 rows in SQLite, through a real hub (Hypercorn).

Loads 1M rows spread over 30 days (a realistic mix: mostly messages and execs, some file calls,
container ops, permits, login failures; ~7% denials, ~3% errors) into ``activity_log``, starts
``claude-net serve`` on that database, and prints the p50 latency of

* ``GET /api/activity?hours=24&limit=100``                 (the feed)
* ``GET /api/activity?hours=24&limit=100&type=exec&from=X`` (a filtered query)
* ``GET /api/activity?hours=24&limit=100&result=denied``    (a rare-value filter)
* the second page of the feed (``before=<next>``)

over one keep-alive connection, next to the same SQL run directly on sqlite3 in this process
(the baseline: the cost of the query itself) and ``GET /api/health`` (the HTTP floor), with
ratios. Target: each activity p50 under 10 ms.

    .venv/bin/python bench/bench_activity.py [--rows 1000000] [--requests 300] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

TYPES = [("message", 50), ("exec", 25), ("file_read", 10), ("file_write", 7), ("container", 2), ("permit", 1),
         ("auth", 3), ("admin", 2)]
RESULTS = [("ok", 90), ("denied", 7), ("error", 3)]
NODES = [f"node{i:02d}" for i in range(20)]
COMMANDS = ["git status", "pytest -q", "ls -la /srv", "make build", "cat /etc/os-release", "df -h",
            "systemctl status nginx", "python3 manage.py migrate", "npm test", "journalctl -n 50"]
TARGET_MS = 10
PATHS = ["/etc/hosts", "/srv/app/config.toml", "/home/ubuntu/notes.md", "/var/log/syslog", "/tmp/out.json"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rows(n: int, now: datetime, seed: int = 7):
    rnd = random.Random(seed)
    types = rnd.choices([t for t, _ in TYPES], [w for _, w in TYPES], k=n)
    results = rnd.choices([r for r, _ in RESULTS], [w for _, w in RESULTS], k=n)
    span = 30 * 86400.0
    offsets = sorted((rnd.random() * span for _ in range(n)), reverse=True)  # ids grow with time
    for i in range(n):
        kind, result = types[i], results[i]
        moment = now - timedelta(seconds=offsets[i])
        source, target = rnd.choice(NODES), rnd.choice(NODES)
        duration = exit_code = data = None
        if kind == "exec":
            detail = rnd.choice(COMMANDS)
            if result != "denied":
                duration, exit_code = round(rnd.random() * 2000, 1), rnd.choice((0, 0, 0, 1, 2))
        elif kind in ("file_read", "file_write"):
            detail = rnd.choice(PATHS)
        elif kind == "message":
            detail = f"status update {i}: build finished"
        elif kind == "container":
            detail = f"snapshot {target} nightly"
        elif kind == "permit":
            detail, target = f"permit {source} -> {target}: exec, file_read, file_write", source
        elif kind == "auth":
            detail, source, target, result = "invalid or revoked token on POST /api/exec", None, None, "denied"
        else:
            detail, target, result = "GET /api/activity (admin only)", None, "denied"
        if result == "error":
            data = '{"error":"the command did not finish within 60s and was stopped","code":"timeout"}'
        stamp = iso(moment)
        yield (stamp, source, kind, target, detail, result, uuid.UUID(int=rnd.getrandbits(128)).hex, "http", 0,
               duration, exit_code, data, None if result == "pending" else stamp)


def load(db_path: Path, n: int, now: datetime) -> float:
    """Bulk insert ``n`` rows with the indexes dropped, then rebuild them (as the migration made them)."""
    started = time.perf_counter()
    con = sqlite3.connect(db_path)
    indexes = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'activity_log'"
                          " AND sql IS NOT NULL").fetchall()
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    with con:
        for name, _ in indexes:
            con.execute(f"DROP INDEX {name}")
        con.executemany(
            "INSERT INTO activity_log (timestamp, from_machine, type, target, detail, result, event_id, via,"
            " unauthenticated, duration_ms, exit_code, data, completed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows(n, now))
        for _, sql in indexes:
            con.execute(sql)
    con.close()
    return time.perf_counter() - started


def p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def time_http(conn: http.client.HTTPConnection, path: str, token: str | None, n: int) -> tuple[float, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    samples, body = [], {}
    for i in range(n + 10):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}: {raw[:300]!r}")
        if i >= 10:  # warm-up
            samples.append(elapsed)
        body = json.loads(raw)
    return p50(samples), body


def time_sql(db_path: Path, sql: str, params: dict, n: int) -> float:
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    samples = []
    for i in range(n + 10):
        t0 = time.perf_counter()
        [dict(r) for r in con.execute(sql, params).fetchall()]
        if i >= 10:
            samples.append(time.perf_counter() - t0)
    con.close()
    return p50(samples)


def run(*, rows: int = 1_000_000, requests: int = 300, keep: str | None = None, say=print) -> dict:
    """Load ``rows`` rows, start a hub on them, time the queries; returns the figures as a dict."""
    from claude_net_activity.store import COLUMNS

    workdir = Path(keep or tempfile.mkdtemp(prefix="cn-bench-activity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "activity.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    port = free_port()
    config = workdir / "claude-net.toml"
    config.write_text(f'database_url = "sqlite+aiosqlite:///{db_path}"\nport = {port}\nlog_level = "warning"\n'
                      '[plugins]\nallow = ["activity", "permissions"]\n')
    env = {**os.environ, "CLAUDE_NET_CONFIG": str(config)}
    cli = [sys.executable, "-m", "claude_net.cli"]
    run_args = dict(env=env, cwd=workdir, capture_output=True, text=True, check=True)
    proc = log = None
    try:
        subprocess.run(cli + ["migrate"], **run_args)
        token = subprocess.run(cli + ["token", "create", "benchadmin", "--admin"], **run_args).stdout.strip()

        now = datetime.now(timezone.utc)
        load_s = load(db_path, rows, now)
        count = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM activity_log").fetchone()[0]
        size_mb = db_path.stat().st_size / 1e6
        say(f"loaded {count:,} rows over 30 days in {load_s:.1f}s ({size_mb:.0f} MB)")

        log = open(workdir / "hub.log", "wb")
        proc = subprocess.Popen(cli + ["serve"], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.request("GET", "/api/health")
                conn.getresponse().read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((workdir / "hub.log").read_text()[-2000:])
                conn.close()
                time.sleep(0.1)

        since = iso(datetime.now(timezone.utc) - timedelta(hours=24))
        base_sql = f"SELECT {COLUMNS} FROM activity_log WHERE timestamp >= :since"
        order = " ORDER BY timestamp DESC, id DESC LIMIT 101"
        health, _ = time_http(conn, "/api/health", None, requests)
        figures = []
        feed_ms, feed = time_http(conn, "/api/activity?hours=24&limit=100", token, requests)
        figures.append(("feed: hours=24&limit=100", feed_ms, len(feed["events"]),
                        time_sql(db_path, base_sql + order, {"since": since}, requests)))
        ms, body = time_http(conn, "/api/activity?hours=24&limit=100&type=exec&from=node03", token, requests)
        figures.append(("filtered: type=exec&from=node03", ms, len(body["events"]), time_sql(
            db_path, base_sql + " AND type = :t AND from_machine = :f" + order,
            {"since": since, "t": "exec", "f": "node03"}, requests)))
        ms, body = time_http(conn, "/api/activity?hours=24&limit=100&result=denied", token, requests)
        figures.append(("filtered: result=denied", ms, len(body["events"]), time_sql(
            db_path, base_sql + " AND result = :r" + order, {"since": since, "r": "denied"}, requests)))
        cursor = feed["next"]
        ms, body = time_http(conn, f"/api/activity?hours=24&limit=100&before={cursor}", token, requests)
        stamp = sqlite3.connect(db_path).execute("SELECT timestamp FROM activity_log WHERE id = ?",
                                                 (cursor,)).fetchone()[0]
        figures.append(("page 2: before=<next>", ms, len(body["events"]), time_sql(
            db_path, base_sql + " AND (timestamp, id) < (:ts, :id)" + order,
            {"since": since, "ts": stamp, "id": cursor}, requests)))
        conn.close()
    finally:
        if proc is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if log is not None:
            log.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

    ok = all(ms < TARGET_MS for _, ms, _, _ in figures)
    return {"rows": count, "load_s": round(load_s, 1), "db_mb": round(size_mb), "requests": requests,
            "health_p50_ms": round(health, 3), "target_ms": TARGET_MS, "pass": ok,
            "figures": [{"name": n, "p50_ms": round(ms, 3), "events": e, "sql_p50_ms": round(sql, 3),
                         "ratio_vs_sql": round(ms / sql, 1)} for n, ms, e, sql in figures]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300, help="timed requests per figure")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result = run(rows=args.rows, requests=args.requests, keep=args.keep, say=say)
    if args.json:
        print(json.dumps(result))
        return 0 if result["pass"] else 1
    print(f"{'figure (p50 over ' + str(args.requests) + ' requests)':<40}{'HTTP ms':>9}{'rows':>6}"
          f"{'SQL ms':>9}{'HTTP/SQL':>10}{'HTTP-health':>13}")
    health = result["health_p50_ms"]
    print(f"{'GET /api/health (HTTP floor)':<40}{health:>9.2f}")
    for f in result["figures"]:
        print(f"{f['name']:<40}{f['p50_ms']:>9.2f}{f['events']:>6}{f['sql_p50_ms']:>9.2f}"
              f"{f['p50_ms'] / f['sql_p50_ms']:>9.1f}x{f['p50_ms'] - health:>12.2f}")
    print(f"target: every activity p50 < {TARGET_MS} ms on SQLite  {'PASS' if result['pass'] else 'FAIL'}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
