"""Database access through ``databases``: SQLite by default, PostgreSQL by URL.

SQL is written once with ``:name`` parameters and portable types. The differences live here:

* **SQLite**: ``databases``' SQLite backend opens a new connection (and thread) per acquire,
  and its query path costs six thread hops per statement, which together cost most of a
  request. The hub instead holds one persistent ``databases`` connection for its whole life and
  sends statements to its aiosqlite thread in batches: what the requests of one turn of the
  event loop issue leaves together at the end of that turn (two batches may be on their way),
  one trip for many statements (each still runs and commits on its own, in the order queued;
  sqlite3 binds ``:name`` parameters natively). :meth:`Database.submit` queues a statement
  without waiting for it (``lazy``: without a trip of its own). A transaction holds an
  asyncio lock that keeps other tasks' statements out of it, and starts only once the batches
  queued before it have run (SQLite runs one writer at a time anyway). WAL journal, a busy
  timeout, and ``BEGIN IMMEDIATE`` for write transactions, so concurrent processes queue for the
  lock instead of failing mid-transaction. :meth:`Database.lookup` (the token check of every
  request) reads on the event loop itself from a read-only connection: a primary-key read in WAL
  mode never waits for writers and costs less than the trip to the thread.
* **PostgreSQL**: the ``databases`` asyncpg pool; transactions per connection; migrations under
  an advisory lock so several replicas can start at once. Statements outside a transaction (the
  request path) go straight to that asyncpg pool: ``:name`` parameters are turned into ``$n``
  once per statement text (cached), instead of ``databases`` compiling each call through
  SQLAlchemy. Pooled connections are not reset on release (asyncpg's default costs a
  ``RESET ALL; UNLISTEN *; ...`` round trip per statement); an open transaction is still rolled
  back. So nothing may change session state through ``hub.db`` (``SET`` without ``LOCAL``,
  session advisory locks, ``LISTEN``): use a dedicated connection for that, as the bus and the
  singletons do.

Driver errors are mapped to the hub's errors: a unique violation becomes :class:`Conflict`; a
locked, read-only or unreachable database becomes :class:`Unavailable` (503), never a 500. A
driver that is not installed (asyncpg: the ``postgresql`` extra) is a :class:`ConfigError` that
says how to install it, raised as soon as a :class:`Database` is made for the URL. A migration
statement that fails is a :class:`MigrationError` naming the plugin, the version and the
statement; its transaction is rolled back, so the schema is as it was before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, NoReturn

from .errors import ConfigError, Conflict, HubError, Unavailable
from .types import Migration, isotime

log = logging.getLogger("claude_net.db")

SQLITE_BUSY_TIMEOUT_MS = 5000
MIGRATION_LOCK_KEY = 0x636C6E65  # "clne": advisory lock id for migrations on PostgreSQL


def dialect_of(url: str) -> str:
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    raise ValueError(f"unsupported database URL scheme {scheme!r} (use sqlite+aiosqlite:// or postgresql+asyncpg://)")


#: the driver module each dialect needs, and how to install it when it is missing
DRIVERS = {
    "sqlite": ("aiosqlite", "reinstall claude-net (aiosqlite is one of its dependencies)"),
    "postgresql": ("asyncpg", "install it with `scripts/bootstrap-venv` in a claude-net checkout, "
                              "or `pip install 'claude-net[postgresql]'`"),
}


def require_driver(url: str) -> None:
    """Raise a one-sentence :class:`ConfigError` when the driver for ``url`` is not installed
    (found without importing it: ``claude-net check`` stays fast)."""
    dialect = dialect_of(url)
    module, how = DRIVERS[dialect]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"database_url is a {'PostgreSQL' if dialect == 'postgresql' else 'SQLite'} URL, "
                          f"but its driver {module} is not installed: {how}")


class MigrationError(HubError):
    """A migration could not be applied (its transaction was rolled back), or the database holds
    something the migrations refuse to touch. The message says which and what to do."""

    status = 503
    code = "migration_failed"


def redact_url(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def is_busy(exc: BaseException) -> bool:
    """Whether a driver error says another connection holds the lock ("database is locked",
    "busy"): the statement did not run, and may succeed later."""
    text = str(exc)
    return "locked" in text or "busy" in text


def _map_error(exc: BaseException) -> BaseException:
    name = type(exc).__name__
    text = str(exc)
    if name in ("IntegrityError", "UniqueViolationError") or "UNIQUE constraint" in text:
        return Conflict("that record already exists", code="conflict")
    if isinstance(exc, (OSError, ConnectionError, asyncio.TimeoutError)) or name in (
        "OperationalError",
        "InterfaceError",
        "ConnectionDoesNotExistError",
        "CannotConnectNowError",
        "ReadOnlySQLTransactionError",
        "TooManyConnectionsError",
        "PostgresConnectionError",
        "ConnectionFailureError",
        "AdminShutdownError",
        "DatabaseError",
        # asyncpg, a session the server just terminated: the next statement can find the protocol
        # mid-teardown ("cannot switch to state ...; another operation is in progress")
        "InternalClientError",
    ):
        reason = "the database is busy" if is_busy(exc) else "the database is unavailable"
        if "readonly" in text or "read-only" in text:
            reason = "the database is read-only"
        return Unavailable(f"{reason}; try again shortly", code="database_unavailable")
    return exc


class _Executor:
    """Query methods shared by the database and its transactions. Rows come back as dicts."""

    async def _rows(self, sql: str, values: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def fetch_all(self, sql: str, values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return await self._rows(sql, values)

    async def fetch_one(self, sql: str, values: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        rows = await self._rows(sql, values)
        return rows[0] if rows else None

    async def fetch_val(self, sql: str, values: Mapping[str, Any] | None = None) -> Any:
        rows = await self._rows(sql, values)
        return next(iter(rows[0].values())) if rows else None

    async def execute(self, sql: str, values: Mapping[str, Any] | None = None) -> None:
        """Run a statement. Use ``fetch_all(... RETURNING ...)`` when you need affected rows."""
        await self._rows(sql, values)


async def _sqlite_rows(raw: Any, sql: str, values: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    # One hop to aiosqlite's thread per statement (execute + fetchall together); sqlite3 takes
    # ``:name`` parameters natively, so nothing needs compiling.
    rows = await raw.execute_fetchall(sql, dict(values or {}))
    return [dict(row) for row in rows]


def _run_batch(conn: Any, batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[bool, Any]]:
    """On aiosqlite's thread: run each statement on its own (autocommit), keep each outcome."""
    out: list[tuple[bool, Any]] = []
    for sql, values in batch:
        try:
            out.append((True, [dict(row) for row in conn.execute(sql, values).fetchall()]))
        except Exception as exc:  # noqa: BLE001 - handed to the statement's own caller
            out.append((False, exc))
    return out


