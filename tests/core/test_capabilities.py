"""The core request path for exec, files and container ops, proven with the TestBox backend."""

import asyncio
import base64

import pytest

from .testbox import Allow, Recorder, TestBox


@pytest.fixture
def box():
    return TestBox()


@pytest.fixture
def rec():
    return Recorder()


async def test_exec_allowed_by_policy_and_recorded(hub_harness, box, rec):
    async with hub_harness(plugins=[box, rec, Allow("agent", "box1")]) as h:
        tok = await h.token("agent")
        status, body = await h.call("POST", "/api/exec", tok, {"target": "box1", "command": "echo hi"})
        assert status == 200, body
        assert body["stdout"] == "box1: echo hi\n" and body["exitCode"] == 0 and body["ok"] is True
        assert "truncated" not in body
        exec_events = [e for e in rec.events if e[0] == "exec"]
        assert [e[3] for e in exec_events] == ["pending", "ok"]
        assert exec_events[0][4] == exec_events[1][4]  # same action id


async def test_exec_denied_without_grant_is_recorded_once_and_not_run(hub_harness, box, rec):
    async with hub_harness(plugins=[box, rec, Allow("agent", "box1")]) as h:
        tok = await h.token("agent")
        status, body = await h.call("POST", "/api/exec", tok, {"target": "box2", "command": "id"})
        assert status == 403 and body["code"] == "denied"
        assert "agent -> box2" in body["error"]
        assert [e[3] for e in rec.events if e[0] == "exec"] == ["denied"]
        assert box.calls == []


async def test_no_policy_answer_means_deny(hub_harness, box):
    async with hub_harness(plugins=[box]) as h:
        tok = await h.token("agent")
        status, body = await h.call("POST", "/api/file/read", tok, {"target": "box1", "path": "/etc/x"})
        assert status == 403 and box.calls == []


async def test_admin_may_exec_anywhere(hub_harness, box):
    async with hub_harness(plugins=[box]) as h:
        tok = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", tok, {"target": "box2", "command": "exit 3"})
        assert status == 200 and body["exitCode"] == 3 and body["stderr"] == "failed\n"


@pytest.mark.parametrize(
    "payload, status, code",
    [
        ({"target": "nosuch", "command": "x"}, 404, "unknown_node"),
        ({"target": "boxoff", "command": "x"}, 409, "not_running"),
        ({"target": "Box1", "command": "x"}, 400, "invalid_field"),
        ({"target": "box1", "command": ""}, 400, "invalid_field"),
        ({"target": "box1", "command": "a\x00b"}, 400, "invalid_field"),
        ({"target": "box1", "command": 5}, 400, "invalid_field"),
        ({"target": "box1"}, 400, "missing_field"),
        ({"target": "box1", "command": "x", "bogus": 1}, 400, "unknown_field"),
        ({"target": "box1", "command": "x", "timeout": 10**9}, 400, "invalid_field"),
        ({"target": "box1", "command": "x", "cwd": "relative"}, 400, "invalid_field"),
        ({"target": "box1", "command": "x", "env": {"BAD NAME": "1"}}, 400, "invalid_field"),
    ],
)
async def test_exec_errors(hub_harness, box, payload, status, code):
    async with hub_harness(plugins=[box]) as h:
        tok = await h.token("boss", admin=True)
        got_status, body = await h.call("POST", "/api/exec", tok, payload)
        assert (got_status, body["code"]) == (status, code), body
        assert body["ok"] is False and isinstance(body["error"], str) and body["error"]


async def test_exec_timeout_is_504_with_partial_output(hub_harness, box, rec):
    async with hub_harness(plugins=[box, rec]) as h:
        tok = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", tok, {"target": "box1", "command": "sleep 5", "timeout": 0.2})
        assert status == 504 and body["code"] == "timeout" and body["stdout"] == "partial"
        assert [e[3] for e in rec.events if e[0] == "exec"] == ["pending", "error"]


