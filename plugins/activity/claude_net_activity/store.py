"""The audit trail in ``activity_log``: record events, query them, prune old ones.

Recording is one statement per event: a ``pending`` event inserts the row (before the action
runs, so long-running actions are visible), the final event with the same ``event_id`` updates
it; events without a pending phase (denials, messages, login failures) insert their single row. A failed write raises :class:`claude_net.AuditError`, which makes the hub refuse
a guarded action that has not run yet (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from claude_net import AuditError, BadRequest, HubError, isotime
from claude_net.db import is_busy

log = logging.getLogger("claude_net.activity")

PLUGIN = "activity"
CHANNEL = "activity"
#: advisory lock id held by the replica that prunes (PostgreSQL): "actv"
PRUNE_LOCK_KEY = 0x61637476
#: longest detail carried by a live-stream notification (the row keeps up to max_detail)
STREAM_DETAIL = 1000
#: longest JSON kept in the data column
MAX_DATA = 8192
#: writes of a queued row (record_queued) while another process holds SQLite's write lock past
#: the busy timeout (5 s each), before the row is given up and the failure logged
QUEUED_ATTEMPTS = 5

COLUMNS = ("id, timestamp, from_machine, type, target, detail, result, event_id, via, unauthenticated,"
           " duration_ms, exit_code, data, completed_at, thread")

_INSERT = (
    "INSERT INTO activity_log (timestamp, from_machine, type, target, detail, result, event_id, via,"
    " unauthenticated, duration_ms, exit_code, data, completed_at, thread, life)"
    " VALUES (:timestamp, :from_machine, :type, :target, :detail, :result, :event_id, :via,"
    " :unauthenticated, :duration_ms, :exit_code, :data, :completed_at, :thread, :life)"
    " RETURNING id, timestamp"
)
_COMPLETE = (
    "UPDATE activity_log SET result = :result, duration_ms = :duration_ms, exit_code = :exit_code,"
    " data = :data, completed_at = :completed_at WHERE event_id = :event_id RETURNING id, timestamp"
)

#: filters accepted by the query API, the stream and the CLI: public name -> column
FILTERS = {"type": "type", "from": "from_machine", "target": "target", "result": "result", "thread": "thread"}
#: the text filter: rows whose (redacted) detail contains it, ignoring case
SEARCH = "q"
#: longest search text accepted
MAX_SEARCH = 200
#: longest thread name kept in the column (the core validates 1-64 identifier characters)
MAX_THREAD = 64

# Secrets never reach the audit trail: the hub's own tokens, bearer credentials and key=value
# style passwords in commands are replaced by [redacted] (message bodies are already summarised
# by the core with the same kind of rule).
_SECRETS = re.compile(
    r"cn_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}"
    r"|(?P<key>(?i:\bbearer\s+|(?:password|passwd|secret|token|api[_-]?key)\s*[=:]\s*))(?P<value>[^\s'\"&;]+)"
)


def redact(text: str) -> str:
    if not text:
        return text
    return _SECRETS.sub(lambda m: (m.group("key") or "") + "[redacted]", text)


@dataclass
class ActivityState:
    """Per-hub runtime state (``hub.plugin_state["activity"]``)."""

    #: set at hub shutdown: live streams end cleanly
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    #: ids of events whose pending row this process wrote and whose final event has not come yet
    #: (a guarded action's pending and final events are always emitted by the same process)
    pending: set[str] = field(default_factory=set)


def state_of(hub) -> ActivityState:
    state = hub.plugin_state.get(PLUGIN)
    if state is None:
        state = hub.plugin_state[PLUGIN] = ActivityState()
    return state


def settings_of(hub):
    return hub.settings.section("activity")


# -- recording ----------------------------------------------------------------------------------


def event_params(event, max_detail: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row's column values, and the ``data`` the live stream shows (what the column holds)."""
    data = dict(event.data or {})
    duration = data.pop("duration_ms", None)
    exit_code = data.pop("exit_code", None)
    # the thread is a column of its own (filtered, indexed), not part of data
    thread = data.pop("thread", None)
    if not isinstance(thread, str) or not thread:
        thread = None
    elif len(thread) > MAX_THREAD:
        thread = thread[:MAX_THREAD]
    if data.get("action") == event.type:
        data.pop("action")
    detail = redact(event.detail or "")
    if len(detail) > max_detail:
        data["detail_length"] = len(detail)
        detail = detail[: max_detail - 1] + "…"
    data_text = None
    if data:
        data_text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
        if len(data_text) > MAX_DATA:
            data = {"truncated": True, "keys": sorted(map(str, data))[:50]}
            data_text = json.dumps(data)
        elif not _plain_json(data):  # the stream shows what the row holds (default=str turned it into text)
            data = json.loads(data_text)
    return {
        "timestamp": event.time,
        "from_machine": event.actor,
        "type": event.type,
        "target": event.target,
        "detail": detail,
        "result": event.result,
        "event_id": event.id,
        "via": event.via,
        "unauthenticated": bool(event.unauthenticated),
        "duration_ms": float(duration) if isinstance(duration, (int, float)) else None,
        "exit_code": exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None,
        "data": data_text,
        "completed_at": None if event.result == "pending" else event.time,
        "thread": thread,
        "life": None,
    }, data


