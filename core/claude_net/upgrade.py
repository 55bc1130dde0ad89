"""Upgrading from claude-net v1: a ``messages`` table that this hub did not create.

The v1 spec says the hub's "new tables [are] added alongside the existing messages table". A v1
database therefore arrives with a ``messages`` table of its own layout and no record of the
hub's migrations. Two ways forward, both keeping every row:

* **Adopt** (automatic, inside the core's first migration): when each column the hub needs can
  be found under a known name with a usable type, the table is changed in place — columns
  renamed to the hub's names, the missing ones added with ``ALTER TABLE … ADD COLUMN``, a v1
  read flag turned into ``read_at`` — so ids stay the same, unread stays unread, and inbox and
  ack work on the old rows. The v1 flag column itself is left as it was (no longer updated).
* **Import** (``claude-net import-v1``) when it cannot be adopted: the v1 table is renamed aside
  (``messages_v1``), the hub creates its own ``messages``, and the rows are copied with a column
  mapping (``--map from=author,to=channel,...``), converting values (epoch seconds to ISO time, a
  flag or a status word to ``read_at``). Each copied row carries a marker, so a second run copies
  nothing twice.

Until one of them happens the hub refuses to start with a sentence naming the table and the
``import-v1`` command; the failed migration is rolled back, so the database stays as it was.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .db import Database, MigrationError
from .types import isotime

log = logging.getLogger("claude_net.upgrade")

TABLE = "messages"
RENAME_TO = "messages_v1"
DOCS = 'docs/operations.md, "Upgrading from v1"'

#: the hub's message fields: mapping key -> (hub column, v1 names it may have had)
FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "id": ("id", ("id", "message_id", "msg_id")),
    "from": ("from_machine", ("from_machine", "sender", "from", "source", "from_node", "src")),
    "to": ("to_machine", ("to_machine", "recipient", "to", "target", "to_node", "dest", "destination")),
    "message": ("message", ("message", "body", "content", "text", "msg")),
    "time": ("timestamp", ("timestamp", "created_at", "time", "sent_at", "created", "date")),
}
#: v1 names of the read state: a time it was read, or a flag
READ_AT_NAMES = ("read_at", "acked_at", "read_time", "seen_at")
READ_FLAG_NAMES = ("read", "is_read", "acked", "acknowledged", "seen")
#: values of a read column that mean "not read yet" (besides NULL, 0 and false)
UNREAD_WORDS = {"", "0", "f", "false", "n", "no", "new", "unread", "pending", "none", "null"}
#: the columns the hub adds when adopting, with their definitions
ADDED = {
    "read_at": "TEXT",
    "unauthenticated": "BOOLEAN NOT NULL DEFAULT FALSE",
    "idempotency_key": "TEXT",
}
#: marker of an imported row, in ``idempotency_key`` (unique per sender and recipient)
MARKER = "v1-import:{table}:{key}"


def q(name: str) -> str:
    """A quoted identifier: v1 columns may be called ``from`` or ``to``."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Column:
    name: str
    type: str  # lower case, as declared (SQLite) or information_schema's data_type (PostgreSQL)
    notnull: bool
    has_default: bool
    pk: bool


@dataclass
class Plan:
    """What adopting a table takes, or why it cannot be adopted."""

    columns: list[Column]
    mapping: dict[str, str | None]  # field -> v1 column
    read_at: str | None = None  # v1 column holding the read time
    read_flag: str | None = None  # v1 column holding a read flag
    problems: list[str] = field(default_factory=list)

    @property
    def renames(self) -> list[tuple[str, str]]:
        out = [(col, FIELDS[key][0]) for key, col in self.mapping.items() if col and col != FIELDS[key][0]]
        if self.read_at and self.read_at != "read_at":
            out.append((self.read_at, "read_at"))
        return out

    def map_hint(self) -> str:
        """A ``--map`` argument for ``import-v1``: the guesses, ``COLUMN`` where none was found."""
        parts = [f"{key}={self.mapping.get(key) or 'COLUMN'}" for key in ("from", "to", "message", "time")]
        read = self.read_at or self.read_flag
        if read:
            parts.append(f"read={read}")
        return ",".join(parts)


