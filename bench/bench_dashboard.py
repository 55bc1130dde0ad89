#!/usr/bin/env python3
"""The dashboard in real headless Chromium against a real hub: page weight, time to first render,
and how long a live event takes from the action to its row in the page.

    python bench/bench_dashboard.py [--loads 20] [--events 50] [--json]

Starts ``claude-net serve`` (every installed plugin, SQLite, a free loopback port) and Debian's
``/usr/bin/chromium`` through Playwright (nothing is downloaded).

* **page weight**: bytes of the HTML and every asset of the activity page on a first load with an
  empty cache (the API's JSON data and the event stream are not assets and are not counted);
  budget ``WEIGHT_BUDGET`` bytes.
* **time to first render**: ``first-contentful-paint`` of the activity page, each of ``--loads``
  loads in a fresh browser context (cold cache); p50 and p90, against the same figure for a plain
  HTML page of the same size served from memory on loopback (Chromium's own floor on this machine,
  measured in the same run); target: p50 at most ``FCP_EXTRA_TARGET_MS`` above the floor's p50.
* **live delay**: ``--events`` times, an admin's ``POST /api/permit`` (whose row names a unique
  target) is sent while the page is open; the delay from just before the request to the moment its
  row is in the page's DOM (a MutationObserver, wall clock), against the same delay to the moment
  the row arrives on a plain ``GET /api/activity/stream`` client in this process (the SSE stream's
  own delay, measured in the same run). Target: DOM p50 within ``LIVE_EXTRA_TARGET_MS`` of the
  stream's p50 and p99 under 1 s (the issue asks for rows within a second).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pct  # noqa: E402

from claude_net.testing import HubProcess  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WEIGHT_BUDGET = 64 * 1024
LIVE_EXTRA_TARGET_MS = 50.0
LIVE_P99_TARGET_MS = 1000.0
ASSET_TYPES = {"document", "stylesheet", "script", "image", "font"}
MARKER = re.compile(r"bench-t(\d+)")
#: the floor: a page of plain HTML as large as the dashboard's, no script or stylesheet, served
#: from memory by the standard library on loopback — what Chromium needs on this machine, now
FLOOR_HTML = ("<!doctype html><html lang=en><meta charset=utf-8><title>floor</title><h1>floor</h1>"
              + "<p>plain text</p>" * 240).encode()
FCP_EXTRA_TARGET_MS = 150.0


class StreamClock(threading.Thread):
    """A bare SSE client on /api/activity/stream: when each permit row naming ``t<n>`` arrives."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__(daemon=True)
        self.port, self.token = port, token
        self.arrived: dict[int, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request("GET", "/api/activity/stream?type=permit", headers={"Authorization": f"Bearer {self.token}"})
        response = conn.getresponse()
        self.ready.set()
        for raw in response:
            line = raw.decode()
            if not line.startswith("data:"):
                continue
            found = MARKER.search(json.loads(line[5:]).get("detail") or "")
            if found:
                self.arrived.setdefault(int(found.group(1)), time.time())


def _login(context, url: str, token: str) -> None:
    page = context.new_page()
    page.goto(url + "/ui/signin")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/machines")
    page.close()


def _fcp(page) -> float:
    """The page's first-contentful-paint time (ms from navigation start), once Chromium has one."""
    return float(page.wait_for_function(
        "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime").json_value())


def _floor_fcps(browser, loads: int) -> list[float]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Floor(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(FLOOR_HTML)))
            self.end_headers()
            self.wfile.write(FLOOR_HTML)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Floor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fcps = []
    try:
        for _ in range(loads):
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/", wait_until="load")
            fcps.append(_fcp(page))
            context.close()
    finally:
        server.shutdown()
    return fcps


