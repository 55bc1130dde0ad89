"""Upgrading from v1: failing migrations fail fast and change nothing; a v1 ``messages`` table is
adopted in place when its columns map, else refused with ``claude-net import-v1``, which copies it.

Each runs on SQLite and PostgreSQL (``database_url``), through the real CLI where the user would."""

import asyncio
import os
import subprocess
import sys

import pytest

from claude_net import Migration
from claude_net.db import Database, MigrationError

CLI_TIMEOUT = 60  # the v1 "hang" never returned; a healthy run takes about two seconds


async def _run(url, *statements):
    db = Database(url)
    await db.connect()
    try:
        for sql in statements:
            if isinstance(sql, tuple):
                for row in sql[1]:
                    await db.execute(sql[0], row)
            else:
                await db.execute(sql)
    finally:
        await db.disconnect()


async def _fetch(url, sql):
    db = Database(url)
    await db.connect()
    try:
        return await db.fetch_all(sql)
    finally:
        await db.disconnect()


async def _tables(url):
    if url.startswith("sqlite"):
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    else:
        sql = "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()"
    return sorted(r["name"] for r in await _fetch(url, sql))


def cli(tmp_path, url, *args, check=True):
    config = tmp_path / "claude-net.toml"
    config.write_text(f'database_url = "{url}"\nport = 1\nlog_level = "warning"\n')
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CLAUDE_NET_CONFIG": str(config)}
    out = subprocess.run([sys.executable, "-m", "claude_net.cli", *args], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=CLI_TIMEOUT)
    if check:
        assert out.returncode == 0, out.stderr
    return out


# -- failing migrations ------------------------------------------------------------------------


async def test_failing_migration_statement_fails_fast_names_it_and_rolls_back(database_url):
    first = Migration("demo", 1, ["CREATE TABLE demo_one (id INTEGER PRIMARY KEY)"])
    broken = Migration("demo", 2, [
        "CREATE TABLE demo_two (id INTEGER PRIMARY KEY)",
        "CREATE INDEX demo_two_missing ON demo_two (no_such_column)",
        "CREATE TABLE demo_three (id INTEGER PRIMARY KEY)",
    ], description="two and three")
    other = Migration("zz_other", 1, ["CREATE TABLE zz_other (id INTEGER PRIMARY KEY)"])
    db = Database(database_url)
    await db.connect()
    try:
        assert await db.migrate([first]) == ["demo v1"]
        with pytest.raises(MigrationError) as failed:
            await asyncio.wait_for(db.migrate([first, broken, other]), 15)
        text = failed.value.message
        assert "migration demo v2 (two and three) failed at statement 2 of 3" in text, text
        assert "CREATE INDEX demo_two_missing ON demo_two (no_such_column)" in text and "no_such_column" in text
        assert "rolled back" in text and failed.value.code == "migration_failed"
        # nothing of the failed run stayed: not demo v2's first table, not the other plugin's
        assert [r["name"] for r in await db.fetch_all(
            "SELECT plugin || ' v' || CAST(version AS TEXT) AS name FROM schema_migrations ORDER BY plugin")] == ["demo v1"]
        # the connection is still usable, and the same migrations apply once the statement is fixed
        fixed = Migration("demo", 2, [s.replace("no_such_column", "id") for s in broken.statements])
        assert await db.migrate([first, fixed, other]) == ["demo v2", "zz_other v1"]
    finally:
        await db.disconnect()
    assert {"demo_one", "demo_two", "demo_three", "zz_other"} <= set(await _tables(database_url))