def _plain_json(value: Any) -> bool:
    """Whether ``value`` survives a JSON round trip unchanged (the common case: str, int, bool, None,
    lists and dicts of them), so the live stream need not parse back what was just written."""
    if value is None or type(value) in (str, int, bool):
        return True
    if type(value) is list:
        return all(_plain_json(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v) for k, v in value.items())
    return False


async def record(hub, event) -> dict[str, Any]:
    """Write ``event`` (one statement) and notify live streams. Raises AuditError when it cannot.

    A pending event INSERTs its row; the final event with the same id UPDATEs it (completing a
    row this process opened); any other event INSERTs its single row — so a denial, which has
    no pending phase, is one row, and ids have no gaps from upserts.
    """
    state = state_of(hub)
    params, data = event_params(event, settings_of(hub).max_detail)
    if event.result == "pending" and event.type not in STANDALONE_PENDING and hub.life.held:
        params["life"] = hub.life.id  # so the next hub can close the row if this process dies first
    try:
        row = None
        if event.result != "pending" and event.id in state.pending:
            state.pending.discard(event.id)
            row = await hub.db.fetch_one(_COMPLETE, params)
        if row is None:
            row = await hub.db.fetch_one(_INSERT, params)
            if event.result == "pending":
                state.pending.add(event.id)
    except Exception as exc:
        reason = exc.message if isinstance(exc, HubError) else "database error"
        log.error("activity: cannot record %s %s event %s: %s: %s", event.type, event.result, event.id,
                  type(exc).__name__, exc)
        raise AuditError(f"the activity log cannot be written: {reason}", code="audit_unavailable") from exc
    if row is None:  # pragma: no cover - RETURNING always yields the row
        raise AuditError("the activity log did not confirm the write", code="audit_unavailable")
    payload = _payload(params, data, row["id"], row["timestamp"])
    await hub.bus.publish(CHANNEL, payload)
    return payload


def record_queued(hub, event) -> bool:
    """Queue the single row of a final event without waiting for it, where the database allows.

    For events with no pending row of their own (messages, denials, refusals): on SQLite the
    INSERT is queued on the hub's one database connection (``Database.submit``), which runs
    statements in order, so the row is in place before anything this hub queries or writes
    afterwards: a client that reads the feed after its answer sees the row. The request does
    not wait one more trip to the database thread for it, and the row makes no trip of its own
    (it goes with the next batch, at the latest 5 ms later). The live stream hears of the row
    once it is written. A busy database (another process holding the write lock past the busy
    timeout) is tried again, up to ``QUEUED_ATTEMPTS`` times; any other failure is logged, exactly
    as when the hub awaits a final event (only a pending event's failure refuses the action).
    Returns False when the event must be recorded with :func:`record` instead (a pending event,
    a completion, PostgreSQL, an open transaction).
    """
    if event.result == "pending" or event.id in state_of(hub).pending or not hub.db.is_sqlite:
        return False
    params, data = event_params(event, settings_of(hub).max_detail)
    future = hub.db.submit(_INSERT, params, lazy=True)  # no trip of its own: rides with the next batch
    if future is None:
        return False
    future.add_done_callback(lambda done: _queued_written(hub, event, params, data, done))
    return True


