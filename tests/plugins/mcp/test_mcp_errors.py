"""Every refusal the hub can give becomes a sentence that says what to do next (the branches the
live tests cannot easily provoke: 401 mid-session, a hub that went away, a stopped node, 503, ...),
and the output cutters keep what matters."""

from __future__ import annotations

import pytest

from claude_net_mcp.client import HubCallError, HubClient
from claude_net_mcp.render import clip_head, clip_middle
from claude_net_mcp.tools import Caller, ToolHost, concise_argument_error, explain

AGENT = Caller("managerclaude", admin=False)
ADMIN = Caller("chasclaude", admin=True)


def host(via: str) -> ToolHost:
    return ToolHost(client=HubClient(None, url="http://10.0.3.1:8765"), via=via)  # type: ignore[arg-type]


@pytest.mark.parametrize("via, status, code, message, caller, args, expected", [
    ("stdio", 401, "invalid_token", "the token is invalid or has been revoked", AGENT, {},
     ["CLAUDE_NET_TOKEN", "claude-net token create managerclaude --replace", "restart"]),
    ("http", 401, "invalid_token", "the token is invalid or has been revoked", AGENT, {},
     ["Authorization header"]),
    ("stdio", 0, "unreachable", "cannot reach the hub at http://10.0.3.1:8765 (ConnectError: refused)", AGENT, {},
     ["CLAUDE_NET_URL", "the hub is running"]),
    ("http", 0, "hub_timeout", "the hub's own API did not answer within 60s", AGENT, {}, ["retry"]),
    ("stdio", 403, "denied", "denied: ...", AGENT, {"target": "seanclaude"},
     ["`claude-net permit managerclaude seanclaude`", "--capabilities file_write",
      'claude_net_permit(source="managerclaude", target="seanclaude", allow=true)', "claude_net_send"]),
    ("stdio", 403, "admin_only", "POST /api/permit is for admins only", AGENT, {}, ["needs an admin"]),
    ("stdio", 404, "unknown_node", "unknown node 'sean'", AGENT, {"target": "sean"}, ["claude_net_machines"]),
    ("stdio", 400, "no_backend", "chasclaude is a messaging-only node", AGENT, {"target": "chasclaude"},
     ["claude_net_send", "claude_net_machines"]),
    ("stdio", 409, "not_running", "seanclaude is stopped; start it first (POST /api/container/start)", AGENT,
     {"target": "seanclaude"}, ["ask an admin to start it"]),
    ("stdio", 409, "not_running", "seanclaude is stopped", ADMIN, {"target": "seanclaude"},
     ['claude_net_container_start(name="seanclaude")']),
    ("stdio", 503, "backend_unavailable", "unknown node 'x' (backend unavailable: lxd)", AGENT, {"target": "x"},
     ["Nothing was done", "try again"]),
    ("stdio", 503, "audit_unavailable", "the action was not run because the audit log cannot be written", AGENT,
     {}, ["Nothing was done"]),
    ("stdio", 429, "rate_limited", "slow down", AGENT, {}, ["Wait a few seconds"]),
    ("stdio", 429, "rate_limited", "slow down", AGENT, {"retryAfter": 2.5}, ["Wait 2.5 s"]),
    ("stdio", 413, "too_large", "the message is 70000 bytes; the limit is 65536", AGENT, {}, ["smaller pieces"]),
    ("stdio", 400, "not_supported", "ser-8 is an SSH node: it has no snapshots", ADMIN, {"name": "ser-8"},
     ["claude_net_machines"]),
    ("stdio", 400, "invalid_field", "timeout must be at most 3600 seconds", AGENT, {}, ["invalid input", "Fix"]),
])
def test_every_refusal_says_what_to_do_next(via, status, code, message, caller, args, expected):
    body = {"ok": False, "error": message, "code": code, **{k: v for k, v in args.items() if k == "retryAfter"}}
    if code == "denied":
        body["action"] = "file_write"
    sentence = explain(HubCallError(status, code, message, body), host(via), caller, args)
    for fragment in expected:
        assert fragment in sentence, sentence
    assert "/api/" not in sentence or code == "admin_only", sentence  # MCP users are told MCP steps


def test_clip_middle_keeps_both_ends():
    text = "".join(f"line {i}\n" for i in range(10_000))
    shown, omitted = clip_middle(text, 1000)
    assert shown.startswith("line 0\n") and shown.endswith("line 9999\n")
    assert omitted == len(text) - 1000 and f"[... {omitted:,} characters omitted ...]" in shown
    assert clip_middle("short", 1000) == ("short", 0)


def test_clip_head():
    assert clip_head("abcdef", 4) == ("abcd", 2)
    assert clip_head("abc", 4) == ("abc", 0)


def test_argument_reports_become_one_sentence():
    report = ("Error executing tool claude_net_exec: 2 validation errors for claude_net_execArguments\n"
              "command\n  Field required [type=missing, input_value={'target': 'x'}, input_type=dict]\n"
              "    For further information visit https://errors.pydantic.dev/2.14/v/missing\n"
              "timeout\n  Input should be greater than 0 [type=greater_than, input_value=-1, input_type=int]\n"
              "    For further information visit https://errors.pydantic.dev/2.14/v/greater_than")
    schema = {"properties": {"target": {}, "command": {}, "timeout": {}}, "required": ["target", "command"]}
    assert concise_argument_error(report, schema) == (
        "invalid arguments for claude_net_exec: command: Field required; timeout: Input should be greater than 0. "
        "It takes (target, command, timeout?; ? = optional). Fix the arguments and call again.")
    assert concise_argument_error("denied: nope", schema) is None
