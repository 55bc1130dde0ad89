"""PostgreSQL request path: parameters handed to asyncpg directly, and batched NOTIFY publishing."""

import asyncio

import pytest

from claude_net.cluster import PgBus
from claude_net.db import Database, _pg_positional


@pytest.mark.parametrize("sql", [
    "SELECT data::jsonb FROM t WHERE a = :a AND b >= :b_2 OR c = :a AND t = '12:30' LIMIT :limit",
    "SELECT ':quoted' AS x, :a",  # like text(): a :name inside quotes is a parameter too
    "UPDATE messages SET read_at = :now WHERE id IN (SELECT id FROM messages WHERE to_machine = :name"
    " AND read_at IS NULL ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED) RETURNING id",
    "SELECT 1",
])
def test_named_parameters_are_found_as_sqlalchemy_text_finds_them(sql):
    from sqlalchemy import text

    converted, names = _pg_positional(sql)
    assert list(names) == list(dict.fromkeys(text(sql)._bindparams))
    for i, name in enumerate(names, 1):
        assert f":{name}" not in converted.replace("::", "") and f"${i}" in converted


def test_positional_form():
    assert _pg_positional("SELECT a::text FROM t WHERE x = :x AND y = :y OR z = :x") == (
        "SELECT a::text FROM t WHERE x = $1 AND y = $2 OR z = $1", ("x", "y"))


@pytest.mark.db("postgresql")
async def test_statements_outside_transactions_use_the_pool_directly(database_url):
    db = Database(database_url)
    await db.connect()
    try:
        assert db._pool is not None
        await db.execute("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, flag BOOLEAN)")
        ids = [await db.fetch_val("INSERT INTO t (name, flag) VALUES (:n, :f) RETURNING id", {"n": n, "f": n == "b",
                                                                                             "unused": 1})
               for n in ("a", "b", "c")]
        assert ids == [1, 2, 3]
        rows = await db.fetch_all("SELECT id, name, flag FROM t WHERE name <> :n OR id = :i ORDER BY id",
                                  {"n": "a", "i": 1})
        assert rows == [{"id": 1, "name": "a", "flag": False}, {"id": 2, "name": "b", "flag": True},
                        {"id": 3, "name": "c", "flag": False}]
        with pytest.raises(KeyError, match="missing"):
            await db.fetch_all("SELECT CAST(:missing AS text)")
        async with db.transaction() as tx:  # transactions keep going through `databases`
            await tx.execute("UPDATE t SET name = :n WHERE id = :i", {"n": "z", "i": 3})
        assert await db.fetch_val("SELECT name FROM t WHERE id = 3") == "z"
        # no session state leaks between pooled statements that matter: a failed statement
        # leaves the connection usable for the next
        with pytest.raises(Exception):
            await db.fetch_all("SELECT * FROM no_such_table")
        assert await db.fetch_val("SELECT COUNT(*) AS n FROM t") == 3
    finally:
        await db.disconnect()


@pytest.mark.db("postgresql")
async def test_concurrent_publishes_all_arrive_in_order_identical_ones_too(database_url):
    sender, receiver = PgBus(database_url), PgBus(database_url)
    await sender.start()
    await receiver.start()
    try:
        async with receiver.subscribe("bench", maxsize=1000) as sub:
            payloads = [{"k": i % 3} for i in range(300)]  # identical payloads in one batch stay distinct
            await asyncio.gather(*(sender.publish("bench", p) for p in payloads))
            got = []
            while len(got) < len(payloads):
                item = await sub.get(timeout=5)
                assert item is not None, f"only {len(got)} of {len(payloads)} arrived"
                got.append(item)
            assert got == payloads
            assert await sub.get(timeout=0.3) is None
    finally:
        await sender.stop()
        await receiver.stop()


async def test_publish_without_postgresql_delivers_locally_and_does_not_raise():
    bus = PgBus("postgresql+asyncpg://nobody@127.0.0.1:9/none")
    try:
        async with bus.subscribe("x") as sub:
            await asyncio.wait_for(asyncio.gather(bus.publish("x", {"a": 1}), bus.publish("x", {"a": 2})), 15)
            assert [await sub.get(timeout=1), await sub.get(timeout=1)] == [{"a": 1}, {"a": 2}]
    finally:
        await bus.stop()