# -- looking at a table ----------------------------------------------------------------------------


async def table_exists(ex: Any, db: Database, table: str) -> bool:
    if db.is_sqlite:
        sql = "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = :t"
    else:
        sql = ("SELECT COUNT(*) AS n FROM information_schema.tables"
               " WHERE table_schema = current_schema() AND table_name = :t")
    return bool(await ex.fetch_val(sql, {"t": table}))


async def columns_of(ex: Any, db: Database, table: str) -> list[Column]:
    if db.is_sqlite:
        rows = await ex.fetch_all(f"PRAGMA table_info({q(table)})")
        pks = [r for r in rows if r["pk"]]
        return [Column(r["name"], (r["type"] or "").lower(), bool(r["notnull"]), r["dflt_value"] is not None,
                       bool(r["pk"]) and len(pks) == 1) for r in rows]
    rows = await ex.fetch_all(
        "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = :t ORDER BY ordinal_position", {"t": table})
    pk = [r["column_name"] for r in await ex.fetch_all(
        "SELECT k.column_name FROM information_schema.table_constraints c"
        " JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name"
        " AND k.table_schema = c.table_schema AND k.table_name = c.table_name"
        " WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = current_schema() AND c.table_name = :t",
        {"t": table})]
    return [Column(r["column_name"], r["data_type"].lower(), r["is_nullable"] == "NO",
                   r["column_default"] is not None, pk == [r["column_name"]]) for r in rows]


def guess(cols: Sequence[Column], given: Mapping[str, str] | None = None) -> tuple[dict[str, str | None], str | None, list[str]]:
    """Map the hub's fields to a table's columns: ``given`` first, then the known v1 names.
    Returns (field -> column, the read column, problems)."""
    given = dict(given or {})
    names = {c.name.lower(): c.name for c in cols}
    problems: list[str] = []
    mapping: dict[str, str | None] = {}
    for key, (_hub, synonyms) in FIELDS.items():
        if key in given:
            column = names.get(given[key].lower())
            if column is None:
                problems.append(f"--map {key}={given[key]}: the table has no column {given[key]}")
            mapping[key] = column
            continue
        found = [names[s] for s in synonyms if s in names]
        if len(found) > 1:
            problems.append(f"{key} could be any of the columns {', '.join(found)}")
        mapping[key] = found[0] if len(found) == 1 else None
    if "read" in given:
        read = names.get(given["read"].lower())
        if read is None:
            problems.append(f"--map read={given['read']}: the table has no column {given['read']}")
    else:
        found = [names[s] for s in READ_AT_NAMES + READ_FLAG_NAMES if s in names]
        if len(found) > 1:
            problems.append(f"the read state could be any of the columns {', '.join(found)}")
        read = found[0] if len(found) == 1 else None
    return mapping, read, problems


def _is_text(db: Database, col: Column) -> bool:
    if db.is_sqlite:  # SQLite's affinity rules: CHAR, CLOB or TEXT in the type, or no type at all
        return not col.type or any(word in col.type for word in ("char", "clob", "text"))
    return col.type in ("text", "character varying", "character")


def _is_flag(db: Database, col: Column) -> bool:
    if db.is_sqlite:
        return any(word in col.type for word in ("int", "bool", "numeric", "bit")) or not col.type
    return col.type in ("boolean", "smallint", "integer", "bigint")


