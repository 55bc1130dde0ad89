"""docs/mcp.md's ``claude mcp add`` commands, run with the real Claude Code CLI against a real hub.

Each command is taken from the page and run as written, with two substitutions: the hub's URL for
the page's ``http://10.0.3.1:8765`` and a real token for ``cn_0123456789ab_...``. Then
``claude mcp list`` (which connects to every configured server) must show the server connected,
and, with a token the hub does not know, failed. HOME is a fresh directory for every run, so
nothing touches the real ``~/.claude.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from claude_net.testing import database_for

from .conftest import hub_process
from .mdblocks import block_with

# What is checked is the Claude Code CLI against the docs' commands; the MCP endpoint runs on
# both databases in tests/plugins/mcp. One database keeps the suite's time down.
pytestmark = pytest.mark.db("sqlite")

PAGE = "docs/mcp.md"
URL, TOKEN = "http://10.0.3.1:8765", "cn_0123456789ab_..."
#: well formed, but no such token: the hub rejects it
BAD_TOKEN = "cn_000000000000_" + "A" * 43
STDIO = block_with(PAGE, "claude mcp add --transport stdio")
HTTP = block_with(PAGE, "claude mcp add --transport http")


@pytest.fixture(scope="module")
def hub(package_db_kind, tmp_path_factory):
    with database_for(package_db_kind, tmp_path_factory.mktemp("mcp-docs-db")) as url:
        with hub_process("[lxd]\nenabled = false\n", url, tmp_path_factory.mktemp("mcp-docs-hub")) as process:
            process.agent = process.token("seanclaude")
            yield process


def environment(claude_bin: str, home: Path, **extra: str) -> dict[str, str]:
    """``claude`` and ``claude-net-mcp`` on PATH, a private HOME, no update checks."""
    path = os.pathsep.join([str(Path(claude_bin).parent), str(Path(sys.executable).parent), os.environ["PATH"]])
    return {**os.environ, "PATH": path, "HOME": str(home), "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", **extra}


def sh(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=180)


def listed(env: dict[str, str], cwd: Path) -> dict[str, str]:
    """``claude mcp list`` as {server name: its line}."""
    out = sh("claude mcp list", env, cwd)
    assert out.returncode == 0, out.stderr
    return {line.split(":", 1)[0]: line for line in out.stdout.splitlines() if line.startswith("claude-net")}


@pytest.mark.parametrize("block", [STDIO, HTTP], ids=["stdio", "http"])
def test_claude_mcp_add_as_documented_connects(block, hub, claude_bin, tmp_path):
    env = environment(claude_bin, tmp_path)
    added = sh(block.substitute({URL: hub.url, TOKEN: hub.agent}), env, tmp_path)
    assert added.returncode == 0, f"{block.where()} fails with the real Claude Code CLI: {added.stderr}"
    config = json.loads((tmp_path / ".claude.json").read_text())
    assert "claude-net" in config["mcpServers"]  # user scope, as the page says
    line = listed(env, tmp_path)["claude-net"]
    assert "✔ Connected" in line, line


@pytest.mark.parametrize("block", [STDIO, HTTP], ids=["stdio", "http"])
def test_a_bad_token_shows_failed(block, hub, claude_bin, tmp_path):
    env = environment(claude_bin, tmp_path)
    assert sh(block.substitute({URL: hub.url, TOKEN: BAD_TOKEN}), env, tmp_path).returncode == 0
    line = listed(env, tmp_path)["claude-net"]
    assert "✘ Failed to connect" in line, line


@pytest.mark.parametrize("needle", ['"type": "stdio"', '"type": "http"'], ids=["stdio", "http"])
def test_project_mcp_json_as_documented_connects(needle, hub, claude_bin, tmp_path):
    """The page's ``.mcp.json`` examples: the token comes from the environment (``${CLAUDE_NET_TOKEN}``)."""
    block = block_with(PAGE, needle, lang="json")
    project = tmp_path / "project"
    project.mkdir()
    (project / ".mcp.json").write_text(block.substitute({URL: hub.url}))
    home = tmp_path / "home"
    home.mkdir()
    # a project's servers are used once the user approved them; this is that approval
    (home / ".claude.json").write_text(json.dumps({"projects": {str(project): {
        "enabledMcpjsonServers": ["claude-net"], "hasTrustDialogAccepted": True}}}))
    good = listed(environment(claude_bin, home, CLAUDE_NET_TOKEN=hub.agent), project)["claude-net"]
    assert "✔ Connected" in good, good
    bad = listed(environment(claude_bin, home, CLAUDE_NET_TOKEN=BAD_TOKEN), project)["claude-net"]
    assert "✘ Failed to connect" in bad, bad
