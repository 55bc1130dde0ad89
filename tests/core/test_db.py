import asyncio
import subprocess
import sys

import pytest

from claude_net import Conflict, Migration
from claude_net.db import Database


async def test_transaction_rolls_back_on_error(database_url):
    db = Database(database_url)
    await db.connect()
    try:
        await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
        await db.execute("INSERT INTO t (id, v) VALUES (1, 'a')")
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t (id, v) VALUES (2, 'b')")
                raise RuntimeError("abort")
        assert await db.fetch_val("SELECT COUNT(*) FROM t") == 1
        with pytest.raises(Conflict):
            await db.execute("INSERT INTO t (id, v) VALUES (3, 'a')")
        rows = await db.fetch_all("SELECT id, v FROM t ORDER BY id")
        assert rows == [{"id": 1, "v": "a"}]
    finally:
        await db.disconnect()


async def test_concurrent_transactions_do_not_interleave(database_url):
    db = Database(database_url)
    await db.connect()
    try:
        await db.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        await db.execute("INSERT INTO counter (id, n) VALUES (1, 0)")

        async def bump():
            async with db.transaction() as tx:
                n = await tx.fetch_val("SELECT n FROM counter WHERE id = 1" + ("" if db.is_sqlite else " FOR UPDATE"))
                await asyncio.sleep(0)
                await tx.execute("UPDATE counter SET n = :n WHERE id = 1", {"n": n + 1})

        await asyncio.gather(*(bump() for _ in range(20)))
        assert await db.fetch_val("SELECT n FROM counter WHERE id = 1") == 20
    finally:
        await db.disconnect()


MIGRATE_SCRIPT = """
import asyncio, sys
from claude_net.db import Database
from claude_net import Migration
async def main():
    db = Database(sys.argv[1])
    await db.connect()
    await db.migrate([Migration("race", v, [f"CREATE TABLE race_{v} (id INTEGER)"]) for v in range(1, 6)])
    await db.disconnect()
asyncio.run(main())
"""


def test_migrations_are_safe_from_several_processes_at_once(database_url):
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE_SCRIPT, database_url], stderr=subprocess.PIPE)
             for _ in range(4)]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors

    async def check():
        db = Database(database_url)
        await db.connect()
        rows = await db.fetch_all("SELECT version FROM schema_migrations WHERE plugin = 'race' ORDER BY version")
        await db.disconnect()
        return [r["version"] for r in rows]

    assert asyncio.run(check()) == [1, 2, 3, 4, 5]


