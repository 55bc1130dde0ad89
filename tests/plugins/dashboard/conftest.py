"""Fixtures of the dashboard tests: a real hub on a loopback port (Hypercorn in a thread), real
Chromium through Playwright (Debian's /usr/bin/chromium; no browser is ever downloaded), and a
small cookie-aware HTTP client for the checks that need no browser.

Without Chromium or Playwright the browser tests skip locally and FAIL under ``CI=true``
(``require_component``); ``scripts/dev-services chromium`` installs it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from claude_net.testing import require_component
from tests.hardening.conftest import ThreadedHub

CHROMIUM = os.environ.get("CLAUDE_NET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: screenshots of every test also land here, for docs/dashboard.md (set to keep them)
SHOTS = os.environ.get("CLAUDE_NET_DASHBOARD_SHOTS")


def need_chromium() -> None:
    import importlib.util

    require_component("playwright", importlib.util.find_spec("playwright") is not None,
                      "it belongs in the root dev dependency group")
    require_component("Chromium", os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK),
                      f"{CHROMIUM} is missing; run scripts/dev-services chromium")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (each test gets its own context: no shared cookies)."""
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15000)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.problems = problems  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()


def shot(page, tmp_path: Path, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot under the test's output folder (and CLAUDE_NET_DASHBOARD_SHOTS when set)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=full_page)
    assert path.stat().st_size > 5000, f"screenshot {name} is suspiciously small"
    return path


@pytest.fixture
def database_url(db_kind, tmp_path):
    """The testing plugin's fresh database, made and dropped in a worker thread: Playwright's sync
    API keeps an event loop running in this one, where ``asyncio.run`` (PostgreSQL setup) cannot."""
    import concurrent.futures

    from claude_net.testing import database_for

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        made = database_for(db_kind, tmp_path)
        url = pool.submit(made.__enter__).result()
        try:
            yield url
        finally:
            pool.submit(made.__exit__, None, None, None).result()


@pytest.fixture
def served(make_settings):
    """``with served(plugins=..., **settings) as hub:`` a hub with every installed plugin (the dashboard,
    permissions, activity, ...) served by Hypercorn on a loopback port."""
    import contextlib

    from claude_net.http import create_app

    @contextlib.contextmanager
    def serve(plugins=(), **overrides: Any):
        app = create_app(make_settings(**overrides), plugins=plugins, load_entrypoints=True)
        assert not app.hub.pm.failures, app.hub.pm.failures
        with ThreadedHub(app) as hub:
            yield hub

    return serve


def sign_in_page(page, hub, token: str) -> None:
    page.goto(hub.url + "/ui/")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/machines")


class Browserless:
    """A cookie-holding HTTP client for the session checks (no redirects followed)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.origin = url
        self.cookie: str | None = None
        self.csrf: str | None = None

    def request(self, method: str, path: str, body: Any = None, *, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, cookie: bool = True) -> tuple[int, Any, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        hdrs = {"Host": f"{self.host}:{self.port}", **(headers or {})}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if cookie and self.cookie:
            hdrs["Cookie"] = f"cn_dashboard={self.cookie}"
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        return response.status, payload, response.headers

    def sign_in(self, token: str) -> tuple[int, Any, Any]:
        status, payload, headers = self.request("POST", "/ui/signin", form={"token": token},
                                                headers={"Origin": self.origin})
        set_cookie = headers.get("Set-Cookie") or ""
        match = re.match(r"cn_dashboard=([^;]+)", set_cookie)
        if status == 303 and match:
            self.cookie = match.group(1)
            _, html, _ = self.request("GET", "/ui/machines")
            found = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
            self.csrf = found.group(1) if found else None
        return status, payload, headers

    def api(self, method: str, path: str, body: Any = None, *, csrf: bool = True,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if csrf and self.csrf and method != "GET":
            hdrs["X-CSRF-Token"] = self.csrf
        status, payload, _ = self.request(method, path, body, headers=hdrs)
        return status, payload
