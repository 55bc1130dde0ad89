"""Background exec jobs: ``POST /api/exec`` with ``"background": true`` (docs/jobs.md).

A job is an exec that outlives its request. It takes the same guarded path as a foreground exec
(authorize, the ``exec`` activity row, a fair exec slot) inside a task of its own, with its own
timeout. The backend hands output over as it arrives (:attr:`ExecOptions.on_output`); the job
keeps it (one text, stdout and stderr interleaved in arrival order, capped at ``[jobs]
max_output`` bytes) in memory for followers on this replica and writes it to the ``jobs`` table
in batches (every ``flush_seconds``), so followers on any replica can read it.

Across replicas (PostgreSQL) a follower on another replica reads the table; the owning replica
publishes a wake-up on the bus (LISTEN/NOTIFY) after each batch, and the follower also looks
every second in case a notification was lost. A cancel that reaches another replica is passed
on the same way (and through the row's ``cancel_requested``, checked on every flush).

Each replica marks the jobs it runs with the id of its hub process's life
(:mod:`claude_net.lives`: a PostgreSQL advisory lock, or a ``flock`` next to the SQLite file,
that the process holds for as long as it lives). A job still ``running`` whose life is over is
marked ``interrupted``, with the output captured until then, at startup and every
``SWEEP_SECONDS``: a hub killed mid-job never leaves a job silently running forever. Jobs are
not reattached (LXD's recorded output and SSH channels do not survive the process that opened
them); their commands are ended instead: each job's exec carries a tag of its own
(:attr:`ExecOptions.tag`, kept in the row), and the replica whose sweep marked the job
``interrupted`` asks the node's backend (``reap_exec``) to end every process carrying it, in the
background, and records the outcome on the job and in the feed (a ``job_reap`` row).
"""

from __future__ import annotations

import asyncio
import bisect
import codecs
import contextlib
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from claude_net import (
    Conflict,
    Event,
    ExecOptions,
    GatewayTimeout,
    HubError,
    Migration,
    NotFound,
    RateLimited,
    Route,
    help_field,
    hookimpl,
)
from claude_net.types import isotime

log = logging.getLogger("claude_net.jobs")

KEY = "claude_net.jobs"
MiB = 1024 * 1024
STATES = ("running", "exited", "cancelled", "timed_out", "interrupted", "failed")
JOB_ID_RE = re.compile(r"^[0-9a-f]{16}$")
#: characters of output the live ``job`` events carry (``transient["output_tail"]``)
TAIL_CHARS = 3000
#: seconds between two live ``job`` events of one job
LIVE_INTERVAL = 1.0
#: seconds between looks for jobs whose replica died (and for cancels asked elsewhere)
SWEEP_SECONDS = 15.0
#: seconds a request waits for its job to get an exec slot before answering 202 anyway
START_WAIT = 5.0
#: seconds a cancel waits for the command to be gone before it answers
CANCEL_WAIT = 15.0
#: characters of output one SSE ``output`` event carries at most
SSE_CHUNK = 64 * 1024
#: bus channel of cancels asked on another replica; per job ``job:<id>`` wakes followers
CANCEL_CHANNEL = "claude_net.jobs.cancel"
#: seconds the reap of one interrupted job may take (the node's backend may still be starting)
REAP_TIMEOUT = 60.0


@dataclass
class JobsSettings:
    timeout: float = help_field(3600.0, "Default timeout of a background job, in seconds.")
    timeout_max: float = help_field(86400.0, "Largest timeout a background job may ask for, in seconds.")
    max_output: int = help_field(4 * MiB, "Output bytes kept per job (stdout and stderr together); past it the "
                                          "job is marked truncated and the rest is dropped (the command runs on).")
    max_per_node: int = help_field(8, "Background jobs running at once on one node (all agents); more: 429.")
    max_total: int = help_field(64, "Background jobs running at once across the hub; more: 429.")
    retention_days: float = help_field(7.0, "Days a finished job (and its output) is kept. 0: forever.")
    flush_seconds: float = help_field(0.5, "Seconds between writes of a running job's new output to the database "
                                           "(what followers on other replicas wait at most, plus a second).")
    fanout_concurrency: int = help_field(16, "Targets of one fan-out exec (`targets`) run at once; the rest wait.")
    fanout_max_targets: int = help_field(256, "Most targets one fan-out exec may name or match.")


@hookimpl
def config_sections():
    return {"jobs": JobsSettings}


@hookimpl
def migrations():
    return [Migration("claude_net_jobs", 1, [
        "CREATE TABLE IF NOT EXISTS jobs ("
        " id TEXT PRIMARY KEY, owner TEXT NOT NULL, target TEXT NOT NULL, command TEXT NOT NULL,"
        " state TEXT NOT NULL, exit_code INTEGER, started_at TEXT NOT NULL, ended_at TEXT,"
        " output TEXT NOT NULL DEFAULT '', output_bytes BIGINT NOT NULL DEFAULT 0,"
        " truncated BOOLEAN NOT NULL DEFAULT FALSE, thread TEXT, reply_to BIGINT,"
        " timeout DOUBLE PRECISION NOT NULL, error TEXT, code TEXT, ended_by TEXT, cancel_requested TEXT,"
        " replica TEXT NOT NULL, via TEXT NOT NULL, event_id TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, started_at)",
        "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, target)",
        "CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (ended_at)",
    ], description="jobs (background execs and their output)"),
        Migration("claude_net_jobs", 2, ["ALTER TABLE jobs ADD COLUMN exec_tag TEXT"],
                  description="jobs: the tag of each job's exec, to end its processes after a restart")]


