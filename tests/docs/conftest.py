"""Fixtures for the docs tests: the real Claude Code CLI (installed by ``scripts/dev-services claude``)."""

from __future__ import annotations

import contextlib
import secrets
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from claude_net.testing import HubProcess, require_component
from tests.plugins.lxd_backend.conftest import IMAGE, _lxd_state, lxc, wait_running

#: where scripts/dev-services installs it (CLAUDE_CODE_DIR there)
CLAUDE_CODE_DIR = Path(os.environ.get("CLAUDE_CODE_DIR", "/opt/claude-net-ci/claude-code"))


def claude_binary() -> str | None:
    for candidate in (os.environ.get("CLAUDE_NET_CLAUDE_BIN"), str(CLAUDE_CODE_DIR / "node_modules/.bin/claude"),
                      shutil.which("claude")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def claude_bin() -> str:
    """The path of the real ``claude`` CLI; skips locally, fails under CI=true when missing."""
    path = claude_binary()
    ok = False
    if path is not None:
        try:
            ok = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
    require_component("Claude Code CLI", ok, "run scripts/dev-services claude (npm @anthropic-ai/claude-code)")
    return path


#: seconds a hub process may take to answer /api/health (the machine is shared by parallel runs)
HUB_START_TIMEOUT = 120


@contextlib.contextmanager
def hub_process(config_text: str, database_url: str, workdir: Path):
    """A real ``claude-net serve`` with the installed plugins, stopped afterwards."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    process = HubProcess(config_text, database_url=database_url, workdir=str(workdir))
    try:
        yield process.start(timeout=HUB_START_TIMEOUT)
    finally:
        process.stop()


@pytest.fixture
def seanclaude():
    """A fresh busybox container standing in for the docs' seanclaude (deleted afterwards)."""
    ok, why = _lxd_state()
    require_component("LXD", ok, why)
    name = f"cnt-{secrets.token_hex(3)}-seanclaude"
    lxc("launch", IMAGE, name)
    try:
        wait_running(name)
        yield name
    finally:
        lxc("delete", "--force", name, check=False, timeout=60)
