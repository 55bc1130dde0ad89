"""The LXD backend's runtime: client, worker threads, node listing and exec.

One :class:`LxdBackend` per hub, created in ``startup`` and kept in ``hub.plugin_state["lxd"]``.
pylxd and requests are synchronous, so every LXD call runs in a bounded thread pool and the
event loop never blocks. Three pools keep slow work from starving quick work:

* ``pool``   – short API calls (listing, files, container ops), ``[lxd] workers`` threads, shared
  fairly between the agents that ask (:attr:`LxdBackend.shares`): one agent holds at most half
  of them, and a thread that frees goes to the waiting agent holding the fewest;
* ``waits``  – execs, which hold a thread while the command runs (one per exec slot of the hub);
* ``chores`` – housekeeping off the request path (deleting recorded exec output).

Exec uses LXD's REST exec with ``record-output: true`` and ``wait-for-websocket: false``: one
POST, one operation wait, two reads of the recorded output (at most the cap each); the recorded
logs are deleted in the background afterwards. Those calls go through :class:`FastRest` (plain
``http.client`` keep-alive connections) rather than ``client.api``: same socket, same timeouts,
a third of the CPU per call, which is what lets the hub keep up with the direct floor on two CPUs.
Everything else (listing, files, container operations) uses pylxd's raw API.

Output is bounded either on the hub (default: no extra processes in the container; a watchdog
stops a command whose recorded output passes ``max_log_bytes``) or inside the container (the
``head -c`` wrapper of :mod:`claude_net_lxd.scripts`), per ``[lxd] output_guard``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fnmatch
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import pylxd
import requests
from pylxd import exceptions as lxd_exc

from claude_net import (
    BadRequest,
    Conflict,
    ExecResult,
    FairShares,
    HubError,
    Node,
    NotFound,
    Unavailable,
    validate_node_name,
)

from . import scripts
from .config import LxdSettings
from .streams import LxdStreams
from .transport import UNIX_SCHEME, FastRest, RestError, make_session

log = logging.getLogger("claude_net_lxd")

BACKEND = "lxd"
CAPABILITIES = frozenset({"exec", "file_read", "file_write", "container"})
MARKER_ENV = "CLAUDE_NET_EXEC"
#: what a marker is (a uuid4 hex, or a job's ``ExecOptions.tag``): only a hub-made token ever
#: reaches the kill script, never caller input
MARKER = re.compile(r"[0-9a-f]{16,64}")
#: seconds a reap (after a restart of the hub) may take in one container
REAP_TIMEOUT = 10.0
OP_RUNNING = 103
OP_SUCCESS = 200
#: the reasons a connection to LXD fails that are worth naming as such
CONNECT_ERRORS = ("No such file or directory", "Connection refused", "Permission denied",
                  "Name or service not known", "Network is unreachable", "Connection reset by peer")
#: names LXD gives recorded exec output (checked before touching a file on the host)
LOG_NAME = re.compile(r"exec_[0-9a-f-]{36}\.(?:stdout|stderr)")
#: seconds the memory/processes/addresses shown by `machines` may be old
DETAILS_TTL = 10.0
#: threads and queue length for housekeeping (deleting recorded output logs)
CHORE_THREADS = 4
MAX_CHORES_BACKLOG = 256
#: seconds granted, after a timeout, for the kill and the operation to wind down
KILL_GRACE = 3.0
#: seconds between two kills of a runaway exec that is still running (the first failed, or the
#: command survived it): its output is still filling the host's disk
RUNAWAY_RETRY = 2.0
#: seconds between two looks at a running exec's recorded output when it is followed live
TAIL_SECONDS = 0.1
#: bytes of one stream read per look
TAIL_READ = 256 * 1024
#: the exit status of :data:`scripts.IN_CWD` when the working directory cannot be entered
NO_CWD_STATUS = 125
#: calls of one agent that may wait for a worker thread; past that they are refused (429)
POOL_QUEUE_PER_SOURCE = 64
#: who the hub's own calls (listing, status checks, admin container operations) count as
HUB_SOURCE = "(hub)"


class LxdError(HubError):
    """LXD refused or failed a call for a reason that is not the caller's (shown with LXD's words)."""

    status = 500
    code = "lxd_error"


@dataclass(frozen=True)
class Probe:
    """What an exec needs to know about a container, found out once per container."""

    bash: str
    guard: bool


@dataclass
class Running:
    """An exec in flight, watched for runaway output (``output_guard = "hub"``)."""

    name: str
    op_id: str
    marker: str
    started: float
    logs: tuple[str, str]
    runaway: bool = False
    #: the kill the watchdog submitted last (while it runs, no other is sent) and when
    kill: concurrent.futures.Future[Any] | None = None
    killed_at: float = 0.0
    kills: int = 0


@dataclass(frozen=True)
class ExecPlan:
    name: str
    argv: list[str]
    shell: str
    env: dict[str, str]
    cwd: str | None
    uid: int
    gid: int
    timeout: float
    max_output: int
    marker: str
    #: the working directory the command must start in (entered by :data:`scripts.IN_CWD`), and
    #: the nonce that wrapper prints when it cannot enter it
    workdir: str | None = None
    cwd_nonce: str | None = None
    #: called (in the worker thread) with the operation id once LXD has started the command, for
    #: the live output tail (:meth:`LxdBackend.tail`)
    on_start: Any = None


def lxd_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            return str(response.json().get("error") or response.reason)
        except Exception:  # noqa: BLE001 - not JSON
            return f"HTTP {response.status_code}"
    return str(exc)


class LxdBackend:
    def __init__(self, settings: LxdSettings, *, exec_slots: int) -> None:
        self.cfg = settings
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, settings.workers), thread_name_prefix="lxd")
        #: fair shares of ``pool`` between the agents whose calls need it (see :meth:`run`): a
        #: source holds at most half the threads, so one agent whose calls hang (a FIFO that got
        #: past the check, a slow file system) cannot take the pool from everyone else
        self.shares = FairShares(max(1, settings.workers), per_source=max(1, settings.workers // 2),
                                 queue_per_source=POOL_QUEUE_PER_SOURCE, what="LXD calls")
        self.waits = concurrent.futures.ThreadPoolExecutor(exec_slots + 4, thread_name_prefix="lxd-exec")
        self.chores = concurrent.futures.ThreadPoolExecutor(CHORE_THREADS, thread_name_prefix="lxd-chores")
        self._chores_pending = 0
        self._chores_lock = threading.Lock()
        self.session, self._endpoint, self.shown = make_session(
            settings.endpoint, maxsize=settings.workers + exec_slots + 8,
            cert=settings.cert, key=settings.key, server_cert=settings.server_cert,
        )
        self.timeouts = (settings.connect_timeout, settings.request_timeout)
        #: the exec hot path (and operation waits) bypass requests: see FastRest
        self.rest = FastRest(self.session, self._endpoint, project=settings.project,
                             connect_timeout=settings.connect_timeout, request_timeout=settings.request_timeout,
                             maxsize=exec_slots + CHORE_THREADS + 8)
        #: streamed file transfers (local unix socket only; None for https: the buffered path)
        self.streams: LxdStreams | None = None
        if self._endpoint.startswith(UNIX_SCHEME):
            self.streams = LxdStreams(unquote(self._endpoint[len(UNIX_SCHEME):]), project=settings.project,
                                      connect_timeout=settings.connect_timeout,
                                      request_timeout=settings.request_timeout)
        self._background: set[asyncio.Task[Any]] = set()
        self._client: pylxd.Client | None = None
        self._client_lock = threading.Lock()
        self._probes: dict[str, asyncio.Future[Probe]] = {}
        self._invalid_names: set[str] = set()
        #: execs in flight by operation id (written by worker threads, read by the watchdog)
        self.running: dict[str, Running] = {}
        self._details: dict[str, dict[str, Any]] = {}
        self._details_at = 0.0
        self._details_lock = threading.Lock()
        self._log_dirs: dict[str, str | None] = {}
        self.closed = False

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting work, end the commands still running, let the calls finish, close sockets.

        Every LXD call has a timeout, but an exec's is the caller's (up to an hour): a hub that
        stops kills what it started rather than waiting for it.
        """
        self.closed = True
        for run in list(self.running.values()):
            with contextlib.suppress(RuntimeError):
                self.chores.submit(self.kill_sync, run.name, run.marker)
        for executor in (self.pool, self.waits, self.chores):
            executor.shutdown(wait=True, cancel_futures=False)
        self.rest.close()
        self.session.close()

    # -- plumbing ---------------------------------------------------------------------------------

    def api(self):
        """pylxd's raw API node, connecting on first use (and again after a failed connect)."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    try:
                        self._client = pylxd.Client(endpoint=self._endpoint, project=self.cfg.project or None,
                                                    session=self.session, timeout=self.timeouts)
                    except Exception as exc:  # noqa: BLE001 - ClientConnectionFailed, requests errors
                        raise self.unavailable(exc) from None
                client = self._client
        return client.api

    def unavailable(self, exc: BaseException) -> Unavailable:
        if isinstance(exc, requests.ReadTimeout):
            return Unavailable(f"the LXD daemon at {self.shown} did not answer within "
                               f"{self.cfg.request_timeout:g}s", code="lxd_timeout")
        text = str(exc)
        if "timed out" in text.lower() or isinstance(exc, requests.Timeout):
            return Unavailable(f"the LXD daemon at {self.shown} did not answer within "
                               f"{self.cfg.connect_timeout:g}s", code="lxd_timeout")
        known = [reason for reason in CONNECT_ERRORS if reason.lower() in text.lower()]
        detail = known[0] if known else (text.rsplit(": ", 1)[-1].strip(" \"')(") or type(exc).__name__)[:200]
        return Unavailable(f"the LXD daemon at {self.shown} is not reachable ({detail}); is it running?",
                           code="lxd_unavailable")

    def translate(self, exc: BaseException, name: str | None = None) -> BaseException:
        """Map a pylxd/requests failure to the hub's errors (HubErrors pass through)."""
        if isinstance(exc, HubError):
            return exc
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, lxd_exc.ClientConnectionFailed)):
            return self.unavailable(exc)
        if isinstance(exc, (lxd_exc.LXDAPIException, RestError)):
            if isinstance(exc, RestError):
                message, status = exc.message, exc.status
            else:
                message, status = lxd_message(exc), getattr(exc.response, "status_code", 500)
            lowered = message.lower()
            if "shutting down" in lowered:
                return Unavailable(f"the LXD daemon at {self.shown} is shutting down", code="lxd_unavailable")
            if "not running" in lowered or "is frozen" in lowered:
                return Conflict(f"{name} is not running; start it first (POST /api/container/start)",
                                code="not_running")
            if status == 404:
                return NotFound(f"LXD has no instance {name!r} in project {self.cfg.project!r} ({message})",
                                code="unknown_node")
            if status == 409:
                return Conflict(f"LXD: {message}", code="lxd_conflict")
            return LxdError(f"LXD refused the request: {message}")
        if isinstance(exc, (ValueError, KeyError, TypeError)):
            return LxdError(f"unexpected answer from LXD: {type(exc).__name__}: {exc}")
        return exc

    async def run(self, fn, *args: Any, pool: concurrent.futures.Executor | None = None, name: str | None = None,
                  source: str | None = None):
        """Run blocking ``fn(*args)`` in a worker thread; errors come back as hub errors.

        On the shared ``pool`` the call first takes a share of ``source`` (the agent that asked;
        None: the hub itself, bounded only by the pool's size), held until the thread is done
        with it, even when the caller has gone away meanwhile.
        """
        if self.closed:
            raise Unavailable("the LXD backend is shutting down", code="lxd_unavailable")
        loop = asyncio.get_running_loop()
        executor = pool or self.pool
        try:
            if executor is not self.pool:
                return await loop.run_in_executor(executor, fn, *args)
            who, exempt = source or HUB_SOURCE, source is None
            await self.shares.acquire(who, exempt=exempt)
            try:
                work = executor.submit(fn, *args)
            except BaseException:
                self.shares.release(who, exempt=exempt)
                raise

            def done(_: concurrent.futures.Future) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits any more
                    loop.call_soon_threadsafe(lambda: self.shares.release(who, exempt=exempt))

            work.add_done_callback(done)
            return await asyncio.wrap_future(work)
        except RuntimeError as exc:  # executor shut down under us
            if "shutdown" in str(exc):
                raise Unavailable("the LXD backend is shutting down", code="lxd_unavailable") from None
            raise
        except Exception as exc:
            mapped = self.translate(exc, name)
            if mapped is exc:
                raise
            raise mapped from None

    def background(self, coro) -> asyncio.Task[Any]:
        """Run clean-up work that must finish even when the request that needed it is cancelled."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("LXD clean-up failed: %s", t.exception())

        task.add_done_callback(done)
        return task

    def wait_operation(self, op_id: str, deadline: float) -> dict[str, Any]:
        """Wait for an LXD operation until ``deadline`` (monotonic); returns its last state."""
        while True:
            remaining = deadline - time.monotonic()
            seconds = max(0, int(remaining))  # LXD waits whole seconds
            op = self.rest.json("GET", f"/1.0/operations/{op_id}/wait", query={"timeout": seconds},
                                read_timeout=seconds + self.cfg.request_timeout)
            if op.get("status_code") != OP_RUNNING or remaining <= 0:
                return op
            if seconds == 0:
                time.sleep(min(0.02, max(remaining, 0.001)))

    def operation(self, response, deadline: float, what: str) -> dict[str, Any]:
        """Wait for the async operation started by ``response``; raise if it failed."""
        body = response.json()
        if body.get("type") != "async":
            return body.get("metadata") or {}
        op = self.wait_operation(body["metadata"]["id"], deadline)
        if op.get("status_code") == OP_RUNNING:
            raise Unavailable(f"LXD did not finish {what} in time (operation {op.get('id')} still running)",
                              code="lxd_timeout")
        if op.get("status_code") != OP_SUCCESS:
            raise LxdError(f"LXD could not {what}: {op.get('err') or op.get('status')}")
        return op

    # -- nodes ------------------------------------------------------------------------------------

    def node_settings(self, name: str) -> tuple[str, int, int, str, dict[str, str]]:
        """(shell, uid, gid, cwd, env) for ``name`` from [lxd] and [lxd.nodes.NAME]."""
        cfg, override = self.cfg, self.cfg.node(name)
        shell, uid, gid, cwd, env = cfg.shell, cfg.user, cfg.group, cfg.cwd, dict(cfg.env)
        if override is not None:
            shell = override.shell or shell
            uid = cfg.user if override.user < 0 else override.user
            gid = cfg.group if override.group < 0 else override.group
            cwd = override.cwd or cwd
            env.update(override.env)
        return shell, uid, gid, cwd, env

    def wanted(self, name: str) -> bool:
        if self.cfg.include and not any(fnmatch.fnmatchcase(name, p) for p in self.cfg.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.cfg.exclude)

    def list_sync(self) -> list[Node]:
        """Every wanted instance with its status; details (memory, processes, addresses) from a cache.

        ``recursion=1`` costs LXD about 3 ms; ``recursion=2`` (every instance's live state) about
        100 ms and 20 ms of its CPU even for a handful of containers, so the details are fetched
        at most every ``DETAILS_TTL`` seconds, in the background once a first set exists.
        """
        api = self.api()
        items = api.instances.get(params={"recursion": 1}, timeout=self.timeouts).json()["metadata"]
        if self.cfg.status_details:
            stale = time.monotonic() - self._details_at > DETAILS_TTL
            if stale and not self._details_at:
                self.refresh_details()  # the first listing waits for them
            elif stale and self._details_lock.acquire(blocking=False):
                try:
                    self._details_at = time.monotonic()  # one refresh at a time
                    self.later(self.refresh_details)
                finally:
                    self._details_lock.release()
        nodes = []
        for item in items:
            name = item.get("name", "")
            if not self.wanted(name):
                continue
            try:
                validate_node_name(name)
            except HubError:
                if name not in self._invalid_names:
                    self._invalid_names.add(name)
                    log.warning("LXD instance %r is not a valid node name and is not served", name)
                continue
            info: dict[str, Any] = {
                "type": item.get("type", "container"),
                "status": item.get("status"),
                "project": self.cfg.project,
            }
            if item.get("description"):
                info["description"] = item["description"]
            image = (item.get("config") or {}).get("image.description")
            if image:
                info["image"] = image
            if item.get("status") == "Running":
                info.update(self._details.get(name, {}))
            nodes.append(Node(name=name, backend=BACKEND, state=str(item.get("status", "unknown")).lower(),
                              capabilities=CAPABILITIES, info=info))
        return nodes

    def refresh_details(self) -> None:
        """Fetch every instance's live state (``recursion=2``) into the details cache."""
        try:
            items = self.api().instances.get(params={"recursion": 2}, timeout=self.timeouts).json()["metadata"]
        except Exception as exc:  # noqa: BLE001 - details are best effort
            log.debug("could not fetch instance state details: %s", exc)
            return
        details: dict[str, dict[str, Any]] = {}
        for item in items:
            state = item.get("state") or {}
            info: dict[str, Any] = {}
            memory = (state.get("memory") or {}).get("usage")
            if memory:
                info["memoryBytes"] = memory
            if state.get("processes", -1) >= 0:
                info["processes"] = state["processes"]
            addresses = [
                a["address"]
                for iface, net in (state.get("network") or {}).items() if iface != "lo"
                for a in net.get("addresses") or () if a.get("scope") == "global"
            ]
            if addresses:
                info["addresses"] = addresses
            details[item.get("name", "")] = info
        self._details = details
        self._details_at = time.monotonic()

    async def list_nodes(self) -> list[Node]:
        return await self.run(self.list_sync)

    def instance_status(self, name: str) -> str:
        api = self.api()
        return api.instances[name].state.get(timeout=self.timeouts).json()["metadata"]["status"]

    async def require_running(self, node: Node) -> None:
        """409 unless ``node`` runs; a stale cached state is checked once more with LXD."""
        if node.state == "running":
            return
        status = await self.run(self.instance_status, node.name, name=node.name)
        if status != "Running":
            raise Conflict(f"{node.name} is {status.lower()}; start it first (POST /api/container/start)",
                           code="not_running")

    # -- exec -------------------------------------------------------------------------------------

    def forget(self, name: str) -> None:
        """Drop what was probed about ``name`` (after a restore, or when its shell vanished)."""
        self._probes.pop(name, None)

    async def probe(self, name: str) -> Probe:
        future = self._probes.get(name)
        if future is None or (future.done() and (future.cancelled() or future.exception() is not None)):
            future = asyncio.ensure_future(self.run(self.probe_sync, name, pool=self.waits, name=name))
            self._probes[name] = future
        return await asyncio.shield(future)

    def probe_sync(self, name: str) -> Probe:
        code, out, _err, _t = self.exec_raw(name, [scripts.SH, "-c", scripts.PROBE], timeout=10)
        if code != 0:  # no /bin/sh: exec will say what is missing
            return Probe(bash="", guard=False)
        facts = dict(line.split("=", 1) for line in out.decode(errors="replace").splitlines() if "=" in line)
        return Probe(bash=facts.get("bash", ""), guard=facts.get("guard") == "1")

    async def execute(self, node: Node, command: str, options) -> ExecResult:
        shell, uid, gid, cwd, env = self.node_settings(node.name)
        guard = False
        in_container = self.cfg.output_guard == "container"
        if not shell or in_container:
            probe = await self.probe(node.name)
            shell = shell or probe.bash or "/bin/sh"
            guard = in_container and probe.guard
        env.update(options.env)
        # names this exec's processes, for the kill on timeout or cancel; a job's tag, so that a
        # later life of the hub can find them too (reap)
        marker = getattr(options, "tag", None) or uuid.uuid4().hex
        if not MARKER.fullmatch(marker):
            raise BadRequest("an exec tag is 16 to 64 lowercase hex characters", code="invalid_tag")
        if guard:  # the wrapper hands the marker to the command only (see scripts.EXEC_WRAPPER)
            env.pop(MARKER_ENV, None)  # the caller's value would mark the wrapper's own processes
            argv = [scripts.SH, "-c", scripts.EXEC_WRAPPER, "claude-net", shell, command,
                    str(options.max_output + 1), marker]
        else:
            argv = [shell, "-c", command]
            env[MARKER_ENV] = marker
        workdir = options.cwd or cwd or None
        nonce = None
        if workdir:  # LXD's own cwd would run the command in / when the directory is missing
            nonce = uuid.uuid4().hex
            argv = [scripts.SH, "-c", scripts.IN_CWD, "claude-net-cwd", workdir, nonce, *argv]
        on_output = getattr(options, "on_output", None)
        loop = asyncio.get_running_loop()
        started: asyncio.Future[str] | None = None
        on_start = None
        if on_output is not None and self.log_dir(node.name) is not None:
            started = loop.create_future()

            def on_start(op_id: str) -> None:
                loop.call_soon_threadsafe(lambda: started.done() or started.set_result(op_id))

        plan = ExecPlan(name=node.name, argv=argv, shell=shell, env=env, cwd=None,
                        uid=uid, gid=gid, timeout=options.timeout, max_output=options.max_output,
                        marker=marker, workdir=workdir, cwd_nonce=nonce, on_start=on_start)
        finished = asyncio.Event()
        tail = (asyncio.ensure_future(self.tail(node.name, started, on_output, options.max_output, finished))
                if started is not None else None)
        try:
            result = await self.run(self.exec_sync, plan, pool=self.waits, name=node.name)
        except asyncio.CancelledError:
            # the caller went away, the core gave up, or a job was cancelled: end every process of
            # the command (found by its marker) before saying so, so a cancel means it is gone
            if tail is not None:  # a last look first: what it printed until now is kept
                finished.set()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(tail, 1.0)
            if self.closed:  # close() kills what is running itself; the hub's stop must not wait here
                raise
            try:
                kill = self.waits.submit(self.kill_sync, node.name, marker)
            except RuntimeError:
                raise asyncio.CancelledError() from None
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(kill)), KILL_GRACE + 2)
            raise
        except BaseException:
            if tail is not None:
                tail.cancel()
            raise
        if tail is not None:  # its last look; what it misses the core takes from the result
            finished.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tail, 2.0)
        return result

    async def tail(self, name: str, started: asyncio.Future[str], on_output, limit: int,
                   finished: asyncio.Event) -> None:
        """Hand a running exec's recorded output to ``on_output`` as LXD writes it (local daemon only).

        LXD records the command's stdout and stderr in two files on the host while it runs; they are
        read from where the last look stopped, every ``TAIL_SECONDS``, on the event loop (a read of a
        local file that is being appended to does not block). At most ``limit`` bytes per stream.
        """
        op_id = await started
        folder = self.log_dir(name)
        if folder is None:
            return
        logs = self.log_names({}, op_id)
        offsets = [0, 0]
        while True:
            last = finished.is_set()
            for i, stream in enumerate(("stdout", "stderr")):
                if offsets[i] >= limit:
                    continue
                try:
                    fd = os.open(os.path.join(folder, logs[i]), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    continue  # not there yet, or already cleaned up: the result has it
                try:
                    data = os.pread(fd, min(TAIL_READ, limit - offsets[i]), offsets[i])
                finally:
                    os.close(fd)
                if data:
                    offsets[i] += len(data)
                    on_output(stream, data)
            if last:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(finished.wait(), TAIL_SECONDS)

    def start_exec(self, name: str, argv: list[str], env: dict[str, str], cwd: str | None = None,
                   uid: int = 0, gid: int = 0, record: bool = True) -> str:
        body: dict[str, Any] = {
            "command": argv, "environment": env, "interactive": False,
            "wait-for-websocket": False, "record-output": record, "user": uid, "group": gid,
        }
        if cwd:
            body["cwd"] = cwd
        return self.rest.json("POST", f"/1.0/instances/{quote(name)}/exec", body=body)["id"]

    def exec_sync(self, plan: ExecPlan) -> ExecResult:
        started = time.monotonic()
        op_id = self.start_exec(plan.name, plan.argv, plan.env, plan.cwd, plan.uid, plan.gid)
        if plan.on_start is not None:
            plan.on_start(op_id)
        timed_out = False
        watched = Running(plan.name, op_id, plan.marker, started, self.log_names({}, op_id))
        self.running[op_id] = watched
        try:
            op = self.wait_operation(op_id, started + plan.timeout)
            if op.get("status_code") == OP_RUNNING:
                timed_out = True
                self.kill_sync(plan.name, plan.marker)
                op = self.wait_operation(op_id, time.monotonic() + KILL_GRACE)
            duration = (time.monotonic() - started) * 1000
            logs = self.log_names(op, op_id)
            stdout = self.read_log(plan.name, logs[0], plan.max_output + 1)
            stderr = self.read_log(plan.name, logs[1], plan.max_output + 1)
        finally:
            self.running.pop(op_id, None)
            self.drop_logs(plan.name, self.log_names({}, op_id))
        meta = op.get("metadata") or {}
        code = meta.get("return")
        if (plan.cwd_nonce and code == NO_CWD_STATUS
                and stderr.startswith(f"claude-net-no-cwd:{plan.cwd_nonce}\n".encode())):
            raise BadRequest(f"the working directory {plan.workdir} does not exist on {plan.name} (or is not a "
                             f"directory uid {plan.uid} may enter); the command was not run",
                             code="no_such_cwd", field="cwd")
        if op.get("status_code") not in (OP_SUCCESS, OP_RUNNING) and op.get("err") == "Command not found":
            self.forget(plan.name)
            stderr += (f"claude-net: {plan.shell}: no such shell in {plan.name} "
                       f"(set [lxd.nodes.{plan.name}] shell)\n").encode()
            code = 127 if code is None else code
        truncated = len(stdout) > plan.max_output or len(stderr) > plan.max_output or watched.runaway
        stdout, stderr = stdout[: plan.max_output], stderr[: plan.max_output]
        if watched.runaway:
            note = (f"\n[claude-net: the command was stopped because its output passed "
                    f"{self.cfg.max_log_bytes} bytes ([lxd] max_log_bytes)]\n").encode()
            stderr = stderr[: max(0, plan.max_output - len(note))] + note
        return ExecResult(
            exit_code=None if timed_out and op.get("status_code") == OP_RUNNING else code,
            stdout=stdout, stderr=stderr,
            truncated=truncated, timed_out=timed_out, duration_ms=duration,
        )

    def exec_raw(self, name: str, argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
                 uid: int = 0, gid: int = 0, limit: int = 65536) -> tuple[int | None, bytes, bytes, bool]:
        """Run a helper command (no wrapper); returns (exit code, stdout, stderr, timed_out)."""
        started = time.monotonic()
        op_id = self.start_exec(name, argv, env or {}, None, uid, gid)
        try:
            op = self.wait_operation(op_id, started + timeout)
            logs = self.log_names(op, op_id)
            out = self.read_log(name, logs[0], limit)
            err = self.read_log(name, logs[1], limit)
        finally:
            self.drop_logs(name, self.log_names({}, op_id))
        if op.get("status_code") == OP_RUNNING:
            return None, out, err, True
        return (op.get("metadata") or {}).get("return"), out, err, False

    def exit_status_sync(self, name: str, argv: list[str], timeout: float) -> int | None:
        """Run a helper command as root with no output recorded; its exit status (None: still running
        after ``timeout`` seconds)."""
        op_id = self.start_exec(name, argv, {}, record=False)
        op = self.wait_operation(op_id, time.monotonic() + timeout)
        if op.get("status_code") == OP_RUNNING:
            return None
        return (op.get("metadata") or {}).get("return")

    def kill_sync(self, name: str, marker: str) -> bool:
        """End every process of a timed-out exec (found by its marker variable); False if that failed."""
        try:
            self.kill_marked(name, marker, KILL_GRACE)
            return True
        except Exception as exc:  # noqa: BLE001 - the timeout is reported either way
            log.warning("could not kill the processes of an exec in %s: %s", name, exc)
            return False

    def kill_marked(self, name: str, marker: str, timeout: float) -> int:
        """Kill every process of ``name`` carrying ``marker`` (:data:`scripts.KILL`); how many."""
        if not MARKER.fullmatch(marker):  # it becomes an argument of a script in the container
            raise ValueError("not an exec marker")
        code, out, err, timed_out = self.exec_raw(
            name, [scripts.SH, "-c", scripts.KILL, "claude-net-kill", marker], timeout=timeout)
        if timed_out or code != 0:
            raise LxdError(f"the kill script in {name} "
                           + ("did not finish in time" if timed_out else f"failed (exit {code}: "
                              f"{err[:200].decode(errors='replace').strip()})"))
        words = out.split()
        return int(words[-1]) if words and words[-1].isdigit() else 0

    async def reap(self, node: Node, tag: str) -> int:
        """After a restart: end what an exec of an earlier life of the hub left running (``reap_exec``).

        A stopped container has nothing left to end (0).
        """
        if not MARKER.fullmatch(tag):
            raise BadRequest("an exec tag is 16 to 64 lowercase hex characters", code="invalid_tag")
        try:
            status = await self.run(self.instance_status, node.name, name=node.name)
            if status != "Running":
                return 0
            return await self.run(self.kill_marked, node.name, tag, REAP_TIMEOUT, pool=self.waits, name=node.name)
        except NotFound:  # deleted meanwhile: nothing of it runs
            return 0
        except Conflict as exc:
            if exc.code == "not_running":  # stopped meanwhile: its processes went with it
                return 0
            raise

    @staticmethod
    def log_names(op: dict[str, Any], op_id: str) -> tuple[str, str]:
        output = (op.get("metadata") or {}).get("output") or {}
        names = []
        for fd, suffix in (("1", "stdout"), ("2", "stderr")):
            path = output.get(fd)
            names.append(path.rsplit("/", 1)[-1] if path else f"exec_{op_id}.{suffix}")
        return names[0], names[1]

    def local_log(self, name: str, log_name: str) -> str | None:
        """The host path of a recorded output log, when this hub can read and delete it directly."""
        if not LOG_NAME.fullmatch(log_name):
            return None
        folder = self.log_dir(name)
        return os.path.join(folder, log_name) if folder is not None else None

    def read_log(self, name: str, log_name: str, limit: int) -> bytes:
        """At most ``limit`` bytes of a recorded output log (never the whole of a huge one).

        On the LXD host the file is read directly (LXD wrote it in its log directory; the API
        would read the same file for us at a few ms of LXD's CPU), else through the API.
        """
        path = self.local_log(name, log_name)
        if path is not None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return b""
            except OSError:
                pass  # not ours to read after all: ask LXD
            else:
                with os.fdopen(fd, "rb") as f:
                    return f.read(limit)
        try:
            return self.rest.send("GET", f"/1.0/instances/{quote(name)}/logs/{log_name}", limit=limit)[1] or b""
        except RestError as exc:
            if exc.status == 404:
                return b""
            raise

    def later(self, fn, *args: Any, **kwargs: Any) -> None:
        """Run housekeeping off the request path.

        Inline instead when the pool is shut down, or when the backlog is long (backpressure: under
        sustained load the callers slow down rather than the log directory filling up).
        """
        with self._chores_lock:
            backlog = self._chores_pending
            if backlog < MAX_CHORES_BACKLOG:
                self._chores_pending += 1
        if backlog >= MAX_CHORES_BACKLOG:
            fn(*args, **kwargs)
            return

        def chore() -> None:
            try:
                fn(*args, **kwargs)
            finally:
                with self._chores_lock:
                    self._chores_pending -= 1

        try:
            self.chores.submit(chore)
        except RuntimeError:
            chore()

    def drop_logs(self, name: str, log_names: tuple[str, ...]) -> None:
        """Delete recorded output: at once when the files are local, else through LXD, later."""
        remote = []
        for log_name in log_names:
            path = self.local_log(name, log_name)
            try:
                if path is None:
                    raise PermissionError
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                remote.append(log_name)
        if remote:
            self.later(self.delete_logs, name, tuple(remote))

    def delete_logs(self, name: str, log_names: tuple[str, ...]) -> None:
        try:
            for log_name in log_names:
                try:
                    self.rest.send("DELETE", f"/1.0/instances/{quote(name)}/logs/{log_name}")
                except RestError as exc:
                    if exc.status != 404:
                        raise
        except Exception as exc:  # noqa: BLE001 - housekeeping: log and move on
            log.warning("could not delete exec output logs of %s: %s", name, exc)

    # -- runaway output watchdog (output_guard = "hub") ---------------------------------------------

    def log_dir(self, name: str) -> str | None:
        """The host directory holding ``name``'s exec logs, when this hub may read and delete there."""
        if self._log_dirs.get(name):
            return self._log_dirs[name]
        found = None
        if not self._endpoint.startswith(("https://", "http://")):
            folder = name if self.cfg.project in ("", "default") else f"{self.cfg.project}_{name}"
            roots = [self.cfg.log_dir] if self.cfg.log_dir else [
                os.path.join(os.environ["LXD_DIR"], "logs") if os.environ.get("LXD_DIR") else "",
                "/var/snap/lxd/common/lxd/logs", "/var/log/lxd",
            ]
            for root in filter(None, roots):
                candidate = os.path.join(root, folder)
                if os.path.isdir(candidate) and os.access(candidate, os.R_OK | os.W_OK | os.X_OK):
                    found = candidate
                    break
        self._log_dirs[name] = found
        return found

    def log_sizes(self, run: Running) -> tuple[int, int]:
        """Current sizes of an exec's recorded stdout and stderr (0 when not there yet)."""
        folder = self.log_dir(run.name)
        sizes = []
        for log_name in run.logs:
            if folder is not None:
                try:
                    sizes.append(os.stat(os.path.join(folder, log_name)).st_size)
                except OSError:
                    sizes.append(0)
                continue
            try:  # a remote daemon: ask for the headers only
                raw = self.rest.head_length(f"/1.0/instances/{quote(run.name)}/logs/{log_name}")
                sizes.append(raw or 0)
            except Exception:  # noqa: BLE001 - try again next round
                sizes.append(0)
        return sizes[0], sizes[1]

    def check_runaways(self) -> None:
        """Stop execs whose recorded output passed ``max_log_bytes``; kill again, every
        ``RUNAWAY_RETRY`` seconds, those still running after that (until the exec is over)."""
        limit = self.cfg.max_log_bytes
        now = time.monotonic()
        for run in list(self.running.values()):
            if run.runaway:
                if (run.kill is None or run.kill.done()) and now - run.killed_at >= RUNAWAY_RETRY:
                    failed = (run.kill is None or run.kill.cancelled() or run.kill.exception() is not None
                              or run.kill.result() is False)
                    log.warning("exec in %s is still running %.1f s after its output passed %d bytes "
                                "(kill %d %s); killing it again", run.name, now - run.killed_at, limit, run.kills,
                                "failed" if failed else "did not end it")
                    self.kill_runaway(run, now)
                continue
            if max(self.log_sizes(run)) > limit:
                run.runaway = True
                log.warning("exec in %s passed %d bytes of output; stopping it", run.name, limit)
                self.kill_runaway(run, now)

    def kill_runaway(self, run: Running, now: float) -> None:
        run.killed_at, run.kills = now, run.kills + 1
        try:
            run.kill = self.waits.submit(self.kill_sync, run.name, run.marker)
        except RuntimeError:  # shutting down: close() kills what runs
            run.kill = None

    async def watchdog(self) -> None:
        """Every 100 ms (local daemon) or second (remote), stop execs with runaway output."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            local = not self._endpoint.startswith(("https://", "http://"))
            await asyncio.sleep(0.1 if local else 1.0)
            if not self.running or self.cfg.output_guard != "hub":
                continue
            try:
                if local:
                    self.check_runaways()  # a few stat() calls: cheap enough for the loop
                else:
                    await loop.run_in_executor(self.pool, self.check_runaways)
            except RuntimeError:  # shutting down
                return
            except Exception:  # noqa: BLE001 - never let the watchdog die
                log.exception("output watchdog failed")