def _queued_written(hub, event, params: Mapping[str, Any], data: dict[str, Any], done, attempt: int = 1) -> None:
    exc = asyncio.CancelledError() if done.cancelled() else done.exception()
    if exc is not None:
        retry = hub.db.submit(_INSERT, params) if is_busy(exc) and attempt < QUEUED_ATTEMPTS else None
        if retry is not None:  # another process held the write lock past the busy timeout: once more
            log.warning("activity: the database was busy; writing the %s %s event %s again (attempt %d)",
                        event.type, event.result, event.id, attempt + 1)
            retry.add_done_callback(lambda again: _queued_written(hub, event, params, data, again, attempt + 1))
            return
        log.error("activity: cannot record %s %s event %s: %s: %s", event.type, event.result, event.id,
                  type(exc).__name__, exc)
        return
    rows = done.result()
    if rows:  # SQLite: the bus delivers in this process only, synchronously
        hub.bus.publish_local(CHANNEL, _payload(params, data, rows[0]["id"], rows[0]["timestamp"]))


def _payload(params: Mapping[str, Any], data: dict[str, Any], row_id: int, timestamp: str) -> dict[str, Any]:
    detail = params["detail"]
    out = {
        "id": row_id, "time": timestamp, "from": params["from_machine"], "type": params["type"],
        "target": params["target"], "detail": detail if len(detail) <= STREAM_DETAIL else detail[:STREAM_DETAIL],
        "result": params["result"], "via": params["via"], "unauthenticated": params["unauthenticated"],
        "duration_ms": params["duration_ms"], "exit_code": params["exit_code"],
        "completed_at": params["completed_at"], "event_id": params["event_id"],
        "thread": params["thread"], "data": data,
    }
    if len(detail) > STREAM_DETAIL:
        out["detail_truncated"] = True
    return out


def row_json(row: Mapping[str, Any]) -> dict[str, Any]:
    data = row["data"]
    return {
        "id": row["id"],
        "time": row["timestamp"],
        "from": row["from_machine"],
        "type": row["type"],
        "target": row["target"],
        "detail": row["detail"],
        "result": row["result"],
        "via": row["via"],
        "unauthenticated": bool(row["unauthenticated"]),
        "duration_ms": row["duration_ms"],
        "exit_code": row["exit_code"],
        "completed_at": row["completed_at"],
        "event_id": row["event_id"],
        "thread": row["thread"],
        "data": json.loads(data) if data else {},
    }


def matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    for key, value in filters.items():
        if value is None:
            continue
        if key == SEARCH:
            if value.lower() not in (row.get("detail") or "").lower():
                return False
        elif row.get(key) != value:
            return False
    return True


# -- querying -----------------------------------------------------------------------------------