async def plan_adoption(tx: Any, db: Database, table: str = TABLE) -> Plan:
    """Whether ``table`` can become the hub's messages table in place, and how."""
    cols = await columns_of(tx, db, table)
    by_name = {c.name: c for c in cols}
    mapping, read, problems = guess(cols)
    plan = Plan(cols, mapping, problems=problems)
    missing = [key for key in ("from", "to", "message", "time") if mapping[key] is None]
    if missing:
        plan.problems.append(f"no column under a known name for {', '.join(missing)}")
    ident = mapping["id"]
    if ident is None:
        plan.problems.append("no integer primary key id")
    else:
        col = by_name[ident]
        # SQLite assigns ids only to a column declared exactly INTEGER PRIMARY KEY (the rowid)
        ok = col.pk and (col.type == "integer" if db.is_sqlite else col.type in ("smallint", "integer", "bigint"))
        if not ok:
            plan.problems.append(f"its id column {ident} is not an INTEGER PRIMARY KEY")
    for key in ("from", "to", "message", "time"):
        column = mapping[key]
        if column is None:
            continue
        if not _is_text(db, by_name[column]):
            plan.problems.append(f"{column} ({key}) is of type {by_name[column].type}, not text")
            continue
        if db.is_sqlite:  # types are only declared: look at the values
            bad = await tx.fetch_val(f"SELECT COUNT(*) FROM {q(table)} WHERE typeof({q(column)}) <> 'text'")
        else:
            bad = await tx.fetch_val(f"SELECT COUNT(*) FROM {q(table)} WHERE {q(column)} IS NULL")
        if bad:
            plan.problems.append(f"{bad} row(s) have no text in {column} ({key})")
    if read is not None:
        col = by_name[read]
        if read.lower() in READ_AT_NAMES or (read.lower() not in READ_FLAG_NAMES and _is_text(db, col)):
            if _is_text(db, col):
                plan.read_at = read
            else:
                plan.problems.append(f"its read time {read} is of type {col.type}, not text")
        elif _is_flag(db, col):
            plan.read_flag = read
            if db.is_sqlite:
                bad = await tx.fetch_val(
                    f"SELECT COUNT(*) FROM {q(table)} WHERE typeof({q(read)}) NOT IN ('integer', 'null')")
                if bad:
                    plan.problems.append(f"{bad} row(s) hold something other than 0 or 1 in {read}")
        else:
            plan.problems.append(f"its read state {read} is of type {col.type}")
    used = {c for c in mapping.values() if c} | {read}
    # (the hub's own added columns, from an older claude-net, are kept as they are)
    required = [c.name for c in cols if c.name not in used and c.name not in ADDED and c.notnull
                and not c.has_default and not c.pk]
    if required:
        plan.problems.append(f"{', '.join(required)} {'is' if len(required) == 1 else 'are'} NOT NULL without a "
                             "default, so the hub's new messages could not be stored")
    targets = [new for _old, new in plan.renames]
    for new in targets:
        if new in by_name and new not in used:
            plan.problems.append(f"it already has a column {new} that holds something else")
    return plan


async def is_hub_table(ex: Any, db: Database, table: str = TABLE) -> bool:
    """Whether ``table`` is the hub's own messages table (its migration is recorded)."""
    if not await table_exists(ex, db, "schema_migrations"):
        return False
    done = await ex.fetch_val("SELECT COUNT(*) FROM schema_migrations WHERE plugin = 'claude_net' AND version = 1")
    return bool(done) and await table_exists(ex, db, table)


def refusal(plan: Plan, table: str = TABLE) -> MigrationError:
    return MigrationError(
        f"the table {table} was not created by claude-net (a v1 database?) and cannot be adopted in place: "
        f"{'; '.join(plan.problems)}. Its columns: {', '.join(c.name for c in plan.columns)}. "
        f"Copy its rows into a new {table} table with `claude-net import-v1 --map {plan.map_hint()}` "
        f"(it first renames {table} to {RENAME_TO}; see {DOCS})",
        code="v1_table_not_adoptable", table=table)


# -- adopting in place (a step of the core's first migration) ------------------------------------


