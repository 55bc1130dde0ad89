"""The cheap path of /mcp (claude_net_mcp.exchange), by behaviour, not by timings (bench/bench_mcp_cost.py
measures those): a stateless ``tools/call`` is answered in one JSON exchange with the same result the SDK's
transport gives; a call with a progress token gets an SSE stream once the tool reports progress; everything
else (initialize, lists, notifications, malformed bodies, unsupported Accept) is still the SDK's, with its
answers; identity is still the token's, and the activity feed still says ``via: mcp``."""

from __future__ import annotations

import json
import sys
import subprocess

import httpx
import pytest
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

pytestmark = pytest.mark.lxd

VERSION = HANDSHAKE_PROTOCOL_VERSIONS[-1]
ACCEPT = "application/json, text/event-stream"


def post(hub, token: str, message, *, headers: dict | None = None, content: bytes | None = None) -> httpx.Response:
    base = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": ACCEPT,
            "MCP-Protocol-Version": VERSION}
    body = content if content is not None else json.dumps(message).encode()
    return httpx.post(hub.url + "/mcp", content=body, headers={**base, **(headers or {})}, timeout=60)


def call(name: str, arguments: dict, request_id=7, meta: dict | None = None) -> dict:
    params = {"name": name, "arguments": arguments, **({"_meta": meta} if meta else {})}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def sse_messages(text: str) -> list[dict]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def test_a_tool_call_is_one_json_exchange_with_the_sdks_result(hub):
    agent, token = hub.token("cost-agent")
    response = post(hub, token, call("claude_net_machines", {}, request_id="m-1"))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["jsonrpc"] == "2.0" and answer["id"] == "m-1"
    fast = answer["result"]
    assert fast["structuredContent"]["you"] == agent and not fast.get("isError")

    # the same calls the way the SDK serves them (a body without Content-Length is left to its transport):
    # the same results, as an SSE stream
    def sdk_call(name: str, request_id: str) -> dict:
        def chunked():
            yield json.dumps(call(name, {}, request_id=request_id)).encode()

        slow = httpx.post(hub.url + "/mcp", content=chunked(), timeout=60, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": ACCEPT,
            "MCP-Protocol-Version": VERSION})
        assert slow.status_code == 200 and slow.headers["content-type"].startswith("text/event-stream")
        [sdk] = [m for m in sse_messages(slow.text) if m.get("id") == request_id]
        return sdk["result"]

    sdk = sdk_call("claude_net_machines", "m-2")
    assert [m["name"] for m in sdk["structuredContent"]["machines"]] == \
        [m["name"] for m in fast["structuredContent"]["machines"]]  # (lastSeen moves on between the two)
    fast = post(hub, token, call("claude_net_job_status", {}, request_id="j-1")).json()["result"]
    assert sdk_call("claude_net_job_status", "j-2") == fast and fast["structuredContent"] == {"jobs": []}


def test_errors_on_the_cheap_path_are_the_sdks(hub):
    _, token = hub.token("cost-agent")
    # bad arguments: the tool error the middleware words, not a JSON-RPC error
    answer = post(hub, token, call("claude_net_exec", {"target": hub.box})).json()
    assert answer["result"]["isError"] is True
    assert answer["result"]["content"][0]["text"].startswith("invalid arguments for claude_net_exec: command")
    # an admin tool on an agent's connection
    answer = post(hub, token, call("claude_net_activity", {"hours": 1})).json()
    assert "is an admin tool" in answer["result"]["content"][0]["text"]
    # a tool that does not exist
    answer = post(hub, token, call("no_such_tool", {})).json()
    assert answer["id"] == 7 and ("error" in answer or answer["result"]["isError"] is True)


