"""PostgreSQL installs as documented (docs/operations.md, "Using PostgreSQL").

* A hub installed from the wheels without the ``postgresql`` extra and pointed at PostgreSQL
  answers every command with one line naming the install command, never a traceback; after that
  command (``pip install 'claude-net[postgresql]'``) it migrates and serves on the real server.
* A fresh clone set up with ``scripts/bootstrap-venv`` (what ``scripts/run-hub`` runs) needs
  nothing more than ``database_url``.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from claude_net.testing import database_for, free_port, require_component

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIRS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
UV = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
MISSING = ("error: database_url is a PostgreSQL URL, but its driver asyncpg is not installed: install it with "
           "`scripts/bootstrap-venv` in a claude-net checkout, or `pip install 'claude-net[postgresql]'`")

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def pg_url(tmp_path):
    with database_for("postgresql", tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def uv():
    require_component("uv", os.access(UV, os.X_OK), "scripts/bootstrap-venv installs it")
    return UV


def environment(home: Path, config: Path | None = None) -> dict[str, str]:
    """The user's environment (package indexes, certificates), minus this venv and any hub settings."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV" and not k.startswith("CLAUDE_NET_")}
    env["PATH"] = f"{Path(UV).parent}:{env['PATH']}"
    if config is not None:
        env["CLAUDE_NET_CONFIG"] = str(config)
    return env


def run(argv, env, cwd, timeout=120, check=True):
    out = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"{argv}: {out.stdout}\n{out.stderr}"
    return out


def serve_and_message(claude_net: Path, env, cwd) -> None:
    """`claude-net serve` on the real PostgreSQL: a message goes in and comes out of an inbox."""
    alice = run([claude_net, "token", "create", "alice"], env, cwd).stdout.strip()
    bob = run([claude_net, "token", "create", "bob"], env, cwd).stdout.strip()
    port = free_port()
    proc = subprocess.Popen([str(claude_net), "serve", "--port", str(port)], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def call(path, token, body=None):
        request = urllib.request.Request(base + path, data=json.dumps(body).encode() if body else None,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(base + "/api/health", timeout=1) as response:
                    if json.loads(response.read())["ok"]:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the hub did not start"
                time.sleep(0.2)
        assert call("/api/send", alice, {"to": "bob", "message": "on postgresql"})["ok"]
        inbox = call("/api/inbox?ack=true", bob)
        assert [m["message"] for m in inbox["messages"]] == ["on postgresql"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_without_the_driver_every_command_says_how_to_install_it_then_that_command_works(tmp_path, pg_url, uv):
    wheels = tmp_path / "wheels"
    run([uv, "build", "--quiet", "--all-packages", "--wheel", "--out-dir", wheels], environment(tmp_path), ROOT,
        timeout=600)
    core = next(wheels.glob("claude_net-*.whl"))
    plugins = sorted(set(wheels.glob("claude_net_*.whl")))
    assert len(plugins) == len(PLUGIN_DIRS), plugins
    venv = tmp_path / "venv"
    run([uv, "venv", "--quiet", "--python", sys.executable, venv], environment(tmp_path), tmp_path)
    python = venv / "bin" / "python"
    run([uv, "pip", "install", "--quiet", "--python", python, core, *plugins], environment(tmp_path), tmp_path,
        timeout=600)
    # the premise: nothing of the core or the plugins brought asyncpg
    assert run([python, "-c", "import asyncpg"], environment(tmp_path), tmp_path, check=False).returncode == 1

    config = tmp_path / "claude-net.toml"
    config.write_text(f'database_url = "{pg_url}"\nlog_level = "warning"\n')
    env = environment(tmp_path, config)
    claude_net = venv / "bin" / "claude-net"
    for args in (["check"], ["migrate"], ["token", "create", "alice"], ["token", "list"], ["serve"],
                 ["import-v1"]):
        out = run([claude_net, *args], env, tmp_path, timeout=60, check=False)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.splitlines() == [MISSING], (args, out.stderr)
        assert out.stdout == ""

    # the command the sentence names (uv's pip, the same install as pip's, from the same wheel)
    run([uv, "pip", "install", "--quiet", "--python", python, f"{core}[postgresql]"], environment(tmp_path), tmp_path,
        timeout=600)
    assert run([claude_net, "check"], env, tmp_path).returncode == 0
    assert run([claude_net, "migrate"], env, tmp_path).stdout.strip() == "database is up to date"
    serve_and_message(claude_net, env, tmp_path)


def test_a_fresh_clone_set_up_with_bootstrap_venv_runs_on_postgresql(tmp_path, pg_url, uv):
    require_component("git", shutil.which("git") is not None)
    clone = tmp_path / "claude-net"
    run(["git", "clone", "--quiet", ROOT, clone], environment(tmp_path), tmp_path)
    # the commands of docs/operations.md, "Using PostgreSQL", in order
    run([clone / "scripts" / "bootstrap-venv"], environment(tmp_path), clone, timeout=900)
    claude_net = clone / ".venv" / "bin" / "claude-net"
    config = clone / "claude-net.toml"
    run([claude_net, "init"], environment(tmp_path), clone)
    text = config.read_text()
    assert '# database_url = ""' in text or 'database_url = ""' in text, text[:800]
    config.write_text(f'database_url = "{pg_url}"\n' + text)
    env = environment(tmp_path, config)
    assert run([claude_net, "check"], env, clone).returncode == 0
    assert run([claude_net, "migrate"], env, clone).stdout.strip() == "database is up to date"
    serve_and_message(claude_net, env, clone)
