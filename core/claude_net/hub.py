"""The running hub: settings, plugin manager, database, node registry, event bus.

Independent of HTTP: the Quart app, the CLI and plugins (Telegram, MCP) all act through a
:class:`Hub`, so every path goes through the same authorization, events and error mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from . import auth
from .bus import Bus
from .config import Settings
from .db import Database
from .errors import AuditError, Forbidden, HubError, NotFound, Unavailable
from .fairness import FairShares
from .lives import Life
from .plugins import PluginManager, make_plugin_manager
from .ratelimit import RateLimiter, RecordThrottle
from .types import Actor, Decision, Event, Grant, Node, isotime

log = logging.getLogger("claude_net.hub")
T = TypeVar("T")

#: actions only admins may perform, whatever any policy plugin says (enforced by builtin.roles)
ADMIN_ONLY_ACTIONS = frozenset({"container", "permit", "permissions_view", "activity_view", "admin"})

#: the events emitted while handling the current request (set by the HTTP layer), so a refusal
#: that nothing else recorded can be recorded once
EMITTED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("claude_net_emitted", default=None)

#: ``(actor, action, target)`` of the approved action that the current ``guarded`` run carries out,
#: so :meth:`Hub.reauthorize` (after a queue wait, during an upload) accepts its ask-level grant
APPROVED: contextvars.ContextVar[tuple[str, str, str | None] | None] = contextvars.ContextVar(
    "claude_net_approved", default=None)

DENIED = Decision(False)
ALLOWED = Decision(True)
#: actions a ``snapshot: before`` rule snapshots the target for
SNAPSHOT_ACTIONS = frozenset({"exec", "file_write"})
#: seconds the snapshot taken before an action may take before the action is refused
SNAPSHOT_TIMEOUT = 120.0


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable; hooks may answer synchronously or not."""
    if value is None:  # the common case for synchronous hooks, decided without ABC checks
        return None
    if inspect.isawaitable(value):
        return await value
    return value


def _stamp(seconds: float) -> str:
    return isotime(datetime.fromtimestamp(seconds, timezone.utc))


