"""Fixtures for the SSH backend: a real private OpenSSH sshd, and a hub that knows it as ``ser-8``.

Like every test of the suite, each SSH test runs on SQLite and on PostgreSQL (the core's
``database_url`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import claude_net_ssh
from claude_net import hookimpl
from claude_net.testing import require_component
from claude_net_ssh.testserver import PrivateSshd, sshd_available


def _require_sshd() -> None:
    ok, why = sshd_available()
    require_component("OpenSSH sshd", ok, why)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """One private sshd per test module (MaxSessions 10, like a stock server)."""
    _require_sshd()
    server = PrivateSshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_sshd(tmp_path):
    """A private sshd for one test, which may stop or restart it."""
    _require_sshd()
    server = PrivateSshd(tmp_path / "own-sshd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


class EventRecorder:
    """A test plugin that keeps every event the hub emits."""

    __name__ = "event_recorder"

    def __init__(self) -> None:
        self.events = []

    @hookimpl
    def on_event(self, event):
        self.events.append(event)

    def of_type(self, type_: str, result: str | None = None):
        return [e for e in self.events if e.type == type_ and (result is None or e.result == result)]


class SshHub:
    """What ``ssh_hub`` yields: the harness, tokens, the recorder and shortcuts for the API."""

    def __init__(self, harness, recorder, admin, plain) -> None:
        self.h = harness
        self.hub = harness.hub
        self.recorder = recorder
        self.admin = admin
        self.plain = plain

    @property
    def backend(self):
        return self.hub.plugin_state["ssh"]

    async def exec(self, command, target="ser-8", token=None, **extra):
        return await self.h.call("POST", "/api/exec", token or self.admin, {"target": target, "command": command, **extra})

    async def ok(self, command, target="ser-8", **extra) -> dict:
        status, body = await self.exec(command, target, **extra)
        assert status == 200, body
        return body

    async def read(self, path, target="ser-8", token=None, **extra):
        return await self.h.call("POST", "/api/file/read", token or self.admin, {"target": target, "path": path, **extra})

    async def write(self, path, content, target="ser-8", token=None, **extra):
        return await self.h.call("POST", "/api/file/write", token or self.admin,
                                 {"target": target, "path": path, "content": content, **extra})

    async def wait_connected(self, name="ser-8", timeout=10.0):
        node = self.backend.nodes[name]
        deadline = asyncio.get_running_loop().time() + timeout
        while not node.connected:
            assert asyncio.get_running_loop().time() < deadline, node.error
            await asyncio.sleep(0.02)


@pytest.fixture
def ssh_hub(hub_harness, sshd):
    """``async with ssh_hub(nodes=..., limits=..., **ssh_settings) as s:`` a started hub with the SSH backend.

    Without ``nodes``: one node ``ser-8`` on the module's sshd, host key pinned. ``ssh_settings``
    go to ``[ssh]`` (fast timeouts by default).
    """

    @contextlib.asynccontextmanager
    async def make(nodes=None, limits=None, **ssh):
        recorder = EventRecorder()
        section = {"connect_timeout": 3.0, "kill_grace": 1.0, **ssh,
                   "nodes": nodes if nodes is not None else {"ser-8": sshd.node_config()}}
        overrides = {"ssh": section, "admins": ["chasclaude"]}
        if limits:
            overrides["limits"] = limits
        async with hub_harness(plugins=[claude_net_ssh, recorder], **overrides) as h:
            admin = await h.token("chasclaude")
            plain = await h.token("managerclaude")
            yield SshHub(h, recorder, admin, plain)

    return make
