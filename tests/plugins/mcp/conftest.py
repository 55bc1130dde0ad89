"""Fixtures for the MCP tests: a real hub (``claude-net serve`` in a subprocess, on SQLite and on
PostgreSQL) with the lxd, permissions, activity and mcp plugins, one throwaway LXD container it
lists, and MCP client sessions from the SDK over stdio (the ``claude-net-mcp`` subprocess) and streamable HTTP (/mcp).

Everything is shared by the directory's tests (package scope) and always torn down: the hub
is terminated, the container deleted. Without LXD the tests skip locally and fail under
``CI=true`` (``require_component``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time

import pytest

from claude_net.testing import database_for, require_component
from mcp_helpers import ALLOWED_ORIGIN, RUN, http_session, running_hub, stdio_session

IMAGE = os.environ.get("LXD_IMAGE_ALIAS", "claude-net-busybox")
#: token holders, created before the hub starts so its first node listing has them: role -> admin
ROLES = {"admin": True, "agent-stdio": False, "agent-http": False, "agent-other": False}


def lxc(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["lxc", *args], check=check, capture_output=True, text=True, timeout=timeout)


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


@pytest.fixture(scope="package")
def lxd_ok():
    ok, why = _lxd_state()
    require_component("LXD", ok, why)


@pytest.fixture(scope="package")
def box(lxd_ok):
    """A running busybox container, deleted at the end whatever happens."""
    name = f"{RUN}-box"
    try:
        lxc("launch", IMAGE, name)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            state = json.loads(lxc("query", f"/1.0/instances/{name}/state").stdout)
            if state["status"] == "Running" and state.get("processes", 0) > 0:
                break
            time.sleep(0.05)
        yield name
    finally:
        delete_container(name)


def delete_container(name: str, attempts: int = 60) -> None:
    """Delete ``name`` (its snapshots go with it), retrying while the daemon is briefly away: other
    test suites restart LXD on purpose, and a container must never be left behind."""
    for _ in range(attempts):
        with contextlib.suppress(subprocess.TimeoutExpired):
            if lxc("delete", "--force", name, check=False, timeout=60).returncode == 0:
                return
            if "not found" in lxc("info", name, check=False, timeout=30).stderr.lower():
                return
        time.sleep(3)
    raise AssertionError(f"could not delete the test container {name}; remove it with `lxc delete --force {name}`")


@pytest.fixture(scope="package")
def hub(box, package_db_kind, tmp_path_factory):
    """``claude-net serve`` on a free port with the plugins under test; only our container is listed.
    Started once per database (SQLite, PostgreSQL), the directory's tests run against each."""
    config = ('[plugins]\nallow = ["lxd", "permissions", "activity", "mcp"]\n'
              f'[lxd]\ninclude = ["{RUN}-*"]\n'
              f'[mcp]\nallowed_origins = ["{ALLOWED_ORIGIN}"]\n')
    with database_for(package_db_kind, tmp_path_factory.mktemp("hub")) as url:
        with running_hub(config, roles=ROLES, database_url=url) as h:
            h.box = box
            yield h


@pytest.fixture
def session_for(hub):
    """``async with session_for(transport, token) as s`` for transport "stdio" or "http"."""
    def open_session(transport: str, token: str):
        return stdio_session(hub.url, token) if transport == "stdio" else http_session(hub.url, token)

    return open_session