async def test_cli_commands_stop_at_once_with_one_line_when_a_migration_fails(database_url, tmp_path):
    """The v1 'hang': after a failed migration the CLI printed its error, then never exited (the
    database connection's thread was left running). Another program's ``tokens`` table makes the
    core's first migration fail: each command ends with the one line, and nothing changed."""
    await _run(database_url, "CREATE TABLE tokens (token TEXT PRIMARY KEY, owner TEXT)",
               ("INSERT INTO tokens VALUES (:t, :o)", [{"t": "abc", "o": "someone"}]))
    expected = ("error: migration claude_net v1 (tokens, node_seen, messages) failed at statement 3 of 7: "
                "CREATE INDEX IF NOT EXISTS tokens_name ON tokens (name): ")
    for args in (["migrate"], ["token", "create", "bob"], ["serve"]):
        out = cli(tmp_path, database_url, *args, check=False)  # (a hang fails on the timeout)
        assert out.returncode == 1, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), out.stderr
        assert "name" in lines[0] and lines[0].endswith("it was rolled back, the database is as it was")
    assert await _tables(database_url) == ["tokens"]
    assert await _fetch(database_url, "SELECT * FROM tokens") == [{"token": "abc", "owner": "someone"}]


# -- v1 layouts --------------------------------------------------------------------------------

#: (name, SQLite DDL, PostgreSQL DDL, columns in insert order, read flag values for read / unread)
ADOPTABLE = {
    # the v1 API's own names (from_machine, to_machine, message, timestamp) with a read flag
    "v1-names": (
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, from_machine TEXT NOT NULL,"
        " to_machine TEXT NOT NULL, message TEXT NOT NULL, timestamp TEXT NOT NULL, read INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE messages (id SERIAL PRIMARY KEY, from_machine TEXT NOT NULL, to_machine TEXT NOT NULL,"
        " message TEXT NOT NULL, timestamp TEXT NOT NULL, read BOOLEAN NOT NULL DEFAULT FALSE)",
        ("id", "from_machine", "to_machine", "message", "timestamp", "read"),
        (True, False),
    ),
    # the layout of the issue: other names, a plain INTEGER PRIMARY KEY (no sequence on PostgreSQL)
    "sender-recipient": (
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, sender TEXT, recipient TEXT, body TEXT,"
        " created_at TEXT, read INTEGER)",
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, sender TEXT, recipient TEXT, body TEXT,"
        " created_at TEXT, read INTEGER)",
        ("id", "sender", "recipient", "body", "created_at", "read"),
        (1, 0),
    ),
    # content instead of message, an acked flag, and an extra column of its own
    "content-acked": (
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, from_machine VARCHAR(64), to_machine VARCHAR(64),"
        " content TEXT, timestamp TEXT, acked BOOLEAN DEFAULT 0, priority INTEGER)",
        "CREATE TABLE messages (id BIGSERIAL PRIMARY KEY, from_machine VARCHAR(64), to_machine VARCHAR(64),"
        " content TEXT, timestamp TEXT, acked BOOLEAN DEFAULT FALSE, priority INTEGER)",
        ("id", "from_machine", "to_machine", "content", "timestamp", "acked"),
        (True, False),
    ),
}

#: (id, from, to, message, time, read?) — ids not starting at 1, so keeping them is visible
ROWS = [
    (10, "alice", "bob", "first for bob", "2025-01-01T10:00:00.000000Z", False),
    (11, "alice", "bob", "read already", "2025-01-01T10:01:00.000000Z", True),
    (12, "carol", "bob", "second for bob", "2025-01-01T10:02:00.000000Z", False),
    (13, "bob", "carol", "read by carol", "2025-01-01T10:03:00.000000Z", True),
    (14, "bob", "carol", "unread for carol", "2025-01-01T10:04:00.000000Z", False),
]


async def _make_v1(url, layout):
    sqlite_ddl, pg_ddl, cols, (yes, no) = ADOPTABLE[layout]
    placeholders = ", ".join(f":c{n}" for n in range(len(cols)))
    insert = f"INSERT INTO messages ({', '.join(cols)}) VALUES ({placeholders})"
    rows = [{f"c{n}": v for n, v in enumerate((*row[:5], yes if row[5] else no))} for row in ROWS]
    await _run(url, sqlite_ddl if url.startswith("sqlite") else pg_ddl, (insert, rows))


