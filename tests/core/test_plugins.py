"""Plugin manager: defaults, entry points, allow/deny, broken plugins, the firstresult rule."""

import inspect
import json
import subprocess
import sys
import textwrap

import pytest

from claude_net import hookimpl, hookspecs
from claude_net.plugins import DEFAULT_PLUGINS, make_plugin_manager

FIRSTRESULT_HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                     if getattr(fn, "claude_net_spec", {}).get("firstresult")]


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    """Install two fake distributions with `claude_net` entry points onto sys.path."""
    (tmp_path / "good_plugin.py").write_text(textwrap.dedent("""
        from claude_net import hookimpl

        @hookimpl
        def authorize(actor, action):
            return None
    """))
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('missing dependency frobnicate')\n")
    for name, module in (("good", "good_plugin"), ("broken", "broken_plugin")):
        info = tmp_path / f"claude_net_{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: claude-net-{name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[claude_net]\n{name} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in ("good_plugin", "broken_plugin"):
        sys.modules.pop(mod, None)


def test_defaults_registered():
    pm = make_plugin_manager(load_entrypoints=False)
    names = {name for name, _ in pm.list_name_plugin()}
    assert set(DEFAULT_PLUGINS) <= names


def test_entry_points_loaded_and_broken_one_reported(fake_dists):
    pm = make_plugin_manager()
    assert pm.has_plugin("good")
    assert pm.sources["good"] == "claude-net-good 1.0"
    assert [f.name for f in pm.failures] == ["broken"]
    assert "frobnicate" in pm.failures[0].error


def test_allow_and_deny_lists(fake_dists):
    assert not make_plugin_manager(deny=["good"]).has_plugin("good")
    pm = make_plugin_manager(allow=["nothing-else"])
    assert not pm.has_plugin("good") and pm.failures == []
    pm = make_plugin_manager(deny=["messaging"], load_entrypoints=False)
    assert not pm.has_plugin("claude_net.builtin.messaging")


def test_async_firstresult_impl_is_refused():
    class Bad:
        __name__ = "bad"

        @hookimpl
        async def execute(self, node, command, options):
            return None

    pm = make_plugin_manager(plugins=[Bad()], load_entrypoints=False)
    assert [f.name for f in pm.failures] == ["bad"]
    assert pm.hook.execute.get_hookimpls() == []


def test_no_installed_firstresult_impl_is_a_coroutine_function():
    """Every installed plugin (entry points included) obeys the firstresult rule."""
    pm = make_plugin_manager()
    assert {"execute", "read_file", "write_file", "open_file_stream", "write_file_stream"} <= set(FIRSTRESULT_HOOKS)
    for hook in FIRSTRESULT_HOOKS:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            assert not inspect.iscoroutinefunction(impl.function), f"{impl.plugin_name}.{hook}"
    assert pm.failures == [] or all("firstresult" not in f.error for f in pm.failures)


def test_unknown_hook_impl_is_rejected():
    class Typo:
        __name__ = "typo"

        @hookimpl
        def on_evnt(self, event):
            pass

    with pytest.raises(Exception, match="on_evnt"):
        make_plugin_manager(plugins=[Typo()], load_entrypoints=False)


def test_cli_plugins_lists_hooks(tmp_path):
    out = subprocess.run([sys.executable, "-m", "claude_net.cli", "plugins", "--json"], capture_output=True,
                         text=True, cwd=tmp_path, check=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    data = json.loads(out.stdout)
    rows = {r["name"]: r for r in data["plugins"]}
    assert "register_routes" in rows["claude_net.builtin.messaging"]["hooks"]
    assert rows["claude_net.builtin.roles"]["hooks"] == ["authorize"]
