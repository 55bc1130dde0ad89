"""The claude_net_* tools through real MCP client sessions, over stdio and over the hub's /mcp, against
a running hub with a real LXD container behind exec and files. Every call goes through the hub's HTTP
API: the activity feed records each one (denials included), with ``via: mcp`` for the /mcp endpoint.
"""

from __future__ import annotations

import pytest

from claude_net_mcp.tools import ADMIN_TOOLS, AGENT_TOOLS

pytestmark = pytest.mark.lxd

#: the optional thread arguments of send, exec and the file tools (docs/mcp.md)
THREADING = {"thread": "string", "reply_to": "integer"}
#: what exec and the file tools take for an action that needs an admin's approval (docs/mcp.md)
APPROVAL = {"approval": "string", "approval_wait": "number"}
#: tool -> (properties, required); no tool takes a `from` argument: identity is the token's
SCHEMAS = {
    "claude_net_send": ({"to": "string", "message": "string", **THREADING}, {"to", "message"}),
    "claude_net_inbox": ({"limit": "integer", "ack": "boolean"}, set()),
    "claude_net_machines": ({}, set()),
    "claude_net_exec": ({"target": "string", "targets": "array", "command": "string", "timeout": "number",
                         "background": "boolean", **THREADING, **APPROVAL}, {"command"}),
    "claude_net_file_read": ({"target": "string", "path": "string", **THREADING, **APPROVAL}, {"target", "path"}),
    "claude_net_file_write": ({"target": "string", "path": "string", "content": "string", **THREADING, **APPROVAL},
                              {"target", "path", "content"}),
    "claude_net_job_status": ({"job": "string"}, set()),
    "claude_net_job_output": ({"job": "string", "offset": "integer", "wait": "number"}, {"job"}),
    "claude_net_job_cancel": ({"job": "string"}, {"job"}),
    "claude_net_permit": ({"source": "string", "target": "string", "allow": "boolean"}, {"source", "target", "allow"}),
    "claude_net_permissions": ({}, set()),
    "claude_net_container_start": ({"name": "string"}, {"name"}),
    "claude_net_container_stop": ({"name": "string"}, {"name"}),
    "claude_net_container_snapshot": ({"name": "string"}, {"name"}),
    "claude_net_container_restore": ({"name": "string", "snapshot": "string"}, {"name", "snapshot"}),
    "claude_net_activity": ({"hours": "number"}, {"hours"}),
}
READ_ONLY = {"claude_net_inbox", "claude_net_machines", "claude_net_permissions", "claude_net_activity",
             "claude_net_file_read", "claude_net_job_status", "claude_net_job_output"}
DESTRUCTIVE = {"claude_net_exec", "claude_net_file_write", "claude_net_container_stop", "claude_net_container_restore",
               "claude_net_job_cancel"}


def _type(schema: dict) -> str:
    if "type" in schema:
        return schema["type"]
    return next(s["type"] for s in schema.get("anyOf", ()) if s.get("type") != "null")  # optional: T | null


def check_tools(tools, expected: tuple[str, ...]) -> None:
    assert [t.name for t in tools] == list(expected)
    for tool in tools:
        props, required = SCHEMAS[tool.name]
        schema = tool.input_schema
        assert {k: _type(v) for k, v in schema.get("properties", {}).items()} == props, tool.name
        assert set(schema.get("required", [])) == required, tool.name
        assert tool.description and len(tool.description) > 60 and tool.output_schema, tool.name
        ann = tool.annotations
        assert ann.read_only_hint is (tool.name in READ_ONLY), tool.name
        assert ann.destructive_hint is (tool.name in DESTRUCTIVE), tool.name