@pytest.mark.parametrize("layout", list(ADOPTABLE))
async def test_v1_messages_table_is_adopted_with_every_row_and_unread_stays_unread(database_url, hub_harness,
                                                                                 layout):
    await _make_v1(database_url, layout)
    assert len(await _fetch(database_url, "SELECT * FROM messages")) == len(ROWS)
    async with hub_harness() as h:
        bob, carol = await h.token("bob"), await h.token("carol")
        assert (await h.hub.db.fetch_val("SELECT COUNT(*) FROM messages")) == len(ROWS)  # every row kept
        status, body = await h.call("GET", "/api/inbox", bob)
        assert status == 200, body
        assert [(m["id"], m["from"], m["message"], m["time"]) for m in body["messages"]] == [
            (10, "alice", "first for bob", ROWS[0][4]), (12, "carol", "second for bob", ROWS[2][4])]
        status, body = await h.call("GET", "/api/machines", bob)
        unread = {m["name"]: m["unread"] for m in body["machines"]}
        assert unread["bob"] == 2 and unread["carol"] == 1
        status, body = await h.call("POST", "/api/inbox/ack", bob, {"ids": [10, 11]})
        assert body["acked"] == [10] and body["ignored"] == [11]  # 11 was read in v1
        status, body = await h.call("POST", "/api/send", carol, {"to": "bob", "message": "new"})
        assert status == 200 and body["id"] > 14, body  # new ids continue after the v1 ones
        status, body = await h.call("GET", "/api/inbox?ack=true", bob)
        assert [m["message"] for m in body["messages"]] == ["second for bob", "new"]
        status, body = await h.call("GET", "/api/inbox", carol)
        assert [m["id"] for m in body["messages"]] == [14]
    # a second start finds its own table: nothing is adopted twice, nothing lost
    async with hub_harness() as h:
        assert (await h.hub.db.fetch_val("SELECT COUNT(*) FROM messages")) == len(ROWS) + 1
        status, body = await h.call("GET", "/api/inbox", await h.token("carol"))
        assert [m["message"] for m in body["messages"]] == ["unread for carol"]


# -- a v1 table that cannot be adopted ------------------------------------------------------------

UNMAPPABLE_SQLITE = ("CREATE TABLE messages (msg_id TEXT PRIMARY KEY, author TEXT NOT NULL, channel TEXT NOT NULL,"
                     " payload TEXT, ts INTEGER NOT NULL, status TEXT)")
UNMAPPABLE_PG = ("CREATE TABLE messages (msg_id UUID PRIMARY KEY, author TEXT NOT NULL, channel TEXT NOT NULL,"
                 " payload TEXT, ts BIGINT NOT NULL, status TEXT)")
UNMAPPABLE_ROWS = [
    ("1b4e28ba-2fa1-11d2-883f-0016d3cca427", "alice", "bob", "hello bob", 1735725600, "read"),
    ("2b4e28ba-2fa1-11d2-883f-0016d3cca427", "alice", "bob", "are you there?", 1735725660, "unread"),
    ("3b4e28ba-2fa1-11d2-883f-0016d3cca427", "bob", "alice", "yes", 1735725720, None),
    ("4b4e28ba-2fa1-11d2-883f-0016d3cca427", "carol", "bob", "lunch?", 1735725780, "new"),
]
MAP = "from=author,to=channel,message=payload,time=ts,read=status"


