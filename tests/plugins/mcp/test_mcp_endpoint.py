"""The hub's /mcp endpoint at the HTTP level: bearer tokens only, Origin checked as the MCP spec
requires, rejections in the hub's JSON error shape and recorded; and the stdio server's start-up
checks. Plus the plugin's promise to the CLI: importing it loads neither the MCP SDK nor httpx.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from claude_net.testing import free_port
from claude_net_mcp.endpoint import origin_allowed
from claude_net_mcp.tools import ADMIN_TOOLS, AGENT_TOOLS
from mcp_helpers import ALLOWED_ORIGIN, mcp_command, stdio_session

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
BAD_TOKEN = "cn_000000000000_" + "A" * 43


def post(hub, headers: dict[str, str], path: str = "/mcp") -> httpx.Response:
    return httpx.post(hub.url + path, json=INIT, headers={**MCP_HEADERS, **headers}, timeout=10)


def test_mcp_needs_a_valid_bearer_token(hub):
    _, token = hub.token("agent-other")
    for headers, code in [({}, "missing_token"), ({"Authorization": f"Bearer {BAD_TOKEN}"}, "invalid_token"),
                          ({"Authorization": "Basic dXNlcjpwdw=="}, "bad_auth_header"),
                          ({"Authorization": "Bearer"}, "bad_auth_header")]:
        response = post(hub, headers)
        assert response.status_code == 401, headers
        assert response.json() == {"ok": False, "error": response.json()["error"], "code": code}
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = post(hub, {"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and "serverInfo" in response.text

    name, _ = hub.token("revoked")
    revoked = hub.tokens["revoked"]
    assert post(hub, {"Authorization": f"Bearer {revoked}"}).status_code == 200
    hub.cli("token", "revoke", name)
    assert post(hub, {"Authorization": f"Bearer {revoked}"}).json()["code"] == "invalid_token"


@pytest.mark.parametrize("origin, allowed", [
    (None, True),                                     # non-browser clients send none
    ("http://localhost:5173", True), ("https://127.0.0.1", True), ("http://[::1]:8080", True),
    (ALLOWED_ORIGIN, True),                           # [mcp] allowed_origins
    ("https://evil.example", False), ("null", False), ("http://localhost.evil.example", False),
    (ALLOWED_ORIGIN + ".evil.example", False), ("http://10.0.3.1:8765", False),
])
def test_origin_is_checked(hub, origin, allowed):
    _, token = hub.token("agent-other")
    headers = {"Authorization": f"Bearer {token}"} | ({"Origin": origin} if origin else {})
    response = post(hub, headers)
    if allowed:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 403
        assert response.json()["code"] == "origin_not_allowed" and "allowed_origins" in response.json()["error"]


def test_origin_rules():
    assert origin_allowed("http://10.0.3.1:8765", ["http://10.0.3.1:*"])
    assert not origin_allowed("http://10.0.3.1:8765x", ["http://10.0.3.1:*"])
    assert not origin_allowed("http://10.0.3.15:8765", ["http://10.0.3.1:*"])
    assert origin_allowed("https://a.example.org", ["https://*.example.org"])
    assert origin_allowed("https://anything.example", ["*"])
    assert not origin_allowed("http://user@localhost.evil:1", [])
    assert not origin_allowed("file://localhost", [])
    assert not origin_allowed("http://localhost:99999", [])
    assert origin_allowed("HTTP://LOCALHOST:3000/", [])


def test_other_paths_and_rejections_are_recorded(hub):
    response = post(hub, {}, path="/mcp/other")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    post(hub, {"Authorization": f"Bearer {BAD_TOKEN}"})
    post(hub, {"Origin": "https://evil.example"})
    _, admin = hub.token("admin", admin=True)
    rows = httpx.get(hub.url + "/api/activity", params={"hours": 1, "type": "auth", "limit": 1000},
                     headers={"Authorization": f"Bearer {admin}"}, timeout=10).json()["events"]
    details = [(r["result"], r["via"], r["detail"]) for r in rows]
    assert any(res == "denied" and via == "mcp" and "invalid or revoked token" in d for res, via, d in details)
    assert any(res == "denied" and via == "mcp" and "evil.example" in d for res, via, d in details)


def test_stdio_server_refuses_to_start_without_a_good_token(hub):
    run = lambda env: subprocess.run([mcp_command()], env=env, stdin=subprocess.DEVNULL, capture_output=True,  # noqa: E731
                                     text=True, timeout=60)
    result = run({"PATH": "/usr/bin:/bin", "CLAUDE_NET_URL": hub.url})
    assert result.returncode == 2 and "CLAUDE_NET_TOKEN is not set" in result.stderr
    result = run({"PATH": "/usr/bin:/bin", "CLAUDE_NET_URL": hub.url, "CLAUDE_NET_TOKEN": BAD_TOKEN})
    assert result.returncode == 1 and "rejected CLAUDE_NET_TOKEN" in result.stderr and result.stdout == ""


async def test_stdio_server_without_a_hub_explains_itself():
    """The hub is down at start: agent tools only, and each call says what to check."""
    url = f"http://127.0.0.1:{free_port()}"
    async with stdio_session(url, BAD_TOKEN) as session:
        assert len((await session.list_tools()).tools) == len(AGENT_TOOLS)
        result = await session.call_tool("claude_net_machines", {})
        assert result.is_error and "cannot reach the hub" in result.content[0].text
        assert "CLAUDE_NET_URL" in result.content[0].text


def test_importing_the_plugin_stays_light():
    code = ("import sys, claude_net_mcp, claude_net_mcp.endpoint, claude_net_mcp.settings; "
            "heavy = [m for m in ('mcp', 'httpx', 'pydantic', 'starlette') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
async def test_modern_protocol_clients(hub, mode):
    """The 2026-07-28 single-exchange protocol (no initialize, no session) gets the same tools per role."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    for role, count in (("agent-other", len(AGENT_TOOLS)), ("admin", len(AGENT_TOOLS + ADMIN_TOOLS))):
        headers = {"Authorization": f"Bearer {hub.tokens[role]}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with Client(streamable_http_client(hub.url + "/mcp", http_client=http), mode=mode) as client:
                assert client.protocol_version == "2026-07-28"
                assert len((await client.list_tools()).tools) == count
                result = await client.call_tool("claude_net_machines", {})
                assert not result.is_error and result.structured_content["you"] == hub.names[role]
