"""claude_net.Backend: the hooks it makes, the capability checks of the core, config validation."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import types
from dataclasses import dataclass, field

import pytest

from claude_net import (
    Backend,
    ExecOptions,
    ExecResult,
    Node,
    NotSupported,
    ReadOptions,
    Unavailable,
    help_field,
    hookimpl,
)
from claude_net.config import load_settings
from claude_net.backend import CAPABILITY
from claude_net.plugins import config_problems, make_plugin_manager


@dataclass
class MemoSettings:
    # node name -> capabilities it lists (a node may list less than the backend can do)
    nodes: dict[str, list[str]] = field(default_factory=lambda: {
        "m1": ["exec", "file_read", "file_write"], "m2": ["file_read"], "m3": ["exec", "container"]})
    limit: int = help_field(10, "Largest command, in characters.")


class Memo(Backend):
    """Files in a dict, commands echoed: just enough to watch the base at work."""

    name = "memo"
    config = MemoSettings
    log: list[str] = []

    @classmethod
    def validate_settings(cls, settings):
        if settings.limit < 1:
            yield "limit", "must be at least 1"
        for name in settings.nodes:
            if not name.startswith("m"):
                yield f"nodes.{name}", "memo node names start with 'm'"

    def __init__(self, hub, settings):
        super().__init__(hub, settings)
        self.files: dict[tuple[str, str], bytes] = {}
        self.calls: list[tuple[str, str]] = []

    async def start(self):
        Memo.log.append("start")

    async def close(self):
        Memo.log.append("close")

    async def list_nodes(self):
        return [Node(name, self.name, state="running", capabilities=frozenset(caps))
                for name, caps in self.settings.nodes.items()]

    async def execute(self, node, command, options):
        self.calls.append(("execute", node.name))
        return ExecResult(0, f"{node.name}: {command}\n".encode())

    async def read_file(self, node, path, options):
        self.calls.append(("read_file", node.name))
        return self.files.get((node.name, path), b"")

    async def write_file(self, node, path, data, options):
        self.calls.append(("write_file", node.name))
        self.files[(node.name, path)] = data
        return {"stored": len(data)}


def memo_plugin():
    return types.SimpleNamespace(__name__="memo", **Memo.hookimpls())


#: the firstresult hooks a backend owns (others, such as request_approval, belong to other plugins)
FIRSTRESULT_HOOKS = tuple(CAPABILITY)


def test_the_hooks_are_plain_functions_that_pass_on_foreign_nodes_synchronously():
    hooks = Memo.hookimpls()
    assert set(FIRSTRESULT_HOOKS) <= set(hooks)
    for name in FIRSTRESULT_HOOKS:
        assert not inspect.iscoroutinefunction(hooks[name]), name
    hub = object()  # never touched for another backend's node
    foreign = Node("web", backend="ssh", capabilities=frozenset({"exec", "file_read", "file_write", "container"}))
    assert hooks["execute"](hub, foreign, "true", ExecOptions(timeout=1)) is None
    assert hooks["read_file"](hub, foreign, "/x", ReadOptions(max_size=1)) is None
    assert hooks["write_file"](hub, foreign, "/x", b"", None) is None
    assert hooks["open_file_stream"](hub, foreign, "/x", None) is None
    assert hooks["container_op"](hub, foreign, "start", {}) is None
    pm = make_plugin_manager(plugins=[memo_plugin()], load_entrypoints=False)
    assert pm.failures == [] and pm.has_plugin("memo")


def test_capabilities_follow_the_methods_written():
    assert Memo.capabilities == frozenset({"exec", "file_read", "file_write"})
    assert Memo.node("m9", "running", where="here") == Node(
        "m9", "memo", "running", frozenset({"exec", "file_read", "file_write"}), {"where": "here"})

    class Nameless(Backend):
        pass

    with pytest.raises(TypeError, match="name must be set"):
        Nameless.hookimpls()


async def test_a_backend_that_is_not_running_answers_503_from_its_awaitable():
    hooks = Memo.hookimpls()
    hub = types.SimpleNamespace(plugin_state={})
    own = Node("m1", "memo", capabilities=frozenset({"exec"}))
    awaitable = hooks["execute"](hub, own, "true", ExecOptions(timeout=1))
    with pytest.raises(Unavailable) as caught:
        await awaitable
    assert caught.value.code == "backend_unavailable" and "memo backend is not running" in caught.value.message


async def test_exec_and_files_through_the_hub_and_the_lifecycle(hub_harness):
    Memo.log.clear()
    async with hub_harness(plugins=[memo_plugin()]) as h:
        assert Memo.log == ["start"]
        backend = h.hub.plugin_state["memo"]
        assert isinstance(backend, Memo) and Memo.running(h.hub) is backend
        admin = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", admin, {"target": "m1", "command": "hello"})
        assert status == 200 and body["stdout"] == "m1: hello\n" and body["exitCode"] == 0, body
        status, body = await h.call("POST", "/api/file/write", admin, {"target": "m1", "path": "/a", "content": "xy"})
        assert status == 200 and body["stored"] == 2, body
        status, body = await h.call("POST", "/api/file/read", admin, {"target": "m1", "path": "/a"})
        assert status == 200 and body["content"] == "xy"
        # no stream methods: the raw endpoint is served by read_file
        response = await h.client.get("/api/file/raw?target=m1&path=/a", headers={"Authorization": f"Bearer {admin}"})
        assert response.status_code == 200 and await response.get_data() == b"xy"
    assert Memo.log == ["start", "close"]
    assert "memo" not in h.hub.plugin_state and Memo.running(h.hub) is None


async def test_undeclared_capabilities_are_refused_before_any_backend_call(hub_harness):
    async with hub_harness(plugins=[memo_plugin()]) as h:
        backend = h.hub.plugin_state["memo"]
        admin = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", admin, {"target": "m2", "command": "hello"})
        assert status == 400 and body["code"] == "not_capable" and "'exec' capability" in body["error"], body
        status, body = await h.call("POST", "/api/file/write", admin, {"target": "m2", "path": "/a", "content": "x"})
        assert status == 400 and body["code"] == "not_capable", body
        response = await h.client.put("/api/file/raw?target=m3&path=/a", data=b"x",
                                      headers={"Authorization": f"Bearer {admin}"})
        assert response.status_code == 400 and (await response.get_json())["code"] == "not_capable"
        status, body = await h.call("POST", "/api/container/snapshot", admin, {"name": "m1"})
        assert status == 400 and body["code"] == "not_a_container" and "not a container" in body["error"], body
        # m3 lists "container" but Memo has no container_op: the base answers for it
        status, body = await h.call("POST", "/api/container/start", admin, {"name": "m3"})
        assert status == 400 and body["code"] == "not_a_container", body
        assert backend.calls == []


class Refuser:
    """A plain-hook backend that refuses container operations one way or the other."""

    __name__ = "refuser"

    @hookimpl
    def list_nodes(self):
        return [Node(n, "refuser", "running", frozenset({"container"})) for n in ("now", "later")]

    @hookimpl
    def container_op(self, node, op):
        if node.backend != "refuser":
            return None
        if node.name == "now":
            raise NotSupported(f"{node.name} cannot {op}", code="cannot_do")

        async def later():
            raise NotSupported(f"{node.name} cannot {op}", code="cannot_do")

        return later()


async def test_container_op_may_refuse_directly_or_from_its_awaitable(hub_harness):
    async with hub_harness(plugins=[Refuser()]) as h:
        admin = await h.token("boss", admin=True)
        for name in ("now", "later"):
            status, body = await h.call("POST", "/api/container/stop", admin, {"name": name})
            assert status == 400 and body == {"ok": False, "error": f"{name} cannot stop", "code": "cannot_do"}


class AsyncExecute:
    __name__ = "async_execute"

    @hookimpl
    async def execute(self, node, command, options):  # breaks the sync/async rule on purpose
        return None


async def test_hub_harness_fails_loudly_on_a_plugin_that_breaks_the_sync_rule(hub_harness):
    with pytest.raises(pytest.fail.Exception, match="plugin async_execute was not loaded: execute must be a plain"):
        async with hub_harness(plugins=[AsyncExecute()]):
            pass


def test_validate_config_names_the_file_or_the_variable(tmp_path):
    path = tmp_path / "claude-net.toml"
    path.write_text('[memo]\nlimit = 0\n[memo.nodes]\nm1 = ["exec"]\nx1 = ["exec"]\n')
    settings = load_settings(path, environ={})
    pm = make_plugin_manager(plugins=[memo_plugin()], load_entrypoints=False)
    problems = config_problems(settings, pm, {"memo": MemoSettings})
    assert problems == [f"{path}: memo.limit: must be at least 1",
                        f"{path}: memo.nodes.x1: memo node names start with 'm'"]
    settings = load_settings(path, environ={"CLAUDE_NET_MEMO__LIMIT": "5", "CLAUDE_NET_MEMO__NODES__Y2": '["exec"]'})
    problems = config_problems(settings, pm, {"memo": MemoSettings})
    assert problems == [f"{path}: memo.nodes.x1: memo node names start with 'm'",
                        "environment variable CLAUDE_NET_MEMO__NODES__Y2: memo.nodes.y2: memo node names start with 'm'"]


def test_a_broken_validate_config_is_reported_as_the_plugins_problem(tmp_path):
    class Broken:
        __name__ = "broken"

        @hookimpl
        def validate_config(self, settings):
            raise RuntimeError("oops")

    pm = make_plugin_manager(plugins=[Broken()], load_entrypoints=False)
    problems = config_problems(load_settings(None, environ={}), pm, {})
    assert problems == ["plugin broken: its configuration check failed: RuntimeError: oops"]


def test_a_bad_list_item_from_the_environment_is_blamed_on_the_variable(tmp_path):
    path = tmp_path / "claude-net.toml"
    path.write_text('admins = ["chasclaude"]\n')
    with pytest.raises(Exception) as caught:
        load_settings(path, environ={"CLAUDE_NET_ADMINS": "[1, 2]"})
    assert str(caught.value) == "environment variable CLAUDE_NET_ADMINS: admins.0 must be a string, got 1"


def check(tmp_path, config: str, **env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "claude-net.toml"
    path.write_text(config)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_NET_")}
    return subprocess.run([sys.executable, "-m", "claude_net.cli", "--config", str(path), "check"],
                          env={**environ, **env}, capture_output=True, text=True, timeout=120)


def test_claude_net_check_runs_the_plugins_validation(tmp_path):
    """The installed SSH plugin's checks, through the real CLI, blamed where the value came from."""
    out = check(tmp_path, '[ssh.nodes.ser-8]\nhost = "h"\nshell = "bash"\n[ssh.nodes.ok]\nhost = "h"\n')
    assert out.returncode == 1
    assert out.stderr.strip() == (f"error: {tmp_path / 'claude-net.toml'}: ssh.nodes.ser-8: shell must be an absolute "
                                  "path such as /bin/bash, or empty for the login shell")
    out = check(tmp_path, '[ssh.nodes.ok]\nhost = "h"\n', **{"CLAUDE_NET_SSH__NODES__SER-8__PORT": "70000"})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: environment variable CLAUDE_NET_SSH__NODES__SER-8__PORT: ssh.nodes.ser-8: host is required"]
    out = check(tmp_path, '[ssh.nodes.ok]\nhost = "h"\n')
    assert out.returncode == 0 and "configuration OK" in out.stdout, out.stderr


def test_the_lxd_and_ssh_plugins_are_backends_on_the_base():
    import claude_net_lxd
    import claude_net_ssh

    for module, cls in ((claude_net_lxd, "Lxd"), (claude_net_ssh, "Ssh")):
        backend = getattr(module, cls)
        assert issubclass(backend, Backend)
        for hook in FIRSTRESULT_HOOKS + ("startup", "shutdown", "list_nodes", "config_sections"):
            assert getattr(module, hook).__qualname__ == f"{cls}.hookimpls.{hook}", (module.__name__, hook)
    assert claude_net_lxd.Lxd.capabilities == frozenset({"exec", "file_read", "file_write", "container"})
    assert claude_net_ssh.Ssh.capabilities == frozenset({"exec", "file_read", "file_write"})  # not containers
