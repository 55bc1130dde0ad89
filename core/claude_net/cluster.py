"""Running several hub processes as one: cross-process wake-ups and singleton work.

* :class:`PgBus` carries the event bus over PostgreSQL ``LISTEN/NOTIFY``: a publish on any
  replica reaches subscribers on every replica (inbox long-polls, live activity streams). No
  extra broker.
* :func:`singleton` runs work that must happen exactly once across replicas (the Telegram poller
  and outbox, retention pruning) under a PostgreSQL advisory lock held on a dedicated
  connection. When the holder dies its connection closes, the lock is released, and another
  replica takes over within ``retry`` seconds. On SQLite (one process by design) the work simply
  runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from .bus import Bus

log = logging.getLogger("claude_net.cluster")

PG_CHANNEL = "claude_net_bus"
NOTIFY_LIMIT = 7900  # PostgreSQL's payload limit is 8000 bytes


def asyncpg_dsn(url: str) -> str:
    """``postgresql+asyncpg://...`` (the ``databases`` URL) -> a DSN asyncpg accepts."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest


def _shrink(payload: dict[str, Any]) -> dict[str, Any]:
    """Keep NOTIFY payloads under PostgreSQL's limit: long strings are cut and flagged."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, str) and len(value) > 1000:
            out[key] = value[:1000] + "…"
            out["truncated"] = True
        else:
            out[key] = value
    return out


class PgBus(Bus):
    """The bus over LISTEN/NOTIFY. Delivery is at-most-once and best-effort (wake-ups, streams);
    durable state always lives in tables, so a missed notification only delays a long-poll
    until its next check."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.dsn = asyncpg_dsn(url)
        self._listener: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._publish_conn: Any = None
        self._queue: list[tuple[str, str, dict[str, Any], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._sequence = 0

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._listen_forever())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._flusher), 5)
            self._flusher.cancel()
        _release(self._queue)
        self._queue = []
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for conn in (self._listener, self._publish_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
        self._listener = self._publish_conn = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, raw: str) -> None:
        try:
            message = json.loads(raw)
            self.publish_local(message["c"], message["p"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed bus notification")

    async def _listen_forever(self) -> None:
        import asyncpg

        delay = 0.5
        while True:
            try:
                self._listener = await asyncpg.connect(self.dsn, timeout=10)
                await self._listener.add_listener(PG_CHANNEL, self._on_notify)
                self._ready.set()
                delay = 0.5
                while not self._listener.is_closed():
                    await asyncio.sleep(1)
                    # a cheap round trip notices a dead server (is_closed lags behind)
                    async with asyncio.timeout(10):
                        await self._listener.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening whatever happened
                log.warning("bus listener lost its PostgreSQL connection (%s); reconnecting", exc)
            finally:
                if self._listener is not None:
                    with contextlib.suppress(Exception):
                        self._listener.terminate()
                    self._listener = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        """Send ``payload`` to ``channel`` on every replica; returns once PostgreSQL has it.

        Concurrent publishes share round trips: whatever is queued while one ``NOTIFY`` batch is
        in flight goes out in the next, as one statement (one transaction, order kept). Under
        load that is one round trip for many requests instead of one each, in turn.
        """
        self._sequence += 1
        # "n" makes every notification of a batch distinct: PostgreSQL folds identical payloads
        # sent in one transaction into one, and two identical Telegram echoes are two echoes.
        message = json.dumps({"c": channel, "p": payload, "n": self._sequence}, separators=(",", ":"))
        if len(message.encode()) > NOTIFY_LIMIT:
            message = json.dumps({"c": channel, "p": _shrink(payload), "n": self._sequence}, separators=(",", ":"))
        if len(message.encode()) > NOTIFY_LIMIT:
            message = json.dumps({"c": channel, "p": {"id": payload.get("id"), "truncated": True},
                                  "n": self._sequence})
        done = asyncio.get_running_loop().create_future()
        self._queue.append((message, channel, payload, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        await asyncio.shield(done)

    async def _flush(self) -> None:
        import asyncpg

        batch: list[tuple[str, str, dict[str, Any], asyncio.Future[None]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    if self._publish_conn is None or self._publish_conn.is_closed():
                        self._publish_conn = await asyncpg.connect(self.dsn, timeout=10)
                    await asyncio.wait_for(self._publish_conn.execute(
                        "SELECT pg_notify($1, m) FROM unnest($2::text[]) WITH ORDINALITY AS t(m, i) ORDER BY i",
                        PG_CHANNEL, [message for message, _c, _p, _d in batch]), 10)
                except Exception as exc:  # noqa: BLE001 - a lost wake-up must not fail the request
                    log.warning("bus publish failed (%s); delivering locally only", exc)
                    if self._publish_conn is not None:
                        with contextlib.suppress(Exception):
                            self._publish_conn.terminate()
                        self._publish_conn = None
                    for _m, channel, payload, _d in batch:
                        self.publish_local(channel, payload)
                _release(batch)
                batch = []
        finally:  # cancelled (the hub stops): nobody waits forever
            _release(batch)


def _release(batch: list[tuple[str, str, dict[str, Any], asyncio.Future[None]]]) -> None:
    for _m, _c, _p, done in batch:
        if not done.done():
            done.set_result(None)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(f"claude-net:{name}".encode()).digest()[:8], "big", signed=True)


class WorkFailed(Exception):
    """The singleton's own work raised (as opposed to losing the lock's connection)."""


async def singleton(hub: Any, name: str, work: Callable[[], Awaitable[None]], *, retry: float = 2.0) -> None:
    """Run ``work()`` on exactly one replica at a time; take over when the holder dies.

    Run it under ``hub.spawn`` (``hub.spawn_singleton`` does). ``work`` is cancelled if the lock's
    connection is lost, and restarted here or on whichever replica gets the lock next. When
    ``work`` itself raises, the lock is let go and the exception propagates, so the hub's
    supervisor records it and restarts this function with back-off (any replica may then win).
    """
    if hub.db.is_sqlite:
        await work()
        return
    import asyncpg

    key = lock_key(name)
    dsn = asyncpg_dsn(hub.settings.core.database_url)
    state = hub.plugin_state.setdefault("claude_net.singletons", {})
    while True:
        conn = None
        try:
            conn = await asyncpg.connect(dsn, timeout=10, server_settings={
                "application_name": f"claude-net singleton {name} pid {os.getpid()}"[:63]})
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                await asyncio.sleep(retry)
            log.info("this replica now runs %s", name)
            state[name] = True
            task = asyncio.ensure_future(work())
            try:
                while not task.done():
                    await asyncio.wait({task}, timeout=retry)
                    if not task.done():
                        async with asyncio.timeout(10):  # still holding? (not wait_for: it can swallow a cancel)
                            await conn.execute("SELECT 1")
                if not task.cancelled() and task.exception() is not None:
                    raise WorkFailed() from task.exception()
                task.result()
                return
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                state[name] = False
        except asyncio.CancelledError:
            raise
        except WorkFailed as failed:
            raise failed.__cause__ from None  # the connection (and the lock) close in finally
        except Exception as exc:  # noqa: BLE001
            log.warning("singleton %s lost its lock connection (%s); retrying", name, exc)
            await asyncio.sleep(retry)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.terminate()
