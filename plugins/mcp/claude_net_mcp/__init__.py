"""claude-net-mcp: the claude_net_* MCP tools for every agent (entry point ``mcp``).

Two ways in, one set of tools:

* ``claude-net-mcp`` (:mod:`claude_net_mcp.stdio`), the stdio server each agent runs in its own
  container with ``CLAUDE_NET_URL`` and ``CLAUDE_NET_TOKEN``;
* the hub's own streamable HTTP endpoint at ``/mcp`` (this module's hooks), authenticated with
  the same bearer tokens.

Either way a tool is a call to the hub's HTTP API with the caller's token, so the hub authorizes,
validates and records it. Agents see nine tools, admins sixteen. See docs/mcp.md.

Hook implementations only, and nothing heavy imported here: the CLI loads this module for
``--help``. The MCP SDK and httpx are imported when the hub starts (:mod:`.runtime`).
"""

from __future__ import annotations

from claude_net import hookimpl

__version__ = "0.1.0"

STATE_KEY = "mcp"


@hookimpl
def config_sections():
    from .settings import SECTIONS

    return SECTIONS


@hookimpl
def register_asgi_apps(hub):
    settings = hub.settings.section("mcp")
    if not settings.enabled:
        return []
    if settings.path == "/api" or settings.path.startswith("/api/") or not settings.path.startswith("/"):
        raise ValueError(f"[mcp] path {settings.path!r} must start with '/' and not be under /api")
    from .endpoint import McpEndpoint

    return [(settings.path, McpEndpoint(hub, settings.path))]


@hookimpl
def startup(hub):
    settings = hub.settings.section("mcp")
    if not settings.enabled or getattr(hub, "app", None) is None:
        return None  # no HTTP app (e.g. a hub opened by the CLI): nothing to serve
    from .runtime import HubMcpRuntime  # imports the MCP SDK

    runtime = HubMcpRuntime(hub, settings)

    async def start():
        await runtime.start()
        hub.plugin_state[STATE_KEY] = runtime

    return start()


@hookimpl
def shutdown(hub):
    runtime = hub.plugin_state.pop(STATE_KEY, None)
    return runtime.stop() if runtime is not None else None
