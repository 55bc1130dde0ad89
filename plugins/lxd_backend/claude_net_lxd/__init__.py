"""claude-net backend for LXD containers (entry point ``lxd``).

Every instance of the configured LXD project is a node: exec, file read/write and container
operations (start, stop, snapshot, restore, list_snapshots) go through the LXD API with pylxd;
streamed file transfers (the raw file endpoints) speak HTTP to the daemon's socket directly.

The hook implementations here are thin: they decide ownership synchronously and hand over to
the runtime in ``hub.plugin_state["lxd"]`` (:class:`claude_net_lxd.backend.LxdBackend`), which
is created at startup. Nothing heavy is imported at module level: the CLI loads this module
for ``--help``; pylxd and requests are imported when the hub starts.
"""

from __future__ import annotations

from claude_net import Unavailable, hookimpl

__version__ = "0.1.0"

STATE_KEY = "lxd"
BACKEND = "lxd"


def _backend(hub):
    backend = hub.plugin_state.get(STATE_KEY)
    if backend is None:
        raise Unavailable("the LXD backend is not running (disabled with [lxd] enabled = false, or the hub "
                          "has not started)", code="lxd_unavailable")
    return backend


async def _raise(exc: Exception):
    raise exc


def _owned(hub, node, call):
    """``None`` unless ``node`` is an LXD node; else the awaitable ``call(backend)``."""
    if node.backend != BACKEND:
        return None
    try:
        backend = _backend(hub)
    except Unavailable as exc:
        return _raise(exc)
    return call(backend)


@hookimpl
def config_sections():
    from .config import SECTIONS

    return SECTIONS


@hookimpl
def startup(hub):
    settings = hub.settings.section("lxd")
    if not settings.enabled:
        return None
    from .backend import LxdBackend  # imports pylxd and requests

    backend = LxdBackend(settings, exec_slots=hub.settings.limits.exec_concurrency)
    hub.plugin_state[STATE_KEY] = backend
    hub.spawn(backend.watchdog(), name="lxd-output-watchdog")
    return None


@hookimpl
def shutdown(hub):
    backend = hub.plugin_state.pop(STATE_KEY, None)
    if backend is None:
        return None
    import asyncio

    return asyncio.get_running_loop().run_in_executor(None, backend.close)


@hookimpl
def list_nodes(hub):
    if not hub.settings.section("lxd").enabled:
        return None
    return _backend(hub).list_nodes()


@hookimpl
def execute(hub, node, command, options):
    return _owned(hub, node, lambda b: b.execute(node, command, options))


@hookimpl
def read_file(hub, node, path, options):
    def call(backend):
        from . import files

        return files.read(backend, node, path, options)

    return _owned(hub, node, call)


@hookimpl
def write_file(hub, node, path, data, options):
    def call(backend):
        from . import files

        return files.write(backend, node, path, data, options)

    return _owned(hub, node, call)


def _streaming(hub, node):
    """The backend if it can stream files of ``node``; None (the core then uses the buffered
    read_file / write_file) for another backend's node, a backend not running, or https."""
    if node.backend != BACKEND:
        return None
    backend = hub.plugin_state.get(STATE_KEY)
    return backend if backend is not None and backend.streams is not None else None


@hookimpl
def open_file_stream(hub, node, path, options):
    backend = _streaming(hub, node)
    if backend is None:
        return None
    from . import files

    return files.open_stream(backend, node, path, options)


@hookimpl
def write_file_stream(hub, node, path, chunks, options):
    backend = _streaming(hub, node)
    if backend is None:
        return None
    from . import files

    return files.write_stream(backend, node, path, chunks, options)


@hookimpl
def container_op(hub, node, op, args):
    def call(backend):
        from . import containers

        return containers.container_op(backend, node, op, dict(args))

    return _owned(hub, node, call)
