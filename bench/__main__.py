"""``python -m bench``: run every benchmark of claude-net and print one table.

    .venv/bin/python -m bench [--quick] [--only NAME ...] [--json] [--save FILE] [--list]
    .venv/bin/python -m bench --render FILE [--markdown]     # the table of a saved run

Run from the repository root as root (LXD, sshd, PostgreSQL). Each row shows the figure, the
baseline measured in the same run, the ratio and the target (PASS/FAIL). A component that is not
available (no LXD, no sshd, no PostgreSQL, no wrk) gives a "skipped: reason" row; a benchmark that
breaks gives an "error" row; the others still run. Progress goes to stderr, the table (or, with
``--json``, one JSON document) to stdout. Exit status 1 when any row is FAIL or error.

``--only`` takes benchmark names or prefixes (``--only messaging`` runs the three messaging
setups); ``--quick`` uses small sizes for a smoke run (its figures are not the reference ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Row, log  # noqa: E402


@dataclass
class Benchmark:
    name: str
    what: str
    needs: tuple[str, ...]
    run: Callable[[bool], list[Row]]


CHECKS = {"wrk": common.wrk_available, "lxd": common.lxd_available, "postgresql": common.pg_available,
          "sshd": common.sshd_available}


def _ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


# -- messaging ----------------------------------------------------------------------------------------


def messaging(db: str, replicas: int) -> Callable[[bool], list[Row]]:
    def run(quick: bool) -> list[Row]:
        import bench_messaging

        r = bench_messaging.run(seconds=2 if quick else 3, postgresql=db == "postgresql", replicas=replicas,
                                rounds=2 if quick else 10)
        label = f"{'SQLite' if db == 'sqlite' else 'PostgreSQL'}, {replicas} replica{'s' if replicas > 1 else ''}"
        note = "ratio per pair " + ", ".join(f"{x:.2f}" for x in r["ratio_runs"])
        if r["errors"]:
            note += f"; errors {r['errors']}"
        if replicas > 1:
            note += "; per replica " + "+".join(map(str, r["per_replica_rps"]))
        return [Row("", f"messaging send+inbox ({label})", r["send_inbox_rps"], r["trivial_rps"], "req/s",
                    "GET /api/health req/s", r["ratio"], f">= {r['target']:.2f}x", _ok(r["pass"]), note, r)]

    return run


# -- exec ---------------------------------------------------------------------------------------------


def _exec_rows(backend: str, r: dict, floor_label: str) -> list[Row]:
    lat, tp = r["latency_ms"], r["throughput"]
    errors = r["errors"]["hub"]
    return [
        Row("", f"{backend} exec latency p50 (`true`)", lat["hub"]["p50"], lat["floor"]["p50"], "ms",
            f"{floor_label} p50", r["latency_ratio"], f"<= {r['latency_target']:.2f}x",
            _ok(r["latency_pass"]), f"p99 hub {lat['hub']['p99']} / floor {lat['floor']['p99']} ms", r),
        Row("", f"{backend} exec throughput ({r['clients']} clients)", tp["hub"], tp["floor"], "execs/s",
            f"{floor_label}", r["throughput_ratio"], f">= {r['throughput_target']:.2f}x",
            _ok(r["throughput_pass"]), f"hub errors {errors}" if errors else ""),
    ]


def lxd_exec(quick: bool) -> list[Row]:
    import bench_lxd_exec

    r = bench_lxd_exec.run(n=30 if quick else 200, rounds=1 if quick else 3, say=log)
    rows = _exec_rows("LXD", r, "LXD REST")
    if r.get("cpu_ms_per_exec"):
        cpu = "; ".join(f"{kind}: " + ", ".join(f"{part} {ms}" for part, ms in parts.items())
                        for kind, parts in r["cpu_ms_per_exec"].items())
        rows[1].note = (rows[1].note + "; " if rows[1].note else "") + f"CPU ms per exec ({cpu})"
    return rows


def ssh_exec(quick: bool) -> list[Row]:
    import bench_ssh_exec

    r = bench_ssh_exec.run(n=30 if quick else 200, rounds=1 if quick else 3, say=log)
    rows = _exec_rows("SSH", r, "asyncssh")
    if "latency_gap_ms" in r:  # the SSH backend's own targets (issue 5)
        lat = r["latency_ms"]
        rows.append(Row("", "SSH exec latency p50, hub minus floor", r["latency_gap_ms"], lat["floor"]["p50"], "ms",
                        "asyncssh p50", None, f"<= {r['latency_gap_target_ms']:g} ms",
                        _ok(r["latency_gap_pass"]), f"p90 gap {r['latency_gap_p90_ms']} ms"))
    if "burst" in r:
        b = r["burst"]
        rows.append(Row("", f"SSH burst: {b['size']} simultaneous execs x {b['rounds']}", b["errors"], None,
                        "errors", "", None, "0 errors", _ok(r["burst_pass"]),
                        "wall " + ", ".join(f"{w:g}" for w in b["wall_ms"]) + " ms"))
    return rows


# -- activity -----------------------------------------------------------------------------------------


def activity(quick: bool) -> list[Row]:
    import bench_activity

    rows = 100_000 if quick else 1_000_000
    r = bench_activity.run(rows=rows, requests=100 if quick else 300, say=log)
    out = []
    for f in r["figures"]:
        out.append(Row("", f"activity {f['name']} p50 ({r['rows']:,} rows)", f["p50_ms"], f["sql_p50_ms"], "ms",
                       "same SQL on sqlite3", f["ratio_vs_sql"], f"< {r['target_ms']} ms",
                       _ok(f["p50_ms"] < r["target_ms"]), f"health p50 {r['health_p50_ms']} ms", f))
    return out


# -- files --------------------------------------------------------------------------------------------


def files(quick: bool) -> list[Row]:
    import bench_files

    r = bench_files.run(mb=10 if quick else 50, reps=1 if quick else 5, say=log)
    out = []
    labels = {"json": "JSON base64", "raw": "raw octet-stream"}
    for direction, verb, base in (("upload", "write", "lxc file push"), ("download", "read", "lxc file pull")):
        baseline = r["figures"][f"{direction}:lxc"]
        for kind in ("json", "raw"):
            f = r["figures"].get(f"{direction}:{kind}")
            if f is None:
                continue
            path = {"json": f"POST /api/file/{verb}", "raw": f"{'PUT' if verb == 'write' else 'GET'} /api/file/raw"}[kind]
            # the JSON rows are informational: their time includes base64 of 50 MiB in the client,
            # which lxc does not do; the raw endpoints are the way to move large files and carry the target
            target, status = (f">= {r['target']:.2f}x", _ok(f["ratio"] >= r["target"])) if kind == "raw" \
                else ("", "info")
            # the ratio is against the lxc runs interleaved with this path's runs
            lxc_rate = round(r["mib"] / f["lxc_s"], 1) if f.get("lxc_s") else baseline["mb_per_s"]
            out.append(Row("", f"file {direction} {r['mib']} MiB, {labels[kind]} ({path})", f["mb_per_s"],
                           lxc_rate, "MiB/s", base, f["ratio"], target, status,
                           f"hub peak RSS +{f['peak_growth_mib']} MiB, {f['rss_after_mib']} MiB after", f))
    return out


# -- event loop ---------------------------------------------------------------------------------------


def loop_stall(quick: bool) -> list[Row]:
    import bench_loop_stall

    r = bench_loop_stall.run(rounds=1 if quick else 3, say=log)
    idle, loaded = r["loop_lag_idle"], r["loop_lag_loaded"]
    hi, hl = r["health_idle"], r["health_loaded"]
    note = f"{r['exec_failures']} execs failed" if r["exec_failures"] else ""

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 1) if b else None

    return [
        Row("", f"loop lag p99 during {r['execs']} concurrent execs", loaded["p99_ms"], idle["p99_ms"], "ms",
            "idle hub", ratio(loaded["p99_ms"], idle["p99_ms"]), f"<= {r['p99_target_ms']:g} ms",
            _ok(loaded["p99_ms"] <= r["p99_target_ms"] and not r["exec_failures"]), note, r),
        Row("", f"loop lag max during {r['execs']} concurrent execs", loaded["max_ms"], idle["max_ms"], "ms",
            "idle hub", ratio(loaded["max_ms"], idle["max_ms"]), f"<= {r['max_target_ms']:g} ms",
            _ok(loaded["max_ms"] <= r["max_target_ms"]), note),
        Row("", f"GET /api/health p99 during {r['execs']} concurrent execs", hl["p99_ms"], hi["p99_ms"], "ms",
            "idle hub", ratio(hl["p99_ms"], hi["p99_ms"]), "", "info",
            f"max {hl['max_ms']} ms (idle {hi['max_ms']} ms)"),
    ]


# -- jobs and fan-out ---------------------------------------------------------------------------------


def jobs(quick: bool) -> list[Row]:
    import bench_jobs

    r = bench_jobs.run(n=10 if quick else 30, rounds=2 if quick else 5, lines=8 if quick else 20, say=log)
    single, fan, floor, live = r["single_ms"], r["fanout_ms"], r["floor_ms"], r["live_delay_ms"]
    cpu = r["fanout_cpu_ms"]
    return [
        Row("", f"fan-out of `true` to {r['targets']} containers, wall p50", fan["p50"], single["p50"], "ms",
            "one exec p50", r["fanout_ratio"], f"<= {r['fanout_target']:g}x", _ok(r["fanout_ratio"] <= r["fanout_target"]),
            "", r),
        Row("", f"fan-out to {r['targets']} containers vs the same execs sent at once to LXD REST", fan["p50"],
            floor["p50"], "ms", "LXD REST, 20 threads", r["fanout_vs_floor"], "", "info"),
        Row("", f"fan-out to {r['targets']} containers vs the CPU it needs (LXD + hub) spread over {cpu['cpus']} CPUs",
            fan["p50"], cpu["floor"], "ms", f"LXD {cpu['lxd']} ms + hub {cpu['hub']} ms CPU / {cpu['cpus']}",
            round(fan["p50"] / cpu["floor"], 2) if cpu["floor"] else None, "", "info",
            f"LXD's CPU alone allows no less than {cpu['lxd_floor']} ms "
            f"({cpu['lxd_floor'] / single['p50']:.1f}x one exec) on {cpu['cpus']} CPUs"),
        Row("", "live job output: line written in the container -> following client, p50", live["p50"], None, "ms",
            "", None, "", "info", f"p99 {live['p99']} ms over {live['lines']} lines"),
    ]


# -- MCP ----------------------------------------------------------------------------------------------


def mcp_cost(quick: bool) -> list[Row]:
    import bench_mcp_cost

    r = bench_mcp_cost.run(n=100 if quick else 400, block=25 if quick else 50, say=log)
    api, rows = r["paths"]["api"], []
    for path, label in (("mcp", "/mcp"), ("stdio", "stdio")):
        p = r["paths"][path]
        side = f"; the stdio server's own CPU {p['server_cpu_ms']} ms/call" if "server_cpu_ms" in p else ""
        rows.append(Row("", f"MCP claude_net_send over {label}: hub CPU per call", p["hub_cpu_ms"], api["hub_cpu_ms"],
                        "ms", "POST /api/send", p["cpu_ratio"], f"<= {r['target']:.2f}x",
                        _ok(p["cpu_ratio"] is not None and p["cpu_ratio"] <= r["target"]),
                        f"{r['n']} sequential calls per path{side}", r))
        rows.append(Row("", f"MCP claude_net_send over {label}: latency p50", p["p50_ms"], api["p50_ms"], "ms",
                        "POST /api/send p50", p["p50_ratio"], f"<= {r['target']:.2f}x",
                        _ok(p["p50_ratio"] <= r["target"] and not r["errors"][path]),
                        f"p99 {p['p99_ms']} / {api['p99_ms']} ms" + (f"; errors {r['errors'][path]}"
                                                                     if r["errors"][path] else "")))
    return rows


# -- memory -------------------------------------------------------------------------------------------


def idle_memory(quick: bool) -> list[Row]:
    import bench_memory

    r = bench_memory.run(say=log)
    return [Row("", "idle RSS, every plugin loaded", r["all_plugins_rss_mib"], r["core_rss_mib"], "MiB",
                "core only", r["ratio"], f"<= {r['target_mib']} MiB", _ok(r["pass"]),
                "plugins: " + ", ".join(r["plugins"]), r)]


def approvals(quick: bool) -> list[Row]:
    import bench_approvals

    r = bench_approvals.run(n=10 if quick else 50, say=log)
    return [
        Row("", f"approval decision -> exec start p50 ({r['n']} approvals)", r["decision_to_action_p50_ms"],
            r["plain_p50_ms"], "ms", "plain exec p50", r["ratio"], f"<= {r['target_ratio']:.2f}x", _ok(r["pass"]),
            f"p99 {r['decision_to_action_p99_ms']} ms (plain p99 {r['plain_p99_ms']} ms)", r),
        Row("", "approval decision -> exec answer p50 (client side)", r["decision_to_answer_p50_ms"],
            r["plain_p50_ms"], "ms", "plain exec p50",
            round(r["decision_to_answer_p50_ms"] / r["plain_p50_ms"], 2) if r["plain_p50_ms"] else None, "", "info",
            f"p99 {r['decision_to_answer_p99_ms']} ms"),
    ]


BENCHMARKS = [
    Benchmark("messaging-sqlite", "send+inbox vs GET /api/health, SQLite, 1 hub", ("wrk",), messaging("sqlite", 1)),
    Benchmark("messaging-pg", "send+inbox vs GET /api/health, PostgreSQL, 1 hub", ("wrk", "postgresql"),
              messaging("postgresql", 1)),
    Benchmark("messaging-pg-2replicas", "send+inbox vs GET /api/health, PostgreSQL, 2 hubs",
              ("wrk", "postgresql"), messaging("postgresql", 2)),
    Benchmark("lxd-exec", "POST /api/exec vs raw LXD REST: latency and 20-client throughput", ("lxd",), lxd_exec),
    Benchmark("ssh-exec", "POST /api/exec vs direct asyncssh: latency and 20-client throughput", ("sshd",), ssh_exec),
    Benchmark("activity", "GET /api/activity on 1,000,000 rows vs the same SQL", (), activity),
    Benchmark("files", "50 MiB through the hub vs lxc file push/pull, hub RSS growth", ("lxd",), files),
    Benchmark("loop-stall", "event-loop lag during 20 concurrent execs vs idle", ("lxd",), loop_stall),
    Benchmark("jobs", "fan-out to 20 containers vs one exec; live job output delay", ("lxd",), jobs),
    Benchmark("mcp-cost", "claude_net_send over /mcp and stdio vs POST /api/send: hub CPU and p50", (), mcp_cost),
    Benchmark("idle-memory", "idle RSS with every plugin vs core only", (), idle_memory),
    Benchmark("approvals", "admin decision to the waiting exec starting vs a plain exec", ("lxd",), approvals),
]


# -- output -------------------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit in ("req/s", "errors") or abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def table(rows: list[Row], markdown: bool = False) -> str:
    header = ["benchmark", "figure", "measured", "baseline (same run)", "ratio", "target", "result"]
    body = []
    for r in rows:
        baseline = _fmt(r.baseline, r.unit)
        if r.baseline_label and baseline:
            baseline = f"{baseline} ({r.baseline_label})"
        body.append([r.bench, r.figure, _fmt(r.value, r.unit), baseline,
                     f"{r.ratio:.2f}x" if r.ratio is not None else "", r.target, r.status])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    return "\n".join(out)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only these benchmarks (names or prefixes; repeat or comma-separate)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--save", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--render", metavar="FILE", help="print the table of results saved earlier (no run)")
    args = parser.parse_args(argv)
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        rows = [Row(**{k: v for k, v in r.items()}) for r in doc.pop("rows")]
        report(doc, rows, markdown=args.markdown)
        return 0
    if args.list:
        for b in BENCHMARKS:
            print(f"{b.name:<24} {b.what}" + (f"  [needs {', '.join(b.needs)}]" if b.needs else ""))
        return 0
    wanted = [w for item in args.only for w in item.split(",") if w]
    chosen = [b for b in BENCHMARKS if not wanted or any(b.name == w or b.name.startswith(w) for w in wanted)]
    if not chosen:
        parser.error(f"no benchmark matches {wanted}; see --list")

    started = datetime.now(timezone.utc)
    load_start = loadavg()
    availability: dict[str, tuple[bool, str]] = {}
    rows: list[Row] = []
    timings: dict[str, float] = {}
    loads: dict[str, str] = {}
    for b in chosen:
        missing = []
        for need in b.needs:
            if need not in availability:
                availability[need] = CHECKS[need]()
            ok, why = availability[need]
            if not ok:
                missing.append(why)
        if missing:
            log(f"== {b.name}: skipped ({'; '.join(missing)})")
            rows.append(Row(b.name, b.what, status="skipped: " + "; ".join(missing)))
            continue
        loads[b.name] = loadavg()
        log(f"== {b.name}: {b.what} (load {loads[b.name]})")
        t0 = time.monotonic()
        try:
            produced = b.run(args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc(file=sys.stderr)
            produced = [Row(b.name, b.what, status=f"error: {type(exc).__name__}: {str(exc)[:160]}")]
        timings[b.name] = round(time.monotonic() - t0, 1)
        for r in produced:
            r.bench = r.bench or b.name
        rows.extend(produced)
        log(f"   {b.name} took {timings[b.name]} s")

    info = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick, "machine": machine(),
            "load_start": load_start, "load_end": loadavg(), "seconds": timings, "load_at_start_of": loads,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=common.ROOT).stdout.strip()}
    failed = [r for r in rows if r.status == "FAIL" or r.status.startswith("error")]
    document = {**info, "rows": [r.to_json() for r in rows]}
    if args.save:
        Path(args.save).write_text(json.dumps(document, indent=1) + "\n")
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        report(info, rows, markdown=args.markdown)
    return 1 if failed else 0


def report(info: dict, rows: list[Row], *, markdown: bool = False) -> None:
    m = info["machine"]
    print(f"claude-net benchmarks — {info['date']}, commit {info['commit']}{' (--quick)' if info['quick'] else ''}")
    print(f"{m['nproc']} x {m['cpu']}, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}; "
          f"load average {info['load_start']} at start, {info['load_end']} at end")
    print()
    print(table(rows, markdown=markdown))
    notes = [(r.bench, r.figure, r.note) for r in rows if r.note]
    if notes:
        print()
        for bench, figure, note in notes:
            print(f"- {bench} / {figure}: {note}")


if __name__ == "__main__":
    sys.exit(main())
