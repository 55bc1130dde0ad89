"""`[mcp] stateless = false`: sessions with an Mcp-Session-Id, bound to the token that opened them; and
a hub that stops (SIGTERM) while an MCP session is open. No LXD needed: messaging only."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from claude_net.testing import database_for
from claude_net_mcp.tools import AGENT_TOOLS
from mcp_helpers import http_session, running_hub

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
           "MCP-Protocol-Version": "2025-06-18"}


@pytest.fixture(scope="module")
def stateful_hub(package_db_kind, tmp_path_factory):
    with database_for(package_db_kind, tmp_path_factory.mktemp("hub")) as url:
        with running_hub('[plugins]\nallow = ["mcp"]\n[mcp]\nstateless = false\n',
                         roles={"one": False, "two": False}, database_url=url) as hub:
            yield hub


def test_a_session_belongs_to_the_token_that_opened_it(stateful_hub):
    hub = stateful_hub
    one, two = ({"Authorization": f"Bearer {hub.tokens[r]}", **HEADERS} for r in ("one", "two"))
    with httpx.Client(base_url=hub.url, timeout=10) as client:
        response = client.post("/mcp", json=INIT, headers=one)
        session = response.headers["mcp-session-id"]
        assert response.status_code == 200 and session
        assert client.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                           headers={**one, "mcp-session-id": session}).status_code == 202
        response = client.post("/mcp", json=LIST, headers={**one, "mcp-session-id": session})
        assert response.status_code == 200 and "claude_net_exec" in response.text
        response = client.post("/mcp", json=LIST, headers={**two, "mcp-session-id": session})
        assert response.status_code == 404  # another token cannot ride on it, not even learn it exists
        assert client.delete("/mcp", headers={**one, "mcp-session-id": session}).status_code in (200, 204)
        assert client.post("/mcp", json=LIST, headers={**one, "mcp-session-id": session}).status_code == 404


async def test_sdk_client_in_stateful_mode(stateful_hub):
    hub = stateful_hub
    async with http_session(hub.url, hub.tokens["one"]) as one, http_session(hub.url, hub.tokens["two"]) as two:
        assert len((await one.list_tools()).tools) == len(AGENT_TOOLS)
        result = await one.call_tool("claude_net_send", {"to": hub.names["two"], "message": "stateful hello"})
        assert not result.is_error, result.content[0].text
        result = await two.call_tool("claude_net_inbox", {})
        assert [m["message"] for m in result.structured_content["messages"]] == ["stateful hello"]


async def test_the_hub_stops_with_a_session_open(stateful_hub):
    """SIGTERM with a client's standalone SSE stream open: the hub closes its sessions at once and
    exits cleanly, well before Hypercorn's 10 s graceful timeout would cut the stream."""
    hub = stateful_hub
    async with http_session(hub.url, hub.tokens["one"]) as one:
        await one.list_tools()
        started = time.monotonic()
        code = await asyncio.get_running_loop().run_in_executor(None, hub.stop)
        took = time.monotonic() - started
    assert code == 0, hub.log()
    assert took < 5, f"the hub took {took:.1f} s to stop"
    assert "failed to shut down" not in hub.log(), hub.log()