async def adopt_v1_messages(tx: Any, db: Database) -> None:
    """Make a v1 ``messages`` table the hub's, or refuse; a no-op when there is none.

    Runs inside the migration's transaction: a refusal or a failed statement leaves the table as
    it was."""
    if not await table_exists(tx, db, TABLE):
        return
    plan = await plan_adoption(tx, db)
    if plan.problems:
        raise refusal(plan)
    names = {c.name for c in plan.columns}
    if not plan.renames and set(ADDED) <= names:
        return  # already the hub's layout
    rows = await tx.fetch_val(f"SELECT COUNT(*) FROM {TABLE}")
    for old, new in plan.renames:
        await tx.execute(f"ALTER TABLE {TABLE} RENAME COLUMN {q(old)} TO {new}")
    names = (names - {old for old, _ in plan.renames}) | {new for _, new in plan.renames}
    for column, definition in ADDED.items():
        if column not in names:
            await tx.execute(f"ALTER TABLE {TABLE} ADD COLUMN {column} {definition}")
    if plan.read_flag:
        # v1 knew only that a message was read, not when: its own time stands in
        flag = next(c for c in plan.columns if c.name == plan.read_flag)
        truth = q(flag.name) if flag.type == "boolean" else f"{q(flag.name)} <> 0"
        await tx.execute(f"UPDATE {TABLE} SET read_at = timestamp WHERE read_at IS NULL AND {truth}")
    if not db.is_sqlite:
        await _ensure_pg_id_default(tx)
    unread = await tx.fetch_val(f"SELECT COUNT(*) FROM {TABLE} WHERE read_at IS NULL")
    log.warning("adopted the v1 table %s: %d row(s) kept (%d unread)%s%s", TABLE, rows, unread,
                "; renamed " + ", ".join(f"{o} to {n}" for o, n in plan.renames) if plan.renames else "",
                f"; read state from {plan.read_flag} (left in place, no longer updated)" if plan.read_flag else "")


async def _ensure_pg_id_default(tx: Any) -> None:
    """New ids must come after the v1 ones: a v1 ``id INTEGER PRIMARY KEY`` without a sequence
    gets one, and an existing sequence moves past the highest id (v1 rows inserted with explicit
    ids leave a SERIAL's sequence behind, and the next message would collide)."""
    default = await tx.fetch_val(
        "SELECT column_default FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'messages' AND column_name = 'id'")
    if default is None:
        await tx.execute("CREATE SEQUENCE IF NOT EXISTS messages_id_seq OWNED BY messages.id")
        await tx.execute("ALTER TABLE messages ALTER COLUMN id SET DEFAULT nextval('messages_id_seq')")
    sequence = await tx.fetch_val("SELECT pg_get_serial_sequence('messages', 'id')")
    if sequence is not None:
        await tx.execute("SELECT setval(CAST(:s AS regclass), COALESCE((SELECT MAX(id) FROM messages), 0) + 1,"
                         " false)", {"s": sequence})


# -- importing (claude-net import-v1) -------------------------------------------------------------


@dataclass
class ImportReport:
    source: str
    renamed: str | None = None  # "messages -> messages_v1" when the v1 table was moved aside
    rows: int = 0  # rows in the v1 table
    imported: int = 0
    unread: int = 0  # of the imported rows
    skipped: int = 0  # already imported by an earlier run
    renumbered: int = 0  # imported under a new id (theirs was taken)
    total: int = 0  # rows in the hub's messages table afterwards
    mapping: dict[str, str | None] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = []
        if self.renamed:
            out.append(f"renamed the v1 table {self.renamed}")
        shown = ", ".join(f"{k}={v}" for k, v in self.mapping.items() if v)
        out.append(f"{self.source}: {self.rows} row(s); mapping {shown}")
        out.append(f"imported {self.imported} message(s) ({self.unread} unread), {self.skipped} already imported"
                   + (f", {self.renumbered} under a new id (theirs was taken)" if self.renumbered else ""))
        out.append(f"messages now holds {self.total} message(s); {self.source} was left as it is")
        return out


