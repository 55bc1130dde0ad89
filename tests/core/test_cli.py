import json
import os
import subprocess
import sys

import pytest

HEAVY = ["quart", "hypercorn", "pylxd", "asyncssh", "telegram", "mcp", "databases", "sqlalchemy", "requests"]


def run_cli(args, cwd, env_extra=None, check=True):
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), **(env_extra or {})}
    out = subprocess.run([sys.executable, "-m", "claude_net.cli", *args], capture_output=True, text=True,
                         cwd=cwd, env=env)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_token_lifecycle_and_only_the_token_on_stdout(tmp_path):
    out = run_cli(["token", "create", "agent1"], tmp_path)
    token = out.stdout.strip()
    assert token.startswith("cn_") and "\n" not in token and token not in out.stderr
    listed = run_cli(["token", "list", "--json"], tmp_path).stdout
    assert token not in listed and json.loads(listed)[0]["name"] == "agent1"
    again = run_cli(["token", "create", "agent1"], tmp_path, check=False)
    assert again.returncode == 1 and "--replace" in again.stderr
    assert run_cli(["token", "revoke", "agent1"], tmp_path).stdout.startswith("revoked 1")
    bad = run_cli(["token", "create", "Not_Valid"], tmp_path, check=False)
    assert bad.returncode == 1 and "not a valid node name" in bad.stderr


def test_database_url_env_is_honoured(tmp_path):
    db = tmp_path / "elsewhere.db"
    run_cli(["token", "create", "x"], tmp_path, {"CLAUDE_NET_DATABASE_URL": f"sqlite+aiosqlite:///{db}"})
    assert db.exists() and not (tmp_path / "claude-net.db").exists()


def test_init_writes_a_valid_starter_config(tmp_path):
    run_cli(["init"], tmp_path)
    text = (tmp_path / "claude-net.toml").read_text()
    assert "# port = 8765" in text
    assert run_cli(["init"], tmp_path, check=False).returncode == 1  # no silent overwrite
    assert "configuration OK" in run_cli(["check"], tmp_path).stdout


def test_bad_config_is_reported_with_file_and_key(tmp_path):
    (tmp_path / "claude-net.toml").write_text("port = 'high'\n")
    out = run_cli(["token", "list"], tmp_path, check=False)
    assert out.returncode == 2 and "claude-net.toml" in out.stderr and "port must be an integer" in out.stderr


@pytest.mark.parametrize("args", [["--help"], ["token", "--help"], ["token", "list"], ["plugins"]])
def test_non_serving_commands_do_not_import_the_web_stack(tmp_path, args):
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['claude-net', *{args!r}]\n"
        "try:\n"
        "    from claude_net.cli import main; main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    heavy = out.stderr.rsplit("HEAVY=", 1)[-1].strip()
    allowed = {"databases", "sqlalchemy"} if args == ["token", "list"] else set()
    assert set(filter(None, heavy.split(","))) <= allowed, f"{args} imported {heavy}"


def test_client_verbs_without_token_explain(tmp_path):
    out = run_cli(["send", "x", "hello"], tmp_path, check=False)
    assert out.returncode == 1 and "CLAUDE_NET_TOKEN" in out.stderr
