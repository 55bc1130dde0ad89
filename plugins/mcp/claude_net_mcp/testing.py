"""Real MCP client sessions on this plugin's two servers, for tests and benchmarks.

``async with http_session(url, token) as session:`` an initialized ``mcp.ClientSession`` from
the SDK on the hub's streamable HTTP endpoint (``/mcp``); ``async with stdio_session(url, token)``
the same on a ``claude-net-mcp`` subprocess, the stdio server an agent runs. One place for both,
so the tests and bench/bench_mcp_cost.py measure and check the same client.

The SDK is imported inside the functions: importing this module stays as light as the package.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any


def mcp_command() -> str:
    """The ``claude-net-mcp`` beside this interpreter (the venv under test), else the one on PATH."""
    path = Path(sys.executable).parent / "claude-net-mcp"
    return str(path) if path.exists() else (shutil.which("claude-net-mcp") or "claude-net-mcp")


@contextlib.asynccontextmanager
async def http_session(url: str, token: str, *, timeout: float = 60, connect_timeout: float = 10
                       ) -> AsyncIterator[Any]:
    """An initialized ``mcp.ClientSession`` on ``url``'s ``/mcp`` with ``token``; ``timeout`` bounds
    each HTTP read (a long-poll tool call must fit in it), ``connect_timeout`` the connection."""
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx2.Timeout(timeout, connect=connect_timeout)) as http:
        async with streamable_http_client(url + "/mcp", http_client=http) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            yield session


@contextlib.asynccontextmanager
async def stdio_session(url: str, token: str, *args: str, env: Mapping[str, str] | None = None
                        ) -> AsyncIterator[Any]:
    """An initialized ``mcp.ClientSession`` on a ``claude-net-mcp ARGS`` subprocess that talks to
    the hub at ``url`` with ``token``. The server gets the SDK's safe default environment plus
    ``env`` (``env=os.environ`` passes everything), then ``CLAUDE_NET_URL`` and ``CLAUDE_NET_TOKEN``.
    Its stderr goes to a temporary file, not to the test's output."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=mcp_command(), args=list(args),
                                   env={**(env or {}), "CLAUDE_NET_URL": url, "CLAUDE_NET_TOKEN": token})
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session
