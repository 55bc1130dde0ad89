"""Shared fixtures of the hardening suite.

* :class:`ThreadedHub` — a real Hypercorn server in a background thread around an app built with
  explicit plugin objects (the in-test ``TestBox`` backend, an event recorder, ...), for tests
  that need a real socket (schemathesis, slow clients) but also in-process plugins.
* ``host_marker`` — a directory on the *host* that no command may ever create a file in; tests
  send commands that would create a file there if any host-side shell ever interpreted them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_net import hookimpl
from claude_net.testing import free_port, require_component


def need_module(name: str) -> None:
    """Skip the importing test module when a test tool is missing locally; fail under CI=true."""
    import importlib.util

    require_component(name, importlib.util.find_spec(name) is not None,
                      "it belongs in the root dev dependency group")


class EventLog:
    """A plugin that keeps every event the hub emits (thread-safe enough for reading after calls)."""

    __name__ = "hardening_events"

    def __init__(self) -> None:
        self.events: list[Any] = []

    @hookimpl
    def on_event(self, event):
        self.events.append(event)

    def of(self, type_: str | None = None, result: str | None = None, actor: str | None = None) -> list[Any]:
        return [e for e in self.events if (type_ is None or e.type == type_)
                and (result is None or e.result == result) and (actor is None or e.actor == actor)]

    def clear(self) -> None:
        self.events.clear()


class ThreadedHub:
    """``with ThreadedHub(app) as hub:`` the app served by Hypercorn on a loopback port in a thread.

    ``hub.url``; ``hub.run(coro)`` runs a coroutine on the server's loop (tokens, database checks).
    """

    def __init__(self, app: Any, *, config: dict[str, Any] | None = None) -> None:
        self.app = app
        self.hub = app.hub
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config or {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _serve(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 2
        for key, value in self.config.items():
            setattr(config, key, value)
        loop = asyncio.new_event_loop()
        self.loop = loop
        self._stop = asyncio.Event()
        try:
            loop.run_until_complete(serve(self.app, config, shutdown_trigger=self._stop.wait))
        except BaseException as exc:  # noqa: BLE001 - reported by start()/stop()
            self._error = exc
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self, timeout: float = 20) -> ThreadedHub:
        self._thread = threading.Thread(target=self._serve, name=f"hub-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                raise RuntimeError(f"hub failed to start: {self._error!r}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/api/health", timeout=1) as r:
                    if json.loads(r.read())["ok"]:
                        return self
            time.sleep(0.05)
        raise RuntimeError("hub did not start")

    def run(self, coro: Any, timeout: float = 30) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def token(self, name: str, *, admin: bool = False) -> str:
        from claude_net.auth import create_token

        return self.run(create_token(self.hub.db, name, admin=admin, replace=True))

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
        self._thread = None

    def __enter__(self) -> ThreadedHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http(method: str, url: str, token: str | None = None, body: Any = None, *, headers: dict[str, str] | None = None,
         raw: bytes | None = None, timeout: float = 30) -> tuple[int, Any, dict[str, str]]:
    """A blocking HTTP call with urllib: (status, parsed JSON or bytes, headers)."""
    import urllib.error

    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, payload, rh = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        status, payload, rh = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, json.loads(payload), rh
    except ValueError:
        return status, payload, rh


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def host_marker(tmp_path) -> Iterator[Path]:
    """A host directory that must stay empty: injected commands aim at ``<dir>/pwned``.

    After the test, asserts no file was created there (and none in /tmp by the same name).
    """
    directory = tmp_path / "host-marker"
    directory.mkdir()
    yield directory
    leftovers = sorted(p.name for p in directory.iterdir())
    assert not leftovers, f"a command ran on the HOST and created {leftovers} in {directory}"


# -- real LXD containers (helpers of the LXD backend's tests) -------------------------------------

LXD_PREFIX = f"cnh-{secrets.token_hex(3)}"  # every container of this run is named <LXD_PREFIX>-...


@pytest.fixture(scope="session")
def lxd_available() -> None:
    from tests.plugins.lxd_backend.conftest import _lxd_state

    ok, why = _lxd_state()
    require_component("LXD", ok, why)


@pytest.fixture(scope="module")
def lxd_box(lxd_available) -> Iterator[str]:
    """One running busybox container for the module, always deleted afterwards."""
    from tests.plugins.lxd_backend.conftest import Containers

    containers = Containers(LXD_PREFIX)
    try:
        yield containers.launch("box")
    finally:
        containers.delete_all()


def in_box(name: str, command: str, *, check: bool = True) -> str:
    """Run ``sh -c command`` in the container directly through the lxc client (setup and checks)."""
    from tests.plugins.lxd_backend.conftest import lxc

    return lxc("exec", name, "--", "sh", "-c", command, check=check).stdout


def lxd_overrides() -> dict[str, Any]:
    """[lxd] settings that show the hub only this run's containers (never anyone else's)."""
    return {"include": [f"{LXD_PREFIX}-*"]}


def pytest_sessionfinish(session, exitstatus):
    """Belt and braces: delete any container of this run a crashed fixture left behind."""
    import shutil
    import subprocess

    if shutil.which("lxc") is None:
        return
    with contextlib.suppress(Exception):
        out = subprocess.run(["lxc", "list", "--format", "json"], capture_output=True, text=True, timeout=30).stdout
        for item in json.loads(out or "[]"):
            if item["name"].startswith(LXD_PREFIX + "-"):
                subprocess.run(["lxc", "delete", "--force", item["name"]], capture_output=True, timeout=60)
