"""Shared fixtures. The reusable ones ship in claude_net.testing (a pytest11 plugin)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (scripts/test: ``--dist loadscope --no-loadscope-reorder``) each module goes
    whole to one worker, in the order of the items: modules with tests marked ``slow`` first (a few
    tests that take minutes: handed out last, one of them would run on alone at the end), then the
    others, larger first. Every worker computes the same order; a run in one process keeps its own."""
    if not hasattr(config, "workerinput"):
        return
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def weight(tests: list[pytest.Item]) -> tuple[int, int]:
        return (-sum(t.get_closest_marker("slow") is not None for t in tests), -len(tests))

    items[:] = [item for _, tests in sorted(modules.items(), key=lambda kv: weight(kv[1])) for item in tests]
