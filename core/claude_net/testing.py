"""pytest plugin shipped with claude-net (entry point ``pytest11``): fixtures for plugin authors.

* ``database_url`` — parametrized over SQLite and PostgreSQL (``--db sqlite|postgresql|both``
  or ``CLAUDE_NET_TEST_DB``; ``@pytest.mark.db("sqlite")`` pins a test or module); PostgreSQL gets a fresh database per test from the server at
  ``CLAUDE_NET_TEST_PG`` (default: the local socket ``/var/run/postgresql``): an empty one, recycled
  within the test process (emptied, not dropped: each DROP DATABASE forces a server checkpoint).
* ``@pytest.mark.serial`` — a test that stops something every other test shares (the LXD daemon);
  ``--serial run|skip|only``. Under pytest-xdist serial tests are left out: run them after, alone,
  with ``--serial only`` (the repository's ``scripts/test`` runs both passes).
* ``make_settings(**overrides)`` — validated :class:`Settings` on that database.
* ``hub_harness`` — ``async with hub_harness(plugins=[...]) as h:`` a started app with a Quart
  test client; ``await h.token("name", admin=True)`` and ``await h.call("POST", path, token, json)``.
* ``require_component(name, ok, why)`` — skip on a laptop, **fail** under ``CI=true``: a green CI
  run means every real component was really there.
* ``eventually(check)``, ``database_for(kind, directory)``, ``HubProcess``.

This module is public API for plugins' tests (docs/writing-plugins.md, "Testing"), beside
``claude_net`` itself.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

PG_DEFAULT = "postgresql+asyncpg://root@/{db}?host=/var/run/postgresql"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_component(name: str, available: bool, why: str = "") -> None:
    """Skip when ``name`` is missing locally; fail under CI, where it must be present."""
    if available:
        return
    message = f"{name} is not available{': ' + why if why else ''}"
    if in_ci():
        pytest.fail(f"CI=true but {message} (.ci/run must install and start it)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("claude-net")
    group.addoption("--db", choices=["sqlite", "postgresql", "both"],
                    default=os.environ.get("CLAUDE_NET_TEST_DB", "both"),
                    help="database(s) for tests that use the database_url fixture (default: both)")
    group.addoption("--serial", choices=["run", "skip", "only"], default="run",
                    help="tests marked serial (they stop a daemon every other test shares): run them (the "
                         "default; left out under pytest-xdist), skip them, or run only them")


def _parallel(config: pytest.Config) -> bool:
    """Whether this run spreads tests over pytest-xdist workers (also true inside a worker)."""
    return hasattr(config, "workerinput") or bool(config.getoption("numprocesses", None) or 0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "db(*kinds): run only on these databases ('sqlite', 'postgresql')")
    config.addinivalue_line("markers", "serial: stops or breaks something every other test shares (the LXD "
                                       "daemon): never runs beside other tests (scripts/test runs these "
                                       "in a pass of their own after the parallel one)")


def pytest_unconfigure(config: pytest.Config) -> None:
    _pg_drop_made()  # an xdist worker may end without running atexit handlers


def _utf8_safe(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8_safe(k): _utf8_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_utf8_safe(v) for v in value)
    return value


@pytest.hookimpl(wrapper=True)
def pytest_report_to_serializable(config: pytest.Config, report: Any) -> Any:
    """A pytest-xdist worker sends its reports as UTF-8: a lone surrogate in captured output (the
    hostile-text tests log them on purpose) would crash the worker and abort the whole run. Such a
    character is shown escaped (``\\ud800``) instead."""
    data = yield
    return _utf8_safe(data)


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.getoption("--serial") == "run" and _parallel(config):
        return ("serial tests are left out of this parallel run; run them alone with --serial only "
                "(scripts/test does both)")
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mode = config.getoption("--serial")
    if mode == "run" and _parallel(config):
        mode = "skip"
    if mode == "run":
        return
    keep, drop = [], []
    for item in items:
        (drop if (item.get_closest_marker("serial") is not None) == (mode == "skip") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # db_kind: one fresh database per test (database_url); package_db_kind: for a hub that the
    # tests of a directory share (database_for), started once per database
    for name, scope in (("db_kind", "function"), ("package_db_kind", "package")):
        if name in metafunc.fixturenames:
            choice = metafunc.config.getoption("--db")
            kinds = ["sqlite", "postgresql"] if choice == "both" else [choice]
            marker = metafunc.definition.get_closest_marker("db")
            if marker is not None:
                kinds = [k for k in kinds if k in marker.args]
            metafunc.parametrize(name, kinds, scope=scope)


def pg_url_template() -> str:
    return os.environ.get("CLAUDE_NET_TEST_PG", PG_DEFAULT)


def _pg_dsn(db: str) -> str:
    return pg_url_template().format(db=db).replace("postgresql+asyncpg://", "postgresql://")


async def _pg_admin(sql: str, db: str = "postgres") -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(db), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_available() -> tuple[bool, str]:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return False, "asyncpg is not installed"
    import asyncio

    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        return False, f"cannot connect ({type(exc).__name__}: {exc}); run scripts/dev-services postgresql"
    return True, ""


_PG_STATE: dict[str, Any] = {}


@pytest.fixture
def database_url(db_kind: str, tmp_path) -> Any:
    """A fresh, empty database of kind ``db_kind`` for one test."""
    with database_for(db_kind, tmp_path) as url:
        yield url


@contextlib.contextmanager
def database_for(kind: str, directory: Path):
    """A fresh, empty database URL of ``kind``: a SQLite file in ``directory``, or a scratch
    PostgreSQL database (dropped afterwards; skips locally, fails under CI when there is none).

    For a hub process that several tests share, with the ``package_db_kind`` fixture::

        @pytest.fixture(scope="package")
        def hub(package_db_kind, tmp_path_factory):
            with database_for(package_db_kind, tmp_path_factory.mktemp("hub")) as url:
                ...
    """
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{Path(directory) / 'hub.db'}"
        return
    if "ok" not in _PG_STATE:
        _PG_STATE["ok"], _PG_STATE["why"] = pg_available()
    require_component("PostgreSQL", _PG_STATE["ok"], _PG_STATE["why"])
    with scratch_pg_database("cn_test") as url:
        yield url


#: scratch databases of this process, by prefix: those that are empty and free for the next test,
#: and every one it made (dropped when the process exits). PostgreSQL forces a checkpoint for each
#: DROP DATABASE (and CREATE DATABASE copies a template): 0.3-3 s a test once several test processes
#: share the server, where emptying a used database again takes milliseconds.
_PG_FREE: dict[str, list[str]] = {}
_PG_MADE: set[str] = set()


async def _pg_empty(name: str) -> None:
    """Make a used scratch database as empty as a new one: its settings reset (a test may have made it
    read-only), every other session ended, and every object the test role owns in it dropped
    (tables, sequences, types, functions, schemas, large objects)."""
    import asyncpg

    await _pg_admin(f'ALTER DATABASE "{name}" RESET ALL')
    await _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                    " AND pid <> pg_backend_pid()")
    conn = await asyncpg.connect(_pg_dsn(name), timeout=5)
    try:
        await conn.execute("SET lock_timeout = '10s'")
        await conn.execute("DROP OWNED BY CURRENT_USER")
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'")
        if left:
            raise RuntimeError(f"{left} relations are left in {name}")
    finally:
        await conn.close()


def _pg_drop_made() -> None:
    import asyncio

    for name in sorted(_PG_MADE):
        with contextlib.suppress(Exception):
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    _PG_MADE.clear()
    _PG_FREE.clear()


@contextlib.contextmanager
def scratch_pg_database(prefix: str):
    """A fresh, empty PostgreSQL database on the server of ``pg_url_template()``.

    Afterwards it is emptied and kept for this process's next call (dropped instead when emptying
    fails), and every database made is dropped when the process exits.
    """
    import asyncio

    free = _PG_FREE.setdefault(prefix, [])
    if free:
        name = free.pop()
    else:
        name = f"{prefix}_{secrets.token_hex(6)}"
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
        if not _PG_MADE:
            atexit.register(_pg_drop_made)
        _PG_MADE.add(name)
    try:
        yield pg_url_template().format(db=name)
    finally:
        try:
            asyncio.run(_pg_empty(name))
        except Exception:  # noqa: BLE001 - a database that cannot be emptied is not reused
            _PG_MADE.discard(name)
            with contextlib.suppress(Exception):
                asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            free.append(name)


@pytest.fixture
def make_settings(database_url, tmp_path):
    """Build validated Settings on the test database; keyword overrides are nested dicts."""
    from .config import load_settings

    def make(overrides: Mapping[str, Any] | None = None, **kwargs: Any):
        merged: dict[str, Any] = {"database_url": database_url}
        merged.update(overrides or {})
        merged.update(kwargs)
        return load_settings(tmp_path / "absent.toml" if False else None, environ={}, overrides=merged)

    return make


@dataclass
class Harness:
    app: Any
    hub: Any
    client: Any

    async def token(self, name: str, *, admin: bool = False) -> str:
        from .auth import create_token

        return await create_token(self.hub.db, name, admin=admin, replace=True)

    async def call(self, method: str, path: str, token: str | None = None, json_body: Any = None, *,
                   headers: Mapping[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        """Make a request; returns (status, parsed JSON body)."""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"headers": hdrs}
        if raw is not None:
            kwargs["data"] = raw
        elif json_body is not None:
            kwargs["data"] = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        response = await self.client.open(path, method=method, **kwargs)
        data = await response.get_data()
        try:
            return response.status_code, json.loads(data)
        except ValueError:
            return response.status_code, data


@pytest.fixture
def hub_harness(make_settings):
    """``async with hub_harness(plugins=[...], settings=None, load_entrypoints=False, **sections) as h``.

    A started hub app on the test's database with the built-in plugins (roles, messaging,
    capabilities, meta) and ``plugins`` (modules or objects); installed entry points only with
    ``load_entrypoints=True``. ``sections`` are settings overrides (``lxd={"shell": "/bin/sh"}``),
    ignored when ``settings`` is given. A plugin the manager refuses (a firstresult hook written
    as ``async def``) or that fails to load fails the test, naming it, as ``claude-net check`` does.
    """
    from .http import create_app

    @contextlib.asynccontextmanager
    async def harness(*, plugins=(), settings=None, load_entrypoints: bool = False,
                      **overrides: Any) -> AsyncIterator[Harness]:
        app = create_app(settings or make_settings(**overrides), plugins=plugins, load_entrypoints=load_entrypoints)
        failures = app.hub.pm.failures
        if failures:
            pytest.fail("hub_harness: " + "; ".join(f"plugin {f.name} was not loaded: {f.error}" for f in failures),
                        pytrace=False)
        # Quart's default of 6 s for startup and for shutdown is too short for a hub whose backends
        # talk to a busy LXD daemon while the suite runs in parallel workers; tests that promise a
        # prompt shutdown measure it themselves
        async with app.test_app_class(app, startup_timeout=30, shutdown_timeout=30) as test_app:
            yield Harness(app, app.hub, test_app.test_client())

    return harness


async def eventually(check: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Call ``check()`` (sync or async) until it returns something truthy, and return that.

    For conditions a background task makes true a moment later (a bot's reply, a row in the
    activity feed, a process gone); raises AssertionError after ``timeout`` seconds.
    """
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubProcess:
    """A real hub: ``claude-net serve`` (Hypercorn) in a subprocess on a free loopback port.

    ``with HubProcess(config_text) as hub: hub.url, hub.token("name")``. Used by tests that need
    a live server (stdio MCP, CLI client verbs) and by the benchmarks.
    """

    def __init__(self, config_text: str = "", *, database_url: str | None = None, workdir: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="cn-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.dir / "claude-net.toml"
        head = f'port = {self.port}\nlog_level = "warning"\n'
        if database_url:
            head += f'database_url = "{database_url}"\n'
        self.config.write_text(head + config_text)
        self.env = {**os.environ, "CLAUDE_NET_CONFIG": str(self.config), **(env or {})}
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "claude_net.cli", *args], env=self.env, cwd=self.dir,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def token(self, name: str, admin: bool = False) -> str:
        return self.cli("token", "create", name, "--replace", *(["--admin"] if admin else []))

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The serving command and its environment (a subclass may wrap ``serve``)."""
        return [sys.executable, "-m", "claude_net.cli", "serve"], self.env

    def start(self, timeout: float = 30) -> HubProcess:
        self.log = open(self.dir / "hub.log", "wb")
        argv, env = self.command()
        self.proc = subprocess.Popen(argv, env=env, cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited: {(self.dir / 'hub.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/api/health", timeout=1) as r:
                    if json.loads(r.read())["ok"]:
                        return self
            time.sleep(0.1)
        raise RuntimeError("hub did not start")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> HubProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def which(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