def settings_of(hub) -> JobsSettings:
    return hub.settings.section("jobs")


class JobEnded(HubError):
    """Why a job's command stopped before it finished by itself (cancel, hub stop)."""

    status = 409


class Job:
    """A job this replica runs: its output so far, and who waits for more."""

    def __init__(self, hub, *, owner: str, target: str, command: str, via: str, thread: str | None,
                 reply_to: int | None, timeout: float, max_output: int) -> None:
        self.hub = hub
        self.id = secrets.token_hex(8)
        #: ExecOptions.tag of the job's exec: random, never shown to agents (a command that knew
        #: another job's tag could put it in its own environment)
        self.tag = secrets.token_hex(16)
        self.owner, self.target, self.command, self.via = owner, target, command, via
        self.thread, self.reply_to, self.timeout = thread, reply_to, timeout
        self.max_output = max_output
        self.started_at = isotime()
        self.state = "running"
        #: what readers see: the final state only once it is recorded (see _finish)
        self.shown_state = "running"
        self.flush_lock = asyncio.Lock()
        self.exit_code: int | None = None
        self.ended_at: str | None = None
        self.error: str | None = None
        self.code: str | None = None
        self.ended_by: str | None = None
        self.event_id = ""
        self.pieces: list[str] = []
        self.ends: list[int] = []  # cumulative length after each piece
        self.length = 0
        self.flushed = 0
        self.output_bytes = 0
        self.delivered = {"stdout": 0, "stderr": 0}  # bytes the backend handed over, per stream
        self.truncated = False
        self.decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")}
        self.inserted = False
        self.admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[Any] | None = None
        self.inner: asyncio.Future[Any] | None = None
        self.stop_reason: tuple[str, str, str | None] | None = None  # (code, sentence, who)
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_live = 0.0
        self._live_handle: asyncio.TimerHandle | None = None
        self.result = None

    # -- output ----------------------------------------------------------------------------------

    def _append(self, text: str) -> None:
        if not text:
            return
        if "\x00" in text:  # PostgreSQL text cannot hold NUL
            text = text.replace("\x00", "\ufffd")
        self.pieces.append(text)
        self.length += len(text)
        self.ends.append(self.length)
        self._wake()
        self._schedule_live()

    def on_output(self, stream: str, data: bytes) -> None:
        """What backends call (``ExecOptions.on_output``) as bytes arrive."""
        if self.state != "running" or not data:
            return
        self.delivered[stream] = self.delivered.get(stream, 0) + len(data)
        room = self.max_output - self.output_bytes
        if room <= 0:
            self.mark_truncated()
            return
        cut = len(data) > room
        if cut:
            data = data[:room]
        self.output_bytes += len(data)
        self._append(self.decoders[stream].decode(data))
        if cut:
            self.mark_truncated()

    def mark_truncated(self) -> None:
        """Past the cap: say so once, in the output itself and on the job."""
        if self.truncated:
            return
        self.truncated = True
        for decoder in self.decoders.values():
            self._append(decoder.decode(b"", final=True))
        self._append(f"\n[claude-net: output truncated at {self.max_output} bytes ([jobs] max_output); "
                     "the rest was dropped]\n")

    def text_from(self, offset: int, limit: int | None = None) -> str:
        if offset >= self.length:
            return ""
        i = bisect.bisect_right(self.ends, offset)
        start = offset - (self.ends[i - 1] if i else 0)
        text = "".join(self.pieces[i:])[start:]
        return text if limit is None else text[:limit]

    def tail(self, chars: int = TAIL_CHARS) -> str:
        return self.text_from(max(0, self.length - chars))

    def _wake(self) -> None:
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    async def changed(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed), timeout)

    # -- live events -----------------------------------------------------------------------------

    def _schedule_live(self) -> None:
        if self.state != "running" or self._live_handle is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_live + LIVE_INTERVAL - time.monotonic())
        self._live_handle = loop.call_later(delay, self._send_live)

    def _send_live(self) -> None:
        self._live_handle = None
        if self.state != "running":
            return
        self._last_live = time.monotonic()
        event = Event("job", self.owner, self.target, self.command, "pending", via=self.via, live_only=True,
                      data={"job_id": self.id, "state": self.state},
                      transient={"output_tail": self.tail(), "output_bytes": self.output_bytes})
        _background(self.hub, self.hub.emit(event))

    def cancel_live(self) -> None:
        if self._live_handle is not None:
            self._live_handle.cancel()
            self._live_handle = None

    def to_json(self) -> dict[str, Any]:
        return _job_json({"id": self.id, "owner": self.owner, "target": self.target, "command": self.command,
                          "state": self.shown_state, "exit_code": self.exit_code if self.shown_state != "running"
                          else None, "started_at": self.started_at,
                          "ended_at": self.ended_at if self.shown_state != "running" else None, "output_bytes": self.output_bytes, "truncated": self.truncated,
                          "thread": self.thread, "reply_to": self.reply_to, "timeout": self.timeout,
                          "error": self.error, "code": self.code, "ended_by": self.ended_by, "via": self.via})