def test_everything_else_is_still_the_sdks(hub):
    _, token = hub.token("cost-agent")
    # a list: the SDK's transport (SSE)
    response = post(hub, token, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert "claude_net_send" in [t["name"] for t in sse_messages(response.text)[-1]["result"]["tools"]]
    # a notification: 202, no body
    response = post(hub, token, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert response.status_code == 202
    # not JSON, a batch: the SDK's refusals (400), never a 500
    for content in (b"{not json", json.dumps([call("claude_net_machines", {})]).encode()):
        response = post(hub, token, None, content=content)
        assert response.status_code == 400 and "error" in response.json(), content
    # a tools/call with a member JSON-RPC does not define: whatever the SDK makes of it (its stream)
    response = post(hub, token, {**call("claude_net_machines", {}), "extra": 1})
    assert response.headers["content-type"].startswith("text/event-stream")
    # an Accept without SSE: the SDK's 406
    response = post(hub, token, call("claude_net_machines", {}), headers={"Accept": "application/json"})
    assert response.status_code == 406
    # no token: the endpoint's 401 before any of this
    response = httpx.post(hub.url + "/mcp", json=call("claude_net_machines", {}), timeout=30,
                          headers={"Accept": ACCEPT, "MCP-Protocol-Version": VERSION})
    assert response.status_code == 401 and response.json()["code"] == "missing_token"


@pytest.fixture
def granted(hub):
    """cost-agent (a node of these tests only: the other modules' agents keep their grants and inboxes) may
    run commands on the box for the test."""
    agent, _ = hub.token("cost-agent")
    hub.cli("permit", agent, hub.box, "--capabilities", "exec")
    yield agent
    hub.cli("revoke", agent, hub.box, "--inherit")


def test_progress_turns_the_answer_into_a_stream(hub, granted):
    _, token = hub.token("cost-agent")
    # finished before any progress: still one JSON answer
    quick = post(hub, token, call("claude_net_exec", {"target": hub.box, "command": "echo quick"},
                                  meta={"progressToken": "p-1"}))
    assert quick.headers["content-type"] == "application/json"
    assert quick.json()["result"]["structuredContent"]["stdout"] == "quick\n"
    # a long one: progress notifications on an SSE stream, then the answer
    slow = post(hub, token, call("claude_net_exec", {"target": hub.box, "command": "sleep 3; echo slow"},
                                 request_id=9, meta={"progressToken": "p-2"}))
    assert slow.headers["content-type"].startswith("text/event-stream")
    messages = sse_messages(slow.text)
    progress = [m for m in messages if m.get("method") == "notifications/progress"]
    assert progress and all(m["params"]["progressToken"] == "p-2" for m in progress)
    assert messages[-1]["id"] == 9 and messages[-1]["result"]["structuredContent"]["stdout"] == "slow\n"


def test_the_caller_is_the_token_and_the_feed_says_mcp(hub):
    agent, token = hub.token("cost-agent")
    _, admin_token = hub.token("admin", admin=True)
    marker = "cost-path-marker"
    answer = post(hub, token, call("claude_net_send", {"to": hub.names["admin"], "message": marker})).json()
    message_id = answer["result"]["structuredContent"]["id"]
    feed = httpx.get(hub.url + "/api/activity", params={"type": "message", "limit": 50}, timeout=30,
                     headers={"Authorization": f"Bearer {admin_token}"}).json()
    [row] = [e for e in feed["events"] if e.get("data", {}).get("message_id") == message_id
             or marker in str(e.get("detail"))][:1]
    assert row["from"] == agent and row["via"] == "mcp"


def test_a_missing_sniffio_is_remembered_not_searched_for():
    code = ("import importlib.util, sys\n"
            "from claude_net_mcp.exchange import skip_absent_sniffio\n"
            "absent = importlib.util.find_spec('sniffio') is None\n"
            "skip_absent_sniffio()\n"
            "try:\n    import sniffio\n    imported = True\nexcept ImportError:\n    imported = False\n"
            "print(absent, imported, 'sniffio' in sys.modules and sys.modules['sniffio'] is None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    absent, imported, marked = out.stdout.split()
    # absent: the import fails at once (marked None); present: left alone and importable
    assert (imported, marked) == (("False", "True") if absent == "True" else ("True", "False"))
