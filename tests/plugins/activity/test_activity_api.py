"""The activity query API, the live stream, retention and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

import claude_net_activity
import claude_net_permissions
from claude_net import Event, isotime
from claude_net_activity import store

NOW = datetime.now(timezone.utc)


@pytest.fixture(autouse=True)
def now():
    """Times are relative to the start of each test, not to the import of this module: the hub's
    own clock decides the windows, and a long suite runs this module many minutes after import."""
    global NOW
    NOW = datetime.now(timezone.utc)


def plugins(box):
    return [claude_net_permissions, claude_net_activity, box]


def ago(**delta) -> str:
    return isotime(NOW - timedelta(**delta))


async def seed(hub, n: int = 250) -> list[Event]:
    """``n`` events over the last ~2 days; several share a timestamp (the id breaks the tie)."""
    events = []
    types = ["message", "exec", "file_read", "file_write", "container"]
    for i in range(n):
        event = Event(types[i % 5], f"node{i % 3}", f"box{i % 4}", f"detail {i}",
                      "denied" if i % 7 == 0 else "ok", time=ago(minutes=15 * ((n - i) // 2), seconds=30))
        await store.record(hub, event)
        events.append(event)
    return events


def expected_order(rows):
    return sorted(rows, key=lambda r: (r["timestamp"], r["id"]), reverse=True)


async def all_rows(hub):
    return await hub.db.fetch_all("SELECT * FROM activity_log")


async def test_filters_hours_and_pagination(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas = await h.token("chasclaude", admin=True)
        await seed(h.hub)
        everything = expected_order(await all_rows(h.hub))
        day = [r for r in everything if r["timestamp"] >= ago(hours=24)]
        assert 100 < len(day) < 250

        # default window 24h, pages of 100, `next` as `before`
        seen, before = [], None
        for _ in range(10):
            status, body = await h.call("GET", "/api/activity" + (f"?before={before}" if before else ""), chas)
            assert status == 200 and body["count"] == len(body["events"]) <= 100
            seen += body["events"]
            before = body["next"]
            if before is None:
                break
        assert [e["id"] for e in seen] == [r["id"] for r in day]

        # hours widens the window; limit shrinks pages
        status, body = await h.call("GET", "/api/activity?hours=72&limit=1000", chas)
        assert [e["id"] for e in body["events"]] == [r["id"] for r in everything]
        assert body["next"] is None
        status, body = await h.call("GET", "/api/activity?hours=0&limit=7", chas)
        assert [e["id"] for e in body["events"]] == [r["id"] for r in everything[:7]]
        assert body["next"] == everything[6]["id"]

        # filters, alone and combined
        for query, keep in [
            ("type=exec", lambda r: r["type"] == "exec"),
            ("from=node1", lambda r: r["from_machine"] == "node1"),
            ("target=box2", lambda r: r["target"] == "box2"),
            ("result=denied", lambda r: r["result"] == "denied"),
            ("type=exec&from=node1&result=ok", lambda r: (r["type"], r["from_machine"], r["result"]) == ("exec", "node1", "ok")),
        ]:
            status, body = await h.call("GET", f"/api/activity?hours=72&limit=1000&{query}", chas)
            assert status == 200
            assert [e["id"] for e in body["events"]] == [r["id"] for r in everything if keep(r)], query

        # filtered pagination
        want = [r["id"] for r in everything if r["type"] == "exec"]
        got, before = [], ""
        while True:
            status, body = await h.call("GET", f"/api/activity?hours=72&type=exec&limit=9{before}", chas)
            got += [e["id"] for e in body["events"]]
            if body["next"] is None:
                break
            before = f"&before={body['next']}"
        assert got == want

        # `before` as a time
        cut = everything[20]["timestamp"]
        status, body = await h.call("GET", f"/api/activity?hours=72&limit=1000&before={cut}", chas)
        assert [e["id"] for e in body["events"]] == [r["id"] for r in everything if r["timestamp"] < cut]

        # the row shape
        event = body["events"][0]
        assert set(event) >= {"id", "time", "from", "type", "target", "detail", "result", "via",
                              "unauthenticated", "duration_ms", "exit_code", "completed_at", "event_id", "data"}


async def test_query_validation_and_admin_only(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas = await h.token("chasclaude", admin=True)
        alpha = await h.token("alpha")
        for query in ["limit=0", "limit=1001", "hours=-1", "result=maybe", "before=yesterday", "color=red",
                      "hours=abc"]:
            status, body = await h.call("GET", f"/api/activity?{query}", chas)
            assert status == 400, (query, body)
        status, body = await h.call("GET", "/api/activity", alpha)
        assert status == 403 and body["code"] == "admin_only"
        status, body = await h.call("GET", "/api/activity/stream", alpha)
        assert status == 403
        status, body = await h.call("GET", "/api/activity?type=admin", chas)
        denials = [(e["from"], e["detail"]) for e in body["events"]]
        assert denials == [("alpha", "GET /api/activity/stream (admin only)"), ("alpha", "GET /api/activity (admin only)")]


async def _receive(conn, timeout=5.0) -> bytes:
    return await asyncio.wait_for(conn.receive(), timeout)


def _events(chunks: bytes) -> list[dict]:
    out = []
    for block in chunks.decode().split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data and "event: " not in block:
            out.append(json.loads("\n".join(data)))
    return out


async def test_sse_stream_delivers_new_events(hub_harness, box):
    async with hub_harness(plugins=plugins(box), activity={"stream_keepalive_seconds": 0.05}) as h:
        chas = await h.token("chasclaude", admin=True)
        alpha = await h.token("alpha")
        await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box1"})
        conn = h.client.request("/api/activity/stream?from=alpha", headers={"Authorization": f"Bearer {chas}"})
        async with conn:
            await conn.send_complete()
            first = await _receive(conn)
            assert b": connected" in first and conn.status_code == 200
            assert conn.headers["Content-Type"].startswith("text/event-stream")
            assert b": keepalive" in await _receive(conn)  # keepalives flow while idle

            await h.call("POST", "/api/send", chas, {"to": "alpha", "message": "not from alpha"})  # filtered out
            status, _ = await h.call("POST", "/api/exec", alpha, {"target": "box1", "command": "whoami"})
            assert status == 200
            data = b""
            while len(_events(data)) < 2:
                data += await _receive(conn)
            pending, done = _events(data)[:2]
            assert (pending["type"], pending["result"], pending["detail"]) == ("exec", "pending", "whoami")
            assert (done["id"], done["result"], done["exit_code"]) == (pending["id"], "ok", 0)
            assert b"id: %d\n" % done["id"] in data

            # hub shutdown ends the stream cleanly
            store.state_of(h.hub).closing.set()
            tail = b""
            with contextlib.suppress(asyncio.TimeoutError):
                while b"event: end" not in tail:
                    tail += await _receive(conn, 2)
            assert b"event: end" in tail
        assert h.hub.bus._subs.get("activity") is None  # the subscription was released
        store.state_of(h.hub).closing.clear()


async def test_sse_client_disconnect_releases_subscription(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas = await h.token("chasclaude", admin=True)
        conn = h.client.request("/api/activity/stream", headers={"Authorization": f"Bearer {chas}"})
        async with conn:
            await conn.send_complete()
            assert b": connected" in await _receive(conn)
            assert len(h.hub.bus._subs["activity"]) == 1
            await conn.disconnect()
        for _ in range(50):
            if not h.hub.bus._subs.get("activity"):
                break
            await asyncio.sleep(0.02)
        assert not h.hub.bus._subs.get("activity")


async def test_retention_prunes_in_batches(hub_harness, box):
    # retention_days = 0 keeps the periodic task out of the way; prune is called by hand
    async with hub_harness(plugins=plugins(box), activity={"retention_days": 0}) as h:
        for days in (400, 200, 100, 95, 91, 89, 10, 0):
            await store.record(h.hub, Event("exec", "a", "b", f"{days} days", "ok", time=ago(days=days)))
        assert await store.prune(h.hub, days=0) == 0
        assert await store.prune(h.hub, days=90, batch=2) == 5
        left = sorted(r["detail"] for r in await all_rows(h.hub))
        assert left == ["0 days", "10 days", "89 days"]


async def test_retention_task_runs_periodically(hub_harness, box):
    async with hub_harness(plugins=plugins(box),
                           activity={"retention_days": 30, "prune_interval_seconds": 0.05}) as h:
        await store.record(h.hub, Event("exec", "a", "b", "old", "ok", time=ago(days=31)))
        await store.record(h.hub, Event("exec", "a", "b", "new", "ok", time=ago(days=29)))
        for _ in range(100):
            if len(await all_rows(h.hub)) == 1:
                break
            await asyncio.sleep(0.05)
        assert [r["detail"] for r in await all_rows(h.hub)] == ["new"]


# -- CLI ------------------------------------------------------------------------------------------


def _config(tmp_path, database_url):
    path = tmp_path / "claude-net.toml"
    path.write_text(f'database_url = "{database_url}"\n[plugins]\nallow = ["permissions", "activity"]\n')
    return str(path)


@contextlib.asynccontextmanager
async def opened(hub_harness):
    async with hub_harness(plugins=[claude_net_permissions, claude_net_activity]) as h:
        yield h.hub


def test_cli_list_and_export(tmp_path, database_url, hub_harness, capsys):
    from claude_net.cli import main

    async def fill():
        async with opened(hub_harness) as hub:
            await store.record(hub, Event("exec", "alpha", "box1", "make test", "ok", data={"exit_code": 2}))
            await store.record(hub, Event("exec", "alpha", "box2", "rm -rf /", "denied"))
            await store.record(hub, Event("message", "beta", "alpha", "hi, \"quoted\"", "ok"))
            await store.record(hub, Event("exec", "alpha", "box1", "old", "ok", time=ago(hours=30)))

    asyncio.run(fill())
    cfg = _config(tmp_path, database_url)
    assert main(["-c", cfg, "activity"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["ID", "TIME", "(UTC)"]
    assert [line.split()[4] for line in out[1:]] == ["exec", "exec", "message"]  # last 24h, oldest first
    assert "(exit 2)" in out[1]

    assert main(["-c", cfg, "activity", "--type", "exec", "--result", "denied", "--json"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["detail"] == "rm -rf /" and row["from"] == "alpha"

    assert main(["-c", cfg, "activity", "--hours", "48", "--from", "alpha", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3

    # export: everything by default, oldest first; filters before or after `export`
    assert main(["-c", cfg, "activity", "export", "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["detail"] for r in rows] == ["make test", "rm -rf /", 'hi, "quoted"', "old"]
    assert main(["-c", cfg, "activity", "--type", "message", "export"]) == 0
    assert [json.loads(x)["type"] for x in capsys.readouterr().out.splitlines()] == ["message"]
    target = tmp_path / "audit.csv"
    assert main(["-c", cfg, "activity", "export", "--format", "csv", "--hours", "24", "-o", str(target)]) == 0
    assert "exported 3 rows" in capsys.readouterr().err
    table = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["detail"] for r in table] == ["make test", "rm -rf /", 'hi, "quoted"']
    assert table[0]["exit_code"] == "2" and table[0]["type"] == "exec"


async def test_cli_follow_prints_new_rows_and_completions(hub_harness, capsys):
    from claude_net_activity import cli

    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["--follow", "--interval", "0.05", "--json"])
    async with opened(hub_harness) as hub:
        await store.record(hub, Event("message", "a", "b", "before", "ok"))
        running = Event("exec", "a", "box1", "long job", "pending")
        await store.record(hub, running)

        async def later():
            await asyncio.sleep(0.1)
            await store.record(hub, Event("exec", "a", "box2", "new one", "denied"))
            await asyncio.sleep(0.2)
            running.result = "ok"
            await store.record(hub, running)

        task = asyncio.ensure_future(later())
        await cli.show(hub, args, max_polls=20)
        await task
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["detail"], r["result"]) for r in lines] == [
        ("before", "ok"), ("long job", "pending"), ("new one", "denied"), ("long job", "ok")]


@pytest.mark.parametrize("argv", [["activity", "--help"], ["activity", "export", "--help"]])
def test_cli_help(argv, capsys):
    from claude_net.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "--format" in capsys.readouterr().out or argv == ["activity", "--help"]


def test_cli_export_into_a_closed_pipe_stops_quietly(tmp_path, database_url, hub_harness):
    """``claude-net activity export | head -1``: the reader leaves early; no traceback."""

    async def fill():
        async with opened(hub_harness) as hub:
            for i in range(3000):
                await store.record(hub, Event("message", "beta", "alpha", f"message {i} " + "x" * 100, "ok"))

    asyncio.run(fill())
    cfg = _config(tmp_path, database_url)
    proc = subprocess.Popen([sys.executable, "-m", "claude_net.cli", "-c", cfg, "activity", "export"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # like head -1: read one line, then go away
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert json.loads(first)["detail"].startswith("message 0 ")
    assert proc.returncode == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


async def test_search_in_detail_is_a_literal_substring(hub_harness, box):
    async with hub_harness(plugins=plugins(box), activity={"stream_keepalive_seconds": 0.05}) as h:
        chas = await h.token("chasclaude", admin=True)
        alpha = await h.token("alpha")
        for detail in ["make TEST=1 build", "make test", "rm -rf /tmp/x", "echo 100%_done", "echo 100 done"]:
            await store.record(h.hub, Event("exec", "alpha", "box1", detail, "ok"))

        async def details(q: str) -> list[str]:
            from urllib.parse import quote

            status, body = await h.call("GET", f"/api/activity?q={quote(q)}&type=exec", chas)
            assert status == 200, body
            return sorted(e["detail"] for e in body["events"])

        assert await details("TEST") == ["make TEST=1 build", "make test"]  # ignoring case
        assert await details("100%_") == ["echo 100%_done"]  # % and _ are text, not LIKE patterns
        assert await details("%") == ["echo 100%_done"]
        assert await details("nothing like it") == []
        for bad in ["", "x" * (store.MAX_SEARCH + 1)]:
            status, body = await h.call("GET", f"/api/activity?q={bad}", chas)
            assert status == 400 and body["code"] == "invalid_field", body
        status, body = await h.call("GET", "/api/activity?q=make", alpha)
        assert status == 403  # admin only, like every activity query

        # the live stream takes the same filter
        await h.call("POST", "/api/permit", chas, {"source": "alpha", "target": "box1"})
        conn = h.client.request("/api/activity/stream?q=NEEDLE", headers={"Authorization": f"Bearer {chas}"})
        async with conn:
            await conn.send_complete()
            assert b": connected" in await _receive(conn)
            await h.call("POST", "/api/exec", alpha, {"target": "box1", "command": "echo hay"})
            await h.call("POST", "/api/exec", alpha, {"target": "box1", "command": "echo needle"})
            data = b""
            while len(_events(data)) < 2:
                data += await _receive(conn)
            assert {e["detail"] for e in _events(data)} == {"echo needle"}
            store.state_of(h.hub).closing.set()  # ends the stream, as hub shutdown does
        store.state_of(h.hub).closing.clear()
