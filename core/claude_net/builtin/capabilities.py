"""Built-in request path for the capability hooks: exec, file read/write, container ops.

Each endpoint validates input, resolves the actor, goes through ``hub.guarded`` (authorize,
pending event, run, final event) and dispatches to whichever backend owns the node. The core
never knows which backends exist: a node nobody owns is a 404.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import fnmatch
import hashlib
import inspect
import logging
import re

from claude_net import (
    BadRequest,
    ExecOptions,
    FileStream,
    GatewayTimeout,
    HubError,
    NotFound,
    NotSupported,
    PayloadTooLarge,
    ReadOptions,
    Route,
    WriteOptions,
    hookimpl,
)
from claude_net.errors import RequestTimeout
from claude_net.schema import APPROVAL_PROPS, decode_base64
from claude_net.types import NODE_NAME_RE, validate_node_name, validate_remote_path

from .messaging import THREAD_PROPS, resolve_thread

log = logging.getLogger(__name__)

#: extra seconds a backend gets past the requested timeout before the core gives up on it
TIMEOUT_GRACE = 5.0
#: bytes of stdout and of stderr an exec's final event carries for live subscribers (``transient``)
EVENT_OUTPUT = 4096
NAME = {"type": "string", "pattern": NODE_NAME_RE.pattern,
        "x-pattern-help": "be a node name: lowercase letters, digits and '-', at most 63 characters"}
PATH = {"type": "string", "minLength": 1, "maxLength": 4096, "allOf": [
    {"pattern": "^/", "x-pattern-help": "be an absolute path (start with '/')"},
    {"pattern": r"^(?!.*/\.\.(?:/|$))[^\u0000]*$", "x-code": "invalid_path",
     "x-pattern-help": "not contain '..' components or NUL bytes"}]}
#: NUL cannot be passed to a process (argument vectors and environments are C strings)
NO_NUL = r"^[^\u0000]*$"
#: a fan-out's ``targets`` pattern: node-name characters and fnmatch's wildcards
FANOUT_PATTERN_RE = re.compile(r"^[a-z0-9*?\[\]!-]{1,128}$")
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
#: characters of one env value, and of all of them, an exec's audit row keeps (the row's data is bounded)
ENV_RECORD_VALUE = 1024
ENV_RECORD_TOTAL = 6144
#: seconds between the checks a streamed upload or download makes that its grant still holds
RECHECK_SECONDS = 1.0

# The rule the activity log applies to every row's detail (a command): the hub's own tokens,
# bearer credentials and key=value style passwords are replaced by [redacted]. Env values are
# recorded in the row's data, which the activity log stores as given, so they are redacted here.
_SECRETS = re.compile(
    r"cn_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}"
    r"|(?P<key>(?i:\bbearer\s+|(?:password|passwd|secret|token|api[_-]?key)\s*[=:]\s*))(?P<value>[^\s'\"&;]+)"
)


def redact_secrets(text: str) -> str:
    """``text`` with tokens, bearer credentials and ``password=...`` style values masked."""
    return _SECRETS.sub(lambda m: (m.group("key") or "") + "[redacted]", text) if text else text


def recorded_env(env) -> tuple[dict[str, str], bool]:
    """What an exec's audit row keeps of its ``env``: every name, each value redacted like a
    command (``NAME=value`` as a whole, so ``DB_PASSWORD=...`` is masked) and cut to a bounded
    length. Returns ``(env, cut)``; ``cut``: some value was shortened."""
    shown: dict[str, str] = {}
    budget, cut = ENV_RECORD_TOTAL, False
    for name, value in env.items():
        pair = redact_secrets(f"{name}={value}")
        value = pair[len(name) + 1:] if pair.startswith(f"{name}=") else redact_secrets(value)
        room = max(0, min(ENV_RECORD_VALUE, budget))
        if len(value) > room:
            value, cut = value[:room] + "…", True
        budget -= len(value) + len(name)
        shown[redact_secrets(name)] = value
    return shown, cut


def share_of(actor) -> str | None:
    """Whose fair share of a backend's bounded resources a call counts against (``options.source``):
    the agent's; ``None`` for an admin, whose calls count only against the totals, as for exec slots."""
    return None if actor.admin else actor.name


def approval_of(fields) -> dict:
    """``guarded``'s approval arguments from a body or query (docs/approvals.md)."""
    return {"approval": fields.get("approval"), "approval_wait": fields.get("approval_wait")}


