"""Helpers for the MCP tests: a hub process, and the SDK client sessions over stdio and streamable
HTTP of :mod:`claude_net_mcp.testing` (imported by name, not from conftest, which is ambiguous across
test directories)."""

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

from claude_net.testing import free_port
from claude_net_mcp.testing import http_session as _http_session
from claude_net_mcp.testing import mcp_command, stdio_session  # noqa: F401 (for the tests)

#: every container and token name of this run starts with it
RUN = f"cnm-{secrets.token_hex(3)}"
ALLOWED_ORIGIN = "https://console.example.test"


def http_session(url: str, token: str):
    """An initialized ``mcp.ClientSession`` on the hub's streamable HTTP endpoint; reads may take
    120 s (the long-poll tools' waits fit in it)."""
    return _http_session(url, token, timeout=120)


@dataclass
class Hub:
    url: str
    dir: Path
    env: dict[str, str]
    box: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "claude_net.cli", *args], env=self.env, cwd=self.dir,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def token(self, role: str, *, admin: bool = False) -> tuple[str, str]:
        """(node name, token) for ``role``, created once."""
        if role not in self.tokens:
            name = f"{RUN}-{role}"
            self.tokens[role] = self.cli("token", "create", name, "--replace", *(["--admin"] if admin else []))
            self.names[role] = name
        return self.names[role], self.tokens[role]

    def log(self) -> str:
        return (self.dir / "hub.log").read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 15) -> int | None:
        """Terminate the hub (SIGTERM: graceful) and return its exit code; killed if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"the hub did not stop within {timeout:g}s: {self.log()}") from None
        return self.proc.returncode


@contextlib.contextmanager
def running_hub(config: str, *, roles: dict[str, bool], database_url: str | None = None):
    """``claude-net serve`` (a temp dir; SQLite there unless ``database_url``) with ``config``
    appended; tokens for ``roles`` first."""
    workdir = Path(tempfile.mkdtemp(prefix="cn-mcp-"))
    port = free_port()
    path = workdir / "claude-net.toml"
    database_url = database_url or f"sqlite+aiosqlite:///{workdir / 'hub.db'}"
    path.write_text(f'port = {port}\nlog_level = "warning"\n'
                    f'database_url = "{database_url}"\n' + config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_NET_")}
    env["CLAUDE_NET_CONFIG"] = str(path)
    h = Hub(url=f"http://127.0.0.1:{port}", dir=workdir, env=env)
    try:
        for role, admin in roles.items():
            h.token(role, admin=admin)
        with open(workdir / "hub.log", "wb") as log:
            h.proc = subprocess.Popen([sys.executable, "-m", "claude_net.cli", "serve"], env=env, cwd=workdir,
                                      stdout=log, stderr=subprocess.STDOUT)
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
        code = h.stop()  # a clean exit: the MCP session managers and the in-process client shut down
        assert code == 0 and "failed to shut down" not in h.log(), h.log()
    finally:
        h.stop()
        shutil.rmtree(workdir, ignore_errors=True)
