"""The agent-side MCP walkthrough of docs/mcp.md, run for real and printed as a transcript.

Starts a throwaway hub (``claude-net serve`` on a free port, SQLite in a temp dir, plugins lxd,
permissions, activity and mcp), launches an LXD container ``seanclaude`` from the busybox test
image (``scripts/lxd-setup``), creates tokens for managerclaude, seanclaude and the admin
chasclaude, then plays the story through real MCP client sessions from the SDK:
managerclaude and seanclaude each through their own ``claude-net-mcp`` (stdio), chasclaude
through the hub's streamable HTTP endpoint ``/mcp``. Everything is removed at the end.

    .venv/bin/python docs/examples/mcp_walkthrough.py            # needs LXD; refuses if seanclaude exists
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

IMAGE = os.environ.get("LXD_IMAGE_ALIAS", "claude-net-busybox")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lxc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["lxc", *args], check=check, capture_output=True, text=True, timeout=120)


class Hub:
    def __init__(self, container: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cn-walkthrough-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.dir / "claude-net.toml"
        config.write_text(
            f'port = {self.port}\nlog_level = "warning"\nadmins = ["chasclaude"]\n'
            f'database_url = "sqlite+aiosqlite:///{self.dir / "hub.db"}"\n'
            '[plugins]\nallow = ["lxd", "permissions", "activity", "mcp"]\n'
            f'[lxd]\ninclude = ["{container}"]\n'
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_NET_")}
        self.env["CLAUDE_NET_CONFIG"] = str(config)
        self.proc: subprocess.Popen | None = None

    def token(self, name: str) -> str:
        out = subprocess.run([sys.executable, "-m", "claude_net.cli", "token", "create", name, "--replace"],
                             env=self.env, capture_output=True, text=True, check=True, timeout=60)
        return out.stdout.strip()

    def start(self) -> None:
        log = open(self.dir / "hub.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "claude_net.cli", "serve"], env=self.env, cwd=self.dir,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "hub.log").read_text())
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/api/health", timeout=1) as r:
                    if json.loads(r.read())["ok"]:
                        return
            time.sleep(0.1)
        raise RuntimeError("the hub did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def stdio_agent(url: str, token: str):
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    command = str(BIN / "claude-net-mcp") if (BIN / "claude-net-mcp").exists() else "claude-net-mcp"
    params = StdioServerParameters(command=command, env={"CLAUDE_NET_URL": url, "CLAUDE_NET_TOKEN": token})
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params, errlog=errlog) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            yield session


@contextlib.asynccontextmanager
async def http_agent(url: str, token: str):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async with streamable_http_client(url + "/mcp", http_client=http) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            yield session


async def show(who: str, session, tool: str, args: dict | None = None, *, structured: bool = False) -> None:
    shown = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in (args or {}).items())
    result = await session.call_tool(tool, args or {})
    print(f">>> {who}: {tool}({shown})" + ("   [isError]" if result.is_error else ""))
    for block in result.content:
        for line in block.text.splitlines() or [""]:
            print(f"    {line}")
    if structured and result.structured_content is not None:
        print("    structuredContent: " + json.dumps(result.structured_content, ensure_ascii=False))
    print()


async def story(hub: Hub, tokens: dict[str, str]) -> None:
    async with stdio_agent(hub.url, tokens["managerclaude"]) as manager, \
            stdio_agent(hub.url, tokens["seanclaude"]) as sean, \
            http_agent(hub.url, tokens["chasclaude"]) as chas:
        for who, session in (("managerclaude", manager), ("chasclaude", chas)):
            names = [t.name for t in (await session.list_tools()).tools]
            print(f"# {who} is offered {len(names)} tools: {', '.join(names)}\n")
        await show("managerclaude", manager, "claude_net_machines")
        await show("managerclaude", manager, "claude_net_send",
                   {"to": "seanclaude", "message": "can you review PR 12? I will look at your build log."})
        await show("seanclaude", sean, "claude_net_inbox")
        await show("managerclaude", manager, "claude_net_exec",
                   {"target": "seanclaude", "command": "cat /root/build.log"})
        await show("chasclaude", chas, "claude_net_permit",
                   {"source": "managerclaude", "target": "seanclaude", "allow": True})
        await show("managerclaude", manager, "claude_net_exec",
                   {"target": "seanclaude", "command": "echo hello from $(hostname); uname -sr"}, structured=True)
        await show("managerclaude", manager, "claude_net_file_write",
                   {"target": "seanclaude", "path": "/root/review.md", "content": "PR 12: looks good, one nit.\n"})
        await show("managerclaude", manager, "claude_net_file_read",
                   {"target": "seanclaude", "path": "/root/review.md"})
        await show("managerclaude", manager, "claude_net_exec",
                   {"target": "seanclaude", "command": "sleep 30", "timeout": 2})
        await show("chasclaude", chas, "claude_net_activity", {"hours": 1})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--container", default="seanclaude", help="LXD container to create (default %(default)s)")
    args = parser.parse_args()
    if args.container != "seanclaude":
        print("note: the story's agent is called seanclaude; --container only renames the container",
              file=sys.stderr)
    if shutil.which("lxc") is None or lxc("info", args.container, check=False).returncode == 0:
        print(f"need LXD (scripts/lxd-setup) and no existing container named {args.container}", file=sys.stderr)
        return 2
    lxc("launch", IMAGE, args.container)
    hub = Hub(args.container)
    try:
        tokens = {name: hub.token(name) for name in ("managerclaude", "seanclaude", "chasclaude")}
        hub.start()
        asyncio.run(story(hub, tokens))
    finally:
        hub.stop()
        remove(args.container)
    return 0


def remove(container: str, attempts: int = 20) -> None:
    """Delete the container, retrying while the LXD daemon is briefly unavailable (e.g. restarting)."""
    for _ in range(attempts):
        if lxc("delete", "--force", container, check=False).returncode == 0:
            return
        if "not found" in lxc("info", container, check=False).stderr.lower():
            return
        time.sleep(3)
    print(f"could not delete the container {container}: remove it with `lxc delete --force {container}`",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