async def _digest(data: bytes) -> str:
    """SHA-256 of a write's content (an approval covers this content, not any of its size); large
    contents are hashed in a worker thread so the loop keeps running."""
    if len(data) <= 1 << 20:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _discard(awaitable) -> None:
    """Drop a backend's awaitable that will never be awaited (no 'never awaited' warning)."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()
    elif isinstance(awaitable, asyncio.Future):
        awaitable.cancel()


def _dispatch(hub, hook_name: str, node, **kwargs):
    """The owner's awaitable for ``hook_name`` on ``node``; refuses what the node cannot do first.

    A backend may raise its refusal (e.g. ``NotSupported``) from the hook itself or from the
    awaitable: both reach the caller the same way, since this call and the await share a path.
    """
    from claude_net.backend import CAPABILITY, refusal

    what = {"execute": "run commands", "read_file": "read files", "write_file": "write files",
            "container_op": "perform container operations"}[hook_name]
    if node.backend == "hub":
        raise NotSupported(f"{node.name} is a messaging-only node: no backend can {what} there",
                           code="no_backend")
    if CAPABILITY[hook_name] not in node.capabilities:  # declared by list_nodes: no backend call
        raise refusal(node, CAPABILITY[hook_name])
    awaitable = getattr(hub.pm.hook, hook_name)(hub=hub, node=node, **kwargs)
    if awaitable is None:
        raise NotSupported(f"no installed backend can {what} on {node.name} (backend {node.backend})",
                           code="no_backend")
    return awaitable


# -- exec ---------------------------------------------------------------------------------------


async def exec_(ctx):
    hub, actor, body = ctx.hub, ctx.actor, ctx.body
    spec = _exec_spec(hub, body)
    command = spec["command"]
    if "targets" in body:
        if "target" in body:
            raise BadRequest("give either target (one node) or targets (several), not both", code="invalid_field",
                             field="targets")
        return await fanout(hub, actor, body, spec)
    if "target" not in body:
        raise BadRequest("target (a node name) or targets (names, or a pattern) is required", code="invalid_field",
                         field="target")
    target = body["target"]
    threading = await resolve_thread(hub, actor, body, event_type="exec", target=target, detail=command)
    if spec["background"]:
        from claude_net.http import json_response

        from . import jobs

        job = await jobs.start(hub, actor, target, command=command, timeout=spec["timeout"], cwd=spec["cwd"],
                               env=spec["env"], recorded={**spec["recorded"], **threading}, threading=threading,
                               guard_kwargs=approval_of(body))
        return json_response({"ok": True, "job": job, **threading}, 202)
    return await run_exec(hub, actor, target, spec, threading, approval_of(body))


def _exec_spec(hub, body) -> dict:
    """What an exec body asks for, checked: command, timeout, cwd, env, background, and the audit data."""
    limits = hub.settings.limits
    command = body["command"]
    if "\x00" in command:
        raise BadRequest("command must not contain NUL bytes", code="invalid_field", field="command")
    background = bool(body.get("background", False))
    if background:  # a job's own default and maximum ([jobs]): it is not tied to a request
        jobs_cfg = hub.settings.section("jobs")
        default, most, where = jobs_cfg.timeout, jobs_cfg.timeout_max, "[jobs] timeout_max"
    else:
        default, most, where = limits.exec_timeout, limits.exec_timeout_max, "[limits] exec_timeout_max"
    # the configured default never exceeds the configured maximum
    timeout = float(body.get("timeout", min(default, most)))
    if timeout > most:
        raise BadRequest(f"timeout must be at most {most:g} seconds ({where})"
                         + ("" if background else "; a longer command can run as a job (\"background\": true)"),
                         code="invalid_field", field="timeout")
    cwd = body.get("cwd")
    if cwd is not None:
        validate_remote_path(cwd, field_name="cwd")
    env = body.get("env") or {}
    for value in env.values():
        if "\x00" in value:
            raise BadRequest("env values must not contain NUL bytes", code="invalid_field", field="env")
    # the audit row shows what ran: the command (detail), and where and with which environment
    recorded: dict = {}
    if cwd is not None:
        recorded["cwd"] = cwd
    if env:
        recorded["env"], cut = recorded_env(env)
        if cut:
            recorded["env_truncated"] = True
    return {"command": command, "timeout": timeout, "cwd": cwd, "env": env, "background": background,
            "recorded": recorded}


async def run_exec(hub, actor, target: str, spec: dict, threading: dict, approval: dict | None = None) -> dict:
    """A foreground exec of ``spec`` (see :func:`_exec_spec`) on ``target``: the exec answer's fields."""
    limits = hub.settings.limits
    command, timeout, cwd = spec["command"], spec["timeout"], spec["cwd"]
    options = ExecOptions(timeout=timeout, cwd=cwd, env=spec["env"], max_output=limits.exec_max_output,
                          source=share_of(actor))
    request = {"command": command, "cwd": cwd}
    recorded = {**spec["recorded"], **threading}

    async def run():
        node = await hub.nodes.get(target)
        awaitable = _dispatch(hub, "execute", node, command=command, options=options)
        async with contextlib.AsyncExitStack() as stack:
            try:
                waited = await stack.enter_async_context(hub.exec_slot(actor, target))
                if waited:  # a revoke may have come while it queued: it never runs after one
                    await hub.reauthorize(actor, "exec", target, request, why="while the exec waited for a slot")
            except BaseException:
                _discard(awaitable)
                raise
            try:
                result = await asyncio.wait_for(awaitable, timeout + TIMEOUT_GRACE)
            except asyncio.TimeoutError:
                raise GatewayTimeout(f"the {node.backend} backend did not finish within {timeout:g}s",
                                     code="timeout") from None
        if result.timed_out:
            raise GatewayTimeout(
                f"the command did not finish within {timeout:g}s and was stopped",
                code="timeout", stdout=_decode(result.stdout), stderr=_decode(result.stderr),
                exitCode=result.exit_code, truncated=result.truncated, durationMs=round(result.duration_ms, 1),
            )
        return result

    result = await hub.guarded(
        actor, action="exec", event_type="exec", target=target, detail=command, run=run,
        request=request, data=recorded, **(approval or {}),
        result_data=lambda r: {"exit_code": r.exit_code, "truncated": r.truncated},
        result_transient=lambda r: {"stdout": _decode(r.stdout[:EVENT_OUTPUT]),
                                    "stderr": _decode(r.stderr[:EVENT_OUTPUT]),
                                    "output_bytes": len(r.stdout) + len(r.stderr)},
    )
    out = {
        "stdout": _decode(result.stdout),
        "stderr": _decode(result.stderr),
        "exitCode": result.exit_code,
        "durationMs": round(result.duration_ms, 1),
    }
    if result.truncated:
        out["truncated"] = True
    out.update(threading)
    return out


