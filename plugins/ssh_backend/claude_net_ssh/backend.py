"""The SSH backend of one hub: a :class:`NodeConnection` per configured node, and the operations.

Created by the plugin's ``startup`` hook and kept in ``hub.plugin_state["ssh"]`` (never in a
module global: one process may run several hubs); closed by ``shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

from claude_net import (
    Event,
    ExecOptions,
    ExecResult,
    FileStream,
    GatewayTimeout,
    Node,
    NotFound,
    ReadOptions,
    WriteOptions,
)

from . import execution, files
from .connection import NodeConnection
from .settings import SshSettings, check

log = logging.getLogger("claude_net_ssh")

BACKEND = "ssh"
CAPABILITIES = frozenset({"exec", "file_read", "file_write"})
#: seconds the search for an earlier command's processes may take on one node (after a restart)
REAP_TIMEOUT = 20.0


class SshBackend:
    def __init__(self, hub: Any, settings: SshSettings) -> None:
        check(settings)
        self.hub = hub
        self.settings = settings
        base_dir = hub.settings.path.parent if hub.settings.path is not None else None
        self.nodes: dict[str, NodeConnection] = {
            name: NodeConnection(name, node, settings, base_dir=base_dir, emit=self._emit)
            for name, node in sorted(settings.nodes.items())
        }
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        # asyncssh logs every channel and command line at INFO; the hub's own events say what ran.
        logging.getLogger("asyncssh").setLevel(self.settings.asyncssh_log_level.upper())
        # Open every connection in the background: the first call finds a warm pool, and
        # /api/machines has a status to show without waiting for a handshake.
        for node in self.nodes.values():
            node.probe_if_stale()

    async def close(self) -> None:
        for task in list(self._tasks):  # kill commands of cancelled execs: give them their grace
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, self.settings.kill_grace + 1)
        await asyncio.gather(*(node.close() for node in self.nodes.values()), return_exceptions=True)

    async def _emit(self, event: Event) -> None:
        await self.hub.emit(event)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def node(self, name: str) -> NodeConnection:
        try:
            return self.nodes[name]
        except KeyError:
            raise NotFound(f"unknown SSH node {name!r}", code="unknown_node") from None

    # -- hooks ----------------------------------------------------------------------------------

    def list_nodes(self) -> list[Node]:
        listed = []
        for name, node in self.nodes.items():
            node.probe_if_stale()
            listed.append(Node(name, BACKEND, state=node.state, capabilities=CAPABILITIES, info=node.info()))
        return listed

    async def execute(self, name: str, command: str, options: ExecOptions) -> ExecResult:
        node = self.node(name)
        config = node.node
        env: Mapping[str, str] = {**config.env, **options.env}
        return await execution.execute(node, command, options, shell=config.shell, cwd=options.cwd or config.cwd or None,
                                       env=env, kill_grace=self.settings.kill_grace, spawn=self._spawn)

    async def reap_exec(self, name: str, tag: str) -> int:
        return await execution.reap(self.node(name), tag, REAP_TIMEOUT)

    async def read_file(self, name: str, path: str, options: ReadOptions) -> bytes:
        node = self.node(name)
        return await self._file_op(node, path, files.read_file(node, path, options))

    async def write_file(self, name: str, path: str, data: bytes, options: WriteOptions) -> dict[str, Any]:
        node = self.node(name)
        return await self._file_op(node, path, files.write_file(node, path, data, options))

    async def open_file_stream(self, name: str, path: str, options: ReadOptions) -> FileStream:
        return await files.open_stream(self.node(name), path, options, self.settings.file_timeout)

    async def write_file_stream(self, name: str, path: str, chunks: AsyncIterator[bytes],
                                options: WriteOptions) -> dict[str, Any]:
        return await files.write_stream(self.node(name), path, chunks, options, self.settings.file_timeout)

    async def _file_op(self, node: NodeConnection, path: str, operation: Awaitable[Any]) -> Any:
        timeout = self.settings.file_timeout
        try:
            return await asyncio.wait_for(operation, timeout)
        except asyncio.TimeoutError:
            raise GatewayTimeout(f"the file operation on {path} on {node.name} did not finish within {timeout:g}s "
                                 "([ssh] file_timeout)", code="timeout") from None

