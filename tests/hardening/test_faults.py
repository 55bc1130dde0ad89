"""Faults: the LXD daemon stopped mid-exec, sshd killed mid-command, the SQLite database locked by
another writer, the PostgreSQL database turned read-only, Telegram unreachable.

Each time the hub must answer clearly (a 503 with a sentence and a code, or a bounded wait) and
keep serving everything else, then recover by itself once the fault is gone — no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import threading
import time

import pytest

import claude_net_activity
import claude_net_lxd
import claude_net_permissions
import claude_net_telegram
from claude_net.hub import Hub
from claude_net.testing import eventually, free_port, require_component
from tests.core.testbox import TestBox
from tests.lxd_daemon import alive, our_lxd_daemon, restart_lxd
from tests.plugins.telegram.tg_botapi import FakeBotAPI

from .conftest import lxd_overrides

#: they stop the shared LXD daemon and kill processes by name: never beside other tests
pytestmark = pytest.mark.serial


async def _rows(hub, **filters):
    where = " AND ".join(f"{k} = :{k}" for k in filters) or "1 = 1"
    return await hub.db.fetch_all(f"SELECT * FROM activity_log WHERE {where} ORDER BY id", filters)


# -- LXD ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.lxd
@pytest.mark.db("sqlite")
async def test_lxd_daemon_stopped_mid_exec(hub_harness, lxd_box):
    pid = our_lxd_daemon()
    if pid is None:
        require_component("an LXD daemon started by scripts/lxd-setup (the test stops and restarts it)", False)
    async with hub_harness(plugins=[claude_net_lxd, claude_net_activity], lxd=lxd_overrides(),
                           nodes={"cache_seconds": 0.0}) as h:
        boss, alpha = await h.token("boss", admin=True), await h.token("alpha")
        status, body = await h.call("POST", "/api/exec", boss, {"target": lxd_box, "command": "echo up"})
        assert status == 200, body
        running = asyncio.ensure_future(h.call("POST", "/api/exec", boss, {
            "target": lxd_box, "command": f"sleep {SLEEP}; echo too-late", "timeout": 60}))
        await eventually(lambda: subprocess.run(["pgrep", "-f", f"sleep {SLEEP}"], capture_output=True).returncode == 0)
        stopped_at = time.monotonic()
        # SIGKILL: a crash. (On SIGTERM LXD shuts down gracefully and first lets running execs finish,
        # so an exec in flight simply completes: nothing to test there.)
        os.kill(pid, 9)
        try:
            await eventually(lambda: not alive(pid), timeout=30)
            status, body = await asyncio.wait_for(running, 30)
            answered = time.monotonic() - stopped_at
            assert status == 503, body  # not a hang until the 60 s timeout, not a 500
            assert body["ok"] is False and body["code"] and "LXD" in body["error"], body
            assert answered < 15, answered
            # everything that does not need LXD keeps working
            status, body = await h.call("POST", "/api/send", alpha, {"to": "boss", "message": "lxd is down"})
            assert status == 200
            status, body = await h.call("POST", "/api/exec", boss, {"target": lxd_box, "command": "true"})
            assert status == 503 and body["code"] in ("backend_unavailable", "lxd_unavailable", "unavailable"), body
        finally:
            # the exec's `lxd forkexec` helper outlives the killed daemon until its command ends, and
            # a new daemon may not come up beside it: end our command (seen from the host) first
            subprocess.run(["pkill", "-f", f"sleep {SLEEP}"], capture_output=True)
            restart_lxd()
        # recovered by itself: same hub, no restart
        status, body = await eventually(lambda: _exec_ok(h, boss, lxd_box), timeout=30, interval=0.5)
        assert body["stdout"] == "again\n"
        rows = await _rows(h.hub, type="exec", from_machine="boss")
        interrupted = [r for r in rows if "too-late" in r["detail"]]
        assert len(interrupted) == 1 and interrupted[0]["result"] == "error", interrupted  # not left pending
        assert not [r for r in rows if r["result"] == "pending"]


#: a sleep whose command line is unique to this test run (found and ended from the host)
SLEEP = f"25.{os.getpid()}"


async def _exec_ok(h, token, box):
    status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": "echo again"})
    return (status, body) if status == 200 else None


# -- SSH ------------------------------------------------------------------------------------------


@pytest.mark.ssh
@pytest.mark.db("sqlite")
async def test_sshd_killed_mid_command(hub_harness, tmp_path):
    from claude_net_ssh.testserver import PrivateSshd, sshd_available

    import claude_net_ssh

    ok, why = sshd_available()
    require_component("OpenSSH sshd", ok, why)
    sshd = PrivateSshd(tmp_path / "sshd")
    sshd.start()
    try:
        async with hub_harness(plugins=[claude_net_ssh, claude_net_activity],
                               ssh={"connect_timeout": 2.0, "kill_grace": 1.0,
                                    "nodes": {"ser-8": sshd.node_config()}}) as h:
            boss = await h.token("boss", admin=True)
            status, body = await h.call("POST", "/api/exec", boss, {"target": "ser-8", "command": "echo up"})
            assert status == 200, body
            marker = f"sleep 31.{os.getpid()}"
            running = asyncio.ensure_future(h.call("POST", "/api/exec", boss, {
                "target": "ser-8", "command": f"{marker}; echo too-late", "timeout": 60}))
            await eventually(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0)
            killed_at = time.monotonic()
            sshd.stop()  # the listener and every connection and session it served: SIGKILL
            status, body = await asyncio.wait_for(running, 30)
            assert status == 503 and body["ok"] is False and body["code"].startswith("ssh"), body
            assert time.monotonic() - killed_at < 5
            status, body = await h.call("POST", "/api/exec", boss, {"target": "ser-8", "command": "true"})
            assert status == 503 and "refused" in body["error"], body
            sshd.start()
            status, body = await h.call("POST", "/api/exec", boss, {"target": "ser-8", "command": "echo back"})
            assert status == 200 and body["stdout"] == "back\n", body  # reconnected by itself
            rows = await _rows(h.hub, type="exec")
            assert not [r for r in rows if r["result"] == "pending"]
            assert [r["result"] for r in rows if "too-late" in r["detail"]] == ["error"]
    finally:
        sshd.stop()
        subprocess.run(["pkill", "-f", f"sleep 31.{os.getpid()}"], capture_output=True)


# -- SQLite locked ------------------------------------------------------------------------------


class ExclusiveWriter:
    """Another process's writer: a plain sqlite3 connection holding ``BEGIN EXCLUSIVE`` for a while."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path, self.seconds = path, seconds
        self.locked = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            self.locked.set()
            time.sleep(self.seconds)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def __enter__(self) -> ExclusiveWriter:
        self.thread.start()
        assert self.locked.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)