# -- fan-out ------------------------------------------------------------------------------------
# One exec to many nodes: each target takes the whole path of a single exec (its own permission,
# activity rows, exec slot, job), so a target the caller may not use is one denied result among
# the others, never a failure of the call.

#: codes of a result that the summary counts as denied (a refusal of permission, not a failure)
DENIED_CODES = frozenset({"denied", "revoked", "approval_denied", "approval_expired", "relay_refused"})


async def resolve_targets(hub, targets) -> list[str]:
    """The node names a fan-out runs on, in order, without repeats: the names given, or every node that
    can run commands whose name matches the pattern (sorted)."""
    limit = hub.settings.section("jobs").fanout_max_targets
    if isinstance(targets, str):
        if not FANOUT_PATTERN_RE.fullmatch(targets):
            raise BadRequest("targets must be a list of node names or a pattern of lowercase letters, digits, '-' "
                             "and the wildcards '*', '?' and [...]", code="invalid_field", field="targets")
        nodes, _errors = await hub.nodes.all()
        names = [n.name for n in nodes if "exec" in n.capabilities and fnmatch.fnmatchcase(n.name, targets)]
        if not names:
            raise NotFound(f"no node that can run commands matches {targets!r}", code="no_matching_nodes",
                           field="targets")
    else:
        names = list(dict.fromkeys(targets))
    if len(names) > limit:
        raise BadRequest(f"{len(names)} targets; one fan-out may have at most {limit} ([jobs] fanout_max_targets)",
                         code="too_many_targets", field="targets")
    return names


async def fanout(hub, actor, body, spec: dict) -> dict:
    if body.get("approval") is not None:
        raise BadRequest("an approval covers one action on one target: use it with target, not targets",
                         code="invalid_field", field="approval")
    names = await resolve_targets(hub, body["targets"])
    command = spec["command"]
    threading = await resolve_thread(hub, actor, body, event_type="exec", target=None, detail=command)
    approval = {**approval_of(body), "approval": None}
    slots = asyncio.Semaphore(max(1, hub.settings.section("jobs").fanout_concurrency))

    async def one(name: str) -> dict:
        async with slots:
            try:
                if spec["background"]:
                    from . import jobs

                    job = await jobs.start(hub, actor, name, command=command, timeout=spec["timeout"],
                                           cwd=spec["cwd"], env=spec["env"],
                                           recorded={**spec["recorded"], **threading, "fanout": True},
                                           threading=threading, guard_kwargs=approval)
                    return {"target": name, "ok": True, "job": job}
                out = await run_exec(hub, actor, name, {**spec, "recorded": {**spec["recorded"], "fanout": True}},
                                     threading, approval)
                return {"target": name, "ok": True, **out}
            except HubError as exc:
                return {"target": name, **exc.to_json(), "status": exc.status}

    results = await asyncio.gather(*(one(name) for name in names))
    denied = sum(1 for r in results if not r["ok"] and r.get("code") in DENIED_CODES)
    ok = sum(1 for r in results if r["ok"])
    return {"results": list(results), "summary": {"ok": ok, "failed": len(results) - ok - denied, "denied": denied},
            **threading}


# -- files --------------------------------------------------------------------------------------


async def _read_file(hub, actor, target: str, path: str, threading=None, approval=None) -> bytes:
    """The buffered read path of ``POST /api/file/read``: authorize, record, dispatch to the owner."""
    options = ReadOptions(max_size=hub.settings.limits.file_max_bytes, source=share_of(actor))

    async def run():
        node = await hub.nodes.get(target)
        return await _dispatch(hub, "read_file", node, path=path, options=options)

    return await hub.guarded(actor, action="file_read", event_type="file_read", target=target, detail=path,
                             run=run, request={"path": path}, data=threading, **(approval or {}),
                             result_data=lambda d: {"bytes": len(d)})


async def file_read(ctx):
    hub, actor, body = ctx.hub, ctx.actor, ctx.body
    target = body["target"]
    path = validate_remote_path(body["path"])
    encoding = body.get("encoding")
    threading = await resolve_thread(hub, actor, body, event_type="file_read", target=target, detail=path)
    data = await _read_file(hub, actor, target, path, threading, approval_of(body))
    if encoding in (None, "utf-8"):
        try:
            return {"content": data.decode("utf-8"), "encoding": "utf-8", "size": len(data), **threading}
        except UnicodeDecodeError:
            if encoding == "utf-8":
                raise BadRequest(f"{path} is not valid UTF-8; read it with encoding 'base64'",
                                 code="not_utf8") from None
    return {"content": base64.b64encode(data).decode("ascii"), "encoding": "base64", "size": len(data), **threading}