class _SqliteBatcher:
    """Sends the autocommit statements of concurrent requests to aiosqlite's thread in batches.

    A trip to the thread and back costs far more than a small statement: the thread must take
    the GIL from the busy event loop, and the answer waits for the loop to come round to it.
    A batch leaves at the end of the loop's current turn, with every statement the turn's
    requests issued, or, while two batches are on their way, as soon as one comes back: one trip
    for many requests. Two may be on their way at once, so the thread has the next batch ready
    when it finishes the current one and a statement never waits for a whole trip before it even
    leaves (with one batch at a time the loop idled while every request waited on the thread).
    Batches run in the order they were sent, each statement on its own (it commits on its own,
    and its error goes to its own caller only).

    The thread answers with one ``call_soon_threadsafe`` that hands each caller its result; no
    task and no intermediate future per batch, so an answer costs the loop one turn, not three.
    This uses aiosqlite's queue to its worker thread (``Connection._tx``) directly: its own
    ``_execute`` wraps every call in a future the caller must await.
    """

    #: batches on their way to the thread at once
    IN_FLIGHT = 2
    #: longest a ``lazy`` statement waits for a batch to leave before it leaves on its own (s)
    LAZY_DELAY = 0.005

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._loop = asyncio.get_running_loop()
        self._queue: list[tuple[str, dict[str, Any], asyncio.Future[Any]]] = []
        self._in_flight = 0
        self._flush_soon = False  # a _flush is scheduled for the end of the loop's turn
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, sql: str, values: Mapping[str, Any] | None, *, lazy: bool = False) -> asyncio.Future[Any]:
        """Queue a statement; the future gets its rows. It runs after every statement queued
        before it and before every statement queued after it. A ``lazy`` one does not make a
        batch leave: it goes with the next batch that leaves anyway, or after ``LAZY_DELAY``."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.append((sql, dict(values or {}), future))
        self._idle.clear()
        if lazy:
            if not self._flush_soon and self._lazy_timer is None:
                self._lazy_timer = self._loop.call_later(self.LAZY_DELAY, self._flush)
        else:
            self._flush_now()
        return future

    def _flush_now(self) -> None:
        if not self._flush_soon and self._in_flight < self.IN_FLIGHT:
            self._flush_soon = True
            self._loop.call_soon(self._flush)  # after the handles of this turn: they may add more

    def _flush(self) -> None:
        self._flush_soon = False
        self._next()

    def _next(self) -> None:
        """Send what is queued if a batch may leave; mark the batcher idle when nothing is left."""
        if self._queue and self._in_flight < self.IN_FLIGHT:
            self._send()  # (it also stops the lazy timer: its statements leave now)
        elif not self._in_flight and not self._queue:
            self._idle.set()

    async def idle(self) -> None:
        """Wait until every queued statement has run (before a transaction takes the connection)."""
        if self._queue:
            self._flush_now()  # lazy statements need not wait for their timer now
        await self._idle.wait()

    def _send(self) -> None:
        if self._lazy_timer is not None:  # lazy statements leave with this batch
            self._lazy_timer.cancel()
            self._lazy_timer = None
        batch, self._queue = self._queue, []
        raw = self._raw
        if not raw._running or raw._connection is None:  # closed: its thread would never answer
            self._answer(batch, Unavailable("the database connection was closed", code="database_unavailable"),
                         sent=False)
            return
        self._in_flight += 1
        statements = [(sql, values) for sql, values, _f in batch]
        loop, answer = self._loop, self._answer

        def work() -> None:  # on aiosqlite's thread
            try:
                result: Any = _run_batch(raw._conn, statements)
            except BaseException as exc:  # noqa: BLE001 - the connection went away: every caller hears
                result = exc
            try:
                loop.call_soon_threadsafe(answer, batch, result)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        raw._tx.put_nowait((None, work))

    def _answer(self, batch: list[tuple[str, dict[str, Any], asyncio.Future[Any]]], results: Any,
                sent: bool = True) -> None:
        """On the loop: each caller gets its own result or error; the next batch leaves."""
        if sent:
            self._in_flight -= 1
        if isinstance(results, BaseException):  # the whole batch failed: the connection is gone
            if not isinstance(results, Unavailable):
                log.warning("SQLite batch failed: %s: %s", type(results).__name__, results)
            error = results if isinstance(results, Unavailable) else Unavailable(
                "the database connection was closed", code="database_unavailable")
            for _s, _v, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_s, _v, future), (ok, result) in zip(batch, results):
                if future.done():  # its caller was cancelled; the statement ran anyway
                    continue
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(result)
        self._next()


async def _pg_rows(conn: Any, sql: str, values: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    # SQLAlchemy's text() rejects values the statement does not use; sqlite3 ignores them. Same
    # behaviour on both: unused values are dropped.
    used = {k: v for k, v in (values or {}).items() if f":{k}" in sql}
    rows = await conn.fetch_all(query=sql, values=used)
    return [dict(row._mapping) for row in rows]


#: a ``:name`` parameter as SQLAlchemy's ``text()`` finds them (not ``::type`` casts)
_PG_PARAM = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


@functools.lru_cache(maxsize=1024)
def _pg_positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """``... WHERE a = :x AND b = :y OR c = :x`` -> (``... $1 ... $2 ... $1``, ("x", "y"))."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _PG_PARAM.sub(number, sql), tuple(names)


