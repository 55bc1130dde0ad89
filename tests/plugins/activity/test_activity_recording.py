"""What the activity plugin records: every action type, with the right result, exactly once; fail closed."""

from __future__ import annotations

import asyncio

import claude_net_activity
import claude_net_permissions
from claude_net import Actor, Conflict, Event


def plugins(box):
    return [claude_net_permissions, claude_net_activity, box]


async def rows(h, **filters):
    where = " AND ".join(f"{k} = :{k}" for k in filters) or "1 = 1"
    return await h.hub.db.fetch_all(f"SELECT * FROM activity_log WHERE {where} ORDER BY id", filters)


async def setup(h):
    alpha = await h.token("alpha")
    chas = await h.token("chasclaude", admin=True)
    status, _ = await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box1"})
    assert status == 200
    return alpha, chas


async def test_every_action_type_is_recorded_with_its_result(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        alpha, chas = await setup(h)
        box.files[("box1", "/etc/hosts")] = b"127.0.0.1 localhost"
        calls = [
            (alpha, "POST", "/api/send", {"to": "chasclaude", "message": "hello there"}, 200),
            (alpha, "POST", "/api/exec", {"target": "box1", "command": "uptime"}, 200),
            (alpha, "POST", "/api/exec", {"target": "box2", "command": "uptime"}, 403),
            (alpha, "POST", "/api/file/read", {"target": "box1", "path": "/etc/hosts"}, 200),
            (alpha, "POST", "/api/file/read", {"target": "box1", "path": "/nope"}, 404),
            (alpha, "POST", "/api/file/write", {"target": "box1", "path": "/tmp/a", "content": "x"}, 200),
            (chas, "POST", "/api/container/snapshot", {"name": "box2", "snapshot": "before"}, 200),
            (alpha, "POST", "/api/container/stop", {"name": "box2"}, 403),
            (alpha, "GET", "/api/activity", None, 403),
            (alpha, "POST", "/api/send", {"to": "chasclaude", "message": "hi", "from": "mallory"}, 403),
            ("cn_000000000000_" + "A" * 43, "GET", "/api/machines", None, 401),
        ]
        for token, method, path, body, expected in calls:
            status, answer = await h.call(method, path, token, body)
            assert status == expected, (path, answer)

        got = [(r["type"], r["from_machine"], r["target"], r["result"]) for r in await rows(h)]
        assert got == [
            ("permit", "chasclaude", "alpha", "ok"),
            ("message", "alpha", "chasclaude", "ok"),
            ("exec", "alpha", "box1", "ok"),
            ("exec", "alpha", "box2", "denied"),
            ("file_read", "alpha", "box1", "ok"),
            ("file_read", "alpha", "box1", "error"),
            ("file_write", "alpha", "box1", "ok"),
            ("container", "chasclaude", "box2", "ok"),
            ("container", "alpha", "box2", "denied"),
            ("admin", "alpha", None, "denied"),
            ("auth", "alpha", None, "denied"),
            ("auth", None, None, "denied"),
        ]
        by_type = {}
        for r in await rows(h):
            by_type.setdefault((r["type"], r["result"]), r)
        exec_ok = by_type[("exec", "ok")]
        assert exec_ok["detail"] == "uptime" and exec_ok["exit_code"] == 0 and exec_ok["duration_ms"] is not None
        assert exec_ok["completed_at"] >= exec_ok["timestamp"] and exec_ok["via"] == "http"
        assert by_type[("file_read", "ok")]["detail"] == "/etc/hosts"
        assert '"code":"no_such_file"' in by_type[("file_read", "error")]["data"] or \
            "not_found" in by_type[("file_read", "error")]["data"]
        assert by_type[("container", "ok")]["detail"] == "snapshot box2 before"
        assert by_type[("message", "ok")]["detail"] == "hello there"
        assert "mallory" in by_type[("auth", "denied")]["detail"]
        # nothing secret: the invalid token is not echoed
        assert all("AAAAAAAA" not in (r["detail"] or "") for r in await rows(h))


async def test_exec_error_and_denials_exactly_once(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        alpha, chas = await setup(h)
        box.fail = Conflict("box1 is stopped; start it first", code="not_running")
        status, body = await h.call("POST", "/api/exec", alpha, {"target": "box1", "command": "ls"})
        assert status == 409
        for _ in range(3):
            status, _ = await h.call("POST", "/api/exec", alpha, {"target": "box2", "command": "ls"})
            assert status == 403
        errors = await rows(h, type="exec", result="error")
        assert len(errors) == 1 and '"code":"not_running"' in errors[0]["data"]
        assert len(await rows(h, type="exec", result="denied")) == 3  # three denials, one row each
        assert await rows(h, result="pending") == []
        ids = [r["event_id"] for r in await rows(h)]
        assert len(ids) == len(set(ids))


async def test_pending_row_visible_while_a_slow_exec_runs(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        alpha, chas = await setup(h)
        box.gate, box.started = asyncio.Event(), asyncio.Event()
        task = asyncio.ensure_future(h.call("POST", "/api/exec", alpha, {"target": "box1", "command": "make all"}))
        await asyncio.wait_for(box.started.wait(), 5)
        status, body = await h.call("GET", "/api/activity?type=exec", chas)
        assert status == 200
        [running] = body["events"]
        assert running["result"] == "pending" and running["detail"] == "make all" and running["completed_at"] is None
        box.gate.set()
        status, _ = await asyncio.wait_for(task, 5)
        assert status == 200
        status, body = await h.call("GET", "/api/activity?type=exec", chas)
        [done] = body["events"]
        assert done["id"] == running["id"] and done["result"] == "ok" and done["exit_code"] == 0
        assert done["time"] == running["time"] and done["completed_at"] is not None


async def test_fail_closed_when_the_audit_log_cannot_be_written(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        alpha, chas = await setup(h)
        await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box2"})
        box.files[("box1", "/etc/hosts")] = b"x"
        box.calls.clear()
        await h.hub.db.execute("ALTER TABLE activity_log RENAME TO activity_log_away")
        try:
            refused = [
                (alpha, "/api/exec", {"target": "box1", "command": "rm -rf /tmp/x"}),
                (alpha, "/api/file/write", {"target": "box1", "path": "/tmp/a", "content": "x"}),
                (chas, "/api/container/stop", {"name": "box2"}),
                (chas, "/api/permit", {"source": "alpha", "target": "all"}),
            ]
            for token, path, body in refused:
                status, answer = await h.call("POST", path, token, body)
                assert status == 503, (path, answer)
                assert answer["code"] == "audit_unavailable"
                assert "audit log cannot be written" in answer["error"]
            assert box.calls == []  # the backend was never called
            status, answer = await h.call("GET", "/api/permissions", chas)
            assert [(p["source"], p["target"]) for p in answer["permissions"]] == [("alpha", "box1"), ("alpha", "box2")]

            # File reads are refused too: every guarded action fails closed (DESIGN §5).
            status, answer = await h.call("POST", "/api/file/read", alpha, {"target": "box1", "path": "/etc/hosts"})
            assert status == 503 and answer["code"] == "audit_unavailable"
            assert box.calls == []
            # Messages are not guarded (their event is emitted after delivery): they are delivered
            # and the failure to record is logged; denials still deny.
            status, answer = await h.call("POST", "/api/send", alpha, {"to": "chasclaude", "message": "hi"})
            assert status == 200
            status, answer = await h.call("POST", "/api/exec", alpha, {"target": "boxoff", "command": "ls"})
            assert status == 403
        finally:
            await h.hub.db.execute("ALTER TABLE activity_log_away RENAME TO activity_log")
        status, answer = await h.call("POST", "/api/exec", alpha, {"target": "box1", "command": "ls"})
        assert status == 200
        assert [r["detail"] for r in await rows(h, type="exec")] == ["ls"]


async def test_secrets_redacted_and_detail_capped(hub_harness, box):
    async with hub_harness(plugins=plugins(box), activity={"max_detail": 200}) as h:
        alpha, chas = await setup(h)
        token = await h.token("other")
        long = "echo " + "y" * 5000
        for command in (f"curl -H 'Authorization: Bearer {token}' http://hub", "mysql --password=hunter2 db", long):
            status, _ = await h.call("POST", "/api/exec", alpha, {"target": "box1", "command": command})
            assert status == 200
        details = [r["detail"] for r in await rows(h, type="exec")]
        assert token not in details[0] and "[redacted]" in details[0]
        assert details[1] == "mysql --password=[redacted] db"
        assert len(details[2]) == 200 and details[2].endswith("…")
        [row] = await rows(h, type="exec", detail=details[2])
        assert '"detail_length":5005' in row["data"]


async def test_record_events_from_other_plugins(hub_harness, box):
    """Any event type is accepted (e.g. a Telegram plugin's), and a final event with no pending row inserts."""
    async with hub_harness(plugins=plugins(box)) as h:
        await h.hub.emit(Event("telegram", "chasclaude", "seanclaude", "snapshot seanclaude", "ok", via="telegram",
                               data={"chat": 42}))
        [row] = await rows(h, type="telegram")
        assert row["via"] == "telegram" and row["result"] == "ok" and row["data"] == '{"chat":42}'
        # guarded through another channel: the CLI actor
        await claude_net_permissions.set_permission(h.hub, Actor("ops", admin=True, via="cli"), "alpha", "box1")
        [row] = await rows(h, type="permit")
        assert row["via"] == "cli" and row["from_machine"] == "ops" and row["result"] == "ok"


async def test_final_events_are_queued_in_order_streamed_and_failures_logged(hub_harness, box, caplog):
    """A final event with no pending row (a message, a denial) does not hold its request for the
    write on SQLite: its row is queued on the database's one connection, so anything this hub
    reads afterwards already sees it, and the live stream hears of it once written. On PostgreSQL
    it is awaited as before. A failed queued write is logged, like any final event's."""
    from claude_net_activity import store

    async with hub_harness(plugins=plugins(box)) as h:
        hub = h.hub
        async with hub.bus.subscribe(store.CHANNEL) as sub:
            event = Event("message", "alpha", "beta", "queued hello", "ok", data={"ids": [7], "n": 1.5})
            assert store.record_queued(hub, event) is hub.db.is_sqlite
            if not hub.db.is_sqlite:
                await store.record(hub, event)
            [row] = await rows(h, event_id=event.id)  # no wait in between: the queue keeps the order
            assert row["detail"] == "queued hello" and row["data"] == '{"ids":[7],"n":1.5}'
            streamed = await sub.get(timeout=5)
            assert streamed["id"] == row["id"] and streamed["data"] == {"ids": [7], "n": 1.5}
        assert not store.record_queued(hub, Event("exec", "alpha", "box1", "ls", "pending"))
        if hub.db.is_sqlite:
            await hub.db.execute("ALTER TABLE activity_log RENAME TO activity_log_away")
            try:
                await hub.emit(Event("message", "alpha", "beta", "lost", "ok"))
                await hub.db.fetch_val("SELECT 1")  # runs after the queued INSERT
                await asyncio.sleep(0)  # its answer reaches the loop
                assert "activity: cannot record message ok event" in caplog.text
            finally:
                await hub.db.execute("ALTER TABLE activity_log_away RENAME TO activity_log")
