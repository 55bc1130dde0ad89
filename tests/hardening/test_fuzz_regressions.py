"""Regression tests for what the fuzzer (test_fuzz_openapi.py) found, one per finding.

Each was a 5xx, an answer the OpenAPI document did not describe, or a schema-valid request the
hub refused; each is now fixed where the route is declared or in the core request wrapper.
"""

from __future__ import annotations

import pytest

import claude_net_activity
import claude_net_permissions
from tests.core.testbox import TestBox


@pytest.mark.db("sqlite")
async def test_405_lists_the_allowed_methods(hub_harness):
    """RFC 9110: a 405 carries Allow (schemathesis ST204)."""
    async with hub_harness() as h:
        response = await h.client.open("/api/health", method="DELETE")
        assert response.status_code == 405
        assert "GET" in response.headers["Allow"]
        assert (await response.get_json())["code"] == "method_not_allowed"


async def test_ack_ids_beyond_64_bits_are_a_400_not_a_500(hub_harness):
    """Found: ``{"ids": [3e38-ish integer]}`` made SQLite raise OverflowError -> 500."""
    async with hub_harness() as h:
        a = await h.token("alpha")
        status, body = await h.call("POST", "/api/inbox/ack", a, {"ids": [316, 302499549898103755688853120571290943488]})
        assert status == 400 and body["code"] == "invalid_field", body
        status, body = await h.call("POST", "/api/inbox/ack", a, {"ids": [2**63 - 1]})
        assert status == 200 and body["ignored"] == [2**63 - 1]


@pytest.mark.db("sqlite")
async def test_from_null_is_refused(hub_harness):
    """The schemas say ``from`` is a string; ``null`` slipped past as 'absent'."""
    async with hub_harness() as h:
        a = await h.token("alpha")
        status, body = await h.call("POST", "/api/inbox/ack", a, {"from": None, "ids": []})
        assert status == 400 and body["field"] == "from", body
        status, body = await h.call("POST", "/api/send", a, {"from": 7, "to": "alpha", "message": "x"})
        assert status == 400 and body["field"] == "from", body


@pytest.mark.db("sqlite")
async def test_integral_numbers_pass_integer_fields_and_nan_is_not_json(hub_harness):
    """JSON Schema counts 1000.0 as an integer (the fuzzer sent ``"gid": 1246.0``); NaN/Infinity are
    not JSON at all, though Python's parser accepts them (``timeout: NaN`` passed every bound)."""
    box = TestBox()
    async with hub_harness(plugins=[box]) as h:
        boss = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/file/write", boss,
                                    {"target": "box1", "path": "/f", "content": "x", "uid": 1000.0, "mode": 420.0})
        assert status == 200, body
        status, body = await h.call("POST", "/api/inbox/ack", boss, {"ids": [1.0, 2e0]})
        assert status == 200 and body["ignored"] == [1, 2], body
        for literal in ("NaN", "Infinity", "-Infinity"):
            raw = f'{{"target": "box1", "command": "true", "timeout": {literal}}}'.encode()
            status, body = await h.call("POST", "/api/exec", boss, raw=raw, headers={"Content-Type": "application/json"})
            assert status == 400 and body["code"] == "invalid_json", (literal, body)
        assert [c for c in box.calls if c[0] == "exec"] == []
        status, body = await h.call("POST", "/api/exec", boss, {"target": "box1", "command": "true", "timeout": 1.5})
        assert status == 200, body


@pytest.mark.db("sqlite")
async def test_default_exec_timeout_never_exceeds_the_maximum(hub_harness):
    """With ``exec_timeout_max`` below the default ``exec_timeout``, an exec without ``timeout``
    was refused: 'timeout must be at most 5 seconds' for a field the caller never sent."""
    async with hub_harness(plugins=[TestBox()], limits={"exec_timeout_max": 5.0}) as h:
        boss = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", boss, {"target": "box1", "command": "echo hi"})
        assert status == 200, body
        status, body = await h.call("POST", "/api/exec", boss, {"target": "box1", "command": "echo", "timeout": 6})
        assert status == 400 and body["field"] == "timeout"


@pytest.mark.db("sqlite")
async def test_an_empty_query_boolean_is_not_true(hub_harness):
    """``?ack=`` used to mean ack=true: a malformed client would silently mark messages read."""
    async with hub_harness() as h:
        a = await h.token("alpha")
        await h.call("POST", "/api/send", a, {"to": "alpha", "message": "keep me"})
        status, body = await h.call("GET", "/api/inbox?ack=", a)
        assert status == 400 and body["field"] == "ack", body
        status, body = await h.call("GET", "/api/inbox?ack=false", a)
        assert [m["message"] for m in body["messages"]] == ["keep me"]
        status, body = await h.call("GET", "/api/inbox?ack=true", a)
        assert [m["message"] for m in body["messages"]] == ["keep me"]


