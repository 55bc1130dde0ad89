"""Fixtures for the MCP tests: a real hub (``claude-net serve`` in a subprocess, SQLite) with the
lxd, permissions, activity and mcp plugins, one throwaway LXD container it lists, and MCP client
sessions from the SDK over stdio (the ``claude-net-mcp`` subprocess) and streamable HTTP (/mcp).

Everything is module-scoped and always torn down: the hub is terminated, the container deleted.
Without LXD the tests skip locally and fail under ``CI=true`` (``require_component``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from claude_net.testing import free_port, require_component

IMAGE = os.environ.get("LXD_IMAGE_ALIAS", "claude-net-busybox")
#: every container and token name of this run starts with it
RUN = f"cnm-{secrets.token_hex(3)}"
ALLOWED_ORIGIN = "https://console.example.test"
BIN = Path(sys.executable).parent
#: token holders of the module: role -> admin
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


@pytest.fixture
def database_url(tmp_path):
    """The hub under test runs in its own process on SQLite; nothing here needs PostgreSQL."""
    return f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"


@dataclass
class Hub:
    url: str
    dir: Path
    env: dict[str, str]
    box: str
    tokens: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "claude_net.cli", *args], env=self.env, cwd=self.dir,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def token(self, role: str, *, admin: bool = False) -> tuple[str, str]:
        """(node name, token) for ``role``, created once per module."""
        if role not in self.tokens:
            name = f"{RUN}-{role}"
            self.tokens[role] = self.cli("token", "create", name, "--replace", *(["--admin"] if admin else []))
            self.names[role] = name
        return self.names[role], self.tokens[role]

    def log(self) -> str:
        return (self.dir / "hub.log").read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def lxd_ok():
    ok, why = _lxd_state()
    require_component("LXD", ok, why)


@pytest.fixture(scope="module")
def box(lxd_ok):
    """A running busybox container, deleted at the end of the module whatever happens."""
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
        lxc("delete", "--force", name, check=False, timeout=60)
        # snapshots go with the container; nothing else of ours is left behind


@pytest.fixture(scope="module")
def hub(box):
    """``claude-net serve`` on a free port with the plugins under test; only our container is listed."""
    workdir = Path(tempfile.mkdtemp(prefix="cn-mcp-"))
    port = free_port()
    config = workdir / "claude-net.toml"
    config.write_text(
        f'port = {port}\nlog_level = "warning"\n'
        f'database_url = "sqlite+aiosqlite:///{workdir / "hub.db"}"\n'
        '[plugins]\nallow = ["lxd", "permissions", "activity", "mcp"]\n'
        f'[lxd]\ninclude = ["{RUN}-*"]\n'
        f'[mcp]\nallowed_origins = ["{ALLOWED_ORIGIN}"]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_NET_")}
    env["CLAUDE_NET_CONFIG"] = str(config)
    h = Hub(url=f"http://127.0.0.1:{port}", dir=workdir, env=env, box=box)
    for role, admin in ROLES.items():  # before the hub starts, so its first node listing has them all
        h.token(role, admin=admin)
    with open(workdir / "hub.log", "wb") as log:
        h.proc = subprocess.Popen([sys.executable, "-m", "claude_net.cli", "serve"], env=env, cwd=workdir,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if h.proc.poll() is not None:
                raise RuntimeError(f"the hub exited: {h.log()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(h.url + "/api/health", timeout=1) as r:
                    if json.loads(r.read())["ok"]:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hub did not start: {h.log()}")
            time.sleep(0.1)
        yield h
    finally:
        if h.proc.poll() is None:
            h.proc.terminate()
            try:
                h.proc.wait(15)
            except subprocess.TimeoutExpired:
                h.proc.kill()
                h.proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def mcp_command() -> str:
    path = BIN / "claude-net-mcp"
    return str(path) if path.exists() else (shutil.which("claude-net-mcp") or "claude-net-mcp")


@contextlib.asynccontextmanager
async def stdio_session(url: str, token: str, *args: str):
    """An initialized ``mcp.ClientSession`` on a ``claude-net-mcp`` subprocess (stderr kept for asserts)."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=mcp_command(), args=list(args),
                                   env={"CLAUDE_NET_URL": url, "CLAUDE_NET_TOKEN": token})
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


@contextlib.asynccontextmanager
async def http_session(url: str, token: str):
    """An initialized ``mcp.ClientSession`` on the hub's streamable HTTP endpoint."""
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx2.Timeout(120, connect=10)) as http:
        async with streamable_http_client(url + "/mcp", http_client=http) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            yield session


@pytest.fixture
def session_for(hub):
    """``async with session_for(transport, token) as s`` for transport "stdio" or "http"."""
    def open_session(transport: str, token: str):
        return stdio_session(hub.url, token) if transport == "stdio" else http_session(hub.url, token)

    return open_session