def safe_sentence(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception, fit for logs, the audit table and chat: one line, no
    control characters, no lone surrogates (which no database, log or Telegram can encode)."""
    from .schema import storable
    from .text import printable

    text = printable(storable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class TaskStatus:
    """What :meth:`Hub.task_status` shows of one background task."""

    name: str
    state: str = "starting"  # running | restarting | failed
    failures: int = 0  # every failure since the hub started
    streak: int = 0  # failures since the task last ran healthily
    restarts: int = 0
    last_error: str | None = None
    last_failure: float | None = None  # time.time()
    next_restart: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.failures, "streak": self.streak, "restarts": self.restarts,
                "last_error": self.last_error,
                "last_failure": _stamp(self.last_failure) if self.last_failure is not None else None,
                "next_restart": _stamp(self.next_restart) if self.next_restart is not None else None}


class NodeRegistry:
    """Merged, briefly cached view of every backend's ``list_nodes``."""

    LIST_TIMEOUT = 5.0

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._nodes: dict[str, Node] = {}
        self._errors: dict[str, str] = {}
        self._fetched_at = -1e9
        self._refreshing: asyncio.Task[None] | None = None

    async def _fetch(self) -> None:
        impls = self.hub.pm.hook.list_nodes.get_hookimpls()

        async def one(impl: Any) -> tuple[str, list[Node] | None, str | None]:
            try:
                result = impl.function(**{a: self.hub for a in impl.argnames if a == "hub"})
                nodes = await asyncio.wait_for(await_me_maybe(result), self.LIST_TIMEOUT)
                return impl.plugin_name, list(nodes or ()), None
            except asyncio.TimeoutError:
                return impl.plugin_name, None, f"did not answer within {self.LIST_TIMEOUT:g}s"
            except HubError as exc:
                return impl.plugin_name, None, exc.message
            except Exception as exc:  # a broken backend must not take the registry down
                log.exception("list_nodes of %s failed", impl.plugin_name)
                return impl.plugin_name, None, f"{type(exc).__name__}: {exc}"

        results = await asyncio.gather(*(one(impl) for impl in impls))
        merged: dict[str, Node] = {}
        errors: dict[str, str] = {}
        for plugin, nodes, error in results:
            if error is not None:
                errors[plugin] = error
                continue
            for node in nodes or ():
                current = merged.get(node.name)
                if current is None or (node.capabilities and not current.capabilities):
                    merged[node.name] = node
                elif node.capabilities and current.capabilities and node.backend != current.backend:
                    log.warning("node %s is claimed by both %s and %s; using %s",
                                node.name, current.backend, node.backend, current.backend)
        self._nodes, self._errors = merged, errors
        self._fetched_at = time.monotonic()

    async def refresh(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._fetch())
        await asyncio.shield(self._refreshing)

    async def all(self, *, fresh: bool = False) -> tuple[list[Node], dict[str, str]]:
        """Every known node (sorted) and ``{plugin: error}`` for backends that could not list.

        A stale listing is served at once while a refresh runs in the background, so a slow
        backend never delays requests that only need a name it already listed.
        """
        if fresh or self._fetched_at < 0:
            await self.refresh()
        else:
            self._keep_fresh()
        return sorted(self._nodes.values(), key=lambda n: n.name), dict(self._errors)

    def _keep_fresh(self) -> None:
        """Start a background refresh when the listing is older than the cache time."""
        if (time.monotonic() - self._fetched_at > self.hub.settings.nodes.cache_seconds
                and (self._refreshing is None or self._refreshing.done())):
            self._refreshing = asyncio.ensure_future(self._fetch())

    async def get(self, name: str) -> Node:
        """Resolve a node name; refreshes once on a miss. 404 if unknown, 503 if a backend is down."""
        node = self._nodes.get(name) if self._fetched_at >= 0 else None
        if node is not None:
            self._keep_fresh()
            return node
        if time.monotonic() - self._fetched_at > 0.25:  # bounded: unknown names cannot force a listing each
            await self.refresh()
        node = self._nodes.get(name)
        if node is None:
            if self._errors:
                down = ", ".join(sorted(self._errors))
                raise Unavailable(f"unknown node {name!r} (backend unavailable: {down})", code="backend_unavailable")
            raise NotFound(f"unknown node {name!r}", code="unknown_node")
        return node

    def invalidate(self) -> None:
        self._fetched_at = -1e9


class Hub:
    #: seconds between writes of the in-memory last-seen times to ``node_seen``
    LAST_SEEN_FLUSH_SECONDS = 5.0

    def __init__(self, settings: Settings, pm: PluginManager | None = None, *, plugins: Iterable[Any] = (),
                 load_entrypoints: bool = True) -> None:
        self.settings = settings
        self.pm = pm or make_plugin_manager(
            plugins=plugins,
            load_entrypoints=load_entrypoints,
            allow=settings.plugins.allow,
            deny=settings.plugins.deny,
            trace=settings.plugins.trace,
        )
        self.config_problems = settings.bind_sections(self.config_sections(), strict=False)
        self.db = Database(settings.core.database_url)
        if self.db.is_sqlite:
            self.bus = Bus()
        else:
            from .cluster import PgBus

            self.bus = PgBus(settings.core.database_url)
        self.nodes = NodeRegistry(self)
        #: this process's life (claude_net.lives): work left half-done in the database is stamped
        #: with its id, so another process can tell when it will never be finished
        self.life = Life(self)
        self.started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._task_status: dict[str, TaskStatus] = {}
        self._tokens = auth.TokenCache(self.db)
        self._last_seen: dict[str, float] = {}  # name -> time.time() of its last request
        self._exec_slots: FairShares | None = None
        #: per-node request rate limits ([limits] rate_per_minute / rate_burst), enforced by the HTTP layer
        self.rate_limiter = RateLimiter(settings.limits.rate_per_minute, settings.limits.rate_burst)
        #: refused anonymous requests (no or bad token) are recorded at most once per address and window
        self.auth_refusals = RecordThrottle()
        #: set when the hub begins to stop (SIGTERM, shutdown): long-polls and streams end early
        self.stopping = asyncio.Event()
        #: per-hub runtime state of plugins, keyed by plugin name (pools, clients, queues).
        #: Plugins keep state here, never in module globals: one process may run several hubs.
        self.plugin_state: dict[str, Any] = {}
        #: the ASGI app serving this hub (set by ``create_app``), for plugins that call the hub's own
        #: HTTP API in-process so their calls take the normal request path (the MCP endpoint does)
        self.app: Any = None

    # -- configuration --------------------------------------------------------------------------

    def config_sections(self) -> dict[str, type]:
        sections: dict[str, type] = {}
        for impl in self.pm.hook.config_sections.get_hookimpls():
            for name, cls in (impl.function() or {}).items():
                if name in sections and sections[name] is not cls:
                    raise ValueError(f"config section [{name}] is declared by two plugins ({impl.plugin_name})")
                sections[name] = cls
        return sections

    def is_admin(self, name: str) -> bool:
        return name in self.settings.core.admins

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the database and apply migrations; no plugin startup (CLI commands use this)."""
        if not self.db.connected:
            await self.db.connect()
            migrations = [m for batch in self.pm.hook.migrations() for m in (batch or ())]
            try:
                await self.db.migrate(migrations)
            except BaseException:
                # close it: aiosqlite's thread is not a daemon, so an open connection left behind
                # kept the process from ever exiting after the error was printed
                await self.db.disconnect()
                raise

    async def close(self) -> None:
        await self.db.disconnect()

    async def start(self) -> None:
        if self.started:
            return
        await self.open()
        await self.bus.start()
        try:
            await self.life.hold()
        except Exception as exc:
            # without it, another process would take this one's running work for a dead hub's
            await self.bus.stop()
            await self.db.disconnect()
            raise Unavailable(f"cannot take this hub process's life lock ({type(exc).__name__}: {exc}); "
                              "for SQLite the folder of the database file must be writable (it keeps "
                              "<database>.lives/ there)", code="life_unavailable") from exc
        limits = self.settings.limits
        self._exec_slots = FairShares(limits.exec_concurrency, per_source=limits.exec_concurrency_per_source,
                                      per_target=limits.exec_concurrency_per_target,
                                      queue_per_source=limits.exec_queue_per_source, what="execs")
        for impl in reversed(self.pm.hook.startup.get_hookimpls()):
            try:
                await await_me_maybe(impl.function(**{a: self for a in impl.argnames}))
            except Exception as exc:
                # leave nothing behind: plugins that did start shut down, tasks stop, the database closes
                self.started = True
                await self.stop()
                raise RuntimeError(f"plugin {impl.plugin_name} failed to start: {type(exc).__name__}: {exc}") from exc
        self.spawn(self._flush_last_seen_forever, name="last-seen")
        self.started = True

    async def stop(self) -> None:
        if not self.started and not self.db.connected:
            return
        self.stopping.set()
        self.started = False
        for impl in self.pm.hook.shutdown.get_hookimpls():
            try:
                await await_me_maybe(impl.function(**{a: self for a in impl.argnames}))
            except Exception:
                log.exception("plugin %s failed to shut down cleanly", impl.plugin_name)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            while not task.done():
                # a cancellation can be lost (Python 3.11's wait_for returns a result that was ready
                # at the same moment and swallows it): cancel again until the task really ends
                await asyncio.wait({task}, timeout=0.5)
                if not task.done():
                    task.cancel()
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await self._flush_last_seen()
        await self.life.release()
        await self.bus.stop()
        await self.db.disconnect()

    def spawn_singleton(self, name: str, work: Callable[[], Awaitable[None]], *, retry: float = 2.0) -> asyncio.Task[Any]:
        """Run ``work()`` on exactly one replica (a PostgreSQL advisory lock); on SQLite, here.

        Another replica takes over within about ``retry`` seconds when the holder dies. Use it for
        pollers, outboxes and periodic maintenance that must not run twice. Supervised: when
        ``work()`` raises, the lock is let go and the work restarts with back-off (see :meth:`spawn`).
        """
        from .cluster import singleton

        return self.spawn(lambda: singleton(self, name, work, retry=retry), name=name)

    def runs_singleton(self, name: str) -> bool:
        """Whether this replica currently holds the singleton ``name`` (always True on SQLite)."""
        if self.db.is_sqlite:
            return True
        return bool(self.plugin_state.get("claude_net.singletons", {}).get(name))

    def spawn(self, work: Awaitable[Any] | Callable[[], Awaitable[Any]], *, name: str,
              restart: bool | None = None) -> asyncio.Task[Any]:
        """Run a background task for the hub's lifetime; cancelled at stop.

        ``work`` is a coroutine (one-shot: a failure is logged, shown and announced, never rerun)
        or a function returning one (long-lived: when it raises it is called again after a back-off
        of :attr:`RESTART_INITIAL` seconds doubling to :attr:`RESTART_MAX`, with jitter, reset once
        a run lasted :attr:`RESTART_HEALTHY` seconds). Returning normally ends the task either way.
        ``restart=False`` runs a function once. A cancellation that comes from inside (something
        the work awaited was cancelled, not this task) counts as a failure; cancelling the returned
        task (the hub's stop does) ends it at once, whatever it was doing. Every failure is logged,
        counted in :meth:`task_status` (shown by ``/api/health`` to admins) and announced as an
        event of type ``hub`` with result ``error``.
        """
        factory = callable(work) and not inspect.isawaitable(work)
        if not factory:  # a coroutine can be awaited once: it cannot be restarted
            restart = False
        elif restart is None:
            restart = True
        run = work if factory else (lambda: work)
        status = TaskStatus(self._task_name(name))
        self._task_status[status.name] = status
        task = asyncio.ensure_future(self._supervise(run, work, status, restart))
        task.set_name(f"claude-net:{status.name}")
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if status.state != "failed" and self._task_status.get(status.name) is status:
                del self._task_status[status.name]  # finished or cancelled: nothing left to show

        task.add_done_callback(done)
        return task

    # -- supervision of background tasks --------------------------------------------------------

    #: first wait before a failed long-lived task runs again, in seconds (doubles each time)
    RESTART_INITIAL = 0.5
    #: longest wait between two restarts, in seconds
    RESTART_MAX = 60.0
    #: a run that lasted this long resets the back-off and the failure streak
    RESTART_HEALTHY = 60.0

    def _task_name(self, name: str) -> str:
        unique, n = name, 2  # a failed one-shot's record gives way to a new task of its name
        while unique in self._task_status and self._task_status[unique].state != "failed":
            unique, n = f"{name}#{n}", n + 1
        return unique

    def task_status(self) -> dict[str, dict[str, Any]]:
        """``{name: {...}}`` of every background task still running, restarting or failed."""
        return {name: status.to_json() for name, status in sorted(self._task_status.items())}

    def degraded_tasks(self) -> list[str]:
        """Names of background tasks that are not running: waiting to restart, or failed for good."""
        return [name for name, status in sorted(self._task_status.items())
                if status.state in ("restarting", "failed")]

    async def _supervise(self, run: Callable[[], Awaitable[Any]], work: Any, status: TaskStatus,
                         restart: bool) -> Any:
        try:
            return await self._run_supervised(run, status, restart)
        finally:
            if inspect.iscoroutine(work) and inspect.getcoroutinestate(work) == "CORO_CREATED":
                work.close()  # cancelled before it ever ran: no "never awaited" warning

    async def _run_supervised(self, run: Callable[[], Awaitable[Any]], status: TaskStatus, restart: bool) -> Any:
        while True:
            started = time.monotonic()
            status.state = "running"
            status.next_restart = None
            try:
                return await run()
            except asyncio.CancelledError as cancelled:
                current = asyncio.current_task()
                if current is None or current.cancelling():
                    raise  # the hub stops (or the owner cancelled it): end now, never restart
                exc: BaseException = cancelled  # something inside was cancelled, not this task: a failure
            except Exception as caught:
                exc = caught
            ran = time.monotonic() - started
            if ran >= self.RESTART_HEALTHY:  # it had been healthy: a fresh streak
                status.streak = 0
            status.failures += 1
            status.streak += 1
            status.last_error = safe_sentence(exc)
            status.last_failure = time.time()
            if not restart:
                status.state = "failed"
                log.error("background task %s failed and does not restart: %s", status.name,
                          status.last_error, exc_info=exc)
                await self._announce_failure(status, None)
                return None
            delay = min(self.RESTART_INITIAL * 2 ** min(status.streak - 1, 30), self.RESTART_MAX)
            wait = delay * random.uniform(0.8, 1.2)
            status.state = "restarting"
            status.next_restart = time.time() + wait
            log.error("background task %s failed (%d in a row): %s; restarting in %.1f s", status.name,
                      status.streak, status.last_error, wait, exc_info=exc)
            await self._announce_failure(status, wait)
            await asyncio.sleep(max(0.0, status.next_restart - time.time()))
            status.restarts += 1

    async def _announce_failure(self, status: TaskStatus, wait: float | None) -> None:
        """Tell the admin (the activity feed, Telegram's echo): one ``hub`` event per failure."""
        then = f"restarting in {wait:.1f} s" if wait is not None else "it does not restart (one-shot)"
        event = Event("hub", None, None, f"background task {status.name} failed: {status.last_error}; {then}"[:600],
                      "error", via="hub", data={"task": status.name, "failures": status.failures,
                                                "streak": status.streak,
                                                "restart_in": None if wait is None else round(wait, 1)})
        try:  # the announcement must never hold up the restart: bounded, and failures only logged
            await asyncio.wait_for(self.emit(event), 10)
        except Exception:
            log.warning("could not announce the failure of background task %s", status.name)

    # -- identity ------------------------------------------------------------------------------

    async def authenticate(self, token: str, *, via: str = "http") -> Actor | None:
        info = await self._tokens.verify(token)
        if info is None:
            return None
        self._last_seen[info.name] = time.time()  # formatted only when read or flushed
        return Actor(name=info.name, admin=info.admin or self.is_admin(info.name), via=via, token_id=info.id)

    def seen(self, name: str) -> None:
        self._last_seen[name] = time.time()

    async def last_seen(self) -> dict[str, str]:
        rows = await self.db.fetch_all("SELECT name, last_seen FROM node_seen")
        seen = {r["name"]: r["last_seen"] for r in rows}
        for name, at in self._last_seen.items():
            stamp = _stamp(at)
            if stamp > seen.get(name, ""):
                seen[name] = stamp
        return seen

    async def _flush_last_seen(self) -> None:
        pending, self._last_seen = self._last_seen, {}
        if not pending:
            return
        try:
            async with self.db.transaction() as tx:
                for name, at in pending.items():
                    await tx.execute(
                        "INSERT INTO node_seen (name, last_seen) VALUES (:name, :at) "
                        "ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen "
                        "WHERE node_seen.last_seen < excluded.last_seen",
                        {"name": name, "at": _stamp(at)},
                    )
        except HubError:
            for name, at in pending.items():  # keep them for the next flush
                self._last_seen[name] = max(at, self._last_seen.get(name, 0.0))

    async def _flush_last_seen_forever(self) -> None:
        while True:
            await asyncio.sleep(self.LAST_SEEN_FLUSH_SECONDS)
            await self._flush_last_seen()

    # -- policy -------------------------------------------------------------------------------

    async def decide(self, actor: Actor, action: str, target: str | None,
                     detail: Mapping[str, Any] | None = None) -> Decision:
        """Combine every ``authorize`` answer: any False denies, at least one True or
        :class:`Grant` needed; the conditions of every Grant (ask, snapshot before) apply."""
        answers = self.pm.hook.authorize(hub=self, actor=actor, action=action, target=target, detail=detail or {})
        allowed = ask = snapshot = False
        rule = None
        for answer in answers:
            answer = await await_me_maybe(answer)
            if answer is False:
                return DENIED
            if answer is True:
                allowed = True
            elif isinstance(answer, Grant):
                allowed = True
                ask = ask or answer.ask
                snapshot = snapshot or answer.snapshot_before
                rule = rule or answer.rule
        if not allowed:
            return DENIED
        if not (ask or snapshot or rule):
            return ALLOWED
        return Decision(True, ask, snapshot, rule)

    async def authorize(self, actor: Actor, action: str, target: str | None,
                        detail: Mapping[str, Any] | None = None, *, approved: bool = False) -> bool:
        """Whether ``actor`` may do ``action`` now. An ask-level answer counts as allowed only with
        ``approved=True`` (the caller holds an approval for this very action): no path can skip
        an ask by calling this instead of :meth:`guarded`."""
        decision = await self.decide(actor, action, target, detail)
        return decision.allowed and (approved or not decision.ask)

    # -- events -------------------------------------------------------------------------------

    async def emit(self, event: Event) -> None:
        """Deliver ``event`` to every ``on_event`` subscriber.

        For a ``pending`` event an :class:`AuditError` propagates (the caller refuses the
        action); every other failure is logged and swallowed.
        """
        emitted = EMITTED.get()
        if emitted is not None:
            emitted.append(event.type)
        args = {"hub": self, "event": event}
        for impl in self.pm.hook.on_event.get_hookimpls():
            kwargs = {name: args[name] for name in impl.argnames}
            try:
                await await_me_maybe(impl.function(**kwargs))
            except AuditError:
                if event.result == "pending":
                    raise
                log.error("could not record %s event %s (%s)", event.type, event.id, event.result)
            except Exception:
                log.exception("on_event subscriber %s failed on %s", impl.plugin_name, event.type)

    async def guarded(
        self,
        actor: Actor,
        *,
        action: str,
        event_type: str,
        target: str | None,
        detail: str,
        run: Callable[[], Awaitable[T]],
        request: Mapping[str, Any] | None = None,
        result_data: Callable[[T], dict[str, Any]] | None = None,
        result_transient: Callable[[T], dict[str, Any]] | None = None,
        data: Mapping[str, Any] | None = None,
        approval: str | None = None,
        approval_wait: float | None = None,
    ) -> T:
        """Authorize, record, run and record an action — the one path every capability takes.

        Denied: one ``denied`` event, then :class:`Forbidden`. Allowed: a ``pending`` event
        (an audit failure refuses the action with 503: fail closed), then ``run()``,
        then the final event (``ok`` or ``error``) with the same id. ``data`` is recorded with
        every event of the action (a denial included); ``result_data`` adds recorded fields to
        the final event's ``data``; ``result_transient`` adds fields to its ``transient`` (seen
        by live subscribers, never stored). ``run()`` raising :class:`Forbidden` with code
        ``revoked`` (:meth:`reauthorize`: the grant went away after admission) makes the final
        event ``denied``.

        When the answers add up to *ask* (:meth:`decide`), the action first waits for an admin's
        approval through the approvals plugin (``request_approval``): ``approval`` names one the
        caller was given before, ``approval_wait`` bounds the wait in seconds. Approved: it runs
        and its events carry ``data["approval_id"]``; otherwise the plugin's refusal (202 pending,
        403, 409, 429) propagates after a ``denied`` row of the action (none for a 202: the
        approval's own ``requested`` row is the record). When they ask for a snapshot before
        (exec and file_write), the target is snapshotted first (``data["snapshot"]``); a
        failed snapshot refuses the action.
        """
        decision = await self.decide(actor, action, target, request or {})
        if not decision.allowed:
            await self.emit(Event(event_type, actor.name, target, detail, "denied", via=actor.via,
                                  unauthenticated=actor.unauthenticated, data={"action": action, **(data or {})}))
            raise Forbidden(deny_sentence(actor, action, target), code="denied", action=action)
        event = Event(event_type, actor.name, target, detail, "pending", via=actor.via,
                      unauthenticated=actor.unauthenticated, data={"action": action, **(data or {})})
        held = None
        if decision.ask:
            approved = await self._approved(actor, action, target, detail, request or {}, approval,
                                            approval_wait, event)
            event.data["approval_id"] = approved["id"]
            event.time = isotime()  # the action starts now, after the wait: its row says so
            held = APPROVED.set((actor.name, action, target))
        try:
            await self.emit(event)
        except AuditError as exc:
            if held is not None:
                APPROVED.reset(held)
            raise Unavailable(f"the action was not run because the audit log cannot be written ({exc.message})",
                              code="audit_unavailable") from exc
        started = time.monotonic()
        try:
            if decision.snapshot_before and action in SNAPSHOT_ACTIONS:
                event.data["snapshot"] = await self._snapshot_before(target, event)
            result = await run()
        except BaseException as exc:
            revoked = isinstance(exc, Forbidden) and exc.code == "revoked"
            event.result = "denied" if revoked else "error"
            if isinstance(exc, HubError):
                event.data.update(error=exc.message, code=exc.code)
            elif isinstance(exc, asyncio.CancelledError):
                event.data.update(error="the request was cancelled", code="cancelled")
            else:
                event.data.update(error="internal error", code="internal")
            event.data["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
            event.time = isotime()
            await asyncio.shield(self.emit(event))
            raise
        finally:
            if held is not None:
                APPROVED.reset(held)
        event.result = "ok"
        event.time = isotime()
        event.data["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        if result_data is not None:
            event.data.update(result_data(result))
        if result_transient is not None:
            event.transient.update(result_transient(result))
        await self.emit(event)
        return result

    async def _approved(self, actor: Actor, action: str, target: str | None, detail: str,
                        particulars: Mapping[str, Any], approval: str | None, wait: float | None,
                        event: Event) -> Mapping[str, Any]:
        """Wait for the approval of an ask-level action (see :meth:`guarded`)."""
        awaitable = self.pm.hook.request_approval(
            hub=self, actor=actor, action=action, target=target, detail=detail,
            particulars=dict(particulars), approval=approval, wait=wait)
        try:
            if awaitable is None:
                raise Forbidden(f"denied: {actor.name} may {_VERBS.get(action, action)} {target or 'that target'} "
                                "only with an admin's approval, and no approvals plugin is installed to ask for it",
                                code="denied", action=action)
            return await awaitable
        except HubError as exc:
            if exc.status != 202:  # a pending approval is recorded by its own ``requested`` row
                denied = Event(event.type, actor.name, target, detail, "denied", via=actor.via,
                               unauthenticated=actor.unauthenticated,
                               data={**event.data, "code": exc.code, "error": exc.message[:300]})
                approval_json = exc.extra.get("approval")
                if isinstance(approval_json, Mapping) and approval_json.get("id"):
                    denied.data["approval_id"] = approval_json["id"]
                elif approval:
                    denied.data["approval_id"] = approval
                await self.emit(denied)
            raise

    def snapshot_expiry(self) -> str:
        """How long a snapshot taken before an action lives (``[approvals] snapshot_expiry``)."""
        try:
            return str(getattr(self.settings.section("approvals"), "snapshot_expiry", "24h") or "24h")
        except KeyError:
            return "24h"

    async def _snapshot_before(self, target: str | None, event: Event) -> str:
        """Snapshot ``target`` before the action of ``event`` runs; returns the snapshot's name.

        Any failure refuses the action (fail closed): an admin who asked for a way back gets one
        or the action does not happen."""
        from .builtin.capabilities import _dispatch

        name = f"cn-before-{event.id}"
        if target is None:
            raise Unavailable("the rule asks for a snapshot before the action, but it has no target; "
                              "the action was not run", code="snapshot_failed")
        node = await self.nodes.get(target)
        if "container" not in node.capabilities:
            raise Unavailable(f"the rule asks for a snapshot of {target} before the action, but {target} "
                              f"(backend {node.backend}) has no snapshots; the action was not run",
                              code="snapshot_failed")
        try:
            awaitable = _dispatch(self, "container_op", node, op="snapshot",
                                  args={"snapshot": name, "expires": self.snapshot_expiry()})
            await asyncio.wait_for(awaitable, SNAPSHOT_TIMEOUT)
        except asyncio.TimeoutError:
            raise Unavailable(f"the snapshot of {target} before the action did not finish within "
                              f"{SNAPSHOT_TIMEOUT:g} s; the action was not run", code="snapshot_failed") from None
        except HubError as exc:
            raise Unavailable(f"the snapshot of {target} before the action failed ({exc.message}); "
                              "the action was not run", code="snapshot_failed") from exc
        return name

    async def run_container_op(self, actor: Actor, op: str, name: str,
                               args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Authorize, record and run a container operation for ``actor``.

        The same path as ``POST /api/container/{op}`` (``op`` in start, stop, snapshot, restore,
        list_snapshots), for other channels such as Telegram. Returns ``{"name": ..., **extras}``.
        """
        from .builtin.capabilities import container_action

        return await container_action(self, actor, op, name, args)

    @contextlib.asynccontextmanager
    async def exec_slot(self, actor: Actor | None = None, target: str | None = None):
        """Hold one of the hub's exec slots while a command runs; yields whether it had to wait.

        Slots are shared per source first (``[limits] exec_concurrency_per_source`` /
        ``_per_target`` / ``exec_queue_per_source``, within ``exec_concurrency``, see
        :class:`~claude_net.fairness.FairShares`); an admin's execs count only against the total.
        A caller that waited must authorize again before it runs (:meth:`reauthorize`): a revoke
        may have come while it queued.
        """
        assert self._exec_slots is not None, "hub not started"
        source = actor.name if actor is not None else "(hub)"
        exempt = actor is None or actor.admin
        async with self._exec_slots.slot(source, target, exempt=exempt) as waited:
            yield waited

    async def reauthorize(self, actor: Actor, action: str, target: str | None,
                          detail: Mapping[str, Any] | None = None, *, why: str = "while it waited") -> None:
        """Authorize an admitted action again (after a wait, or during a long transfer).

        Raises :class:`Forbidden` with code ``revoked``: :meth:`guarded` records the action as
        ``denied``.
        """
        held = APPROVED.get()
        approved = held is not None and held == (actor.name, action, target)
        if actor.token_id is not None and not await self.db.fetch_val(
                "SELECT 1 FROM tokens WHERE id = :id AND revoked_at IS NULL", {"id": actor.token_id}):
            raise Forbidden(f"denied: the token {actor.name} acted with was revoked {why}", code="revoked",
                            action=action)
        if not await self.authorize(actor, action, target, detail or {}, approved=approved):
            raise Forbidden(f"{deny_sentence(actor, action, target)} (the grant was revoked {why})",
                            code="revoked", action=action)


_VERBS = {
    "exec": "run commands on",
    "file_read": "read files on",
    "file_write": "write files on",
    "message": "send messages to",
    "container": "manage the container",
}


def deny_sentence(actor: Actor, action: str, target: str | None) -> str:
    if action in ADMIN_ONLY_ACTIONS:
        return f"denied: {action} is an admin-only action and {actor.name} is not an admin"
    verb = _VERBS.get(action, action)
    where = target or "that target"
    if action == "message":
        return (f"denied: {actor.name} may not send messages to {where}: a message rule forbids it; ask an admin "
                f"(e.g. `claude-net permit {actor.name} {where} --message allow`)")
    return (f"denied: {actor.name} may not {verb} {where}; ask an admin to grant the pathway "
            f"{actor.name} -> {where} (e.g. `claude-net permit {actor.name} {where}`)")