async def _pg_pool_rows(pool: Any, sql: str, values: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    # Same statements and values as through ``databases`` (unused values are ignored), minus the
    # per-call SQLAlchemy compilation; asyncpg caches the prepared statement per connection.
    text, names = _pg_positional(sql)
    values = values or {}
    missing = [n for n in names if n not in values]
    if missing:
        raise KeyError(f"no value for the SQL parameter(s) {', '.join(missing)}")
    rows = await pool.fetch(text, *(values[n] for n in names))
    return [dict(row) for row in rows]


async def _keep_session(connection: Any) -> None:
    """asyncpg pool release hook: nothing to reset (see the module docstring)."""


def _raise_mapped(exc: Exception) -> NoReturn:
    """Raise the hub's error for a driver error (``exc`` itself when it has none)."""
    mapped = _map_error(exc)
    if mapped is exc:
        raise exc
    raise mapped from exc


async def _mapped(awaitable: Any) -> Any:
    try:
        return await awaitable
    except Exception as exc:
        _raise_mapped(exc)


class Transaction(_Executor):
    def __init__(self, connection: Any, sqlite: bool) -> None:
        self._connection = connection
        self._sqlite = sqlite

    async def _rows(self, sql: str, values: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        fetch = _sqlite_rows if self._sqlite else _pg_rows
        return await _mapped(fetch(self._connection, sql, values))


class ChangeSignal:
    """A value that changes whenever any process on this machine calls :meth:`bump`.

    Kept in a small shared-memory file next to a SQLite database (``<database>-<name>``), so a
    process can cache what it derives from a table (the hub: verified tokens) and notice with a
    plain memory read — no query, no system call — that another process (``claude-net token
    revoke``) changed that table. Each bump writes a fresh random value, so two bumps never look
    like none. Without a file (an in-memory database) the value lives in this process only.
    """

    def __init__(self, path: str | None = None) -> None:
        import mmap

        self.path = path
        self._local = 0
        self._map: Any = None
        if path is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < 8:
                    os.ftruncate(fd, 8)
                self._map = mmap.mmap(fd, 8)
            finally:
                os.close(fd)

    @property
    def value(self) -> int:
        return int.from_bytes(self._map[:8], "little") if self._map is not None else self._local

    def bump(self) -> None:
        import secrets

        new = secrets.randbits(64)
        if self._map is not None:
            self._map[:8] = new.to_bytes(8, "little")
        else:
            self._local = new

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(Exception):
                self._map.close()
            self._map = None


class Database(_Executor):
    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = dialect_of(url)
        require_driver(url)
        self._db: Any = None
        self._conn: Any = None  # SQLite: the persistent ``databases`` connection
        self._raw: Any = None  # SQLite: its aiosqlite connection
        self._pool: Any = None  # PostgreSQL: the asyncpg pool under ``databases``
        self._reader: Any = None  # SQLite: a read-only sqlite3 connection used on the event loop
        self._batcher: _SqliteBatcher | None = None  # SQLite: autocommit statements, batched
        self._path: str | None = None  # SQLite: the database file (None: in memory)
        self._signals: dict[str, ChangeSignal] = {}
        self._lock = asyncio.Lock()
        self._no_transaction = asyncio.Event()  # SQLite: set while no transaction holds the lock
        self._no_transaction.set()
        self.connected = False

    def __repr__(self) -> str:
        return f"<Database {redact_url(self.url)}>"

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    async def connect(self) -> None:
        import databases

        if self.is_sqlite:
            # sqlite+aiosqlite:////abs/path or :///relative/path. A missing directory is named here
            # (SQLite would only say "unable to open database file", from its thread).
            path = databases.DatabaseURL(self.url).database
            if path and path != ":memory:" and not path.startswith("file:"):
                directory = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(directory):
                    raise Unavailable(f"cannot open the SQLite database {path}: the directory {directory} "
                                      "does not exist", code="database_unavailable")
        try:  # ``databases`` imports the driver here
            if self.is_sqlite:
                self._db = databases.Database(self.url, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
            else:
                self._db = databases.Database(self.url, min_size=1, max_size=10, command_timeout=30,
                                              reset=_keep_session)
        except ImportError as exc:  # installed but broken (a wheel for another Python, say)
            module, how = DRIVERS[self.dialect]
            raise ConfigError(f"the database driver {module} cannot be loaded ({exc}): {how}") from None
        try:
            await self._db.connect()
            if self.is_sqlite:
                import sqlite3

                self._conn = self._db.connection()
                await self._conn.__aenter__()
                self._raw = self._conn.raw_connection
                self._raw.row_factory = sqlite3.Row
                for pragma in (
                    "PRAGMA journal_mode=WAL",
                    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
                    "PRAGMA synchronous=NORMAL",
                    "PRAGMA foreign_keys=ON",
                ):
                    await self._raw.execute_fetchall(pragma)
                self._reader = await self._open_reader()
                self._batcher = _SqliteBatcher(self._raw)
            else:
                await self._db.fetch_val("SELECT 1")
                self._pool = getattr(getattr(self._db, "_backend", None), "_pool", None)
        except Exception as exc:
            mapped = _map_error(exc)
            raise Unavailable(f"cannot connect to the database {redact_url(self.url)}: {exc}",
                              code="database_unavailable") from (exc if mapped is exc else mapped)
        self.connected = True

    async def _open_reader(self) -> Any:
        """The read-only connection for :meth:`lookup`, or None for an in-memory database."""
        import sqlite3

        rows = await self._raw.execute_fetchall("PRAGMA database_list")
        path = next((r["file"] for r in rows if r["name"] == "main"), "")
        if not path:
            return None
        self._path = path
        # check_same_thread=False only because it is opened here and closed by whichever thread
        # stops the hub; it is used on the event loop's thread alone.
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False, timeout=0)
        reader.row_factory = sqlite3.Row
        reader.execute("PRAGMA busy_timeout=0")
        reader.execute("PRAGMA query_only=1")
        return reader

    def change_signal(self, name: str) -> ChangeSignal | None:
        """The :class:`ChangeSignal` ``name`` of this SQLite database (shared by every process that
        opens the same file); None on PostgreSQL, where replicas on other machines could not see it."""
        if not self.is_sqlite or not self.connected:
            return None
        signal = self._signals.get(name)
        if signal is None:
            path = f"{self._path}-{name}" if self._path else None
            try:
                signal = ChangeSignal(path)
            except OSError as exc:
                log.warning("cannot open the change signal %s (%s); caches that need it stay off", path, exc)
                return None
            self._signals[name] = signal
        return signal

    async def lookup(self, sql: str, values: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """One row by an indexed point read: for the request path's hottest reads (tokens).

        On SQLite the statement runs on the event loop itself, on a read-only connection: a
        primary-key read in WAL mode takes microseconds and never waits for writers, where a hop
        to the writer thread and back costs a request far more (two GIL hand-offs). If SQLite
        cannot answer at once (busy: another process is recovering the WAL), it falls back to
        the normal path. Only for statements that read a handful of rows through an index —
        anything longer would stall every request. On PostgreSQL it is :meth:`fetch_one`.
        """
        if self._reader is not None and self.connected:
            import sqlite3

            try:
                # fetchall: run the statement to its end, so no read transaction stays open
                # (an open one would hold back WAL checkpoints)
                rows = self._reader.execute(sql, dict(values or {})).fetchall()
            except sqlite3.OperationalError:
                pass  # busy or locked: take the normal path, which waits with a timeout
            else:
                return dict(rows[0]) if rows else None
        return await self.fetch_one(sql, values)

    async def disconnect(self) -> None:
        if self._batcher is not None:  # statements queued without waiting (submit) still run
            try:
                await asyncio.wait_for(self._batcher.idle(), 10)
            except asyncio.TimeoutError:
                log.error("closing the database with statements still queued after 10 s")
        for signal in self._signals.values():
            signal.close()
        self._signals = {}
        if self._reader is not None:
            with contextlib.suppress(Exception):
                self._reader.close()
            self._reader = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.__aexit__(None, None, None)
            self._conn = self._raw = self._batcher = None
        self._pool = None
        if self._db is not None:
            with contextlib.suppress(Exception):
                await self._db.disconnect()
        self.connected = False

    async def _rows(self, sql: str, values: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        if not self.connected:
            raise Unavailable("the database is not connected", code="database_unavailable")
        if self.is_sqlite:
            # A transaction is open: wait for it to end, then queue like any other statement, all
            # the waiters in the same turn, so they leave in one batch. (They used to take the lock
            # each in turn while their statement ran: a trip to the thread each, and under steady
            # load that line never ended: batching stopped for good after the first transaction.)
            while self._lock.locked():
                await self._no_transaction.wait()
            # No transaction open: queue the statement right away, in the next batch. (The check
            # and the enqueue happen without yielding to the loop, and a transaction waits for
            # the batcher to be idle before it begins, so a statement never lands inside one.)
            try:  # (what _mapped does, without one more coroutine on the hottest path)
                return await self._batcher.submit(sql, values)
            except Exception as exc:
                _raise_mapped(exc)
        if self._pool is not None:
            return await _mapped(_pg_pool_rows(self._pool, sql, values))
        return await _mapped(_pg_rows(self._db, sql, values))

    def submit(self, sql: str, values: Mapping[str, Any] | None = None, *,
               lazy: bool = False) -> asyncio.Future[Any] | None:
        """Queue a statement without waiting for it; a future for its rows (or its error, unmapped).

        Only on SQLite, and only when no transaction is open: its one connection runs statements
        in the order they were queued, so everything this process queues or runs afterwards (a
        query, a transaction) sees the statement's effect, though nobody waited for it. Returns
        None on PostgreSQL (a pool of connections keeps no such order) or while a transaction is
        open: await :meth:`fetch_all` and friends then. Whoever holds the future must look at its
        outcome (``add_done_callback``): a failure is nobody else's to report. :meth:`disconnect`
        waits for queued statements.

        ``lazy=True`` (for writes nobody waits for, such as audit rows): the statement does not
        make a trip to the database thread of its own; it goes with the next batch that leaves
        anyway (any later statement of this process, so the order above holds), at the latest
        after 5 ms.
        """
        if not self.connected or self._batcher is None or self._lock.locked():
            return None
        return self._batcher.submit(sql, values, lazy=lazy)

    async def execute_many(self, sql: str, values: Sequence[Mapping[str, Any]]) -> None:
        async with self.transaction() as tx:
            for row in values:
                await tx.execute(sql, row)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction. On SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        if not self.connected:
            raise Unavailable("the database is not connected", code="database_unavailable")
        if self.is_sqlite:
            async with self._lock:
                self._no_transaction.clear()  # (no await since the lock was taken: nobody saw it unset)
                try:
                    await self._batcher.idle()
                    tx = Transaction(self._raw, sqlite=True)
                    await tx.execute("BEGIN IMMEDIATE")
                    try:
                        yield tx
                        await tx.execute("COMMIT")
                    except BaseException:
                        # shielded: a cancelled request must still leave the connection clean
                        await asyncio.shield(self._sqlite_rollback())
                        raise
                finally:
                    self._no_transaction.set()
        else:
            conn = self._db.connection()
            try:
                await conn.__aenter__()
            except Exception as exc:
                raise _map_error(exc) from exc
            try:
                transaction = conn.transaction()
                await transaction.start()
            except BaseException as exc:
                await asyncio.shield(self._pg_release(conn))
                if isinstance(exc, Exception):
                    raise _map_error(exc) from exc
                raise
            try:
                yield Transaction(conn, sqlite=False)
                await transaction.commit()
            except BaseException as exc:
                # Shielded: a task cancelled mid-transaction (a client hanging up) must still roll
                # back and return its pooled connection, or the pool leaks it and shutdown hangs.
                await asyncio.shield(self._pg_abort(transaction))
                if isinstance(exc, Exception):
                    mapped = _map_error(exc)
                    if mapped is not exc:
                        raise mapped from exc
                raise
            finally:
                await asyncio.shield(self._pg_release(conn))

    async def _sqlite_rollback(self) -> None:
        if self._raw is not None and self._raw.in_transaction:
            with contextlib.suppress(Exception):
                await self._raw.execute_fetchall("ROLLBACK")

    @staticmethod
    async def _pg_abort(transaction: Any) -> None:
        with contextlib.suppress(Exception):
            await transaction.rollback()

    @staticmethod
    async def _pg_release(conn: Any) -> None:
        with contextlib.suppress(Exception):
            await conn.__aexit__(None, None, None)

    # -- schema ---------------------------------------------------------------------------------

    def render(self, statement: str) -> str:
        autoid = "INTEGER PRIMARY KEY AUTOINCREMENT" if self.is_sqlite else "BIGSERIAL PRIMARY KEY"
        return statement.replace("{autoid}", autoid)

    async def migrate(self, migrations: Iterable[Migration]) -> list[str]:
        """Apply pending migrations once, in order; safe from several processes at once."""
        ordered = sorted(migrations, key=lambda m: (m.plugin, m.version))
        seen: set[tuple[str, int]] = set()
        for m in ordered:
            if (m.plugin, m.version) in seen:
                raise ValueError(f"duplicate migration {m.plugin} v{m.version}")
            seen.add((m.plugin, m.version))
        applied: list[str] = []
        async with self.transaction() as tx:
            if not self.is_sqlite:
                await tx.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " plugin TEXT NOT NULL, version INTEGER NOT NULL, description TEXT NOT NULL DEFAULT '',"
                " applied_at TEXT NOT NULL, PRIMARY KEY (plugin, version))"
            )
            done = {(r["plugin"], r["version"]) for r in await tx.fetch_all("SELECT plugin, version FROM schema_migrations")}
            for m in ordered:
                if (m.plugin, m.version) in done:
                    continue
                statements = m.postgresql if (m.postgresql is not None and not self.is_sqlite) else m.statements
                for number, statement in enumerate(statements, 1):
                    try:
                        if callable(statement):  # a step SQL alone cannot say (see Migration)
                            await statement(tx, self)
                        else:
                            await tx.execute(self.render(statement))
                    except MigrationError:
                        raise
                    except Exception as exc:
                        raise self._migration_failed(m, number, len(statements), statement, exc) from exc
                await tx.execute(
                    "INSERT INTO schema_migrations (plugin, version, description, applied_at)"
                    " VALUES (:plugin, :version, :description, :at)",
                    {"plugin": m.plugin, "version": m.version, "description": m.description, "at": isotime()},
                )
                applied.append(f"{m.plugin} v{m.version}")
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        return applied

    def _migration_failed(self, m: Migration, number: int, total: int, statement: Any,
                          exc: Exception) -> BaseException:
        """The error for a failed migration statement; the transaction around it rolls back."""
        cause = exc.__cause__ if isinstance(exc, HubError) and exc.__cause__ is not None else exc
        if isinstance(exc, Unavailable) and (is_busy(cause) or isinstance(cause, (OSError, ConnectionError))):
            return exc  # the database, not the statement: "busy" or "unavailable" says it best
        if callable(statement):
            shown = getattr(statement, "__qualname__", repr(statement))
        else:
            shown = " ".join(self.render(statement).split())
            shown = shown if len(shown) <= 160 else shown[:159] + "…"
        reason = getattr(cause, "message", None) or str(cause) or type(cause).__name__
        return MigrationError(
            f"migration {m.plugin} v{m.version}{f' ({m.description})' if m.description else ''} failed at "
            f"statement {number} of {total}: {shown}: {reason}; it was rolled back, the database is as it was",
            plugin=m.plugin, version=m.version, statement=number)