def _job_json(row) -> dict[str, Any]:
    out = {key: row[key] for key in ("id", "owner", "target", "command", "state", "exit_code", "started_at",
                                     "ended_at", "output_bytes", "thread")}
    out["truncated"] = bool(row["truncated"])
    out["timeout"] = float(row["timeout"])
    out["via"] = row["via"]
    if row["reply_to"] is not None:
        out["reply_to"] = row["reply_to"]
    for key in ("error", "code", "ended_by"):
        if row[key] is not None:
            out[key] = row[key]
    return out


class JobsState:
    def __init__(self, life: str) -> None:
        #: the hub process's life (claude_net.lives), which marks the jobs it runs
        self.life = life
        self.jobs: dict[str, Job] = {}
        self.admission = asyncio.Lock()
        self.background: set[asyncio.Task[Any]] = set()
        self.closing = False


def state_of(hub) -> JobsState:
    state = hub.plugin_state.get(KEY)
    if state is None:
        state = hub.plugin_state[KEY] = JobsState(hub.life.id)
    return state


def _background(hub, coro) -> None:
    state = state_of(hub)
    task = asyncio.ensure_future(coro)
    state.background.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        state.background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("jobs: background work failed: %s", t.exception())

    task.add_done_callback(done)


# -- starting a job ---------------------------------------------------------------------------------