async def test_exec_truncation_and_binary_output(hub_harness, box):
    async with hub_harness(plugins=[box], limits={"exec_max_output": 100}) as h:
        tok = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", tok, {"target": "box1", "command": "spew 1000"})
        assert status == 200 and body["truncated"] is True and len(body["stdout"]) == 100
        status, body = await h.call("POST", "/api/exec", tok, {"target": "box1", "command": "binary"})
        assert status == 200 and body["stdout"].endswith(" ok") and "\ufffd" in body["stdout"]


async def test_exec_env_passed_to_backend(hub_harness, box):
    async with hub_harness(plugins=[box]) as h:
        tok = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", tok,
                                    {"target": "box1", "command": "env", "env": {"A": "1", "B_2": "$(x)"}})
        assert status == 200 and body["stdout"] == "A=1\nB_2=$(x)"


async def test_file_write_then_read_utf8_and_binary(hub_harness, box, rec):
    async with hub_harness(plugins=[box, rec]) as h:
        tok = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/file/write", tok,
                                    {"target": "box1", "path": "/tmp/a.txt", "content": "héllo", "mode": "0600"})
        assert status == 200 and body["size"] == len("héllo".encode()) and body["mode"] == "0o600"
        status, body = await h.call("POST", "/api/file/read", tok, {"target": "box1", "path": "/tmp/a.txt"})
        assert (status, body["content"], body["encoding"]) == (200, "héllo", "utf-8")
        blob = bytes(range(256))
        status, _ = await h.call("POST", "/api/file/write", tok, {"target": "box1", "path": "/b", "encoding": "base64",
                                                                    "content": base64.b64encode(blob).decode()})
        assert status == 200
        status, body = await h.call("POST", "/api/file/read", tok, {"target": "box1", "path": "/b"})
        assert body["encoding"] == "base64" and base64.b64decode(body["content"]) == blob
        status, body = await h.call("POST", "/api/file/read", tok, {"target": "box1", "path": "/b", "encoding": "utf-8"})
        assert status == 400 and body["code"] == "not_utf8"
        types = [(e[0], e[3]) for e in rec.events if e[0].startswith("file")]
        assert ("file_write", "ok") in types and ("file_read", "ok") in types


@pytest.mark.parametrize(
    "payload, status, code",
    [
        ({"target": "box1", "path": "/missing"}, 404, "no_such_file"),
        ({"target": "box1", "path": "/dir/"}, 400, "is_directory"),
        ({"target": "box1", "path": "etc/passwd"}, 400, "invalid_field"),
        ({"target": "box1", "path": "/a/../etc/shadow"}, 400, "invalid_path"),
        ({"target": "box1", "path": "/a\x00b"}, 400, "invalid_path"),
        ({"target": "box1", "path": "/x", "encoding": "latin-1"}, 400, "invalid_field"),
    ],
)
async def test_file_read_errors(hub_harness, box, payload, status, code):
    async with hub_harness(plugins=[box]) as h:
        tok = await h.token("boss", admin=True)
        got, body = await h.call("POST", "/api/file/read", tok, payload)
        assert (got, body["code"]) == (status, code), body


async def test_file_write_too_large_and_bad_base64(hub_harness, box):
    async with hub_harness(plugins=[box], limits={"file_max_bytes": 10}) as h:
        tok = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/file/write", tok, {"target": "box1", "path": "/a", "content": "x" * 11})
        assert status == 413 and body["code"] == "too_large"
        status, body = await h.call("POST", "/api/file/write", tok,
                                    {"target": "box1", "path": "/a", "content": "!!", "encoding": "base64"})
        assert status == 400
        status, body = await h.call("POST", "/api/file/write", tok,
                                    {"target": "box1", "path": "/a", "content": "x", "mode": "999"})
        assert status == 400 and "mode" in body["error"]
        assert box.calls == []