@pytest.mark.slow
@pytest.mark.db("sqlite")
async def test_sqlite_locked_by_another_writer(hub_harness, database_url, monkeypatch):
    box = TestBox()
    path = database_url.split("///", 1)[1]
    # the hub's own periodic writes (last-seen flush, retention) must not meet the lock first:
    # one of them waiting out the busy timeout would shift every timing below
    monkeypatch.setattr(Hub, "LAST_SEEN_FLUSH_SECONDS", 3600.0)
    async with hub_harness(plugins=[box, claude_net_permissions, claude_net_activity],
                           activity={"retention_days": 0}) as h:
        boss, alpha = await h.token("boss", admin=True), await h.token("alpha")
        assert (await h.call("GET", "/api/whoami", alpha))[0] == 200
        # shorter than the 5 s busy timeout: the hub waits, then succeeds
        with ExclusiveWriter(path, 1.5):
            started = time.monotonic()
            status, body = await h.call("POST", "/api/send", alpha, {"to": "boss", "message": "patience"})
            assert status == 200, body
            assert 1.0 < time.monotonic() - started < 5
        # the message's audit row is queued, not awaited: let it reach the database first, so the
        # exec below is the first statement to meet the next lock
        await h.hub.db.fetch_val("SELECT 1")
        assert [r["detail"] for r in await _rows(h.hub, type="message")] == ["patience"]
        # longer than the busy timeout: the exec is refused before it runs (its audit row cannot be
        # written: fail closed), messaging answers 503 or waits, /api/health is not held up at all
        with ExclusiveWriter(path, 8.0):
            t0 = time.monotonic()
            exec_ = asyncio.ensure_future(h.call("POST", "/api/exec", boss, {"target": "box1", "command": "echo x"}))
            await asyncio.sleep(0.1)
            send = asyncio.ensure_future(h.call("POST", "/api/send", alpha, {"to": "boss", "message": "lost?"}))
            status, _ = await h.call("GET", "/api/health")
            assert status == 200 and time.monotonic() - t0 < 0.5  # no database: answered at once
            status, body = await exec_
            assert status == 503 and body["code"] == "audit_unavailable", body
            assert "busy" in body["error"] and box.calls == [], body
            assert time.monotonic() - t0 < 7  # the 5 s busy timeout, not forever
            status, body = await send
            sent = status == 200
            assert sent or (status == 503 and body["code"] == "database_unavailable" and "busy" in body["error"]), body
            assert time.monotonic() - t0 < 12
        # recovered by itself
        status, body = await h.call("POST", "/api/send", alpha, {"to": "boss", "message": "after"})
        assert status == 200, body
        status, body = await h.call("POST", "/api/exec", boss, {"target": "box1", "command": "echo y"})
        assert status == 200, body
        status, body = await h.call("GET", "/api/inbox", boss)
        # the refused message was not stored, the accepted one exactly once
        assert [m["message"] for m in body["messages"]] == ["patience"] + (["lost?"] if sent else []) + ["after"]
        ran = [c for c in box.calls if c[0] == "exec"]
        execs = await _rows(h.hub, type="exec")
        assert len(ran) == len([r for r in execs if r["result"] == "ok"])  # every exec that ran is recorded
        assert (await h.hub.db.fetch_val("PRAGMA integrity_check")) == "ok"