async def start(hub, actor, target: str, *, command: str, timeout: float, cwd: str | None, env, recorded: dict,
                threading: dict, guard_kwargs: dict | None = None) -> dict[str, Any]:
    """Start ``command`` on ``target`` as a background job of ``actor``; returns the JOB.

    Raises what a foreground exec would before the command starts (denied, unknown node, 429,
    an approval still pending, ...): no job exists then.
    """
    from .capabilities import EVENT_OUTPUT, TIMEOUT_GRACE, _decode, _discard, _dispatch, redact_secrets

    cfg = settings_of(hub)
    state = state_of(hub)
    if state.closing or hub.stopping.is_set():
        from claude_net import Unavailable

        raise Unavailable("the hub is stopping; start the job again in a moment", code="stopping")
    job = Job(hub, owner=actor.name, target=target, command=redact_secrets(command), via=actor.via,
              thread=threading.get("thread"), reply_to=threading.get("reply_to"), timeout=timeout,
              max_output=cfg.max_output)
    # one byte past the cap per stream, so that the job sees there was more
    options = ExecOptions(timeout=timeout, cwd=cwd, env=env, max_output=cfg.max_output + 1,
                          source=None if actor.admin else actor.name, on_output=job.on_output, tag=job.tag)
    request = {"command": command, "cwd": cwd, "background": True}

    async def run():
        node = await hub.nodes.get(target)
        await _admit(hub, job)
        awaitable = _dispatch(hub, "execute", node, command=command, options=options)
        async with contextlib.AsyncExitStack() as stack:
            try:
                waited = await stack.enter_async_context(hub.exec_slot(actor, target))
                if waited:
                    await hub.reauthorize(actor, "exec", target, request, why="while the job waited for a slot")
            except BaseException:
                _discard(awaitable)
                raise
            job.inner = asyncio.ensure_future(awaitable)
            if not job.started.done():
                job.started.set_result(None)
            job._schedule_live()  # live subscribers (Telegram's echo, the dashboard) hear of it at once
            try:
                result = await asyncio.wait_for(job.inner, timeout + TIMEOUT_GRACE)
            except asyncio.TimeoutError:
                raise GatewayTimeout(f"the {node.backend} backend did not finish within {timeout:g}s",
                                     code="timeout") from None
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if job.stop_reason is not None and current is not None and not current.cancelling():
                    code, sentence, _who = job.stop_reason
                    raise JobEnded(sentence, code=code) from None
                raise
        # what the backend did not hand over live (a backend that cannot stream, the last bytes)
        for stream, data in (("stdout", result.stdout), ("stderr", result.stderr)):
            if len(data) > job.delivered.get(stream, 0):
                job.on_output(stream, data[job.delivered.get(stream, 0):])
        if result.truncated:
            job.mark_truncated()
        job.result = result
        if result.timed_out:
            raise GatewayTimeout(f"the command did not finish within {timeout:g}s and was stopped",
                                 code="timeout", exitCode=result.exit_code)
        return result

    data = {**recorded, "job_id": job.id, "background": True}

    async def guarded_run():
        return await hub.guarded(
            actor, action="exec", event_type="exec", target=target, detail=command, run=run,
            request=request, data=data, **(guard_kwargs or {}),
            result_data=lambda r: {"exit_code": r.exit_code, "truncated": job.truncated,
                                   "output_bytes": job.output_bytes},
            result_transient=lambda r: {"stdout": _decode(r.stdout[:EVENT_OUTPUT]),
                                        "stderr": _decode(r.stderr[:EVENT_OUTPUT]),
                                        "output_bytes": job.output_bytes},
        )

    job.task = asyncio.ensure_future(_supervise(hub, job, guarded_run))
    # First until the job exists or was refused (as long as the decision takes: an approval may be
    # waited for), then a little for its exec slot.
    for waited_for, limit in ((job.admitted, None), (job.started, START_WAIT)):
        waiter = asyncio.ensure_future(asyncio.shield(waited_for))
        try:
            await asyncio.wait({job.task, waiter}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not job.inserted and job.task.done():
            job.task.result()  # raises the refusal: no job was made
    return job.to_json()


async def _admit(hub, job: Job) -> None:
    """Check the limits and write the job's row (one replica admits one job at a time)."""
    cfg = settings_of(hub)
    state = state_of(hub)
    async with state.admission:
        total = await hub.db.fetch_val("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
        if int(total or 0) >= cfg.max_total:
            raise RateLimited(f"{total} background jobs are running, the most the hub allows ([jobs] max_total); "
                              "wait for one to end or cancel one", code="too_many_jobs", limit=cfg.max_total)
        on_node = await hub.db.fetch_val("SELECT COUNT(*) FROM jobs WHERE state = 'running' AND target = :t",
                                         {"t": job.target})
        if int(on_node or 0) >= cfg.max_per_node:
            raise RateLimited(f"{on_node} background jobs are running on {job.target}, the most one node may have "
                              "([jobs] max_per_node); wait for one to end or cancel one",
                              code="too_many_jobs", limit=cfg.max_per_node)
        await hub.db.execute(
            "INSERT INTO jobs (id, owner, target, command, state, started_at, thread, reply_to, timeout, replica,"
            " via, event_id, exec_tag) VALUES (:id, :owner, :target, :command, 'running', :started_at, :thread,"
            " :reply_to, :timeout, :replica, :via, :event_id, :tag)",
            {"id": job.id, "owner": job.owner, "target": job.target, "command": job.command,
             "started_at": job.started_at, "thread": job.thread, "reply_to": job.reply_to,
             "timeout": job.timeout, "replica": state.life, "via": job.via, "event_id": job.event_id,
             "tag": job.tag})
        job.inserted = True
        state.jobs[job.id] = job
        job.admitted.set_result(None)


async def _supervise(hub, job: Job, guarded_run) -> None:
    """Run the job to its end and record how it ended."""
    try:
        result = await guarded_run()
        job.state, job.exit_code = "exited", result.exit_code
    except asyncio.CancelledError:
        if not job.inserted:
            raise
        code, sentence, who = job.stop_reason or ("interrupted", "the hub stopped while the job ran", None)
        job.state = "cancelled" if code == "cancelled" else "interrupted"
        job.error, job.code, job.ended_by = sentence, code, who
    except HubError as exc:
        if not job.inserted:
            raise
        if isinstance(exc, JobEnded):
            job.state = "cancelled" if exc.code == "cancelled" else "interrupted"
            job.ended_by = job.stop_reason[2] if job.stop_reason else None
        elif exc.code == "timeout":
            job.state = "timed_out"
            job.exit_code = job.result.exit_code if job.result is not None else None
        else:
            job.state = "failed"
        job.error, job.code = exc.message, exc.code
    except Exception as exc:
        if not job.inserted:
            raise
        log.exception("job %s failed", job.id)
        job.state, job.error, job.code = "failed", "internal error", "internal"
    finally:
        for future in (job.admitted, job.started):
            if not future.done():
                future.set_result(None)
    await _finish(hub, job)


async def _finish(hub, job: Job) -> None:
    """Record the end: the ``job`` event first, then the row; only then does anyone see the job ended
    (``shown_state``), so whoever sees it ended finds its record in the feed."""
    job.cancel_live()
    for decoder in job.decoders.values():
        job._append(decoder.decode(b"", final=True))
    job.ended_at = isotime()
    await hub.emit(Event("job", job.owner, job.target, job.command, "ok" if job.state == "exited" else "error",
                         via=job.via, data={"job_id": job.id, "state": job.state, "exit_code": job.exit_code,
                                            **({"thread": job.thread} if job.thread else {}),
                                            **({"ended_by": job.ended_by} if job.ended_by else {}),
                                            **({"code": job.code} if job.code else {})},
                         transient={"output_tail": job.tail(), "output_bytes": job.output_bytes}))
    try:
        await _flush(hub, job, final=True)
    except Exception:
        log.exception("job %s: could not record its end", job.id)
    job.shown_state = job.state
    state_of(hub).jobs.pop(job.id, None)
    job._wake()


async def _flush(hub, job: Job, *, final: bool = False) -> None:
    """Write the output that arrived since the last write (and, at the end, the final state); one
    write of a job at a time, so no piece is appended twice."""
    async with job.flush_lock:
        await _flush_locked(hub, job, final=final)


async def _flush_locked(hub, job: Job, *, final: bool) -> None:
    upto = job.length
    more = job.text_from(job.flushed)[: upto - job.flushed]
    values = {"id": job.id, "more": more, "bytes": job.output_bytes, "truncated": job.truncated}
    if final:
        await hub.db.execute(
            "UPDATE jobs SET output = output || :more, output_bytes = :bytes, truncated = :truncated, state = :state,"
            " exit_code = :exit_code, ended_at = :ended_at, error = :error, code = :code, ended_by = :ended_by"
            " WHERE id = :id",
            {**values, "state": job.state, "exit_code": job.exit_code, "ended_at": job.ended_at,
             "error": job.error, "code": job.code, "ended_by": job.ended_by})
    elif more:
        await hub.db.execute("UPDATE jobs SET output = output || :more, output_bytes = :bytes,"
                             " truncated = :truncated WHERE id = :id", values)
    else:
        return
    job.flushed = upto
    if not hub.db.is_sqlite:  # followers on other replicas read the table when woken
        with contextlib.suppress(Exception):
            await hub.bus.publish(f"job:{job.id}", {"offset": upto, "state": job.state})


async def _flush_forever(hub) -> None:
    state = state_of(hub)
    cfg = settings_of(hub)
    last_look = time.monotonic()
    while True:
        await asyncio.sleep(cfg.flush_seconds)
        for job in list(state.jobs.values()):
            if job.inserted and job.state == "running" and job.length > job.flushed:
                try:
                    await _flush(hub, job)
                except HubError as exc:
                    log.warning("job %s: could not write its output yet: %s", job.id, exc.message)
        if not hub.db.is_sqlite and time.monotonic() - last_look > 2.0 and state.jobs:
            last_look = time.monotonic()  # cancels asked on a replica whose notification got lost
            rows = await hub.db.fetch_all("SELECT id, cancel_requested FROM jobs WHERE replica = :life"
                                          " AND state = 'running' AND cancel_requested IS NOT NULL",
                                          {"life": state.life})
            for row in rows:
                job = state.jobs.get(row["id"])
                if job is not None and job.stop_reason is None:
                    _stop(job, "cancelled", f"cancelled by {row['cancel_requested']}", row["cancel_requested"])


# -- cancel -----------------------------------------------------------------------------------------


def _stop(job: Job, code: str, sentence: str, who: str | None) -> None:
    """End a job this replica runs: the backend ends the command's process tree when its await is
    cancelled (LXD: every process of the exec; SSH: the session's process group)."""
    if job.stop_reason is None:
        job.stop_reason = (code, sentence, who)
    if job.inner is not None and not job.inner.done():
        job.inner.cancel()
    elif job.inner is None and job.task is not None and not job.task.done():
        job.task.cancel()  # still waiting for a slot: it never starts


async def _visible(hub, actor, job_id: str, *, record: bool = True) -> dict[str, Any]:
    """The row of a job ``actor`` may see; else 404, recorded (``record``) as a ``denied`` view."""
    row = None
    if isinstance(job_id, str) and JOB_ID_RE.fullmatch(job_id):
        row = await hub.db.fetch_one("SELECT id, owner, target, command, state, exit_code, started_at, ended_at,"
                                     " output_bytes, truncated, thread, reply_to, timeout, error, code, ended_by,"
                                     " via, replica FROM jobs WHERE id = :id", {"id": job_id})
    if row is None or not (actor.admin or row["owner"] == actor.name):
        # another agent's job is exactly as absent as one that never existed (to the caller; the
        # feed, which only admins read, says whose it was)
        exc = NotFound(f"no job {str(job_id)[:40]!r} of yours", code="unknown_job")
        if record:
            await _record_probe(hub, actor, str(job_id)[:40], row, exc)
        raise exc
    return row


async def _record_probe(hub, actor, job_id: str, row, exc: HubError) -> None:
    """A look at a job the caller may not see: a ``denied`` ``job_view`` row, throttled per agent like
    other refusals (its first ones of a window one by one, then one row with the count)."""
    refused = hub.rate_limiter.refusals.should_record(f"job_view:{actor.name}")
    if not refused:
        return
    data: dict[str, Any] = {"job_id": job_id, "code": exc.code}
    if row is not None:
        data["owner"] = row["owner"]
    if refused > 1:
        data["refused"] = refused
    detail = f"view job {job_id}" + (f" of {row['owner']}" if row is not None else " (no such job)")
    if refused > 1:
        detail += f" ({refused - 1} more refused before it, not recorded one by one)"
    await hub.emit(Event("job_view", actor.name, row["target"] if row is not None else None, detail, "denied",
                         via=actor.via, data=data))


async def get(hub, actor, job_id: str, *, output: bool = False) -> dict[str, Any]:
    """The JOB ``actor`` may see (404 otherwise); with ``output``: plus ``"output"`` so far."""
    row = await _visible(hub, actor, job_id)
    job = state_of(hub).jobs.get(job_id)
    out = job.to_json() if job is not None else _job_json(row)
    if output:
        if job is not None:
            out["output"] = job.text_from(0)
        else:
            out["output"] = await hub.db.fetch_val("SELECT output FROM jobs WHERE id = :id", {"id": job_id}) or ""
    return out


async def cancel(hub, actor, job_id: str) -> dict[str, Any]:
    """Cancel a running job (its owner or an admin); returns the JOB once the command is gone."""
    try:
        row = await _visible(hub, actor, job_id, record=False)
    except NotFound as exc:
        await hub.emit(Event("job_cancel", actor.name, None, f"cancel job {str(job_id)[:40]}", "denied",
                             via=actor.via, data={"job_id": str(job_id)[:40], "code": exc.code}))
        raise
    if row["state"] != "running":
        raise Conflict(f"job {job_id} is not running (it is {row['state']})", code="job_not_running",
                       job=_job_json(row))
    state = state_of(hub)
    await hub.emit(Event("job_cancel", actor.name, row["target"], f"cancel job {job_id}: {row['command']}", "ok",
                         via=actor.via, data={"job_id": job_id, "owner": row["owner"],
                                              **({"thread": row["thread"]} if row["thread"] else {})}))
    job = state.jobs.get(job_id)
    if job is not None:
        _stop(job, "cancelled", f"cancelled by {actor.name}", actor.name)
        if job.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(job.task), CANCEL_WAIT)
        return await get(hub, actor, job_id)
    # another replica runs it: ask it through the row and the bus, and wait for the row to say so
    await hub.db.execute("UPDATE jobs SET cancel_requested = :who WHERE id = :id AND state = 'running'",
                         {"who": actor.name, "id": job_id})
    with contextlib.suppress(Exception):
        await hub.bus.publish(CANCEL_CHANNEL, {"id": job_id, "by": actor.name})
    deadline = time.monotonic() + CANCEL_WAIT
    while time.monotonic() < deadline:
        current = await hub.db.fetch_val("SELECT state FROM jobs WHERE id = :id", {"id": job_id})
        if current != "running":
            break
        await asyncio.sleep(0.1)
    return await get(hub, actor, job_id)


async def _listen_cancels(hub) -> None:
    state = state_of(hub)
    async with hub.bus.subscribe(CANCEL_CHANNEL, maxsize=1000) as sub:
        while True:
            payload = await sub.get()
            if not payload:
                continue
            job = state.jobs.get(str(payload.get("id")))
            if job is not None and job.stop_reason is None:
                who = str(payload.get("by") or "?")
                _stop(job, "cancelled", f"cancelled by {who}", who)


# -- replicas that died mid-job, retention ----------------------------------------------------------


async def sweep(hub) -> int:
    """Mark ``interrupted`` the running jobs of replicas that are gone; returns how many."""
    from claude_net.cluster import lock_key

    state = state_of(hub)
    rows = await hub.db.fetch_all("SELECT DISTINCT replica FROM jobs WHERE state = 'running' AND replica <> :life",
                                  {"life": state.life})
    count = 0
    for row in rows:
        life = row["replica"]
        if not await hub.life.gone(life):
            continue
        if not hub.db.is_sqlite:  # a replica of an earlier version marked its life with this lock instead
            async with hub.db.transaction() as tx:
                if not await tx.fetch_val("SELECT pg_try_advisory_xact_lock(:k)", {"k": lock_key(f"job-life:{life}")}):
                    continue
        ended = await hub.db.fetch_all(
            "UPDATE jobs SET state = 'interrupted', ended_at = :now, code = 'interrupted',"
            " error = 'the hub running this job stopped (or was killed) before the job ended; the output is what '"
            " || 'was captured until then' WHERE replica = :life AND state = 'running'"
            " RETURNING id, owner, target, command, via, thread, exec_tag", {"now": isotime(), "life": life})
        for job in ended:
            count += 1
            await hub.emit(Event("job", job["owner"], job["target"], job["command"], "error", via="hub",
                                 data={"job_id": job["id"], "state": "interrupted", "exit_code": None,
                                       "code": "interrupted", **({"thread": job["thread"]} if job["thread"] else {})}))
            # only the replica whose UPDATE took the row gets it back: one reap per job
            if job["exec_tag"]:
                _background(hub, reap(hub, job["id"], job["target"], job["exec_tag"]))
    return count


async def reap(hub, job_id: str, target: str, tag: str) -> int | None:
    """End what an interrupted job's command left running in its node (``reap_exec``), then record it:
    a sentence added to the job's ``error`` and a ``job_reap`` row. Returns how many processes were
    ended (None: they could not be, or the node's backend cannot find them)."""
    started = time.monotonic()
    ended: int | None = None
    why = ""
    try:
        async with asyncio.timeout(REAP_TIMEOUT):
            # at startup the sweep runs before the backends have started
            while not hub.started and not hub.stopping.is_set():
                await asyncio.sleep(0.1)
            node = await hub.nodes.get(target)
            awaitable = hub.pm.hook.reap_exec(hub=hub, node=node, tag=tag) if node.backend != "hub" else None
            if awaitable is None:
                why = f"its {node.backend} backend cannot find the processes of an earlier command"
            else:
                ended = int(await awaitable)
    except NotFound:
        why = f"the hub has no node {target} any more"
    except TimeoutError:
        why = f"the node did not answer within {REAP_TIMEOUT:g}s"
    except HubError as exc:
        why = exc.message
    except Exception as exc:  # noqa: BLE001 - recorded below, never raised into the sweep
        log.exception("job %s: could not end its processes on %s", job_id, target)
        why = f"{type(exc).__name__}: {exc}"
    if ended is None:
        sentence = (f"Its processes on {target} could not be ended after the hub restarted ({why}); "
                    "check with ps and end them by hand.")
        detail, result = f"job {job_id} on {target}: its processes could not be ended ({why})", "error"
    elif ended:
        plural = "es" if ended != 1 else ""
        sentence = f"Its {ended} process{plural} still running on {target} were ended after the hub restarted."
        detail, result = f"job {job_id} on {target}: {ended} process{plural} ended after the hub restarted", "ok"
    else:
        sentence = f"No process of it was left on {target} after the hub restarted."
        detail, result = f"job {job_id} on {target}: no process of it was left after the hub restarted", "ok"
    try:
        await hub.db.execute("UPDATE jobs SET error = COALESCE(error || '. ', '') || :more WHERE id = :id",
                             {"more": sentence, "id": job_id})
    except HubError as exc:
        log.warning("job %s: could not record that its processes were ended: %s", job_id, exc.message)
    await hub.emit(Event("job_reap", None, target, detail[:600], result, via="hub",
                         data={"job_id": job_id, "processes": ended,
                               "duration_ms": round((time.monotonic() - started) * 1000, 1),
                               **({"error": why[:400]} if ended is None else {})}))
    return ended


async def _sweep_forever(hub) -> None:
    passes = 0
    while True:
        # the first looks come quickly: a replica killed just before this one started may still
        # hold its lock for a moment (PostgreSQL notices the dead connection)
        await asyncio.sleep(2.0 if passes < 5 else SWEEP_SECONDS)
        passes += 1
        try:
            await sweep(hub)
        except HubError as exc:
            log.warning("jobs: could not look for interrupted jobs: %s", exc.message)


async def prune(hub, *, now: datetime | None = None) -> int:
    days = settings_of(hub).retention_days
    if days <= 0:
        return 0
    cutoff = isotime((now or datetime.now(timezone.utc)) - timedelta(days=days))
    # look before deleting: a DELETE takes the write lock even when nothing matches, and on
    # SQLite it would queue every other write (audit rows) behind a lock some other process holds
    due = await hub.db.fetch_val("SELECT 1 FROM jobs WHERE state <> 'running' AND ended_at < :cutoff LIMIT 1",
                                 {"cutoff": cutoff})
    if due is None:
        return 0
    rows = await hub.db.fetch_all("DELETE FROM jobs WHERE state <> 'running' AND ended_at < :cutoff RETURNING id",
                                  {"cutoff": cutoff})
    return len(rows)


async def _prune_forever(hub) -> None:
    while True:
        await prune(hub)
        await asyncio.sleep(3600)


@hookimpl
async def startup(hub):
    state_of(hub)  # the hub holds its life before plugins start: no sweep takes our jobs for dead
    try:  # before serving: a restarted hub answers with its dead life's jobs already interrupted
        await asyncio.wait_for(sweep(hub), 10)
    except (HubError, asyncio.TimeoutError) as exc:
        log.warning("jobs: could not look for interrupted jobs at startup: %s", exc)
    hub.spawn(lambda: _sweep_forever(hub), name="jobs-sweep")
    hub.spawn(lambda: _flush_forever(hub), name="jobs-flush")
    hub.spawn(lambda: _listen_cancels(hub), name="jobs-cancels")
    hub.spawn_singleton("jobs-retention", lambda: _prune_forever(hub))


@hookimpl
async def shutdown(hub):
    """End the running jobs (``interrupted``) and record what they printed. The hub stops plugins in
    the order they were registered, so this built-in runs before the backends close."""
    state = state_of(hub)
    state.closing = True
    jobs = list(state.jobs.values())
    for job in jobs:
        _stop(job, "interrupted", "the hub stopped while the job ran", None)
    tasks = [job.task for job in jobs if job.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    for task in list(state.background):
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 2)


# -- HTTP -------------------------------------------------------------------------------------------


async def list_jobs(ctx):
    hub, actor, query = ctx.hub, ctx.actor, ctx.query
    conds, values = [], {"limit": int(query.get("limit", 100))}
    if not actor.admin:
        conds.append("owner = :me")
        values["me"] = actor.name
    elif query.get("owner"):
        conds.append("owner = :owner")
        values["owner"] = query["owner"]
    for key in ("state", "target", "thread"):
        if query.get(key):
            conds.append(f"{key} = :{key}")
            values[key] = query[key]
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    rows = await hub.db.fetch_all(
        "SELECT id, owner, target, command, state, exit_code, started_at, ended_at, output_bytes, truncated, thread,"
        f" reply_to, timeout, error, code, ended_by, via FROM jobs{where} ORDER BY started_at DESC, id LIMIT :limit",
        values)
    state = state_of(hub)
    return {"jobs": [state.jobs[r["id"]].to_json() if r["id"] in state.jobs else _job_json(r) for r in rows]}


async def job_view(ctx):
    return {"job": await get(ctx.hub, ctx.actor, ctx.params["job_id"], output=True)}


async def job_cancel(ctx):
    return {"job": await cancel(ctx.hub, ctx.actor, ctx.params["job_id"])}


def _sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


async def _read_stored(hub, job_id: str, offset: int, limit: int) -> tuple[str, str]:
    row = await hub.db.fetch_one("SELECT substr(output, :start, :limit) AS text, state FROM jobs WHERE id = :id",
                                 {"id": job_id, "start": offset + 1, "limit": limit})
    return (row["text"] or "", row["state"]) if row else ("", "exited")


async def job_output(ctx):
    from claude_net.http import json_response

    hub, actor, query = ctx.hub, ctx.actor, ctx.query
    job_id = ctx.params["job_id"]
    await _visible(hub, actor, job_id)
    offset = int(query.get("offset", 0))
    if not query.get("follow"):
        job = state_of(hub).jobs.get(job_id)
        if job is not None:
            text = job.text_from(offset)
        else:
            text, _state = await _read_stored(hub, job_id, offset, 2**31 - 1)
        out = await get(hub, actor, job_id)
        return json_response({"ok": True, "offset": offset, "text": text, "next_offset": offset + len(text),
                              "job": out})
    from quart import Response

    keepalive = 15.0

    async def events():
        position = offset
        async with hub.bus.subscribe(f"job:{job_id}", maxsize=100) as sub:
            yield b"retry: 3000\n: connected\n\n"
            quiet_since = time.monotonic()
            while not hub.stopping.is_set():
                job = state_of(hub).jobs.get(job_id)
                if job is not None:
                    text, running = job.text_from(position, SSE_CHUNK), job.shown_state == "running"
                    waiter = job.changed
                else:
                    text, stored_state = await _read_stored(hub, job_id, position, SSE_CHUNK)
                    running = stored_state == "running"
                    waiter = None
                if text:
                    yield _sse("output", {"offset": position, "text": text})
                    position += len(text)
                    quiet_since = time.monotonic()
                    continue  # there may be more right away
                if not running:
                    yield _sse("end", await get(hub, actor, job_id))
                    return
                if time.monotonic() - quiet_since > keepalive:
                    yield b": keepalive\n\n"
                    quiet_since = time.monotonic()
                if waiter is not None:
                    await waiter(1.0)
                else:  # another replica runs it: woken by its flushes, or a look every second
                    await sub.get(1.0)

    response = Response(events(), status=200, content_type="text/event-stream; charset=utf-8",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.timeout = None
    return response


JOB_PATH = {"job_id": {"type": "string", "pattern": JOB_ID_RE.pattern}}
JOB_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "owner": {"type": "string"}, "target": {"type": "string"},
    "command": {"type": "string"}, "state": {"type": "string", "enum": list(STATES)},
    "exit_code": {"type": ["integer", "null"]}, "started_at": {"type": "string"},
    "ended_at": {"type": ["string", "null"]}, "output_bytes": {"type": "integer"}, "truncated": {"type": "boolean"},
    "thread": {"type": ["string", "null"]}}}


