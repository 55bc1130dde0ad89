"""Start a real hub (``claude-net serve`` under Hypercorn) in a subprocess for benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubProcess:
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

    def start(self, timeout: float = 30) -> HubProcess:
        self.log = open(self.dir / "hub.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "claude_net.cli", "serve"], env=self.env, cwd=self.dir,
                                     stdout=self.log, stderr=subprocess.STDOUT)
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
