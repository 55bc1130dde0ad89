"""``claude-net-mcp``: the MCP server an agent runs in its own container, over stdio.

It reads ``CLAUDE_NET_URL`` (default ``http://127.0.0.1:8765``) and ``CLAUDE_NET_TOKEN``, asks
the hub who the token belongs to (``GET /api/whoami``), and offers the six agent tools — all
thirteen when the token is an admin's. Every tool call is a request to the hub's HTTP API with
that token over one pooled connection; the hub authorizes and records it.

It is also a Claude Code *channel* (:mod:`.channel`): it declares ``claude/channel`` and pushes the
node's messages into the session as they arrive (``--no-channel`` turns that off), and, with
``--permission-relay``, relays Claude Code's tool-approval prompts to the hub's admin (:mod:`.relay`).

stdout carries the MCP protocol; diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_URL = "http://127.0.0.1:8765"
TRUE = ("1", "true", "yes", "on")


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
    parser.add_argument("--no-channel", action="store_true",
                        help="do not push this node's messages into the session (no claude/channel capability)")
    parser.add_argument("--push", choices=("auto", "always"),
                        default=os.environ.get("CLAUDE_NET_PUSH", "auto").strip().lower() or "auto",
                        help="auto (default): push only to Claude Code or to a client that declares the "
                             "experimental capability claude/channel itself; always: to any client (also "
                             "CLAUDE_NET_PUSH). A pushed message stays unread on the hub until acked.")
    parser.add_argument("--channel-wait", type=float, default=25.0, metavar="SECONDS",
                        help="how long each wait for new messages stays open on the hub (at most the hub's "
                             "[messaging] max_wait; lower it below an idle timeout of a proxy in between; "
                             "default %(default)s)")
    parser.add_argument("--permission-relay", action="store_true",
                        default=os.environ.get("CLAUDE_NET_PERMISSION_RELAY", "").strip().lower() in TRUE,
                        help="relay Claude Code's permission prompts to the hub's admin (declares "
                             "claude/channel/permission; also CLAUDE_NET_PERMISSION_RELAY=1)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    token = os.environ.get("CLAUDE_NET_TOKEN", "").strip()
    if not token:
        _say("CLAUDE_NET_TOKEN is not set. Set it to this node's hub token (an admin creates one on the hub "
             "host with `claude-net token create NODE`).")
        return 2
    if args.push not in ("auto", "always"):
        _say("CLAUDE_NET_PUSH must be auto or always")
        return 2
    if not 1 <= args.channel_wait <= 3600:
        _say("--channel-wait must be between 1 and 3600 seconds")
        return 2
    if args.max_output < 200:
        _say("--max-output must be at least 200 characters")
        return 2

    import anyio

    try:
        return anyio.run(_serve, args.url.rstrip("/"), token, args.max_output, args.timeout,
                         not args.no_channel, args.permission_relay, args.channel_wait, args.push)
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


async def _serve(url: str, token: str, max_output: int, timeout: float, push: bool = True,
                 relay: bool = False, channel_wait: float = 25.0, push_to: str = "auto") -> int:
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
        if not push and not relay:
            await server.run_stdio_async()
        else:
            await _serve_channel(server, client, push=push, relay=relay, wait=channel_wait, push_to=push_to)
    return 0


async def _serve_channel(server, client, *, push: bool, relay: bool, wait: float, push_to: str = "auto") -> None:
    """The MCP server over stdio with the channel's capabilities, its push loop and its relay.

    The SDK's ``MCPServer`` runs stdio only with its own streams and no experimental capabilities,
    so this drives its low-level server on streams whose writer reports each channel notification
    once it is flushed to the client: a message is marked pushed on the hub only after that.
    """
    import signal

    import anyio
    from mcp.shared.message import SessionMessage
    from mcp_types import JSONRPCNotification

    from .channel import (CHANNEL_CAPABILITY, CHANNEL_INSTRUCTIONS, CHANNEL_METHOD, PERMISSION_CAPABILITY,
                          PERMISSION_REQUEST_METHOD, WRITE_TIMEOUT, ChannelPump, say, stdio_streams, takes_pushes)
    from .relay import PermissionRelay

    initialized = anyio.Event()
    written: dict[str, anyio.Event] = {}
    client_takes_pushes = push_to == "always"

    def on_written(params: dict) -> None:
        event = written.get(str((params.get("meta") or {}).get("message_id")))
        if event is not None:
            event.set()

    async def middleware(ctx, call_next):
        nonlocal client_takes_pushes
        if ctx.method == "initialize":
            client_takes_pushes = client_takes_pushes or takes_pushes(ctx.params)
        if ctx.method == PERMISSION_REQUEST_METHOD:
            if relay and initialized.is_set():
                relayer.submit(ctx.params)
            return None  # not the SDK's to handle
        result = await call_next(ctx)
        if ctx.method == "notifications/initialized":
            initialized.set()
        return result

    server.middleware.append(middleware)
    lowlevel = server._lowlevel_server  # noqa: SLF001 - see the docstring; mcp is pinned below 3
    experimental = {CHANNEL_CAPABILITY: {}}
    if relay:
        experimental[PERMISSION_CAPABILITY] = {}
    options = lowlevel.create_initialization_options(experimental_capabilities=experimental)
    if push:
        options = options.model_copy(update={"instructions": (options.instructions or "") + CHANNEL_INSTRUCTIONS})

    async with stdio_streams(on_written) as (read_stream, write_stream):
        async def notify(method: str, params: dict) -> None:
            await write_stream.send(SessionMessage(JSONRPCNotification(jsonrpc="2.0", method=method, params=params)))

        async def push_one(params: dict) -> None:
            key = params["meta"]["message_id"]
            written[key] = done = anyio.Event()
            try:
                await notify(CHANNEL_METHOD, params)
                with anyio.fail_after(WRITE_TIMEOUT):
                    await done.wait()
            finally:
                written.pop(key, None)

        relayer = PermissionRelay(client, notify)

        async def pump() -> None:
            await initialized.wait()
            if not client_takes_pushes:
                say("pushes are off for this client: it is not Claude Code and does not declare claude/channel "
                    "(messages wait for claude_net_inbox; --push always overrides)")
                return
            try:
                await ChannelPump(client, push_one, wait=wait).run()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, TimeoutError):
                pass  # the client went away: the session is ending

        async def stop_on_sigterm(scope) -> None:
            # MCP clients stop a stdio server by closing stdin, then SIGTERM after a short grace:
            # either way the pending relays are withdrawn on the hub before the process ends
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            relayer.task_group = tg
            if push:
                tg.start_soon(pump)
            tg.start_soon(stop_on_sigterm, tg.cancel_scope)
            try:
                await lowlevel.run(read_stream, write_stream, options)
            finally:
                with anyio.CancelScope(shield=True):
                    await relayer.cancel_all()
                tg.cancel_scope.cancel()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