@hookimpl
def register_routes(hub):
    return [
        Route("GET", "/api/jobs", list_jobs, summary="Background jobs: yours (admins: everyone's), newest first",
              query_schema={"type": "object", "additionalProperties": False, "properties": {
                  "state": {"type": "string", "enum": list(STATES)},
                  "target": {"type": "string", "maxLength": 63}, "owner": {"type": "string", "maxLength": 63},
                  "thread": {"type": "string", "maxLength": 64},
                  "limit": {"type": "integer", "minimum": 1, "maximum": 1000}}},
              response_schema={"type": "object", "properties": {"jobs": {"type": "array", "items": JOB_SCHEMA}}},
              tags=["jobs"]),
        Route("GET", "/api/jobs/<job_id>", job_view, summary="One background job, with its output so far",
              path_schema=JOB_PATH, tags=["jobs"]),
        Route("GET", "/api/jobs/<job_id>/output", job_output,
              summary="A job's output from `offset` (characters); `follow=1`: a live SSE stream",
              description="Without `follow`: JSON `{offset, text, next_offset, job}`. With `follow=1`: "
                          "`text/event-stream` of `output` events (`{offset, text}`) as the output arrives and "
                          "one final `end` event whose data is the job.",
              query_schema={"type": "object", "additionalProperties": False, "properties": {
                  "offset": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                  "follow": {"type": "boolean"}}},
              response_schema={"type": "object", "properties": {
                  "ok": {"const": True}, "offset": {"type": "integer"}, "text": {"type": "string"},
                  "next_offset": {"type": "integer"}, "job": JOB_SCHEMA}},
              path_schema=JOB_PATH, stream=True, tags=["jobs"]),
        Route("POST", "/api/jobs/<job_id>/cancel", job_cancel,
              summary="Cancel a running job (its owner or an admin): its processes in the node are ended",
              description="No body. Answers the job once its command is gone (at most ~15 s), state `cancelled`.",
              path_schema=JOB_PATH, tags=["jobs"]),
    ]