async def test_unreachable_database_is_unavailable():
    from claude_net import Unavailable

    db = Database("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    with pytest.raises(Unavailable):
        await db.connect()
    db = Database("sqlite+aiosqlite:////nonexistent-dir/x/y.db")
    with pytest.raises(Unavailable, match="the directory /nonexistent-dir/x does not exist"):
        await db.connect()


async def test_duplicate_migration_versions_rejected(database_url):
    db = Database(database_url)
    await db.connect()
    try:
        with pytest.raises(ValueError, match="duplicate"):
            await db.migrate([Migration("d", 1, ["SELECT 1"]), Migration("d", 1, ["SELECT 1"])])
    finally:
        await db.disconnect()


async def test_cancelled_transaction_rolls_back_and_releases_its_connection(database_url):
    db = Database(database_url)
    await db.connect()
    try:
        await db.execute("CREATE TABLE c (id INTEGER PRIMARY KEY)")
        entered = asyncio.Event()

        async def slow():
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO c (id) VALUES (1)")
                entered.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(slow())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await db.fetch_val("SELECT COUNT(*) FROM c") == 0
        async with db.transaction() as tx:  # the connection (or pool slot) is usable again
            await tx.execute("INSERT INTO c (id) VALUES (2)")
        assert await db.fetch_val("SELECT COUNT(*) FROM c") == 1
    finally:
        await asyncio.wait_for(db.disconnect(), 10)  # would hang if a pooled connection leaked


async def test_concurrent_statements_each_get_their_own_outcome(database_url):
    """Autocommit statements issued together (one batch on SQLite) each return their own rows, and
    one failing statement fails only its own caller."""
    db = Database(database_url)
    await db.connect()
    try:
        await db.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")

        async def insert(i):
            return await db.fetch_val("INSERT INTO b (id, v) VALUES (:id, :v) RETURNING id", {"id": i, "v": f"v{i}"})

        async def duplicate():
            return await db.fetch_val("INSERT INTO b (id, v) VALUES (1000, 'v3') RETURNING id")

        await insert(3)
        results = await asyncio.gather(*(insert(i) for i in range(10, 40)), duplicate(), return_exceptions=True)
        assert results[:-1] == list(range(10, 40))
        assert isinstance(results[-1], Conflict)
        assert await db.fetch_val("SELECT COUNT(*) FROM b") == 31
    finally:
        await db.disconnect()


async def test_a_transaction_never_swallows_statements_queued_before_it(database_url):
    """Statements queued just before a transaction starts run (and commit) on their own: a
    rollback of the transaction must not take them with it."""
    db = Database(database_url)
    await db.connect()
    try:
        await db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")

        async def outside(i):
            await db.execute("INSERT INTO q (id, who) VALUES (:id, 'outside')", {"id": i})

        async def failing_transaction():
            with pytest.raises(RuntimeError):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO q (id, who) VALUES (999, 'tx')")
                    raise RuntimeError("roll back")

        await asyncio.gather(*(outside(i) for i in range(20)), failing_transaction(), *(outside(i) for i in range(20, 40)))
        rows = await db.fetch_all("SELECT who, COUNT(*) AS n FROM q GROUP BY who")
        assert rows == [{"who": "outside", "n": 40}]
    finally:
        await db.disconnect()


async def test_a_cancelled_caller_does_not_disturb_the_others(database_url):
    db = Database(database_url)
    await db.connect()
    try:
        await db.execute("CREATE TABLE c (id INTEGER PRIMARY KEY)")
        tasks = [asyncio.ensure_future(db.execute("INSERT INTO c (id) VALUES (:id)", {"id": i})) for i in range(10)]
        tasks[4].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[4], asyncio.CancelledError)
        assert [r for i, r in enumerate(results) if i != 4] == [None] * 9
        ids = {r["id"] for r in await db.fetch_all("SELECT id FROM c")}
        assert set(range(10)) - {4} <= ids  # the cancelled one may or may not have run
        assert await db.fetch_val("SELECT 1") == 1  # and the connection still works
    finally:
        await db.disconnect()


async def test_lookup_sees_what_another_process_committed(database_url):
    """``lookup`` (the token read; on SQLite a read on the event loop) answers from the latest
    committed state, including a change another process made a moment ago."""
    db = Database(database_url)
    await db.connect()
    try:
        await db.execute("CREATE TABLE k (id TEXT PRIMARY KEY, revoked TEXT)")
        await db.execute("INSERT INTO k (id) VALUES ('a')")
        query = "SELECT id, revoked FROM k WHERE id = :id"
        assert await db.lookup(query, {"id": "a"}) == {"id": "a", "revoked": None}
        assert await db.lookup(query, {"id": "missing"}) is None
        subprocess.run([sys.executable, "-c", REVOKE_SCRIPT, database_url], check=True, timeout=60)
        assert await db.lookup(query, {"id": "a"}) == {"id": "a", "revoked": "now"}
    finally:
        await db.disconnect()


async def test_lookup_on_an_in_memory_database():
    db = Database("sqlite+aiosqlite:///:memory:")
    await db.connect()
    try:
        await db.execute("CREATE TABLE k (id TEXT PRIMARY KEY)")
        await db.execute("INSERT INTO k (id) VALUES ('a')")
        assert await db.lookup("SELECT id FROM k WHERE id = :id", {"id": "a"}) == {"id": "a"}
    finally:
        await db.disconnect()


REVOKE_SCRIPT = """
import asyncio, sys
from claude_net.db import Database
async def main():
    db = Database(sys.argv[1])
    await db.connect()
    await db.execute("UPDATE k SET revoked = 'now' WHERE id = 'a'")
    await db.disconnect()
asyncio.run(main())
"""


