"""Fixtures for the activity plugin tests (same backend as tests/plugins/permissions): a tiny in-memory backend owning box1 and box2."""

from __future__ import annotations

import asyncio

import pytest

from claude_net import ExecResult, Node, NotFound, hookimpl


class BoxBackend:
    """A test backend plugin: owns ``names``; exec echoes, files live in a dict; records every call.

    ``gate`` (an asyncio.Event) makes exec wait until it is set; ``started`` is set when an exec
    reaches the backend.
    """

    CAPS = frozenset({"exec", "file_read", "file_write", "container"})

    def __init__(self, names=("box1", "box2")):
        self.names = tuple(names)
        self.calls: list[tuple[str, str, str]] = []
        self.files: dict[tuple[str, str], bytes] = {}
        self.gate: asyncio.Event | None = None
        self.started: asyncio.Event | None = None
        self.fail: Exception | None = None

    def _mine(self, node) -> bool:
        return node.backend == "testbox" and node.name in self.names

    @hookimpl
    def list_nodes(self):
        return [Node(n, backend="testbox", state="running", capabilities=self.CAPS) for n in self.names]

    @hookimpl
    def execute(self, node, command, options):
        if not self._mine(node):
            return None
        return self._exec(node, command)

    async def _exec(self, node, command):
        self.calls.append(("exec", node.name, command))
        if self.started is not None:
            self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return ExecResult(exit_code=0, stdout=f"{node.name}: {command}".encode(), duration_ms=1.0)

    @hookimpl
    def read_file(self, node, path, options):
        if not self._mine(node):
            return None
        return self._read(node, path)

    async def _read(self, node, path):
        self.calls.append(("file_read", node.name, path))
        try:
            return self.files[(node.name, path)]
        except KeyError:
            raise NotFound(f"{path} does not exist on {node.name}") from None

    @hookimpl
    def write_file(self, node, path, data, options):
        if not self._mine(node):
            return None
        return self._write(node, path, data)

    async def _write(self, node, path, data):
        self.calls.append(("file_write", node.name, path))
        self.files[(node.name, path)] = data
        return None

    @hookimpl
    def container_op(self, node, op, args):
        if not self._mine(node):
            return None
        return self._op(node, op)

    async def _op(self, node, op):
        self.calls.append(("container", node.name, op))
        return {"state": "running" if op != "stop" else "stopped"}


@pytest.fixture
def box():
    return BoxBackend()