async def test_unmappable_v1_table_is_refused_then_imported_with_import_v1(database_url, tmp_path, hub_harness):
    sqlite = database_url.startswith("sqlite")
    insert = "INSERT INTO messages VALUES (:i, :a, :c, :p, :t, :s)"
    if not sqlite:
        insert = insert.replace(":i,", "CAST(:i AS UUID),")
    await _run(database_url, UNMAPPABLE_SQLITE if sqlite else UNMAPPABLE_PG,
               (insert, [dict(zip("iacpts", row)) for row in UNMAPPABLE_ROWS]))
    before = await _tables(database_url)

    def refused(*args):
        out = cli(tmp_path, database_url, *args, check=False)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert lines[0].startswith("error: the table messages was not created by claude-net"), lines[0]
        assert "claude-net import-v1 --map from=COLUMN,to=COLUMN,message=COLUMN,time=COLUMN" in lines[0]
        assert "msg_id, author, channel, payload, ts, status" in lines[0]

    for args in (["migrate"], ["token", "create", "bob"], ["serve"]):
        refused(*args)
    # refused, and rolled back: the database is exactly as it was
    assert await _tables(database_url) == before == ["messages"]
    assert len(await _fetch(database_url, "SELECT * FROM messages")) == len(UNMAPPABLE_ROWS)

    out = cli(tmp_path, database_url, "import-v1", "--map", MAP)
    assert out.stdout.splitlines() == [
        "renamed the v1 table messages -> messages_v1",
        "messages_v1: 4 row(s); mapping id=msg_id, from=author, to=channel, message=payload, time=ts, read=status",
        "imported 4 message(s) (3 unread), 0 already imported",
        "messages now holds 4 message(s); messages_v1 was left as it is",
    ], out.stdout + out.stderr
    again = cli(tmp_path, database_url, "import-v1", "--map", MAP)  # idempotent
    assert "imported 0 message(s) (0 unread), 4 already imported" in again.stdout, again.stdout
    assert len(await _fetch(database_url, "SELECT * FROM messages")) == 4
    assert len(await _fetch(database_url, "SELECT * FROM messages_v1")) == 4
    assert cli(tmp_path, database_url, "migrate").stdout.strip() == "database is up to date"

    async with hub_harness() as h:
        bob = await h.token("bob")
        status, body = await h.call("GET", "/api/inbox", bob)
        assert [(m["from"], m["message"], m["time"]) for m in body["messages"]] == [
            ("alice", "are you there?", "2025-01-01T10:01:00.000000Z"),
            ("carol", "lunch?", "2025-01-01T10:03:00.000000Z")]
        first = body["messages"][0]["id"]
        status, body = await h.call("POST", "/api/inbox/ack", bob, {"ids": [first]})
        assert body["acked"] == [first]
        status, body = await h.call("POST", "/api/send", await h.token("alice"), {"to": "bob", "message": "later"})
        assert status == 200
        status, body = await h.call("GET", "/api/inbox", bob)
        assert [m["message"] for m in body["messages"]] == ["lunch?", "later"]


@pytest.mark.db("sqlite")
async def test_import_v1_reads_another_sqlite_file_and_keeps_ids(database_url, tmp_path, hub_harness):
    old = tmp_path / "v1-hub.db"
    await _run(f"sqlite+aiosqlite:///{old}", ADOPTABLE["sender-recipient"][0],
               ("INSERT INTO messages VALUES (:i, :f, :t, :m, :ts, :r)",
                [{"i": r[0], "f": r[1], "t": r[2], "m": r[3], "ts": r[4], "r": int(r[5])} for r in ROWS]))
    out = cli(tmp_path, database_url, "import-v1", "--from-sqlite", str(old))
    assert "imported 5 message(s) (3 unread), 0 already imported" in out.stdout, out.stdout + out.stderr
    assert "renamed" not in out.stdout
    out = cli(tmp_path, database_url, "import-v1", "--from-sqlite", str(old))
    assert "imported 0 message(s) (0 unread), 5 already imported" in out.stdout
    bad = cli(tmp_path, database_url, "import-v1", "--map", "colour=x", check=False)
    assert bad.returncode == 2 and "unknown field 'colour'" in bad.stderr
    async with hub_harness() as h:
        status, body = await h.call("GET", "/api/inbox", await h.token("bob"))
        assert [m["id"] for m in body["messages"]] == [10, 12]  # the v1 ids, kept