async def test_activity_cursor_edge_cases(hub_harness):
    """Found: ``before=²`` (a digit to str.isdigit, not to int) and ``before`` beyond 64 bits were
    500s; a blank ``before`` was a 400 though the schema allowed it."""
    async with hub_harness(plugins=[claude_net_activity]) as h:
        boss = await h.token("boss", admin=True)
        await h.call("GET", "/api/whoami", boss)
        for value, expected in [("%C2%B2", 400), ("9" * 19, 400), ("9" * 40, 400), ("%20%20", 200),
                                ("123", 200), ("2026-01-01T00:00:00Z", 200), ("yesterday", 400)]:
            status, body = await h.call("GET", f"/api/activity?before={value}", boss)
            assert status == expected, (value, body)
            if status == 400:
                assert body["field"] == "before"


@pytest.mark.db("sqlite")
async def test_permit_schema_states_its_rules(hub_harness):
    """``capabilities: []`` and a non-octal ``mode`` are refused by the published schema itself."""
    async with hub_harness(plugins=[claude_net_permissions, TestBox()]) as h:
        boss = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/permit", boss, {"source": "a", "target": "b", "capabilities": []})
        assert status == 400 and body["field"] == "capabilities", body
        status, body = await h.call("POST", "/api/file/write", boss,
                                    {"target": "box1", "path": "/f", "content": "x", "mode": "rw-r--r--"})
        assert status == 400 and body["field"] == "mode", body
        for mode in ("0644", "644", "0o600", 420):
            status, body = await h.call("POST", "/api/file/write", boss,
                                        {"target": "box1", "path": "/f", "content": "x", "mode": mode})
            assert status == 200, (mode, body)


@pytest.mark.db("sqlite")
async def test_nul_and_dotdot_rules_are_published_in_the_schemas(hub_harness):
    """Found by a deeper fuzz run: a command with NUL was refused although the published schema
    allowed it. NUL in commands and env values, '..' and NUL in paths are now part of the schemas
    (the codes stay: invalid_path for paths)."""
    from claude_net.http import openapi_document

    box = TestBox()
    async with hub_harness(plugins=[box]) as h:
        boss = await h.token("boss", admin=True)
        doc = openapi_document(h.app)
        exec_props = doc["paths"]["/api/exec"]["post"]["requestBody"]["content"]["application/json"]["schema"][
            "properties"]
        assert exec_props["command"]["pattern"] and exec_props["env"]["additionalProperties"]["pattern"]
        assert len(exec_props["cwd"]["allOf"]) == 2
        for body, field, code in [
            ({"command": "a\x00b"}, "command", "invalid_field"),
            ({"command": "x", "env": {"A": "a\x00"}}, "env.A", "invalid_field"),
            ({"command": "x", "cwd": "/tmp/\x00"}, "cwd", "invalid_path"),
            ({"command": "x", "cwd": "/tmp/.."}, "cwd", "invalid_path"),
            ({"command": "x", "cwd": "tmp"}, "cwd", "invalid_field"),
        ]:
            status, answer = await h.call("POST", "/api/exec", boss, {"target": "box1", **body})
            assert status == 400 and answer["field"] == field and answer["code"] == code, (body, answer)
        for path in ("/a/../b", "/..", "/a/b/..", "/a\x00"):
            status, answer = await h.call("POST", "/api/file/read", boss, {"target": "box1", "path": path})
            assert status == 400 and answer["code"] == "invalid_path", (path, answer)
        for path in ("/a..b", "/..a/b", "/a/...", "//x"):  # dots that are not a '..' component are names
            status, answer = await h.call("POST", "/api/file/write", boss, {"target": "box1", "path": path,
                                                                           "content": "x"})
            assert status == 200, (path, answer)
        assert [c for c in box.calls if c[0] == "exec"] == []


@pytest.mark.db("sqlite")
async def test_a_trailing_newline_does_not_pass_a_name_pattern(hub_harness):
    """Python's ``$`` matches before a final newline, JSON Schema's does not: ``"box1\\n"`` passed
    ``^[a-z0-9][a-z0-9-]{0,62}$`` and reached the policy and the node registry."""
    box = TestBox()
    async with hub_harness(plugins=[box]) as h:
        boss = await h.token("boss", admin=True)
        for body in ({"target": "box1\n", "command": "id"}, {"target": "box1", "command": "id", "env": {"A\n": "1"}}):
            status, answer = await h.call("POST", "/api/exec", boss, body)
            assert status == 400, answer
        status, answer = await h.call("POST", "/api/send", boss, {"to": "*\n", "message": "x"})
        assert status == 400, answer
        assert box.calls == []