@pytest.mark.slow
@pytest.mark.db("sqlite")
async def test_a_queued_audit_row_outlasts_a_lock_longer_than_the_busy_timeout(hub_harness, database_url, caplog):
    """A message's audit row is queued, not awaited (SQLite). If another process holds the write
    lock past the 5 s busy timeout when the row is written, it is written again afterwards, not lost."""
    from claude_net import Event
    from claude_net_activity import store

    path = database_url.split("///", 1)[1]
    # no startup prune: waiting out the busy timeout ahead of the row, it would let the row through
    async with hub_harness(plugins=[claude_net_permissions, claude_net_activity], activity={"retention_days": 0}) as h:
        with ExclusiveWriter(path, 8.0):
            assert store.record_queued(h.hub, Event("message", "alpha", "boss", "held up", "ok"))
            # the first write gives up after the 5 s busy timeout, while the lock is still held
            await eventually(lambda: "writing the message ok event" in caplog.text, timeout=7.5)
        rows = await eventually(lambda: _rows(h.hub, type="message"), timeout=15)
        assert [r["detail"] for r in rows] == ["held up"]
        assert "cannot record" not in caplog.text


# -- PostgreSQL read-only -------------------------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    from claude_net.testing import _pg_admin as admin

    await admin(sql)


@pytest.mark.slow
@pytest.mark.db("postgresql")
async def test_database_read_only_refuses_actions_and_answers_messaging_clearly(hub_harness, database_url):
    """The database turns read-only (a failover to a standby, a full disk guard): every new session
    gets ``default_transaction_read_only``; the pool's old sessions are cut. Audit writes fail, so
    every guarded action is refused with 503 before it runs; messaging answers 503 with a sentence;
    reads keep working; back to read-write, the hub recovers without a restart."""
    box = TestBox()
    dbname = database_url.split("?", 1)[0].rsplit("/", 1)[1]

    async def set_read_only(on: bool) -> None:
        await _pg_admin(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = {"on" if on else "off"}')
        await _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'")

    async with hub_harness(plugins=[box, claude_net_permissions, claude_net_activity]) as h:
        boss, alpha = await h.token("boss", admin=True), await h.token("alpha")
        status, _ = await h.call("POST", "/api/send", alpha, {"to": "boss", "message": "before"})
        assert status == 200
        await set_read_only(True)
        try:
            # the first calls may meet a cut connection (503 too); then the read-only answer
            async def read_only_answer():
                status, body = await h.call("POST", "/api/send", alpha, {"to": "boss", "message": "ro"})
                assert status == 503, body
                return body if "read-only" in body["error"] else None

            body = await eventually(read_only_answer, timeout=10)
            assert body["code"] == "database_unavailable" and body["error"].startswith("the database is read-only")
            status, body = await h.call("POST", "/api/exec", boss, {"target": "box1", "command": "echo x"})
            assert status == 503 and body["code"] == "audit_unavailable", body
            assert "audit log" in body["error"]
            status, body = await h.call("POST", "/api/file/write", boss,
                                        {"target": "box1", "path": "/f", "content": "x"})
            assert status == 503 and body["code"] == "audit_unavailable", body
            status, body = await h.call("POST", "/api/permit", boss, {"source": "alpha", "target": "box1"})
            assert status == 503, body
            status, body = await h.call("POST", "/api/container/stop", boss, {"name": "box1"})
            assert status == 503, body
            assert box.calls == []  # nothing ran without its audit row
            # reading is fine
            status, body = await h.call("GET", "/api/inbox", boss)
            assert status == 200 and [m["message"] for m in body["messages"]] == ["before"]
            assert (await h.call("GET", "/api/machines", alpha))[0] == 200
        finally:
            await set_read_only(False)

        async def writable():
            status, body = await h.call("POST", "/api/send", alpha, {"to": "boss", "message": "after"})
            return status == 200

        await eventually(writable, timeout=10)
        status, body = await h.call("POST", "/api/exec", boss, {"target": "box1", "command": "echo y"})
        assert status == 200, body
        assert box.states["box1"] == "running"
        rows = await _rows(h.hub, type="exec")
        assert [r["result"] for r in rows] == ["ok"]  # the refused ones could not be written, the run one is


# -- Telegram unreachable -----------------------------------------------------------------------


@pytest.mark.db("sqlite")
async def test_telegram_unreachable_from_the_start_then_back(hub_harness, caplog):
    token = "7000000001:AAFakeTokenOnlyForTests_abcdefghij12"
    api = FakeBotAPI(token)
    api.port = free_port()  # nothing listens there yet
    box = TestBox()
    settings = {"token": token, "chat_id": -1001234567890, "admin_ids": [111111111], "base_url": api.base_url,
                "poll_timeout": 5, "request_timeout": 2.0, "send_interval": 0.05, "retry_initial": 0.05,
                "retry_max": 0.4, "shutdown_drain": 1.0}
    try:
        async with hub_harness(plugins=[claude_net_telegram, claude_net_permissions, claude_net_activity, box],
                               telegram=settings, admins=["chasclaude"]) as h:
            admin = await h.token("chasclaude", admin=True)
            slowest = 0.0
            for i in range(5):
                t0 = time.monotonic()
                status, body = await h.call("POST", "/api/exec", admin, {"target": "box1", "command": f"echo tg-{i}"})
                slowest = max(slowest, time.monotonic() - t0)
                assert status == 200, body
            assert slowest < 1.0  # Telegram's absence costs a request nothing
            status, body = await h.call("GET", "/api/telegram/status", admin)
            assert status == 200 and body["telegram"]["connected"] is False
            assert body["telegram"]["outbox"]  # the echoes wait in the bounded outbox
            assert len(await _rows(h.hub, type="exec", result="ok")) == 5
            await api.start()  # Telegram is back, same address
            # every echo arrives (batched into fewer messages), none dropped
            await eventually(lambda: sum(m["plain"].count("$ echo tg-") for m in api.sent) == 5, timeout=15)
            status, body = await h.call("GET", "/api/telegram/status", admin)
            assert body["telegram"]["connected"] is True and body["telegram"]["outbox"]["dropped_total"] == 0
    finally:
        with contextlib.suppress(Exception):
            await api.stop()
    assert token not in caplog.text  # the bot token never reaches the log, even in connection errors


@pytest.mark.db("postgresql")
async def test_terminated_database_sessions_are_a_503_never_a_500(hub_harness, database_url):
    """Found by the read-only test: right after the server terminates the pool's sessions, asyncpg
    may fail a statement with InternalClientError ("cannot switch to state ...; another operation is
    in progress"), which was a 500. Every such call is now a 503 and the pool heals."""
    dbname = database_url.split("?", 1)[0].rsplit("/", 1)[1]
    async with hub_harness() as h:
        alpha = await h.token("alpha")
        statuses = []
        for i in range(15):
            await _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'")
            results = await asyncio.gather(*(h.call("POST", "/api/send", alpha, {"to": "alpha", "message": f"{i}"})
                                             for _ in range(4)))
            statuses += [status for status, _ in results]
            assert all(status in (200, 503) for status, _ in results), results
        assert 503 in statuses  # the fault was really hit

        async def healthy():
            return (await h.call("POST", "/api/send", alpha, {"to": "alpha", "message": "ok"}))[0] == 200

        await eventually(healthy, timeout=10)
