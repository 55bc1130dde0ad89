"""claude-net-ssh: machines reached over SSH (the original deployment's ``ser-8``) as hub nodes.

Only the hook implementations live here, and they stay thin: this module is imported whenever
the ``claude-net`` CLI starts, so it imports nothing heavy. asyncssh and the backend are loaded
by ``startup``; the running backend lives in ``hub.plugin_state["ssh"]``.
"""

from __future__ import annotations

from claude_net import Node, NotSupported, Unavailable, hookimpl

STATE_KEY = "ssh"
BACKEND = "ssh"


def _backend(hub):
    backend = hub.plugin_state.get(STATE_KEY)
    if backend is None:
        raise Unavailable("the SSH backend is not running (the hub has not started it)", code="backend_unavailable")
    return backend


@hookimpl
def config_sections():
    from .settings import SshSettings

    return {"ssh": SshSettings}


@hookimpl
def startup(hub):
    from .backend import SshBackend

    backend = SshBackend(hub, hub.settings.section("ssh"))
    hub.plugin_state[STATE_KEY] = backend
    return backend.start()


@hookimpl
def shutdown(hub):
    backend = hub.plugin_state.pop(STATE_KEY, None)
    return backend.close() if backend is not None else None


@hookimpl
def list_nodes(hub):
    backend = hub.plugin_state.get(STATE_KEY)
    if backend is not None:
        return backend.list_nodes()
    # A hub opened without startup (CLI commands): the configured nodes, status unknown.
    settings = hub.settings.section("ssh")
    return [Node(name, BACKEND, state="unknown", capabilities=frozenset({"exec", "file_read", "file_write"}),
                 info={"host": node.host, "port": node.port, "user": node.user})
            for name, node in sorted(settings.nodes.items())]


@hookimpl
def execute(hub, node, command, options):
    if node.backend != BACKEND:
        return None
    return _backend(hub).execute(node.name, command, options)


@hookimpl
def read_file(hub, node, path, options):
    if node.backend != BACKEND:
        return None
    return _backend(hub).read_file(node.name, path, options)


@hookimpl
def write_file(hub, node, path, data, options):
    if node.backend != BACKEND:
        return None
    return _backend(hub).write_file(node.name, path, data, options)


@hookimpl
def open_file_stream(hub, node, path, options):
    if node.backend != BACKEND:
        return None
    return _backend(hub).open_file_stream(node.name, path, options)


@hookimpl
def write_file_stream(hub, node, path, chunks, options):
    if node.backend != BACKEND:
        return None
    return _backend(hub).write_file_stream(node.name, path, chunks, options)


@hookimpl
def container_op(node, op):
    if node.backend != BACKEND:
        return None
    return _not_a_container(node.name, op)


async def _not_a_container(name: str, op: str):
    what = {"snapshot": "snapshots", "restore": "snapshot restores", "list_snapshots": "snapshots",
            "start": "starting it", "stop": "stopping it"}.get(op, f"'{op}'")
    raise NotSupported(
        f"{name} is an SSH node, not a container: {what} and the other container operations (start, stop, "
        "snapshot, restore) are not available; manage that machine directly",
        code="not_a_container")
