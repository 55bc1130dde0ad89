"""claude_net.testing's suite machinery: the serial marker's passes and recycled PostgreSQL databases."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from claude_net import testing

SUITE = '''
import pytest

@pytest.mark.serial
def test_stops_a_shared_daemon():
    pass

def test_ordinary():
    pass
'''


def _run(tmp_path, *args: str) -> str:
    (tmp_path / "test_suite.py").write_text(SUITE)
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *args, "test_suite.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return out.stdout


@pytest.mark.parametrize("args, ran, left_out", [
    ((), {"test_stops_a_shared_daemon", "test_ordinary"}, 0),
    (("--serial", "only"), {"test_stops_a_shared_daemon"}, 1),
    (("--serial", "skip"), {"test_ordinary"}, 1),
    (("-n", "2"), {"test_ordinary"}, None),  # never beside other tests, even when not told
])
def test_serial_tests_run_alone_or_not_at_all(tmp_path, args, ran, left_out):
    out = _run(tmp_path, *args)
    assert set(re.findall(r"PASSED test_suite.py::(\w+)", out)) == ran, out
    if left_out is not None:  # pytest-xdist's controller does not count its workers' deselections
        assert (f"{left_out} deselected" in out) == bool(left_out), out


def test_a_recycled_postgresql_database_is_as_empty_as_a_new_one():
    ok, why = testing.pg_available()
    testing.require_component("PostgreSQL", ok, why)
    import asyncpg

    def name(url: str) -> str:
        return re.search(r"@/([^?]+)", url).group(1)

    async def dirty(db: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(testing._pg_dsn(db))
        await conn.execute("CREATE SCHEMA extra; CREATE TABLE extra.t (x int); CREATE TABLE t2 (id serial primary key);"
                           " CREATE TYPE mood AS ENUM ('ok'); SELECT lo_create(0); LISTEN somewhere;")
        await conn.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
        return conn  # left open: the recycling ends it

    async def inspect(db: str) -> dict:
        conn = await asyncpg.connect(testing._pg_dsn(db))
        try:
            return {
                "schemas": [r[0] for r in await conn.fetch(
                    "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'")],
                "relations": await conn.fetchval("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid ="
                                                 " c.relnamespace WHERE n.nspname = 'public'"),
                "types": await conn.fetchval("SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid ="
                                             " t.typnamespace WHERE n.nspname = 'public'"),
                "large_objects": await conn.fetchval("SELECT count(*) FROM pg_largeobject_metadata"),
                "read_only": await conn.fetchval("SHOW default_transaction_read_only"),
            }
        finally:
            await conn.close()

    with testing.scratch_pg_database("cn_recycle") as first:
        asyncio.run(dirty(name(first)))
    with testing.scratch_pg_database("cn_recycle") as second:
        assert second == first  # the same database, emptied, not a new one
        assert asyncio.run(inspect(name(second))) == {"schemas": ["public"], "relations": 0, "types": 0,
                                                      "large_objects": 0, "read_only": "off"}