def parse_map(text: str | None) -> dict[str, str]:
    """``from=author,to=channel`` -> {"from": "author", "to": "channel"}; keys are checked."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, column = part.partition("=")
        key, column = key.strip().lower(), column.strip()
        if not sep or not column:
            raise ValueError(f"--map: {part!r} is not FIELD=COLUMN")
        if key not in (*FIELDS, "read"):
            raise ValueError(f"--map: unknown field {key!r} (fields: {', '.join((*FIELDS, 'read'))})")
        out[key] = column
    return out


def _time(value: Any, fallback: str) -> str:
    if value is None or value == "":
        return fallback
    if isinstance(value, datetime):
        return isotime(value if value.tzinfo else value.replace(tzinfo=timezone.utc))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value  # milliseconds, as JavaScript writes them
        return isotime(datetime.fromtimestamp(seconds, timezone.utc))
    text = str(value)
    if text.replace(".", "", 1).isdigit():
        return _time(float(text), fallback)
    return text


def _read_at(value: Any, sent: str) -> str | None:
    """When a row was read (its own time stands in when v1 kept only a flag), or None: unread."""
    if value is None or value is False:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return sent if value else None
    if isinstance(value, datetime):
        return _time(value, sent)
    text = str(value).strip()
    if value is True or text.lower() in ("1", "t", "true", "y", "yes", "read", "acked", "done", "seen"):
        return sent
    if text.lower() in UNREAD_WORDS:
        return None
    return _time(text, sent)  # a time it was read


async def _read_sqlite_file(path: str, table: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Every row of ``table`` in another SQLite file, opened read-only (never changed)."""
    import asyncio

    def read() -> tuple[list[str], list[dict[str, Any]]]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            conn.row_factory = sqlite3.Row
            cursor = conn.execute(f"SELECT * FROM {q(table)}")
            names = [d[0] for d in cursor.description]
            return names, [dict(r) for r in cursor.fetchall()]
        finally:
            conn.close()

    return await asyncio.to_thread(read)


async def prepare_import(db: Database, table: str | None, rename_to: str) -> tuple[str, str | None]:
    """Before the migrations run: move a v1 ``messages`` table aside. Returns (the table to read
    from, "messages -> messages_v1" if it was renamed now)."""
    async with db.transaction() as tx:
        ours = await is_hub_table(tx, db)
        if table not in (None, TABLE):
            if not await table_exists(tx, db, table):
                raise MigrationError(f"there is no table {table} to import from", code="v1_table_missing")
            return table, None
        if await table_exists(tx, db, TABLE) and not ours:
            if await table_exists(tx, db, rename_to):
                raise MigrationError(f"cannot move the v1 table {TABLE} aside: {rename_to} exists already "
                                     "(name another with --rename-to)", code="v1_rename_taken")
            await tx.execute(f"ALTER TABLE {TABLE} RENAME TO {q(rename_to)}")
            if not db.is_sqlite:  # the hub's new table must be free to take these names
                for index in await tx.fetch_all(
                        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                        " AND tablename = :t AND indexname LIKE 'messages%'", {"t": rename_to}):
                    await tx.execute(f"ALTER INDEX {q(index['indexname'])} RENAME TO "
                                     f"{q(rename_to + index['indexname'][len(TABLE):])}")
            return rename_to, f"{TABLE} -> {rename_to}"
        if await table_exists(tx, db, rename_to):
            return rename_to, None  # moved aside by an earlier run
    raise MigrationError(f"nothing to import: {TABLE} is claude-net's own table and there is no {rename_to}; "
                         "name the v1 table with --table (or its file with --from-sqlite)", code="v1_table_missing")