def run(loads: int = 20, events: int = 50, say=print) -> dict:
    from playwright.sync_api import sync_playwright

    result: dict = {}
    with HubProcess() as hub, sync_playwright() as p:
        admin = hub.token("benchadmin", admin=True)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            floor = _floor_fcps(browser, loads)
            result["floor_fcp_ms"] = {"p50": round(pct(floor, 50), 1), "p90": round(pct(floor, 90), 1)}
            # -- weight and first render, cold cache each time
            fcps, weights, ready = [], [], []
            for _ in range(loads):
                context = browser.new_context()
                _login(context, hub.url, admin)
                page = context.new_page()
                sizes: dict[str, int] = {}

                def count(response, sizes=sizes):
                    if response.request.resource_type in ASSET_TYPES:
                        try:
                            sizes[response.url] = len(response.body())
                        except Exception:  # noqa: BLE001 - a redirect has no body
                            pass

                page.on("response", count)
                started = time.perf_counter()
                page.goto(hub.url + "/ui/activity", wait_until="load")
                page.wait_for_selector("#live.on")
                ready.append((time.perf_counter() - started) * 1000)
                fcps.append(_fcp(page))
                weights.append(sum(sizes.values()))
                result["assets"] = dict(sorted((u.split("/ui", 1)[-1], n) for u, n in sizes.items()))
                context.close()
            result["weight_bytes"] = max(weights)
            result["fcp_ms"] = {"p50": round(pct(fcps, 50), 1), "p90": round(pct(fcps, 90), 1)}
            result["live_ready_ms"] = {"p50": round(pct(ready, 50), 1), "p90": round(pct(ready, 90), 1)}

            # -- live delay: the DOM against the SSE stream itself
            clock = StreamClock(hub.port, admin)
            clock.start()
            clock.ready.wait(10)
            context = browser.new_context()
            _login(context, hub.url, admin)
            page = context.new_page()
            page.goto(hub.url + "/ui/activity")
            page.wait_for_selector("#live.on")
            page.evaluate("""() => {
                window.__seen = {};
                new MutationObserver((records) => {
                    const now = performance.timeOrigin + performance.now();
                    for (const r of records) for (const n of r.addedNodes) {
                        const m = /bench-t(\\d+)/.exec(n.textContent || "");
                        if (m && !(m[1] in window.__seen)) window.__seen[m[1]] = now;
                    }
                }).observe(document.querySelector('#activity tbody'), {childList: true});
            }""")
            conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)
            sent: dict[int, float] = {}
            for i in range(events):
                body = json.dumps({"source": "bench-agent", "target": f"bench-t{i}", "capabilities": ["file_read"]})
                sent[i] = time.time()
                conn.request("POST", "/api/permit", body=body, headers={
                    "Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                assert response.status == 200, response.status
                page.wait_for_timeout(100)  # events apart, as an admin would see them
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                seen = page.evaluate("window.__seen")
                if len(seen) >= events and len(clock.arrived) >= events:
                    break
                page.wait_for_timeout(100)
            conn.close()
            dom = [(seen[str(i)] / 1000 - sent[i]) * 1000 for i in range(events) if str(i) in seen]
            sse = [(clock.arrived[i] - sent[i]) * 1000 for i in range(events) if i in clock.arrived]
            result["live_dom_ms"] = {"n": len(dom), "p50": round(pct(dom, 50), 1), "p99": round(pct(dom, 99), 1)}
            result["live_sse_ms"] = {"n": len(sse), "p50": round(pct(sse, 50), 1), "p99": round(pct(sse, 99), 1)}
            context.close()
        finally:
            browser.close()
    result["targets"] = {"weight_bytes": WEIGHT_BUDGET, "fcp_extra_p50_ms": FCP_EXTRA_TARGET_MS,
                         "live_extra_p50_ms": LIVE_EXTRA_TARGET_MS, "live_p99_ms": LIVE_P99_TARGET_MS}
    dom, sse = result["live_dom_ms"], result["live_sse_ms"]
    fcp_extra = result["fcp_ms"]["p50"] - result["floor_fcp_ms"]["p50"]
    result["pass"] = (result["weight_bytes"] <= WEIGHT_BUDGET and fcp_extra <= FCP_EXTRA_TARGET_MS
                      and dom["n"] == events and sse["n"] == events
                      and dom["p50"] - sse["p50"] <= LIVE_EXTRA_TARGET_MS and dom["p99"] <= LIVE_P99_TARGET_MS)
    say(f"Dashboard in Chromium ({loads} cold loads of /ui/activity, {events} live events)")
    say(f"  page weight (HTML + assets, first load): {result['weight_bytes']:,} bytes "
        f"(budget {WEIGHT_BUDGET:,}): {result['assets']}")
    say(f"  first contentful paint: p50 {result['fcp_ms']['p50']} ms, p90 {result['fcp_ms']['p90']} ms "
        f"against a plain HTML page's p50 {result['floor_fcp_ms']['p50']} ms, p90 {result['floor_fcp_ms']['p90']} ms "
        f"(target: at most {FCP_EXTRA_TARGET_MS:g} ms more at p50); live feed connected: "
        f"p50 {result['live_ready_ms']['p50']} ms")
    say(f"  action -> row in the DOM: p50 {dom['p50']} ms, p99 {dom['p99']} ms ({dom['n']} events)")
    say(f"  action -> row on the SSE stream: p50 {sse['p50']} ms, p99 {sse['p99']} ms ({sse['n']} events)")
    say(f"  result: {'PASS' if result['pass'] else 'FAIL'}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: run scripts/dev-services chromium", file=sys.stderr)
        return 2
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result = run(loads=args.loads, events=args.events, say=say)
    if args.json:
        print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