async def test_container_ops_admin_only(hub_harness, box, rec):
    async with hub_harness(plugins=[box, rec]) as h:
        agent = await h.token("agent")
        admin = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/container/stop", agent, {"name": "box1"})
        assert status == 403 and box.calls == []
        assert ("container", "agent", "box1", "denied") in [e[:4] for e in rec.events]
        status, body = await h.call("POST", "/api/container/snapshot", admin, {"name": "box1", "snapshot": "before"})
        assert (status, body["snapshot"], body["name"]) == (200, "before", "box1")
        status, body = await h.call("GET", "/api/container/snapshots?name=box1", admin)
        assert body["snapshots"] == ["before"]
        status, body = await h.call("POST", "/api/container/restore", admin, {"name": "box1", "snapshot": "nope"})
        assert status == 404 and body["code"] == "no_such_snapshot"
        status, body = await h.call("POST", "/api/container/restore", admin, {"name": "box1"})
        assert status == 400 and body["code"] == "missing_field"
        status, _ = await h.call("POST", "/api/container/stop", admin, {"name": "box1"})
        assert status == 200 and box.states["box1"] == "stopped"
        status, body = await h.call("POST", "/api/exec", admin, {"target": "box1", "command": "x"})
        assert status == 409
        status, _ = await h.call("POST", "/api/container/start", admin, {"name": "box1"})
        assert status == 200 and box.states["box1"] == "running"


async def test_messaging_only_node_has_no_backend(hub_harness, box):
    async with hub_harness(plugins=[box]) as h:
        admin = await h.token("boss", admin=True)
        await h.token("plainagent")
        status, body = await h.call("POST", "/api/exec", admin, {"target": "plainagent", "command": "x"})
        assert status == 400 and body["code"] == "no_backend"
        status, body = await h.call("POST", "/api/container/snapshot", admin, {"name": "plainagent"})
        assert status == 400 and body["code"] == "no_backend"


async def test_fail_closed_when_audit_cannot_be_written(hub_harness, box, rec):
    rec.fail_pending = True
    async with hub_harness(plugins=[box, rec]) as h:
        admin = await h.token("boss", admin=True)
        for path, payload in [
            ("/api/exec", {"target": "box1", "command": "id"}),
            ("/api/file/write", {"target": "box1", "path": "/a", "content": "x"}),
            ("/api/container/stop", {"name": "box1"}),
        ]:
            status, body = await h.call("POST", path, admin, payload)
            assert status == 503 and body["code"] == "audit_unavailable", (path, body)
        assert box.calls == [] and box.states["box1"] == "running"


async def test_failing_subscriber_does_not_break_request(hub_harness, box):
    from claude_net import hookimpl

    class Broken:
        __name__ = "broken"

        @hookimpl
        def on_event(self, event):
            raise RuntimeError("boom")

    async with hub_harness(plugins=[box, Broken()]) as h:
        admin = await h.token("boss", admin=True)
        status, _ = await h.call("POST", "/api/exec", admin, {"target": "box1", "command": "id"})
        assert status == 200


async def test_backend_down_is_503_and_messaging_unaffected(hub_harness, box):
    async with hub_harness(plugins=[box]) as h:
        admin = await h.token("boss", admin=True)
        await h.token("other")
        box.down = True
        h.hub.nodes.invalidate()
        status, body = await h.call("POST", "/api/exec", admin, {"target": "box1", "command": "id"})
        assert status == 503 and body["code"] == "backend_unavailable"
        status, body = await h.call("GET", "/api/machines", admin)
        assert status == 200 and "testbox" in body["unavailable"]
        status, _ = await h.call("POST", "/api/send", admin, {"to": "other", "message": "still works"})
        assert status == 200
        box.down = False
        h.hub.nodes.invalidate()
        status, _ = await h.call("POST", "/api/exec", admin, {"target": "box1", "command": "id"})
        assert status == 200


async def test_concurrent_execs_are_bounded_by_exec_concurrency(hub_harness, box):
    async with hub_harness(plugins=[box], limits={"exec_concurrency": 2}) as h:
        admin = await h.token("boss", admin=True)
        box.gate = asyncio.Event()
        tasks = [asyncio.create_task(h.call("POST", "/api/exec", admin, {"target": "box1", "command": "wait-gate"}))
                 for _ in range(5)]
        await asyncio.sleep(0.3)
        running = sum(1 for c in box.calls if c[2] == "wait-gate")
        assert running == 2
        box.gate.set()
        results = await asyncio.gather(*tasks)
        assert all(status == 200 for status, _ in results)
