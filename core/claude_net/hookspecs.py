"""Every hook of claude-net. Plugins implement these with ``@claude_net.hookimpl``.

Each hook receives ``hub`` (the running :class:`claude_net.hub.Hub`: settings, database, node
registry, event bus) as its first argument; like every pluggy argument it may be left out of an
implementation that does not need it. Each spec's docstring is its contract; the same text,
with examples, is in ``docs/plugin-hooks.md`` (a test keeps the two in step).

Pluggy has no async support. Hooks that may do I/O let an implementation return an awaitable,
which the core awaits. ``firstresult`` hooks must be plain functions that decide *synchronously*
whether they apply (return ``None``) and only then return an awaitable: an ``async def`` would
return a coroutine, which is never ``None``, and so would always win. A test enforces this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from .types import (
    Actor,
    Command,
    Event,
    ExecOptions,
    ExecResult,
    FileStream,
    Migration,
    Node,
    ReadOptions,
    Route,
    WriteOptions,
)

if TYPE_CHECKING:  # pragma: no cover
    from .config import Settings
    from .hub import Hub

hookspec = pluggy.HookspecMarker("claude_net")
hookimpl = pluggy.HookimplMarker("claude_net")


# ---------------------------------------------------------------------------------------------
# Configuration, schema and CLI (called without a running hub)
# ---------------------------------------------------------------------------------------------


@hookspec
def config_sections() -> Mapping[str, type]:
    """Declare this plugin's configuration sections.

    Return ``{"section": SettingsDataclass}``. The section's TOML table (``[section]``; dotted
    names such as ``"ssh"`` may hold nested tables typed as ``dict[str, OtherDataclass]``) is
    validated against the dataclass: unknown keys and wrong types are reported with the file
    and key; missing keys take the dataclass defaults. Declare fields with
    ``claude_net.help_field(default, "help text")``: the texts appear in ``claude-net init``'s
    starter config. The parsed instance is available as ``hub.settings.section("name")``.
    Section names are unique across plugins.
    """


@hookspec
def validate_config(settings: Settings) -> Iterable[tuple[str, str]] | None:
    """Check the parsed settings beyond their types; return ``(key, sentence)`` problems.

    Called by ``claude-net check`` and by ``claude-net serve`` before it starts (which refuses to
    start on any problem), after every section was parsed. ``key`` is the dotted setting the
    problem is about (``"local.nodes.web.root"``; a section name for the section as a whole);
    the core prefixes each sentence with where that key was set: the environment variable that
    set it, else the configuration file. Read sections with ``settings.section("name")``. Do no
    I/O beyond cheap local checks (a path exists); an exception is reported as a problem of the
    plugin.
    """


@hookspec
def migrations() -> Sequence[Migration]:
    """Return this plugin's versioned schema migrations.

    Each :class:`Migration` is applied once, in ``(plugin, version)`` order, inside one
    transaction, under a lock that makes concurrent starts of several processes safe.
    Migrations only create or extend this plugin's own tables.
    """


@hookspec
def register_commands() -> Sequence[Command]:
    """Return CLI verbs (:class:`Command`) this plugin adds to ``claude-net``.

    Called every time the CLI starts, including for ``--help``: import nothing heavy at module
    level or here; import inside ``Command.run``.
    """


# ---------------------------------------------------------------------------------------------
# Lifecycle and HTTP surface
# ---------------------------------------------------------------------------------------------


@hookspec
def startup(hub: Hub) -> Awaitable[None] | None:
    """Called once when the hub starts, after migrations. May return an awaitable.

    Start background tasks here (register them with ``hub.spawn`` so they are cancelled at
    shutdown). An exception aborts the start with the plugin named in the error.
    """


@hookspec
def shutdown(hub: Hub) -> Awaitable[None] | None:
    """Called once when the hub stops, before the database closes. May return an awaitable.

    Release connections and thread pools. Exceptions are logged and do not stop other plugins'
    shutdown.
    """


@hookspec
def register_routes(hub: Hub) -> Sequence[Route]:
    """Return HTTP endpoints (:class:`Route`) this plugin serves.

    The core wraps every route with authentication (unless ``auth=False``, which a test
    restricts to an explicit allow-list), the admin check, JSON body and query validation
    against the route's schemas, and error mapping; all routes appear in ``/api/openapi.json``.
    Paths must be unique; a clash aborts the start naming both plugins.
    """


@hookspec
def register_asgi_apps(hub: Hub) -> Sequence[tuple[str, Any]]:
    """Return ``(path_prefix, asgi_app)`` pairs served beside the Quart app (e.g. ``/mcp``).

    The mounted app handles its own authentication; it must accept only the hub's bearer
    tokens (see :meth:`Hub.authenticate`). The prefix must not overlap ``/api``.
    """


@hookspec(firstresult=True)
def authenticate_request(hub: Hub, request: Any) -> Awaitable[Actor | None] | Actor | None:
    """Identify the caller of an API request that carries no ``Authorization`` header. Stops at first non-None result.

    Consulted only for routes that need authentication and only when no bearer token was sent
    (a bearer token always wins, and a wrong one is never retried here). ``request`` is Quart's
    request (headers, cookies, method, path; do not read the body). Return ``None``
    synchronously when the request holds no credential of yours, else an awaitable of the
    :class:`Actor` (``via`` names the channel, e.g. ``"dashboard"``) or of ``None`` (the request
    then counts as unauthenticated: 401). Raise a :class:`claude_net.HubError` (e.g.
    :class:`claude_net.Forbidden` for a missing CSRF token on a state change) to refuse it, after
    recording the refusal. The actor then goes through the same rate limit, admin check and
    policy as a bearer-token caller.
    """


# ---------------------------------------------------------------------------------------------
# Nodes and policy
# ---------------------------------------------------------------------------------------------


@hookspec
def list_nodes(hub: Hub) -> Awaitable[Sequence[Node]] | Sequence[Node] | None:
    """Return the nodes this backend owns, with cheap current status (may be an awaitable).

    Each :class:`Node` lists its ``capabilities`` (a subset of ``exec``, ``file_read``,
    ``file_write``, ``container``): the core refuses an operation a node does not list with a
    400 before any backend is called. ``state`` is one of the words of docs/plugin-hooks.md
    (``running``, ``stopped``, ``frozen``, ``reachable``, ``unreachable``, ``unknown``, ...).
    The core merges all listings (cached for ``nodes.cache_seconds``) to resolve names and to
    answer ``/api/machines``. Raise :class:`claude_net.Unavailable` when the backend cannot be
    reached: the core reports that backend as unavailable and keeps serving the others.
    """


@hookspec
def authorize(
    hub: Hub, actor: Actor, action: str, target: str | None, detail: Mapping[str, Any]
) -> bool | None | Awaitable[bool | None]:
    """Decide whether ``actor`` may perform ``action`` on ``target``.

    Return ``True`` to allow, ``False`` to deny, ``None`` for no opinion (or an awaitable of
    one of those). Every implementation is called: any ``False`` denies, at least one ``True``
    is needed, no answers deny. Actions: ``message``, ``exec``, ``file_read``, ``file_write``,
    ``container``, ``permit``, ``permissions_view``, ``activity_view``, ``admin``.
    ``detail`` holds the request's particulars (command, path, op) for finer policies.

    An implementation may also answer a :class:`claude_net.Grant`: allowed, with conditions
    (``ask``: only after an admin approved this one request; ``snapshot_before``: snapshot the
    target first). ``True`` is ``Grant()``; the conditions of every Grant apply together.
    """


@hookspec(firstresult=True)
def request_approval(
    hub: Hub, actor: Actor, action: str, target: str | None, detail: str, particulars: Mapping[str, Any],
    approval: str | None, wait: float | None,
) -> Awaitable[Mapping[str, Any]] | None:
    """File (or join) an approval for an action that resolved to ``ask``, and wait for it. Stops at first non-None result.

    Called by :meth:`Hub.guarded` only. The approvals plugin returns (synchronously) an
    awaitable that files a new approval, joins an identical pending one, or — with ``approval``
    (an id the caller was given before) — resumes that one, then waits up to ``wait`` seconds
    (``None``: the configured default). It resolves to the approval's JSON once it is approved
    and claimed for this one run; otherwise it raises :class:`claude_net.ApprovalPending` (202,
    still pending), :class:`claude_net.Forbidden` (``approval_denied``, ``approval_expired``,
    ``approval_cancelled``), :class:`claude_net.Conflict` (``approval_used``,
    ``approval_mismatch``), :class:`claude_net.NotFound` or :class:`claude_net.RateLimited`
    (``too_many_approvals``). With no implementation the action is denied (fail closed).
    """


# ---------------------------------------------------------------------------------------------
# Capabilities: firstresult, owner returns an awaitable, everyone else None synchronously
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def execute(hub: Hub, node: Node, command: str, options: ExecOptions) -> Awaitable[ExecResult] | None:
    """Run ``command`` on ``node``. Stops at first non-None result.

    The backend that owns ``node`` (``node.backend``) returns an awaitable of
    :class:`ExecResult`; every other implementation returns ``None`` synchronously.
    The command runs as ``[shell, "-c", command]`` in the node; no host-side shell ever sees it.
    Honour ``options.timeout`` (end the process group, set ``timed_out``; ``exit_code`` is then
    what the stopped process reported, 128 + the signal that ended it, or ``None``), cap each
    stream at ``options.max_output`` bytes (set ``truncated``). A command killed by a signal
    reports 128 + its number. The command's environment is the node's configured one plus
    ``options.env``, never the hub's own (it may hold secrets). Raise :class:`claude_net.Conflict` if the
    node is stopped, :class:`claude_net.Unavailable` if its daemon or server is unreachable.
    """


@hookspec(firstresult=True)
def read_file(hub: Hub, node: Node, path: str, options: ReadOptions) -> Awaitable[bytes] | None:
    """Read the file at absolute ``path`` on ``node``. Stops at first non-None result.

    Same ownership rule as ``execute``. Resolve symlinks inside the node, never on the host.
    Raise :class:`claude_net.NotFound` (missing), :class:`claude_net.BadRequest` (a directory),
    :class:`claude_net.PayloadTooLarge` (larger than ``options.max_size``).
    """


@hookspec(firstresult=True)
def write_file(
    hub: Hub, node: Node, path: str, data: bytes, options: WriteOptions
) -> Awaitable[Mapping[str, Any] | None] | None:
    """Write ``data`` to absolute ``path`` on ``node``. Stops at first non-None result.

    Same ownership rule as ``execute``. Apply ``options.mode/uid/gid``; create parent
    directories only when ``options.mkdirs``. Readers must never see a half-written file where
    the backend can avoid it. The awaitable may return extra JSON fields for the response.
    """


@hookspec(firstresult=True)
def open_file_stream(hub: Hub, node: Node, path: str, options: ReadOptions) -> Awaitable[FileStream] | None:
    """Open the file at absolute ``path`` on ``node`` for a streamed read. Stops at first non-None result.

    Optional: a backend without it gets the buffered ``read_file`` instead (``GET /api/file/raw``
    falls back to it). Same ownership rule as ``execute``; a backend may also return ``None`` for
    a node it owns when it cannot stream there. The awaitable resolves, before any byte is sent,
    to a :class:`FileStream` once the file is found and checked, and raises what ``read_file``
    raises: :class:`claude_net.NotFound` (missing), :class:`claude_net.BadRequest` (a
    directory), :class:`claude_net.PayloadTooLarge` (larger than ``options.max_size``). Resolve
    symlinks inside the node. The stream yields at most ``options.max_size`` bytes (exactly
    ``size`` when it announces one), holds only a bounded amount in memory whatever the file's
    size, and releases everything in ``aclose()``, which the core always calls. An error while
    iterating ends the transfer and is recorded as the action's result.
    """


@hookspec(firstresult=True)
def write_file_stream(
    hub: Hub, node: Node, path: str, chunks: AsyncIterator[bytes], options: WriteOptions
) -> Awaitable[Mapping[str, Any] | None] | None:
    """Write the bytes of ``chunks`` to absolute ``path`` on ``node`` as they arrive. Stops at first non-None result.

    Optional: a backend without it gets the buffered ``write_file`` instead (``PUT /api/file/raw``
    falls back to it). Same ownership rule and options as ``write_file``; a backend may also
    return ``None`` for a node it owns when it cannot stream there. Consume ``chunks`` to the
    end, holding only a bounded amount in memory (backpressure: read the next chunk when the
    previous one is on its way). Write to a temporary file and rename it over the target once
    every byte is there: readers never see half a file. Iterating ``chunks`` raises when the
    upload fails (:class:`claude_net.PayloadTooLarge` past ``options.max_size``, a client that
    stops sending or disconnects); on that or any other failure, including cancellation, remove
    the temporary file, leave the target untouched and let the exception propagate. The
    awaitable may return extra JSON fields for the response.
    """


@hookspec(firstresult=True)
def container_op(
    hub: Hub, node: Node, op: str, args: Mapping[str, Any]
) -> Awaitable[Mapping[str, Any] | None] | None:
    """Perform a container operation on ``node``. Stops at first non-None result.

    ``op`` is one of ``start``, ``stop``, ``snapshot``, ``restore``, ``list_snapshots`` (more
    may come). Same ownership rule as ``execute``. The core answers 400 ``not_a_container``
    without calling any backend for a node that does not list the ``container`` capability. A
    backend that cannot do ``op`` raises :class:`claude_net.NotSupported` with a sentence saying
    so, either directly from this function or from the awaitable (both reach the caller alike).
    The awaitable returns extra JSON fields for the response, e.g. ``{"snapshot": "2026-11-26"}``.
    """


@hookspec(firstresult=True)
def reap_exec(hub: Hub, node: Node, tag: str) -> Awaitable[int] | None:
    """End every process on ``node`` that carries ``tag``. Stops at first non-None result.

    ``tag`` is an :attr:`ExecOptions.tag` the hub gave an earlier ``execute`` (a background job's),
    possibly in an earlier life of the hub process: the hub calls this after a restart, for jobs
    its previous life left running, so their commands do not run on unattended. Same ownership
    rule as ``execute``; a backend that cannot find processes by tag returns ``None`` for its nodes
    too (the core then records that they could not be ended). The awaitable ends (SIGKILL) every
    process of the node carrying the tag and resolves to how many it ended: ``0`` when none is
    left, including for a stopped container. Validate ``tag`` (``ExecOptions.TAG_PATTERN``) before
    it reaches the node. Raise :class:`claude_net.Unavailable` when the node cannot be reached,
    :class:`claude_net.NotSupported` when the node cannot be searched (no ``/proc``).
    """


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


@hookspec
def on_event(hub: Hub, event: Event) -> Awaitable[None] | None:
    """Observe an :class:`Event`. Every implementation is called; may return an awaitable.

    A failing subscriber is logged and never breaks the request or other subscribers, with
    one exception: an audit subscriber that cannot record a ``pending`` event of a guarded
    action raises :class:`claude_net.AuditError`, and the action is refused with a 503.
    Slow work (network calls) belongs in a queue of the plugin's own, not in this call.
    """
