"""``claude-net-mcp``: the MCP server an agent runs in its own container, over stdio.

It reads ``CLAUDE_NET_URL`` (default ``http://127.0.0.1:8765``) and ``CLAUDE_NET_TOKEN``, asks
the hub who the token belongs to (``GET /api/whoami``), and offers the six agent tools — all
thirteen when the token is an admin's. Every tool call is a request to the hub's HTTP API with
that token over one pooled connection; the hub authorizes and records it.

stdout carries the MCP protocol; diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_URL = "http://127.0.0.1:8765"


def _say(text: str) -> None:
    print(f"claude-net-mcp: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from . import __version__
    from .settings import DEFAULT_MAX_OUTPUT

    parser = argparse.ArgumentParser(
        prog="claude-net-mcp",
        description="MCP server (stdio) with the claude_net_* tools. Needs CLAUDE_NET_TOKEN; the hub is "
                    f"CLAUDE_NET_URL (default {DEFAULT_URL}).",
    )
    parser.add_argument("--url", default=os.environ.get("CLAUDE_NET_URL") or DEFAULT_URL,
                        help="the hub's base URL (default: $CLAUDE_NET_URL or %(default)s)")
    parser.add_argument("--max-output", type=int, default=DEFAULT_MAX_OUTPUT, metavar="CHARS",
                        help="longest text a tool returns per output stream or file (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long a tool waits for the hub (exec: its own timeout plus 15 s; "
                             "default %(default)s)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    token = os.environ.get("CLAUDE_NET_TOKEN", "").strip()
    if not token:
        _say("CLAUDE_NET_TOKEN is not set. Set it to this node's hub token (an admin creates one on the hub "
             "host with `claude-net token create NODE`).")
        return 2
    if args.max_output < 200:
        _say("--max-output must be at least 200 characters")
        return 2

    import anyio

    try:
        return anyio.run(_serve, args.url.rstrip("/"), token, args.max_output, args.timeout)
    except KeyboardInterrupt:
        return 130


async def _whoami(client) -> tuple[dict | None, str | None]:
    """(who, None), or (None, fatal reason), or ({}, warning) when the hub cannot say right now."""
    from .client import HubCallError

    try:
        return await client.call("GET", "/api/whoami", timeout=min(client.timeout, 10.0)), None
    except HubCallError as err:
        if err.status == 401:
            return None, (f"the hub at {client.url} rejected CLAUDE_NET_TOKEN ({err.message}). Check the token "
                          "(an admin creates one with `claude-net token create NODE --replace`).")
        if err.status == 404:  # a hub without /api/whoami: the admin-only listing tells the roles apart
            try:
                await client.call("GET", "/api/permissions", timeout=10.0)
                return {"name": "?", "admin": True}, None
            except HubCallError as probe:
                if probe.status == 403:
                    return {"name": "?", "admin": False}, None
                return {}, probe.message
        return {}, err.message


async def _serve(url: str, token: str, max_output: int, timeout: float) -> int:
    import httpx

    from .client import HubClient
    from .tools import DEFAULT_LIMITS, Caller, ToolHost, build_server

    limits = httpx.Limits(max_connections=20, max_keepalive_connections=5, keepalive_expiry=30.0)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}",
                                                        "User-Agent": "claude-net-mcp"},
                                 timeout=httpx.Timeout(timeout, connect=10.0), limits=limits) as http:
        client = HubClient(http, url=url, timeout=timeout)
        who, problem = await _whoami(client)
        if who is None:
            _say(problem or "cannot start")
            return 1
        if problem:
            _say(f"could not ask the hub who this token belongs to ({problem}); offering the agent tools only "
                 "until restarted")
        caller = Caller(name=str(who.get("name") or "this node"), admin=bool(who.get("admin")))
        host = ToolHost(client=client, via="stdio", caller=caller,
                        limits={**DEFAULT_LIMITS, **(who.get("limits") or {})}, max_output=max_output)
        server = build_server(host, admin=caller.admin)
        await server.run_stdio_async()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
