"""Unit-level checks of the plugin that need no LXD daemon."""

from __future__ import annotations

import inspect
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from importlib import metadata

import pytest

from claude_net.testing import require_component

import claude_net_lxd
from claude_net import BadRequest, ExecOptions, Node, ReadOptions


def test_entry_point_is_registered():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="claude_net")}
    assert eps.get("lxd") == "claude_net_lxd"


def test_import_is_light():
    code = ("import sys, claude_net_lxd; claude_net_lxd.config_sections(); "
            "heavy = [m for m in ('pylxd', 'requests', 'urllib3', 'claude_net_lxd.backend') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_firstresult_hooks_are_plain_functions_that_pass_on_foreign_nodes():
    foreign = Node("web", backend="ssh")
    for hook in ("execute", "read_file", "write_file", "container_op"):
        fn = getattr(claude_net_lxd, hook)
        assert not inspect.iscoroutinefunction(fn), hook
    hub = object()  # never touched for a foreign node
    assert claude_net_lxd.execute(hub, foreign, "true", ExecOptions(timeout=1)) is None
    assert claude_net_lxd.read_file(hub, foreign, "/x", ReadOptions(max_size=1)) is None
    assert claude_net_lxd.write_file(hub, foreign, "/x", b"", None) is None
    assert claude_net_lxd.container_op(hub, foreign, "start", {}) is None


async def test_config_section_and_node_overrides(hub_harness):
    lxd = {"shell": "/bin/bash", "user": 1000, "env": {"A": "1"}, "include": ["dev-*"], "exclude": ["dev-old*"],
           "nodes": {"dev-db": {"shell": "/bin/sh", "group": 50, "cwd": "/srv", "env": {"B": "2"}}}}
    async with hub_harness(plugins=[claude_net_lxd], lxd=lxd) as h:
        settings = h.hub.settings.section("lxd")
        assert settings.nodes["dev-db"].group == 50
        backend = h.hub.plugin_state["lxd"]
        assert backend.node_settings("dev-db") == ("/bin/sh", 1000, 50, "/srv", {"A": "1", "B": "2"})
        assert backend.node_settings("dev-web") == ("/bin/bash", 1000, 0, "", {"A": "1"})
        assert backend.wanted("dev-web") and not backend.wanted("dev-old1") and not backend.wanted("prod")
    assert "lxd" not in h.hub.plugin_state  # shutdown released it


async def test_disabled_backend_stays_out_of_the_way(hub_harness):
    async with hub_harness(plugins=[claude_net_lxd], lxd={"enabled": False}) as h:
        assert "lxd" not in h.hub.plugin_state
        token = await h.token("alpha")
        status, body = await h.call("GET", "/api/machines", token)
        assert status == 200 and body["unavailable"] == {}


def test_parse_expiry():
    from claude_net_lxd.containers import parse_expiry

    now = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
    assert parse_expiry(None, now) is None
    assert parse_expiry("never", now) is None
    assert parse_expiry("7d", now) == now + timedelta(days=7)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2w", now) == now + timedelta(weeks=2)
    assert parse_expiry("90s", now) == now + timedelta(seconds=90)
    assert parse_expiry("2026-12-01T00:00:00Z", now) == datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert parse_expiry("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=timezone.utc)
    for bad in ("tomorrow", "2020-01-01", "-1d", 5):
        with pytest.raises(BadRequest):
            parse_expiry(bad, now)


def test_unique_snapshot_name():
    from claude_net_lxd.containers import unique_name

    assert unique_name("2026-11-26", set()) == "2026-11-26"
    assert unique_name("2026-11-26", {"2026-11-26"}) == "2026-11-26-2"
    assert unique_name("2026-11-26", {"2026-11-26", "2026-11-26-2", "2026-11-26-3"}) == "2026-11-26-4"


@pytest.mark.parametrize("shell", [["/bin/sh"], ["busybox", "sh"], ["bash", "--posix"]])
def test_in_container_scripts_are_valid_posix_sh(shell):
    from claude_net_lxd import scripts

    import shutil

    require_component(shell[0], shutil.which(shell[0]) is not None, "the scripts are checked under each shell")
    for name in ("EXEC_WRAPPER", "PROBE", "KILL", "WRITE_COMMIT"):
        result = subprocess.run([*shell, "-n", "-c", getattr(scripts, name)], capture_output=True, text=True)
        assert result.returncode == 0, (name, result.stderr)


def test_exec_wrapper_runs_under_dash_too(tmp_path):
    """The wrapper's contract, run locally under /bin/sh: streams, cap, exit status."""
    from claude_net_lxd import scripts

    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as o, open(err, "wb") as e:
        code = subprocess.run(["/bin/sh", "-c", scripts.EXEC_WRAPPER, "claude-net", "/bin/sh",
                               "echo hello; seq 1 100000 >&2; exit 7", "11", "m1"], stdout=o, stderr=e).returncode
    assert code == 7
    assert out.read_bytes() == b"hello\n"
    assert err.read_bytes() == b"1\n2\n3\n4\n5\n6"
