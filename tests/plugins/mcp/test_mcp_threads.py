"""Threads through real MCP client sessions (stdio and the hub's /mcp): claude_net_send with a thread
and a reply, the inbox's hub-written header naming them, and an exec recorded in the thread.

A hub of its own (no LXD: messages need no backend; the exec goes to a messaging-only node and is
refused, which the feed records in the thread all the same), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import urllib.request

from mcp_helpers import RUN, http_session, running_hub, stdio_session

ROLES = {"admin": True, "alpha": False, "beta": False}


def text(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def get(hub, path: str, token: str) -> dict:
    request = urllib.request.Request(hub.url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def test_send_with_thread_and_reply_show_in_the_inbox_and_the_feed(database_url):
    config = '[plugins]\nallow = ["permissions", "activity", "mcp"]\n'
    with running_hub(config, roles=ROLES, database_url=database_url) as hub:
        alpha, alpha_token = hub.token("alpha")
        beta, beta_token = hub.token("beta")
        _, admin_token = hub.token("admin", admin=True)
        async with stdio_session(hub.url, alpha_token) as a, http_session(hub.url, beta_token) as b:
            result = await a.call_tool("claude_net_send", {"to": beta, "message": "run the tests?",
                                                           "thread": "ci:run-9"})
            assert not result.is_error, text(result)
            first = result.structured_content
            assert first["thread"] == "ci:run-9" and f"#{first['id']}" in text(result)
            assert "(thread ci:run-9)" in text(result)

            result = await b.call_tool("claude_net_inbox", {})
            assert not result.is_error, text(result)
            body = text(result)
            # the header line is the hub's; the body stays one JSON string literal
            assert f"#{first['id']} from {alpha} at " in body and " in thread ci:run-9:\n\"run the tests?\"" in body
            assert result.structured_content["messages"][0]["thread"] == "ci:run-9"

            result = await b.call_tool("claude_net_send", {"to": alpha, "message": "done",
                                                           "reply_to": first["id"]})
            assert not result.is_error, text(result)
            reply = result.structured_content
            assert (reply["thread"], reply["reply_to"]) == ("ci:run-9", first["id"])

            result = await a.call_tool("claude_net_inbox", {})
            assert f"in thread ci:run-9, replying to #{first['id']}:\n\"done\"" in text(result)

            # a reply to a message alpha never saw is refused, without saying anything about it
            result = await a.call_tool("claude_net_send", {"to": beta, "message": "x", "reply_to": reply["id"] + 99})
            assert result.is_error and "reply_to" in text(result)

            # a bad thread is refused by the tool's own schema before any call to the hub
            result = await a.call_tool("claude_net_send", {"to": beta, "message": "x", "thread": "no spaces"})
            assert result.is_error and "thread" in text(result)

            # an action in the thread is recorded in it, whatever its result (beta only takes messages)
            result = await a.call_tool("claude_net_exec", {"target": beta, "command": "true", "thread": "ci:run-9"})
            assert result.is_error

        view = get(hub, "/api/threads/ci:run-9", admin_token)
        assert [m["message"] for m in view["messages"]] == ["run the tests?", "done"]
        assert [(e["type"], e["from"], e["via"]) for e in view["events"]][:2] == [
            ("message", alpha, "http"), ("message", beta, "mcp")]
        assert [e["type"] for e in view["events"]] == ["message", "message", "exec"]
        assert view["events"][2]["result"] in ("denied", "error") and view["events"][2]["target"] == beta
        feed = get(hub, f"/api/activity?hours=0&from={alpha}&result=denied", admin_token)
        assert any(e["data"].get("code") == "reply_to_not_found" for e in feed["events"])
        assert RUN in alpha