def parse_time(value: str, field_name: str) -> str:
    """An ISO 8601 time (naive = UTC) as the stored fixed-width UTC string."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRequest(f"{field_name} {value[:40]!r} is neither a row id nor an ISO 8601 time",
                         code="invalid_field", field=field_name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return isotime(moment)


def _where(filters: Mapping[str, Any], params: dict[str, Any], conds: list[str]) -> None:
    for key, column in FILTERS.items():
        value = filters.get(key)
        if value is not None:
            params[f"f_{key}"] = value
            conds.append(f"{column} = :f_{key}")
    text = filters.get(SEARCH)
    if text:
        # a literal substring: LIKE's own wildcards in the text are escaped, never patterns
        escaped = text.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
        params["f_q"] = f"%{escaped}%"
        conds.append("LOWER(detail) LIKE :f_q ESCAPE '!'")


async def query(hub, *, hours: float | None = 24, filters: Mapping[str, Any] | None = None, limit: int = 100,
                before: str | int | None = None, now: datetime | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """Rows newest first (by time, then id) and the cursor for the next page (or None).

    ``hours``: only rows from the last N hours (None or 0: no bound). ``before``: a row id (rows
    after it in this order, i.e. older) or an ISO 8601 time (rows strictly older).
    """
    params: dict[str, Any] = {"limit": limit + 1}
    conds: list[str] = []
    if hours:
        params["since"] = isotime((now or datetime.now(timezone.utc)) - timedelta(hours=hours))
        conds.append("timestamp >= :since")
    _where(filters or {}, params, conds)
    text = str(before).strip() if before is not None else ""
    if text:
        if text.isascii() and text.isdigit():  # str.isdigit() alone is True for '²', which int() refuses
            if len(text) > 18:  # beyond a 64-bit id: the drivers would raise, not compare
                raise BadRequest(f"before {text[:40]!r} is not a row id (too large)", code="invalid_field",
                                 field="before")
            params["b_id"] = int(text)
            stamp = await hub.db.fetch_val("SELECT timestamp FROM activity_log WHERE id = :id", {"id": int(text)})
            if stamp is not None:
                params["b_ts"] = stamp
                conds.append("(timestamp, id) < (:b_ts, :b_id)")
            else:  # the cursor row was pruned meanwhile: ids grow with time, close enough
                conds.append("id < :b_id")
        else:
            params["b_ts"] = parse_time(text, "before")
            conds.append("timestamp < :b_ts")
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    rows = await hub.db.fetch_all(
        f"SELECT {COLUMNS} FROM activity_log{where} ORDER BY timestamp DESC, id DESC LIMIT :limit", params)
    more = len(rows) > limit
    rows = rows[:limit]
    return [row_json(r) for r in rows], (rows[-1]["id"] if more and rows else None)


async def rows_after(hub, after_id: int, *, filters: Mapping[str, Any] | None = None, since: str | None = None,
                     limit: int = 1000) -> list[dict[str, Any]]:
    """Rows with ``id > after_id`` in id order (for export and ``--follow``)."""
    params: dict[str, Any] = {"after": after_id, "limit": limit}
    conds = ["id > :after"]
    if since is not None:
        params["since"] = since
        conds.append("timestamp >= :since")
    _where(filters or {}, params, conds)
    rows = await hub.db.fetch_all(
        f"SELECT {COLUMNS} FROM activity_log WHERE {' AND '.join(conds)} ORDER BY id LIMIT :limit", params)
    return [row_json(r) for r in rows]


async def rows_by_id(hub, ids: list[int]) -> list[dict[str, Any]]:
    if not ids:
        return []
    params = {f"i{n}": v for n, v in enumerate(ids)}
    rows = await hub.db.fetch_all(
        f"SELECT {COLUMNS} FROM activity_log WHERE id IN ({', '.join(':' + k for k in params)}) ORDER BY id", params)
    return [row_json(r) for r in rows]


# -- threads ------------------------------------------------------------------------------------

#: the core's rule for a thread name (docs/api.md, Threads)
THREAD_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
THREAD_HELP = "be 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
_THREAD = re.compile(THREAD_PATTERN)


def validate_thread(value: object) -> str:
    if not isinstance(value, str) or not _THREAD.fullmatch(value):
        raise BadRequest(f"thread must {THREAD_HELP}", code="invalid_field", field="thread")
    return value


def _message_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "time": row["timestamp"], "from": row["from_machine"], "to": row["to_machine"],
            "message": row["message"], "unauthenticated": bool(row["unauthenticated"]), "thread": row["thread"],
            "reply_to": row["reply_to"], "read": row["read_at"] is not None}


async def thread_messages(hub, thread: str, party: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The thread's messages, oldest first (``party``: only those it sent or received)."""
    params: dict[str, Any] = {"thread": thread, "limit": limit + 1}
    member = "thread = :thread"
    opener = re.fullmatch(r"m([1-9][0-9]{0,17})", thread)
    if opener:  # a reply to message N outside any thread started "m<N>": N opens it (docs/api.md, Threads)
        params["opener"] = int(opener.group(1))
        member = "(thread = :thread OR (id = :opener AND thread IS NULL))"
    cond = ""
    if party is not None:
        params["me"] = party
        cond = " AND (from_machine = :me OR to_machine = :me)"
    rows = await hub.db.fetch_all(
        "SELECT id, from_machine, to_machine, message, timestamp, unauthenticated, thread, reply_to, read_at"
        f" FROM messages WHERE {member}{cond} ORDER BY id LIMIT :limit", params)
    return [_message_json(r) for r in rows[:limit]], len(rows) > limit


