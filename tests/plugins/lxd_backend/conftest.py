"""Fixtures for the LXD backend tests: a real LXD daemon and uniquely named busybox containers.

Set up the daemon and image with ``scripts/lxd-setup``. Without it the tests skip locally and
fail under ``CI=true`` (``require_component``). Every container a fixture launches is deleted
afterwards, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time

import pytest

from claude_net.testing import require_component

IMAGE = os.environ.get("LXD_IMAGE_ALIAS", "claude-net-busybox")
PREFIX = "cnt-"
#: every container of this test run is named ``<RUN_ID>-...``
RUN_ID = f"{PREFIX}{secrets.token_hex(3)}"


def lxc(*args: str, check: bool = True, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["lxc", *args], check=check, capture_output=True, text=True, timeout=timeout,
                          input=input)


def lxc_query(path: str, method: str = "GET") -> object:
    out = lxc("query", "-X", method, path).stdout
    return json.loads(out) if out.strip() else None


def _lxd_state() -> tuple[bool, str]:
    if shutil.which("lxc") is None:
        return False, "the lxc client is not installed (run scripts/lxd-setup)"
    try:
        lxc("query", "/1.0", timeout=10)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return False, f"the LXD daemon does not answer ({getattr(exc, 'stderr', '') or exc}); run scripts/lxd-setup"
    try:
        lxc("image", "show", IMAGE, timeout=10)
    except subprocess.CalledProcessError:
        return False, f"image {IMAGE} is missing; run scripts/lxd-setup"
    return True, ""


_STATE: dict[str, tuple[bool, str]] = {}


@pytest.fixture(scope="session")
def lxd_available() -> None:
    if "lxd" not in _STATE:
        _STATE["lxd"] = _lxd_state()
    ok, why = _STATE["lxd"]
    require_component("LXD", ok, why)


@pytest.fixture(scope="session")
def run_id() -> str:
    """A prefix unique to this test run: every container name starts with it."""
    return RUN_ID


class Containers:
    """Launches containers named ``<run_id>-<label>`` and deletes all of them at the end."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.names: list[str] = []

    def launch(self, label: str, *, start: bool = True) -> str:
        name = f"{self.run_id}-{label}-{secrets.token_hex(2)}"
        self.names.append(name)
        lxc("launch" if start else "init", IMAGE, name)
        if start:
            wait_running(name)
        return name

    def delete_all(self) -> None:
        for name in self.names:
            with contextlib.suppress(Exception):
                lxc("delete", "--force", name, check=False, timeout=60)
        self.names.clear()


def wait_running(name: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = lxc_query(f"/1.0/instances/{name}/state")
        if state["status"] == "Running" and state.get("processes", 0) > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} did not start")


@pytest.fixture(scope="module")
def containers(lxd_available, run_id):
    """Module-wide launcher: containers live for the module and are always deleted."""
    c = Containers(f"{run_id}")
    try:
        yield c
    finally:
        c.delete_all()


@pytest.fixture
def fresh_container(lxd_available, run_id):
    """A container of this test alone (for stop, restore, ...), deleted after the test."""
    c = Containers(run_id)
    try:
        yield c.launch
    finally:
        c.delete_all()


def lxd_hub(hub_harness, run_id, **overrides):
    """``hub_harness`` with the LXD backend, listing only this run's containers (``lxd={...}``
    overrides are merged into that)."""
    import claude_net_lxd

    return hub_harness(plugins=[claude_net_lxd], lxd={"include": [f"{run_id}-*"], **overrides.pop("lxd", {})},
                       **overrides)


def launch_file_box(containers, label: str) -> str:
    """A container set up for the file tests: a marker in /etc/shadow, symlinks into /etc (absolute
    and relative), a dangling one, a loop, and a directory."""
    name = containers.launch(label)
    lxc("exec", name, "--", "sh", "-c",
        "echo container-shadow-marker > /etc/shadow; ln -s /etc/shadow /tmp/to-shadow;"
        " ln -s ../etc/passwd /tmp/rel-passwd; ln -s /etc /tmp/etc-link; ln -s nowhere /tmp/dangling;"
        " ln -s loop-b /tmp/loop-a; ln -s loop-a /tmp/loop-b; mkdir -p /tmp/adir")
    return name


def pytest_sessionfinish(session, exitstatus):
    """Belt and braces: delete any container of ours a crashed fixture left behind."""
    if "lxd" not in _STATE or not _STATE["lxd"][0]:
        return
    with contextlib.suppress(Exception):
        names = lxc("list", "--format", "json", check=False, timeout=30).stdout
        for item in json.loads(names or "[]"):
            if item["name"].startswith(RUN_ID + "-"):
                lxc("delete", "--force", item["name"], check=False, timeout=60)
