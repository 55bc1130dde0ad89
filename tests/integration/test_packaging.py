"""Every plugin installs on its own with plain pip next to the core, and is found by entry point."""

import json
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIRS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))

pytestmark = pytest.mark.slow


def test_every_plugin_directory_is_a_distribution_with_an_entry_point():
    assert {p.name for p in PLUGIN_DIRS} >= {"lxd_backend", "ssh_backend", "telegram", "activity", "permissions", "mcp"}
    for plugin in PLUGIN_DIRS:
        meta = tomllib.loads((plugin / "pyproject.toml").read_text())
        assert meta["project"]["entry-points"]["claude_net"], plugin
        assert "claude-net" in " ".join(meta["project"]["dependencies"]), plugin
        assert (plugin / "README.md").exists(), plugin


@pytest.fixture(scope="module")
def core_wheel(tmp_path_factory):
    """The core built once as a wheel (plain pip), installed next to each plugin below."""
    house = tmp_path_factory.mktemp("wheels")
    builder = tmp_path_factory.mktemp("builder")
    venv.EnvBuilder(with_pip=True).create(builder)
    subprocess.run([builder / "bin" / "python", "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                    "-w", str(house), str(ROOT)], check=True, capture_output=True, timeout=600)
    return next(house.glob("claude_net-*.whl"))


@pytest.mark.parametrize("plugin", PLUGIN_DIRS, ids=lambda p: p.name)
def test_plugin_installs_alone_with_pip(plugin, tmp_path, core_wheel):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(core_wheel), str(plugin)],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600)
    check = subprocess.run([py, "-m", "pip", "check"], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    out = subprocess.run([env_dir / "bin" / "claude-net", "plugins", "--json"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    name = next(iter(tomllib.loads((plugin / "pyproject.toml").read_text())["project"]["entry-points"]["claude_net"]))
    loaded = {row["name"]: row for row in data["plugins"]}
    assert name in loaded and loaded[name]["hooks"], data
    assert data["failed"] == []
