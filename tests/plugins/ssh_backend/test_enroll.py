"""``claude-net enroll`` for an SSH node (files written over SFTP), checked with the real Claude
Code CLI: the node is this machine's private test sshd, so the ``headersHelper`` enroll wrote runs
here, as it would on the node, and ``claude mcp list`` connects to a real hub with the token file.

The token file and the configuration go to a temporary directory (``--token-file``,
``--mcp-json``): the SSH login is root on this machine, whose own ``~/.claude.json`` is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from claude_net.testing import HubProcess, require_component
from tests.docs.conftest import claude_binary


def toml_value(value: object) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


@pytest.mark.db("sqlite")  # enroll's database work is the LXD tests' (both databases)
def test_enroll_an_ssh_node_then_claude_code_connects(sshd, database_url, tmp_path):
    claude = claude_binary()
    require_component("Claude Code CLI", claude is not None, "run scripts/dev-services claude")
    node = "\n".join(f"{key} = {toml_value(value)}" for key, value in sshd.node_config().items())
    (tmp_path / "hub").mkdir()
    hub = HubProcess(f"[lxd]\nenabled = false\n[ssh.nodes.ser-8]\n{node}\n", database_url=database_url,
                     workdir=str(tmp_path / "hub"))
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir(), home.mkdir()
    token_file, config = tmp_path / "agent-token", project / ".mcp.json"
    try:
        hub.start(timeout=120)

        def enroll(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "claude_net.cli", "enroll", "ser-8", *extra],
                                  env=hub.env, capture_output=True, text=True, timeout=120)

        missing = enroll("--token-file", str(token_file), "--mcp-json", str(config))
        assert missing.returncode == 1 and "--url" in missing.stderr  # no bridge to find on an SSH node

        args = ("--url", hub.url, "--token-file", str(token_file), "--mcp-json", str(config))
        done = enroll(*args)
        assert done.returncode == 0, done.stderr
        assert f"hub    {hub.url} (given with --url)" in done.stdout
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        entry = json.loads(config.read_text())["mcpServers"]["claude-net"]
        assert entry["url"] == f"{hub.url}/mcp" and entry["x-claude-net-enroll"]["tokenFile"] == str(token_file)
        assert enroll(*args).stdout.startswith("ser-8 is already enrolled; nothing changed")

        # the real client, using only what enroll wrote (the project's servers approved, as a user would)
        (home / ".claude.json").write_text(json.dumps({"projects": {str(project): {
            "enabledMcpjsonServers": ["claude-net"], "hasTrustDialogAccepted": True}}}))
        env = {**os.environ, "HOME": str(home), "DISABLE_AUTOUPDATER": "1",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}

        def listed() -> str:
            out = subprocess.run([claude, "mcp", "list"], cwd=project, env=env, capture_output=True, text=True,
                                 timeout=180)
            return next(line for line in out.stdout.splitlines() if line.startswith("claude-net:"))

        assert "✔ Connected" in listed()
        old = token_file.read_text()
        assert enroll(*args, "--rotate").returncode == 0
        assert token_file.read_text() != old and "✔ Connected" in listed()  # no config edit needed
        token_file.write_text(old)  # the revoked one
        assert "✘ Failed to connect" in listed()
    finally:
        hub.stop()
