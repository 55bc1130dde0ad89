"""docs/operations.md, run: installing (``claude-net init`` / ``check`` / ``token create``) and
connecting an agent (``claude-net enroll``), against real hubs and a real LXD container.

Substitutions, all named here: the page's /opt/claude-net checkout is this repository and its
/etc and /var/lib directories are temporary ones; ``seanclaude`` is a container of this test
run and ``8765`` the test hub's port (in the commands and in the output the page shows).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.plugins.lxd_backend.conftest import lxc

from .conftest import hub_process
from .mdblocks import ROOT, block_with

PAGE = "docs/operations.md"


def bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_install_init_check_and_tokens_as_documented(tmp_path):
    install = block_with(PAGE, "claude-net init /etc/claude-net/claude-net.toml")
    tokens = block_with(PAGE, "claude-net token create chasclaude --admin")
    paths = {"/opt/claude-net/": f"{ROOT}/", "/etc/claude-net": str(tmp_path / "etc"),
             "/var/lib/claude-net": str(tmp_path / "var")}
    # the checkout and its venv are this repository's: skip cloning and bootstrapping it
    lines = [line for line in install.substitute(paths, strict=False).splitlines()
             if not line.startswith(("git clone", "cd "))]
    assert any("install -d" in line for line in lines) and any(" init " in line for line in lines)
    env = {**os.environ}
    env.pop("CLAUDE_NET_CONFIG", None)
    done = bash("\n".join(lines), env)
    assert done.returncode == 0, done.stderr
    config = tmp_path / "etc" / "claude-net.toml"
    assert f"wrote {config}" in done.stdout
    assert oct((tmp_path / "etc").stat().st_mode & 0o777) == "0o700"
    text = config.read_text()
    assert "[lxd]" in text and "[mcp]" in text  # every installed plugin's keys, commented

    # "set at least database_url (an absolute path such as sqlite+aiosqlite:////var/lib/...)"
    database = "sqlite+aiosqlite:///" + str(tmp_path / "var" / "claude-net.db")
    config.write_text(f'database_url = "{database}"\nadmins = ["chasclaude"]\n' + text)
    out = bash(tokens.substitute(paths, strict=False), env)
    assert out.returncode == 0, out.stderr
    first, admin, agent = out.stdout.splitlines()
    assert first == f"configuration OK ({config})"
    assert re.fullmatch(r"cn_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", admin) and re.fullmatch(r"cn_\w{12}_\S{43}", agent)
    assert (tmp_path / "var" / "claude-net.db").exists()

    # check fails, with the key, on a typo: what the systemd unit's ExecStartPre relies on
    config.write_text(config.read_text().replace("admins =", "adminz ="))
    broken = bash(tokens.substitute(paths, strict=False).splitlines()[0] + "\n" + tokens.substitute(paths, strict=False).splitlines()[1], env)
    assert broken.returncode != 0 and "unknown key 'adminz'" in broken.stderr


@pytest.mark.db("sqlite")  # the docs' output; enroll runs on both databases in tests/plugins/lxd_backend/test_enroll.py
def test_enroll_as_documented(database_url, tmp_path, seanclaude):
    command = block_with(PAGE, "claude-net enroll seanclaude")
    first = block_with(PAGE, "enrolled seanclaude (user root", lang="text")
    second = block_with(PAGE, "seanclaude is already enrolled", lang="text")
    entry = block_with(PAGE, '"x-claude-net-enroll"', lang="json")
    with hub_process(f'[lxd]\ninclude = ["{seanclaude}"]\n', database_url, tmp_path / "hub") as hub:
        def shown(block):
            return block.substitute({"8765": str(hub.port)}).replace("seanclaude", seanclaude)

        env = {**hub.env, "PATH": f"{ROOT / '.venv/bin'}:{hub.env['PATH']}"}
        script = command.text.replace("seanclaude", seanclaude)
        out = bash(script, env)
        assert out.returncode == 0, out.stderr
        assert out.stdout == shown(first), f"{first.where()} differs from what enroll prints"
        again = bash(script, env)
        assert again.stdout == shown(second), f"{second.where()} differs from what enroll prints"
        written = json.loads(lxc("exec", seanclaude, "--", "cat", "/root/.claude.json").stdout)
        assert {"claude-net": written["mcpServers"]["claude-net"]} == json.loads("{" + shown(entry) + "}")