async def thread_rows(hub, thread: str, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The thread's activity rows, oldest first."""
    rows = await hub.db.fetch_all(
        f"SELECT {COLUMNS} FROM activity_log WHERE thread = :thread ORDER BY timestamp, id LIMIT :limit",
        {"thread": thread, "limit": limit + 1})
    return [row_json(r) for r in rows[:limit]], len(rows) > limit


# -- retention ----------------------------------------------------------------------------------


async def prune(hub, *, days: float | None = None, batch: int | None = None, now: datetime | None = None,
                pause: float = 0.01) -> int:
    """Delete rows older than ``days`` (default: the configured retention) in short batches.

    Each batch is its own statement/transaction, so writers are never held up for long. On
    PostgreSQL each batch takes a transaction-level advisory lock first and stops if another
    replica holds it (one replica prunes at a time). Returns the number of rows deleted.
    """
    settings = settings_of(hub)
    days = settings.retention_days if days is None else days
    batch = batch or settings.prune_batch
    if not days or days <= 0:
        return 0
    cutoff = isotime((now or datetime.now(timezone.utc)) - timedelta(days=days))
    total = 0
    while True:
        deleted = await _complete(_prune_batch(hub, cutoff, batch))
        if deleted is None:  # another replica is pruning
            break
        total += deleted
        if deleted < batch:
            break
        await asyncio.sleep(pause)
    if total:
        log.info("activity: pruned %d rows older than %s", total, cutoff)
    return total


_PRUNE = ("DELETE FROM activity_log WHERE id IN (SELECT id FROM activity_log WHERE timestamp < :cutoff"
          " ORDER BY timestamp LIMIT :n) RETURNING id")


async def _prune_batch(hub, cutoff: str, batch: int) -> int | None:
    if hub.db.is_sqlite:
        return len(await hub.db.fetch_all(_PRUNE, {"cutoff": cutoff, "n": batch}))
    async with hub.db.transaction() as tx:
        if not await tx.fetch_val("SELECT pg_try_advisory_xact_lock(:key)", {"key": PRUNE_LOCK_KEY}):
            return None
        return len(await tx.fetch_all(_PRUNE, {"cutoff": cutoff, "n": batch}))


async def _complete(coro):
    """Run ``coro`` to completion even if the caller is cancelled (then re-raise the cancellation).

    A statement or transaction interrupted by cancellation can leave a pooled PostgreSQL
    connection unreleased (and ``hub.stop`` then hangs closing the pool); a prune batch is
    short, so the hub's shutdown simply waits for it.
    """
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


#: what a row left pending by a hub process that died says once it is closed
INTERRUPTED = ("the hub process recording this action stopped or was killed before the action ended: "
               "whether it ran, and how far, is unknown")
#: event types whose ``pending`` rows are complete records, never completed by a later event (an
#: approval's ``requested`` step: the approval itself outlives the process, in its own table)
STANDALONE_PENDING = frozenset({"approval"})
#: seconds between looks for rows left pending by hub processes that died
ORPHAN_SWEEP_SECONDS = 60.0


async def close_orphans(hub) -> int:
    """Close the rows that dead hub processes left ``pending``: ``error``, code ``interrupted``.

    A guarded action's row is written ``pending`` before it runs and completed by the same
    process when it ends; a process killed in between (kill -9, a crash, power loss) never
    completes it. Each pending row names the life of the process that wrote it
    (:mod:`claude_net.lives`); once that life is over, the row is closed here, live streams hear
    of it, and the row keeps what it said. Returns how many rows were closed.
    """
    life = hub.life
    if not life.held:
        return 0
    lives = await hub.db.fetch_all(
        "SELECT DISTINCT life FROM activity_log WHERE result = 'pending' AND life IS NOT NULL AND life <> :me",
        {"me": life.id})
    closed = 0
    for entry in lives:
        if not await life.gone(entry["life"]):
            continue
        rows = await hub.db.fetch_all(f"SELECT {COLUMNS} FROM activity_log WHERE life = :life AND result = 'pending'"
                                      " ORDER BY id", {"life": entry["life"]})
        for row in rows:
            data = json.loads(row["data"]) if row["data"] else {}
            data.update(code="interrupted", error=INTERRUPTED)
            now = isotime()
            # the result guard: another replica closing the same row at the same time changes nothing
            done = await hub.db.fetch_one(
                "UPDATE activity_log SET result = 'error', completed_at = :now, data = :data"
                " WHERE id = :id AND result = 'pending' RETURNING id", {"now": now, "data": json.dumps(data), "id": row["id"]})
            if done is None:
                continue
            closed += 1
            payload = row_json(row)
            payload.update(result="error", completed_at=now, data=data)
            await hub.bus.publish(CHANNEL, payload)
    if closed:
        log.warning("activity: closed %d row(s) left pending by hub processes that stopped before their actions "
                    "ended (result error, code interrupted)", closed)
    return closed


async def orphan_loop(hub) -> None:
    while True:
        try:
            await close_orphans(hub)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("activity: looking for rows left pending by dead hub processes failed; will retry")
        await asyncio.sleep(ORPHAN_SWEEP_SECONDS)


async def retention_loop(hub) -> None:
    settings = settings_of(hub)
    if settings.retention_days <= 0:
        return
    while True:
        try:
            await prune(hub)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("activity: pruning failed; will retry in %gs", settings.prune_interval_seconds)
        await asyncio.sleep(settings.prune_interval_seconds)
