"""The plugin manager: built-in plugins plus the ``claude_net`` entry-point group.

One manager per hub (no module-level registry): tests build hubs with different plugin sets.
A plugin that fails to import is recorded in ``manager.failures`` and skipped, never fatal.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs

log = logging.getLogger("claude_net.plugins")

PROJECT = "claude_net"
#: built-in behaviour is plugins too, registered like any other (and deniable by name)
DEFAULT_PLUGINS = (
    "claude_net.builtin.roles",
    "claude_net.builtin.messaging",
    "claude_net.builtin.capabilities",
    "claude_net.builtin.jobs",
    "claude_net.builtin.meta",
    "claude_net.builtin.enroll",
)


@dataclass(frozen=True)
class PluginFailure:
    name: str
    error: str


class PluginManager(pluggy.PluginManager):
    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        #: plugin name -> distribution "name version" (for `claude-net plugins`)
        self.sources: dict[str, str] = {}

    def describe(self) -> list[dict[str, Any]]:
        """Loaded plugins with the hooks each implements (for `claude-net plugins`)."""
        rows = []
        for name, plugin in sorted(self.list_name_plugin(), key=lambda item: item[0]):
            if plugin is None:
                continue
            hooks = sorted(
                hook.name for hook in self.get_hookcallers(plugin) or () if not hook.name.startswith("_")
            )
            rows.append({"name": name, "source": self.sources.get(name, "built-in"), "hooks": hooks})
        return rows


def make_plugin_manager(
    *,
    plugins: Iterable[Any] = (),
    load_entrypoints: bool = True,
    allow: Iterable[str] = (),
    deny: Iterable[str] = (),
    trace: bool = False,
) -> PluginManager:
    """Build a manager: DEFAULT_PLUGINS, then entry points (filtered), then ``plugins`` (objects)."""
    pm = PluginManager()
    allow_set, deny_set = set(allow), set(deny)
    for dotted in DEFAULT_PLUGINS:
        short = dotted.rsplit(".", 1)[-1]
        if dotted in deny_set or short in deny_set:
            continue
        try:
            pm.register(importlib.import_module(dotted), name=dotted)
        except Exception as exc:  # a broken built-in is a bug, but still not fatal to others
            log.exception("built-in plugin %s failed to load", dotted)
            pm.failures.append(PluginFailure(dotted, f"{type(exc).__name__}: {exc}"))
    if load_entrypoints:
        for ep in _entry_points():
            if ep.name in deny_set or (allow_set and ep.name not in allow_set):
                continue
            if pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                log.error("plugin %r (%s) failed to load and is skipped: %s: %s",
                          ep.name, ep.value, type(exc).__name__, exc)
                pm.failures.append(PluginFailure(ep.name, f"{type(exc).__name__}: {exc}"))
                continue
            dist = getattr(ep, "dist", None)
            pm.sources[ep.name] = f"{dist.name} {dist.version}" if dist else ep.value
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
        pm.register(plugin, name=name)
        pm.sources[name] = "explicit"
    pm.check_pending()
    check_firstresult_impls(pm)
    if trace:
        pm.trace.root.setwriter(log.debug)
        pm.enable_tracing()
    return pm


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=PROJECT), key=lambda ep: ep.name)


#: the hooks whose first non-None answer wins (execute, read_file, write_file, open_file_stream, ...)
FIRSTRESULT_HOOKS = tuple(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                          if getattr(fn, "claude_net_spec", {}).get("firstresult"))


def check_firstresult_impls(pm: pluggy.PluginManager) -> None:
    """Refuse ``async def`` impls of firstresult hooks: a coroutine is never None, so it would always win."""
    for hook_name in FIRSTRESULT_HOOKS:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if inspect.iscoroutinefunction(impl.function):
                message = (
                    f"{hook_name} must be a plain function that returns None when the node is not "
                    "its own and an awaitable otherwise (not async def); plugin skipped"
                )
                log.error("plugin %r: %s", impl.plugin_name, message)
                pm.unregister(impl.plugin)
                if isinstance(pm, PluginManager):
                    pm.failures.append(PluginFailure(impl.plugin_name, message))


def config_problems(settings: Any, pm: pluggy.PluginManager, sections: Mapping[str, type]) -> list[str]:
    """Every configuration problem, each naming the file or environment variable and the key.

    Parses the plugin sections (unknown keys, wrong types) and then asks every ``validate_config``
    implementation; what ``claude-net check`` prints and what stops ``claude-net serve``.
    """
    problems = settings.bind_sections(sections, strict=False)
    for impl in pm.hook.validate_config.get_hookimpls():
        try:
            answers = list(impl.function(**{a: settings for a in impl.argnames}) or ())
        except Exception as exc:  # a broken check is the plugin's problem, reported like one
            log.exception("validate_config of %s failed", impl.plugin_name)
            problems.append(f"plugin {impl.plugin_name}: its configuration check failed: {type(exc).__name__}: {exc}")
            continue
        for answer in answers:
            key, message = answer if isinstance(answer, tuple) else ("", str(answer))
            problems.append(settings.problem(key, message))
    return problems