def text(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def call(session, name: str, args: dict | None = None, *, error: bool = False):
    result = await session.call_tool(name, args or {})
    assert result.is_error is error, f"{name}{args}: {text(result)}"
    return result


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_agent_and_admin_tools(hub, session_for, transport):
    """Tool lists per role, then the agent's life: message, inbox, denied, permitted, exec and files."""
    box = hub.box
    agent, agent_token = hub.token(f"agent-{transport}")
    admin, admin_token = hub.token("admin", admin=True)
    async with session_for(transport, agent_token) as me, session_for(transport, admin_token) as boss:
        check_tools((await me.list_tools()).tools, AGENT_TOOLS)
        check_tools((await boss.list_tools()).tools, AGENT_TOOLS + ADMIN_TOOLS)

        # machines: the container (exec-capable) and both token holders
        result = await call(me, "claude_net_machines")
        nodes = {m["name"]: m for m in result.structured_content["machines"]}
        assert result.structured_content["you"] == agent
        assert nodes[box]["backend"] == "lxd" and "exec" in nodes[box]["capabilities"]
        assert agent in nodes and admin in nodes and box in text(result)

        # send and inbox (ack by default: a second read is empty)
        result = await call(me, "claude_net_send", {"to": admin, "message": f"please let {agent} into {box}"})
        assert result.structured_content["recipients"] == [admin] and "Sent message" in text(result)
        result = await call(boss, "claude_net_inbox", {"limit": 50})
        mine = [m for m in result.structured_content["messages"] if m["from"] == agent]
        assert [m["message"] for m in mine] == [f"please let {agent} into {box}"] and agent in text(result)
        assert result.structured_content["acked"] is True
        result = await call(boss, "claude_net_inbox", {"ack": False})
        assert not [m for m in result.structured_content["messages"] if m["from"] == agent]

        # denied, with the exact grant in the sentence
        result = await call(me, "claude_net_exec", {"target": box, "command": "hostname"}, error=True)
        assert f"claude-net permit {agent} {box}" in text(result)
        assert f'claude_net_permit(source="{agent}", target="{box}", allow=true)' in text(result)

        # the admin grants it; the agent runs commands and reads and writes files
        result = await call(boss, "claude_net_permit", {"source": agent, "target": box, "allow": True})
        assert result.structured_content["permission"]["capabilities"] == ["exec", "file_read", "file_write"]
        assert "Granted" in text(result)
        result = await call(me, "claude_net_exec", {"target": box, "command": "echo hello from $(hostname)"})
        assert result.structured_content["stdout"] == f"hello from {box}\n"
        assert result.structured_content["exitCode"] == 0 and f"hello from {box}" in text(result)
        result = await call(me, "claude_net_exec", {"target": box, "command": "echo oops >&2; exit 3"})
        assert result.structured_content["exitCode"] == 3 and "oops" in result.structured_content["stderr"]
        assert "exit code 3" in text(result)

        path = f"/tmp/{transport}-note.txt"
        result = await call(me, "claude_net_file_write", {"target": box, "path": path, "content": "héllo\nworld\n"})
        assert result.structured_content == {"target": box, "path": path, "size": 13}
        result = await call(me, "claude_net_file_read", {"target": box, "path": path})
        assert result.structured_content["content"] == "héllo\nworld\n" and "héllo" in text(result)

        # long output is cut in the middle, with a note saying so
        loop = 'i=0; while [ $i -lt 3000 ]; do echo "line $i of a long listing"; i=$((i+1)); done'
        result = await call(me, "claude_net_exec", {"target": box, "command": loop})
        out = result.structured_content
        assert out["truncated"] is True and "line 0 of" in out["stdout"] and "line 2999 of" in out["stdout"]
        assert "characters omitted" in out["stdout"] and len(out["stdout"]) < 21_000
        assert "in the middle are not shown" in text(result)

        # a timeout is an error that keeps the partial output and says what to do
        result = await call(me, "claude_net_exec", {"target": box, "command": "echo started; sleep 10",
                                                    "timeout": 1}, error=True)
        assert "did not finish within 1s" in text(result) and "started" in text(result) and "background=true" in text(result)

        # every failure is a tool error that says what to do next
        result = await call(me, "claude_net_exec", {"target": "no-such-node", "command": "true"}, error=True)
        assert "claude_net_machines" in text(result) or "claude-net permit" in text(result)
        result = await call(boss, "claude_net_exec", {"target": "no-such-node", "command": "true"}, error=True)
        assert "unknown node" in text(result) and "claude_net_machines" in text(result)
        result = await call(me, "claude_net_exec", {"target": admin, "command": "true"}, error=True)
        assert "messaging-only" in text(result) or "claude-net permit" in text(result)
        result = await call(me, "claude_net_file_read", {"target": box, "path": "relative/file"}, error=True)
        assert "absolute" in text(result)
        result = await call(me, "claude_net_file_read", {"target": box, "path": "/no/such/file"}, error=True)
        assert "no such file" in text(result) and "ls -la" in text(result)
        result = await call(me, "claude_net_file_write", {"target": box, "path": "/no-dir/x", "content": "x"},
                            error=True)
        assert "mkdir -p /no-dir" in text(result)
        result = await call(me, "claude_net_exec", {"target": box}, error=True)  # missing argument
        assert text(result) == ("invalid arguments for claude_net_exec: command: Field required. It takes "
                                "(command, target?, targets?, timeout?, background?, thread?, reply_to?, approval?, "
                                "approval_wait?; ? = optional). Fix the arguments and call again.")
        result = await call(me, "claude_net_inbox", {"limit": 0}, error=True)
        assert text(result).startswith("invalid arguments for claude_net_inbox: limit: Input should be greater")
        result = await call(me, "claude_net_send", {"to": "Not A Node", "message": "x"}, error=True)
        assert "not a valid node name" in text(result) or "to" in text(result)

        # admins see the matrix and the audit trail, denials included
        result = await call(boss, "claude_net_permissions")
        rules = {(r["source"], r["target"]): r for r in result.structured_content["permissions"]}
        assert rules[(agent, box)]["capabilities"] == ["exec", "file_read", "file_write"]
        assert f"{agent} -> {box}: exec, file_read, file_write" in text(result)
        result = await call(boss, "claude_net_activity", {"hours": 1})
        mine = [(e["type"], e["result"], e.get("via")) for e in result.structured_content["events"]
                if e["from"] == agent and e.get("target") == box]
        via = "mcp" if transport == "http" else "http"
        assert ("exec", "denied", via) in mine and ("exec", "ok", via) in mine and ("file_write", "ok", via) in mine
        assert f"{agent}  exec  {box}  denied" in text(result)

        # agents cannot use admin tools: not offered, and refused by name with the reason
        result = await call(me, "claude_net_permissions", error=True)
        assert "is an admin tool" in text(result)
        # revoke: an explicit deny beats nothing; the agent is locked out again
        result = await call(boss, "claude_net_permit", {"source": agent, "target": box, "allow": False})
        assert "explicit deny" in text(result)
        result = await call(me, "claude_net_file_read", {"target": box, "path": path}, error=True)
        assert "denied" in text(result) and f"claude-net permit {agent} {box}" in text(result)


async def test_container_tools(hub, session_for):
    """snapshot, stop (exec then fails with advice), start, restore (unknown snapshot lists the real ones)."""
    box = hub.box
    _, admin_token = hub.token("admin", admin=True)
    async with session_for("http", admin_token) as boss:
        await call(boss, "claude_net_exec", {"target": box, "command": "echo before > /root/state"})
        result = await call(boss, "claude_net_container_snapshot", {"name": box})
        snapshot = result.structured_content["snapshot"]
        assert snapshot and f'claude_net_container_restore(name="{box}", snapshot="{snapshot}")' in text(result)
        await call(boss, "claude_net_exec", {"target": box, "command": "echo after > /root/state"})

        result = await call(boss, "claude_net_container_stop", {"name": box})
        assert result.structured_content == {"name": box}
        result = await call(boss, "claude_net_exec", {"target": box, "command": "true"}, error=True)
        assert "not running" in text(result) and "claude_net_container_start" in text(result)
        await call(boss, "claude_net_container_start", {"name": box})

        result = await call(boss, "claude_net_container_restore", {"name": box, "snapshot": "nope"}, error=True)
        assert snapshot in text(result)
        result = await call(boss, "claude_net_container_restore", {"name": box, "snapshot": snapshot})
        assert result.structured_content == {"name": box, "snapshot": snapshot}
        await call(boss, "claude_net_container_start", {"name": box})  # idempotent if restore left it running
        result = await call(boss, "claude_net_exec", {"target": box, "command": "cat /root/state"})
        assert result.structured_content["stdout"] == "before\n"