async def test_submitted_statements_run_in_order_before_anything_queued_later(database_url):
    """``submit`` queues without waiting (SQLite): a query issued right after, without awaiting
    the submitted statements, already sees them; each future gets its own rows. On PostgreSQL
    it declines (a pool keeps no order), and so it does while a transaction is open."""
    db = Database(database_url)
    await db.connect()
    try:
        await db.execute("CREATE TABLE s (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
        futures = [db.submit("INSERT INTO s (id, v) VALUES (:id, :v) RETURNING id", {"id": i, "v": f"v{i}"})
                   for i in range(1, 31)]
        if not db.is_sqlite:
            assert futures == [None] * 30
            return
        duplicate = db.submit("INSERT INTO s (id, v) VALUES (99, 'v1')")
        assert all(not f.done() for f in futures)  # queued, not run: nobody has awaited anything yet
        assert await db.fetch_val("SELECT COUNT(*) FROM s") == 30
        assert [f.result() for f in futures] == [[{"id": i}] for i in range(1, 31)]
        assert "UNIQUE" in str(duplicate.exception())  # its own error, nobody else's
        async with db.transaction() as tx:
            assert db.submit("INSERT INTO s (id, v) VALUES (50, 'x')") is None
            await tx.execute("INSERT INTO s (id, v) VALUES (51, 'y')")
        # lazy: no trip of its own, yet it leaves by itself soon, and goes first with a later one
        alone = db.submit("INSERT INTO s (id, v) VALUES (60, 'lazy') RETURNING id", lazy=True)
        await asyncio.wait_for(asyncio.shield(alone), 2)
        assert alone.result() == [{"id": 60}]
        rider = db.submit("INSERT INTO s (id, v) VALUES (61, 'rider')", lazy=True)
        assert await db.fetch_val("SELECT v FROM s WHERE id = 61") == "rider"
        assert rider.done()
        held = db.submit("INSERT INTO s (id, v) VALUES (62, 'held')", lazy=True)
        async with db.transaction() as tx:  # a transaction starts after it, without waiting for its timer
            assert held.done()
            assert await tx.fetch_val("SELECT v FROM s WHERE id = 62") == "held"
    finally:
        await db.disconnect()


@pytest.mark.db("sqlite")  # submit queues on SQLite only
async def test_disconnect_waits_for_submitted_statements(database_url):
    """Statements queued without waiting are not lost when the database closes right after."""
    db = Database(database_url)
    await db.connect()
    await db.execute("CREATE TABLE d (id INTEGER PRIMARY KEY)")
    futures = [db.submit("INSERT INTO d (id) VALUES (:id)", {"id": i}) for i in range(200)]
    await db.disconnect()
    assert all(f.done() and f.exception() is None for f in futures)
    db = Database(database_url)
    await db.connect()
    try:
        assert await db.fetch_val("SELECT COUNT(*) FROM d") == 200
    finally:
        await db.disconnect()


@pytest.mark.db("sqlite")  # SQLite's connection thread
async def test_statements_after_the_connection_closed_fail_cleanly(database_url):
    """A statement that reaches a closed SQLite connection gets a 503-mapped error, not a hang."""
    from claude_net import Unavailable

    db = Database(database_url)
    await db.connect()
    batcher = db._batcher
    await db.disconnect()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(batcher.submit("SELECT 1", None), 5)
    with pytest.raises(Unavailable):
        await db.fetch_val("SELECT 1")


@pytest.mark.db("sqlite")  # SQLite's batches
async def test_statements_that_waited_for_a_transaction_still_go_in_batches(database_url):
    """Statements issued while a transaction is open wait for it to end, then go to the thread in
    batches like any others. (They used to hold the transaction lock each in turn while running:
    one trip per statement, and under steady load the line never ended, so batching stopped for
    good after the first transaction — the messaging throughput fell by a third.)"""
    db = Database(database_url)
    await db.connect()
    try:
        await db.execute("CREATE TABLE w (id INTEGER PRIMARY KEY)")
        batcher, sent = db._batcher, []
        real_send = batcher._send
        batcher._send = lambda: (sent.append(len(batcher._queue)), real_send())
        release = asyncio.Event()

        async def transaction():
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO w (id) VALUES (0)")
                await release.wait()

        holder = asyncio.ensure_future(transaction())
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(db.fetch_val("INSERT INTO w (id) VALUES (:id) RETURNING id", {"id": i}))
                   for i in range(1, 51)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in waiting)  # held back by the open transaction
        sent.clear()
        release.set()
        await holder
        assert await asyncio.gather(*waiting) == list(range(1, 51))
        assert len(sent) <= 3, sent  # a few batches, not 50 trips
        sent.clear()
        assert await asyncio.gather(*(db.fetch_val("SELECT :i", {"i": i}) for i in range(50))) == list(range(50))
        assert len(sent) <= 2, sent
    finally:
        await db.disconnect()