async def copy_rows(db: Database, source: str, names: list[str], rows: list[dict[str, Any]],
                    given: Mapping[str, str]) -> ImportReport:
    """Copy v1 rows into the hub's messages table, once each (idempotent)."""
    cols = [Column(n, "", False, False, False) for n in names]
    mapping, read, problems = guess(cols, given)
    for key in ("from", "to", "message"):
        if mapping[key] is None:
            problems.append(f"no column for {key}: name it with --map {key}=COLUMN")
    if problems:
        raise MigrationError(f"cannot import {source}: {'; '.join(problems)} (its columns: {', '.join(names)})",
                             code="v1_mapping")
    report = ImportReport(source=source, rows=len(rows), mapping={**mapping, "read": read})
    now = isotime()
    async with db.transaction() as tx:
        markers = {r["idempotency_key"] for r in await tx.fetch_all(
            "SELECT idempotency_key FROM messages WHERE idempotency_key LIKE :p", {"p": f"v1-import:{source}:%"})}
        taken = {r["id"] for r in await tx.fetch_all("SELECT id FROM messages")}
        seen: dict[str, int] = {}
        explicit = False
        for row in rows:
            ident = row.get(mapping["id"]) if mapping["id"] else None
            if isinstance(ident, int) and not isinstance(ident, bool):
                key = str(ident)
            else:  # no usable id: the row's content, numbered when the same content repeats
                digest = hashlib.sha256(repr(sorted(row.items(), key=lambda kv: kv[0])).encode()).hexdigest()[:24]
                seen[digest] = seen.get(digest, 0) + 1
                key, ident = f"{digest}.{seen[digest]}", None
            marker = MARKER.format(table=source, key=key)
            if marker in markers:
                report.skipped += 1
                continue
            sent = _time(row.get(mapping["time"]) if mapping["time"] else None, now)
            values = {
                "f": str(row[mapping["from"]]), "t": str(row[mapping["to"]]),
                "m": "" if row[mapping["message"]] is None else str(row[mapping["message"]]),
                "ts": sent, "r": _read_at(row.get(read), sent) if read else None, "k": marker,
            }
            if ident is not None and ident not in taken and ident > 0:
                await tx.execute("INSERT INTO messages (id, from_machine, to_machine, message, timestamp, read_at,"
                                 " idempotency_key) VALUES (:id, :f, :t, :m, :ts, :r, :k)", {**values, "id": ident})
                taken.add(ident)
                explicit = True
            else:
                await tx.execute("INSERT INTO messages (from_machine, to_machine, message, timestamp, read_at,"
                                 " idempotency_key) VALUES (:f, :t, :m, :ts, :r, :k)", values)
                report.renumbered += ident is not None
            report.imported += 1
            report.unread += values["r"] is None
        if explicit and not db.is_sqlite:  # SQLite's AUTOINCREMENT moves past explicit ids by itself
            await tx.execute("SELECT setval(pg_get_serial_sequence('messages', 'id'),"
                             " (SELECT MAX(id) FROM messages))")
        report.total = await tx.fetch_val("SELECT COUNT(*) FROM messages")
    return report


async def import_v1(settings: Any, pm: Any, *, table: str | None = None, rename_to: str = RENAME_TO,
                    given: Mapping[str, str] | None = None, from_sqlite: str | None = None) -> ImportReport:
    """``claude-net import-v1``: move the v1 table aside (or read another SQLite file), let the
    migrations create the hub's tables, copy the rows. Safe to run again."""
    from .hub import Hub

    renamed = None
    source = table or TABLE
    if from_sqlite is None:
        db = Database(settings.core.database_url)
        await db.connect()
        try:
            source, renamed = await prepare_import(db, table, rename_to)
        finally:
            await db.disconnect()
    hub = Hub(settings, pm)
    await hub.open()
    try:
        if from_sqlite is not None:
            import os

            if not os.path.isfile(from_sqlite):
                raise MigrationError(f"--from-sqlite: there is no file {from_sqlite}", code="v1_table_missing")
            try:
                names, rows = await _read_sqlite_file(from_sqlite, source)
            except sqlite3.Error as exc:
                raise MigrationError(f"cannot read the table {source} from {from_sqlite}: {exc}",
                                     code="v1_table_missing") from None
            source_name = f"{os.path.basename(from_sqlite)}:{source}"
        else:
            cols = await columns_of(hub.db, hub.db, source)
            names = [c.name for c in cols]
            rows = await hub.db.fetch_all(f"SELECT * FROM {q(source)}")
            source_name = source
        report = await copy_rows(hub.db, source_name, names, rows, given or {})
    finally:
        await hub.close()
    report.renamed = renamed
    return report