def _mode(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise BadRequest("mode must be an octal string like '0644' or an integer", code="invalid_field",
                             field="mode") from None
    if not 0 <= value <= 0o7777:
        raise BadRequest("mode must be between 0 and 07777", code="invalid_field", field="mode")
    return value


async def file_write(ctx):
    hub, actor, body = ctx.hub, ctx.actor, ctx.body
    target = body["target"]
    path = validate_remote_path(body["path"])
    limit = hub.settings.limits.file_max_bytes
    if body.get("encoding", "utf-8") == "base64":
        try:
            data = await decode_base64(body["content"])  # (large: in a worker thread, in slices)
        except (binascii.Error, ValueError):
            raise BadRequest("content is not valid base64", code="invalid_field", field="content") from None
    else:
        data = body["content"].encode("utf-8")
    if len(data) > limit:
        raise PayloadTooLarge(f"the file is {len(data)} bytes; the limit is {limit}", limit=limit)
    threading = await resolve_thread(hub, actor, body, event_type="file_write", target=target, detail=path)
    return await _write_file(hub, actor, target, path, data, body, threading)


async def _write_file(hub, actor, target: str, path: str, data: bytes, fields, threading=None) -> dict:
    """The buffered write path of ``POST /api/file/write``: authorize, record, dispatch to the owner."""
    options = _write_options(hub, fields, actor)

    async def run():
        node = await hub.nodes.get(target)
        return await _dispatch(hub, "write_file", node, path=path, data=data, options=options)

    extra = await hub.guarded(actor, action="file_write", event_type="file_write", target=target, detail=path,
                              run=run, request={"path": path, "size": len(data), "sha256": await _digest(data)},
                              data=threading, **approval_of(fields),
                              result_data=lambda _: {"bytes": len(data)})
    return {"path": path, "size": len(data), **(extra or {}), **(threading or {})}


# -- files, raw bytes ---------------------------------------------------------------------------
# The same permission, limits and records as the JSON file endpoints, without JSON and base64
# around the content, and streamed end to end: the hub holds a bounded amount of a file whatever
# its size, and the client's transfer overlaps the backend's. A backend that implements the
# stream hooks (open_file_stream / write_file_stream) gets the bytes as they arrive; one that
# does not gets the buffered read_file / write_file, as before.

#: seconds a streamed download may wait for the server to start sending it once the file is open
STREAM_START_TIMEOUT = 60.0
#: where in-flight downloads are kept (a strong reference to their tasks)
DOWNLOADS_KEY = "claude_net.downloads"


def _write_options(hub, fields, actor) -> WriteOptions:
    return WriteOptions(max_size=hub.settings.limits.file_max_bytes, mode=_mode(fields.get("mode")),
                        uid=fields.get("uid"), gid=fields.get("gid"), mkdirs=bool(fields.get("mkdirs", False)),
                        source=share_of(actor))


class GrantRecheck:
    """The checks a streamed transfer makes, while its bytes flow, that its grant still holds.

    ``check`` (an awaitable function: :meth:`Hub.reauthorize`, raising :class:`Forbidden` code
    ``revoked`` once the grant is gone) starts from :meth:`poll`, at most every
    :data:`RECHECK_SECONDS` and in the background: the transfer never waits for it. An upload
    polls for each chunk it takes (its client sets the pace); a download polls on a timer
    (:meth:`start_timer`), since its client may stop reading and hold the body still. The first
    failure is kept in ``error`` (a check that could not be made, say the database failed, is
    ``recheck_failed``: the transfer fails closed) and handed to ``on_failure`` as soon as the
    check ends. ``count`` is the number of checks started. ``context``: the :mod:`contextvars`
    the checks run in (a download's are the guarded action's, so an approved action's checks see
    its approval).
    """

    def __init__(self, check, what: str, *, on_failure=None, context=None) -> None:
        self._check = check
        self.what = what
        self.on_failure = on_failure
        self.context = context
        self.error: HubError | None = None
        self.count = 0
        self._checking: asyncio.Future | None = None
        self._next_check: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def _fail(self, exc: BaseException) -> None:
        if self.error is not None:
            return
        self.error = exc if isinstance(exc, HubError) else HubError(
            f"the {self.what} was stopped: its grant could not be checked again ({type(exc).__name__})",
            code="recheck_failed")
        if self.on_failure is not None:
            self.on_failure(self.error)

    def _check_result(self, check: asyncio.Future) -> None:
        if not check.cancelled() and check.exception() is not None:
            self._fail(check.exception())

    def poll(self) -> None:
        """Start a check when one is due (the first chunk starts the clock)."""
        loop = asyncio.get_running_loop()
        if self._checking is not None and self._checking.done():
            self._checking = None
        now = loop.time()
        if self._next_check is None:
            self._next_check = now + RECHECK_SECONDS
        elif self._checking is None and now >= self._next_check and self.error is None:
            self._next_check = now + RECHECK_SECONDS
            self.count += 1
            self._checking = loop.create_task(self._check(), context=self.context)
            self._checking.add_done_callback(self._check_result)

    async def final(self) -> None:
        """At the end of a transfer that lasted longer than :data:`RECHECK_SECONDS`, before what it
        did is committed: the check in flight must pass, and one more made now."""
        due = self._next_check is not None and asyncio.get_running_loop().time() >= self._next_check
        if not (self.count or due):
            return
        if self._checking is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._checking)
            self._check_result(self._checking)
            self._checking = None
        if self.error is None:
            self.count += 1
            try:
                await self._check()
            except Exception as exc:  # noqa: BLE001 - a revoke, or fail closed (recheck_failed)
                self._fail(exc)

    def start_timer(self) -> None:
        """Poll now (the clock starts), then a few times a second until :meth:`cancel`: a tick costs
        one comparison, and ticking finer than the interval keeps the checks about a second apart."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.poll()
            if self.error is None:
                self._timer = loop.call_later(RECHECK_SECONDS / 4, tick)

        tick()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._checking is not None and not self._checking.done():
            self._checking.cancel()


class UploadChunks:
    """The body of ``PUT /api/file/raw`` as it arrives: what ``write_file_stream`` iterates.

    Counts the bytes and fails past the limit (413: a chunked upload has no Content-Length to
    check first) or when the client sends nothing for ``[limits] body_timeout`` seconds (408).
    The failure is kept, so the caller gets it whatever a backend turns it into.

    ``recheck`` (an awaitable function raising :class:`Forbidden` when the grant is gone) runs
    through a :class:`GrantRecheck` while the bytes flow, and once more at the end of an upload
    that lasted longer than :data:`RECHECK_SECONDS`, before the backend commits the file: an
    upload that a revoke overtook fails (the backend removes its temporary file; the target is
    left as it was) and is recorded ``denied``.
    """

    def __init__(self, body, limit: int, idle_timeout: float, recheck=None) -> None:
        self._body = body.__aiter__()
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.received = 0
        self.done = False
        self.error: HubError | None = None
        self.checks = GrantRecheck(recheck, "upload") if recheck is not None else None

    @property
    def rechecks(self) -> int:
        return self.checks.count if self.checks is not None else 0

    def __aiter__(self) -> UploadChunks:
        return self

    def _take_check_failure(self) -> None:
        if self.error is None and self.checks is not None and self.checks.error is not None:
            self.error = self.checks.error

    def cancel_checks(self) -> None:
        if self.checks is not None:
            self.checks.cancel()

    async def __anext__(self) -> bytes:
        from werkzeug.exceptions import RequestEntityTooLarge

        while True:
            self._take_check_failure()
            if self.error is not None:
                self.cancel_checks()
                raise self.error
            if self.done:
                raise StopAsyncIteration
            if self.checks is not None:
                self.checks.poll()
            try:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await self._body.__anext__()
            except StopAsyncIteration:
                if self.checks is not None:
                    await self.checks.final()
                    self._take_check_failure()
                if self.error is not None:
                    continue
                self.done = True
                raise
            except TimeoutError:
                self.error = RequestTimeout(f"the upload stalled: nothing arrived for {self.idle_timeout:g} s "
                                           f"after {self.received} bytes", code="request_timeout")
                continue
            except RequestEntityTooLarge:
                self.error = PayloadTooLarge(f"the file exceeds the limit of {self.limit} bytes", limit=self.limit)
                continue
            if not chunk:
                continue
            self.received += len(chunk)
            if self.received > self.limit:
                self.error = PayloadTooLarge(f"the file exceeds the limit of {self.limit} bytes", limit=self.limit)
                continue
            return chunk

    async def read_all(self) -> bytes:
        """The whole body (for a backend without ``write_file_stream``); bounded by the limit."""
        data = bytearray()
        async for chunk in self:
            data += chunk
        return bytes(data)


async def file_raw_write(ctx):
    from quart import request

    hub, query = ctx.hub, ctx.query
    target, path = query["target"], validate_remote_path(query["path"])
    options = _write_options(hub, query, ctx.actor)  # a bad mode is a 400 before the upload is read
    limit = options.max_size
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the file is {length} bytes; the limit is {limit}", limit=limit)
    recheck_request = {"path": path, "size": length}
    threading = await resolve_thread(hub, ctx.actor, query, event_type="file_write", target=target, detail=path)

    async def recheck():
        await hub.reauthorize(ctx.actor, "file_write", target, recheck_request, why="during the upload")

    chunks = UploadChunks(request.body, limit, hub.settings.limits.body_timeout, recheck)

    async def run():
        node = await hub.nodes.get(target)
        try:
            awaitable = hub.pm.hook.write_file_stream(hub=hub, node=node, path=path, chunks=chunks, options=options)
            if awaitable is None:  # a backend without streaming: its buffered write
                data = await chunks.read_all()
                extra = await _dispatch(hub, "write_file", node, path=path, data=data, options=options)
            else:
                extra = await awaitable
        except Exception:
            if chunks.error is not None:  # the upload failed, whatever the backend made of it
                raise chunks.error from None
            raise
        finally:
            chunks.cancel_checks()
        if not chunks.done:
            raise HubError(f"the {node.backend} backend finished before reading the whole upload",
                           code="backend_error")
        return extra

    # the whole transfer runs inside the guarded action: the final event has the real result
    extra = await hub.guarded(ctx.actor, action="file_write", event_type="file_write", target=target, detail=path,
                              run=run, request=recheck_request, data=threading, **approval_of(query),
                              result_data=lambda _: {"bytes": chunks.received})
    return {"path": path, "size": chunks.received, **(extra or {}), **threading}


class Download:
    """One ``GET /api/file/raw``: the guarded action spans the whole transfer.

    ``hub.guarded`` runs in a task of its own. Its ``run`` opens the stream (a refusal or an
    error before the first byte is the usual JSON answer), hands it to the response, then waits
    for the response body to end, so the final event records what really happened: ``ok`` with
    the byte count once the last byte went to the server, ``error`` when the backend failed
    midway, the file changed size or the client went away.

    While the body flows, a :class:`GrantRecheck` checks every :data:`RECHECK_SECONDS` that the
    ``file_read`` grant still holds, on a timer: a client that stopped reading holds the body
    still, and a revoke must reach it too. One that fails ends the response at once, wherever the
    body is waiting (for the backend, or for the client to take a chunk): the connection is cut,
    the stream closed, and the action recorded ``denied`` with code ``revoked`` (or ``error`` with
    ``recheck_failed`` when the check could not be made).
    """

    def __init__(self, hub, actor, target: str, path: str, threading=None, approval=None) -> None:
        loop = asyncio.get_running_loop()
        self.approval = approval or {}
        self.hub, self.actor, self.target, self.path = hub, actor, target, path
        self.threading = threading
        self.limit = hub.settings.limits.file_max_bytes
        self.opened: asyncio.Future[FileStream] = loop.create_future()
        self.started: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[int] = loop.create_future()
        self.task: asyncio.Task | None = None
        self.sent = 0
        self.checks: GrantRecheck | None = None
        self._sender: asyncio.Task | None = None

    @property
    def rechecks(self) -> int:
        return self.checks.count if self.checks is not None else 0

    async def _recheck(self) -> None:
        await self.hub.reauthorize(self.actor, "file_read", self.target, {"path": self.path},
                                   why="during the download")

    def _stop(self, error: HubError) -> None:
        """A check failed: end the response now. The task sending the body may be waiting for the
        backend or for the client (a slow reader holds it at the chunk it yielded), where no check
        in the body can see the failure: cancelling it ends the response as a disconnect would,
        but the action's final event has this failure, recorded first."""
        if self.finished.done() or self._sender is None:
            return
        log.warning("download of %s on %s by %s stopped after %d bytes: %s", self.path, self.target,
                    self.actor.name, self.sent, error.message)
        self._finish(self.sent, error)
        self._sender.cancel()

    async def _run(self) -> int:
        hub, path, options = self.hub, self.path, ReadOptions(max_size=self.limit, source=share_of(self.actor))
        node = await hub.nodes.get(self.target)
        awaitable = hub.pm.hook.open_file_stream(hub=hub, node=node, path=path, options=options)
        if awaitable is None:  # a backend without streaming: its buffered read
            stream = FileStream.from_bytes(await _dispatch(hub, "read_file", node, path=path, options=options))
        else:
            stream = await awaitable
        try:
            if stream.size is not None and stream.size > self.limit:
                raise PayloadTooLarge(f"{path} is {stream.size} bytes; the limit is {self.limit}", limit=self.limit,
                                      size=stream.size)
            if self.opened.done():  # the request went away while the file was being opened
                raise asyncio.CancelledError
            # the checks run in this action's context: an approved download's see its approval
            self.checks = GrantRecheck(self._recheck, "download", on_failure=self._stop,
                                       context=contextvars.copy_context())
            self.opened.set_result(stream)
            try:
                async with asyncio.timeout(STREAM_START_TIMEOUT):
                    await asyncio.shield(self.started)
            except TimeoutError:
                raise HubError("the response was never sent", code="not_sent") from None
            return await self.finished
        finally:
            if not self.started.done():  # once the body started, it closes the stream
                await stream.aclose()

    async def open(self) -> FileStream:
        """Authorize, record ``pending``, open the file; raises what a refusal or the backend raise."""
        hub = self.hub
        self.task = asyncio.ensure_future(hub.guarded(
            self.actor, action="file_read", event_type="file_read", target=self.target, detail=self.path,
            run=self._run, request={"path": self.path}, data=self.threading, **self.approval,
            result_data=lambda sent: {"bytes": sent}))
        downloads = hub.plugin_state.setdefault(DOWNLOADS_KEY, set())
        downloads.add(self.task)
        self.task.add_done_callback(self._forget)
        try:
            await asyncio.wait({self.task, self.opened}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.opened.cancel()
            self.task.cancel()
            raise
        if not self.opened.done():
            self.opened.cancel()
            return self.task.result()  # raises: run() ended before the file was open
        return self.opened.result()

    def _forget(self, task: asyncio.Task) -> None:
        self.hub.plugin_state.get(DOWNLOADS_KEY, set()).discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the body or open() reported it

    def _finish(self, sent: int, error: BaseException | None) -> None:
        if self.finished.done():
            return
        if error is None:
            self.finished.set_result(sent)
        else:
            self.finished.set_exception(error)

    async def body(self, *, head: bool = False):
        """The response body: the stream's chunks, checked against the announced size and the limit.

        ``head``: a HEAD request, answered with the headers only: the file is not read.
        """
        from claude_net.http import ResponseAborted

        stream = self.opened.result()
        self.started.set_result(None)
        self._sender = asyncio.current_task()
        checks = None if head else self.checks
        if checks is not None:
            checks.start_timer()
        size, sent = stream.size, 0
        try:
            async for chunk in (_nothing() if head else stream):
                if checks is not None and checks.error is not None:
                    raise checks.error
                sent += len(chunk)
                self.sent = sent
                if sent > self.limit or (size is not None and sent > size):
                    raise HubError(f"{self.path} grew while it was read: more than "
                                   f"{size if size is not None else self.limit} bytes", code="file_changed")
                if chunk:
                    yield chunk
            if size is not None and sent != size and not head:
                raise HubError(f"{self.path} ended after {sent} of {size} bytes (it changed while it was read)",
                               code="file_changed")
        except (GeneratorExit, asyncio.CancelledError):
            self._finish(sent, HubError(f"the client went away after {sent} bytes", code="client_gone"))
            raise
        except Exception as exc:
            self._finish(sent, exc)
            raise ResponseAborted(f"{self.path} on {self.target} after {sent} bytes: {exc}") from exc
        else:
            self._finish(sent, None)
        finally:
            self._sender = None
            if checks is not None:
                checks.cancel()
            await stream.aclose()
            with contextlib.suppress(BaseException):
                await asyncio.shield(self.task)  # the final event is written before the response ends


async def _nothing():
    return
    yield  # an empty async generator


async def file_raw_read(ctx):
    from quart import Response, request  # the CLI loads this plugin too: the web stack only when serving

    target, path = ctx.query["target"], validate_remote_path(ctx.query["path"])
    threading = await resolve_thread(ctx.hub, ctx.actor, ctx.query, event_type="file_read", target=target,
                                     detail=path)
    download = Download(ctx.hub, ctx.actor, target, path, threading, approval_of(ctx.query))
    stream = await download.open()
    headers = {"Content-Disposition": "attachment", "X-Content-Type-Options": "nosniff"}
    if stream.size is not None:
        headers["Content-Length"] = str(stream.size)
    return Response(download.body(head=request.method == "HEAD"), status=200,
                    content_type="application/octet-stream", headers=headers)


# -- containers ---------------------------------------------------------------------------------


SNAPSHOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
CONTAINER_OPS = ("start", "stop", "snapshot", "restore", "list_snapshots")


async def container_action(hub, actor, op: str, name: str, args=None) -> dict:
    """Authorize, record and run a container operation: what ``POST /api/container/{op}`` does.

    The one path for every channel (HTTP, Telegram, ...): the name (and a snapshot name) is
    validated, ``hub.guarded`` authorizes the ``container`` action and records the events, and
    the backend that owns the node does the work. Returns ``{"name": name, **backend extras}``.
    """
    if op not in CONTAINER_OPS:
        raise BadRequest(f"unknown container operation {op!r} (choose from {', '.join(CONTAINER_OPS)})",
                         code="invalid_field", field="op")
    validate_node_name(name)
    args = dict(args or {})
    snapshot = args.get("snapshot")
    if snapshot is not None and not (isinstance(snapshot, str) and SNAPSHOT_RE.fullmatch(snapshot)):
        raise BadRequest(f"snapshot {str(snapshot)[:70]!r} is not a valid snapshot name "
                         "(1-63 letters, digits, '.', '_' or '-')", code="invalid_field", field="snapshot")
    if op == "restore" and not snapshot:
        raise BadRequest("restore needs the snapshot to restore", code="invalid_field", field="snapshot")
    detail = " ".join([op, name] + ([str(snapshot)] if snapshot else []))

    async def run():
        node = await hub.nodes.get(name)
        result = await _dispatch(hub, "container_op", node, op=op, args=args)
        if op in ("start", "stop", "restore"):
            hub.nodes.invalidate()
        return result

    extra = await hub.guarded(actor, action="container", event_type="container", target=name, detail=detail,
                              run=run, request={"op": op, **args})
    return {"name": name, **(extra or {})}


def _container(op: str):
    async def handler(ctx):
        body = ctx.body
        name = body["name"] if op != "list_snapshots" else ctx.query["name"]
        args = {k: v for k, v in body.items() if k != "name"}
        return await container_action(ctx.hub, ctx.actor, op, name, args)

    handler.__name__ = f"container_{op}"
    return handler


SNAPSHOT_NAME = {"type": "string", "pattern": SNAPSHOT_RE.pattern,
                 "x-pattern-help": "be 1-63 letters, digits, '.', '_' or '-'"}


@hookimpl
def register_routes(hub):
    limits = hub.settings.limits
    file_body_max = limits.file_max_bytes * 4 // 3 + 65536
    container_schema = {"type": "object", "additionalProperties": False, "required": ["name"],
                        "properties": {"name": NAME, "from": {"type": "string"}}}
    return [
        Route(
            "POST", "/api/exec", exec_,
            summary="Run a shell command on a node, or on several (needs the exec pathway actor -> target)",
            description="Runs `[shell, -c, command]` inside the target. Non-zero exit codes are still `ok`; "
                        "a timeout answers 504 with the partial output. `background: true` starts a job and "
                        "answers 202 `{job}` at once (docs/jobs.md). `targets` (names, or a pattern such as "
                        "`web-*`) instead of `target` runs it on each: 200 `{results, summary}`, one result per "
                        "target in order, each allowed or denied on its own.",
            body_schema={
                "type": "object", "additionalProperties": False, "required": ["command"],
                # exactly one of the two (the handler says so in words; this tells OpenAPI clients)
                # and an approval covers one action on one target, so it never comes with targets
                "oneOf": [{"required": ["target"]},
                          {"required": ["targets"], "not": {"required": ["approval"]}}],
                # a foreground exec's timeout is bounded by [limits], a job's by [jobs]
                "anyOf": [{"required": ["background"], "properties": {"background": {"const": True}}},
                          {"properties": {"timeout": {"maximum": limits.exec_timeout_max}}}],
                "properties": {
                    "target": NAME,
                    # a list of names, or one pattern (each keyword applies to its own type)
                    "targets": {"type": ["array", "string"], "items": NAME, "minItems": 1, "maxItems": 1024,
                                "minLength": 1, "maxLength": 128, "pattern": FANOUT_PATTERN_RE.pattern,
                                "x-pattern-help": "be a pattern of node-name characters and the wildcards * ? [...]"},
                    "background": {"type": "boolean"},
                    "command": {"type": "string", "minLength": 1, "maxLength": 131072, "pattern": NO_NUL,
                                "x-pattern-help": "not contain NUL bytes"},
                    "timeout": {"type": "number", "minimum": 0.1,
                                "maximum": max(limits.exec_timeout_max, hub.settings.section("jobs").timeout_max)},
                    "cwd": PATH,
                    "env": {"type": "object", "maxProperties": 64,
                            "additionalProperties": {"type": "string", "maxLength": 32768, "pattern": NO_NUL,
                                                     "x-pattern-help": "not contain NUL bytes"},
                            "propertyNames": {"pattern": ENV_NAME}},
                    "from": {"type": "string"},
                    **THREAD_PROPS, **APPROVAL_PROPS,
                },
            },
            response_schema={"type": "object", "properties": {
                "ok": {"const": True}, "stdout": {"type": "string"}, "stderr": {"type": "string"},
                "exitCode": {"type": ["integer", "null"]}, "truncated": {"type": "boolean"},
                "durationMs": {"type": "number"}, "thread": {"type": "string"}, "reply_to": {"type": "integer"}}},
            tags=["capabilities"],
        ),
        Route(
            "POST", "/api/file/read", file_read,
            summary="Read a file on a node (needs the file_read pathway)",
            description="`encoding` 'utf-8' or 'base64'; omitted: utf-8 when the file decodes, else base64.",
            body_schema={"type": "object", "additionalProperties": False, "required": ["target", "path"],
                         "properties": {"target": NAME, "path": PATH,
                                        "encoding": {"type": "string", "enum": ["utf-8", "base64"]},
                                        "from": {"type": "string"}, **THREAD_PROPS, **APPROVAL_PROPS}},
            response_schema={"type": "object", "properties": {
                "ok": {"const": True}, "content": {"type": "string"},
                "encoding": {"type": "string", "enum": ["utf-8", "base64"]}, "size": {"type": "integer"}}},
            tags=["capabilities"],
        ),
        Route(
            "POST", "/api/file/write", file_write,
            summary="Write a file on a node (needs the file_write pathway)",
            body_schema={"type": "object", "additionalProperties": False, "required": ["target", "path", "content"],
                         "properties": {
                             "target": NAME, "path": PATH, "content": {"type": "string", "x-allow-nul": True},
                             "encoding": {"type": "string", "enum": ["utf-8", "base64"]},
                             "mode": {"type": ["integer", "string"], "minimum": 0, "maximum": 0o7777,
                                      "pattern": "^(0o?)?[0-7]{1,4}$",
                                      "x-pattern-help": "be an octal string like '0644' (or an integer)"},
                             "uid": {"type": "integer", "minimum": 0, "maximum": 4294967294},
                             "gid": {"type": "integer", "minimum": 0, "maximum": 4294967294},
                             "mkdirs": {"type": "boolean"},
                             "from": {"type": "string"}, **THREAD_PROPS, **APPROVAL_PROPS}},
            max_body=file_body_max, tags=["capabilities"],
        ),
        Route(
            "GET", "/api/file/raw", file_raw_read,
            summary="Read a file on a node as raw bytes (needs the file_read pathway)",
            description="The file's bytes as `application/octet-stream` (no JSON, no base64), streamed from the "
                        "node as they are read: the way to move large or binary files. Same permission, limits "
                        "and activity record as `POST /api/file/read`; errors known before the first byte are the "
                        "usual JSON error objects, a failure after it cuts the response short of its "
                        "`Content-Length`. HEAD answers the headers without reading the file.",
            query_schema={"type": "object", "additionalProperties": False, "required": ["target", "path"],
                          "properties": {"target": NAME, "path": PATH, **THREAD_PROPS, **APPROVAL_PROPS}},
            response_media_type="application/octet-stream", tags=["capabilities"],
        ),
        Route(
            "PUT", "/api/file/raw", file_raw_write,
            summary="Write a file on a node from the raw request body (needs the file_write pathway)",
            description="The request body is the file's content, any bytes (send it as "
                        "`application/octet-stream`, with a `Content-Length` or chunked), streamed to the node as "
                        "it arrives. Same permission, limits (413 as soon as the body passes `file_max_bytes`), "
                        "options and activity record as `POST /api/file/write`; answers the same JSON once the "
                        "file is in place. On any failure the target is left as it was.",
            query_schema={"type": "object", "additionalProperties": False, "required": ["target", "path"],
                          "properties": {
                              "target": NAME, "path": PATH,
                              "mode": {"type": "string", "pattern": "^[0-7]{1,4}$",
                                       "x-pattern-help": "be an octal mode like 0644"},
                              "uid": {"type": "integer", "minimum": 0, "maximum": 4294967294},
                              "gid": {"type": "integer", "minimum": 0, "maximum": 4294967294},
                              "mkdirs": {"type": "boolean"}, **THREAD_PROPS, **APPROVAL_PROPS}},
            response_schema={"type": "object", "properties": {
                "ok": {"const": True}, "path": {"type": "string"}, "size": {"type": "integer"}}},
            body_media_type="application/octet-stream", tags=["capabilities"],
        ),
        Route("POST", "/api/container/start", _container("start"), summary="Start a container (admin)",
              body_schema=container_schema, tags=["containers"]),
        Route("POST", "/api/container/stop", _container("stop"),
              summary="Stop a container: graceful, then forced after `timeout` seconds (admin)",
              body_schema={**container_schema, "properties": {
                  **container_schema["properties"], "force": {"type": "boolean"},
                  "timeout": {"type": "number", "minimum": 0, "maximum": 600}}},
              tags=["containers"]),
        Route("POST", "/api/container/snapshot", _container("snapshot"),
              summary="Snapshot a container; default name is today's UTC date (admin)",
              body_schema={**container_schema, "properties": {
                  **container_schema["properties"], "snapshot": SNAPSHOT_NAME,
                  "expires": {"type": "string", "maxLength": 64}}},
              tags=["containers"]),
        Route("POST", "/api/container/restore", _container("restore"),
              summary="Restore a container to a snapshot (admin)",
              body_schema={**container_schema, "required": ["name", "snapshot"], "properties": {
                  **container_schema["properties"], "snapshot": SNAPSHOT_NAME}},
              tags=["containers"]),
        Route("GET", "/api/container/snapshots", _container("list_snapshots"),
              summary="List a container's snapshots (admin)",
              query_schema={"type": "object", "additionalProperties": False, "required": ["name"],
                            "properties": {"name": NAME}},
              tags=["containers"]),
    ]
