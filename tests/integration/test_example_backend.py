"""examples/local_backend as an outside package: pip-installed next to the core in a fresh venv,
found by its entry point, its own tests run there with its own pytest settings."""

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "local_backend"

pytestmark = pytest.mark.slow


def test_the_example_backend_is_under_150_lines():
    lines = sum(len(p.read_text().splitlines()) for p in (EXAMPLE / "claude_net_local").rglob("*.py"))
    assert lines < 150, lines


def test_the_example_installs_with_pip_and_passes_its_tests_there(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV" and not k.startswith("PYTEST")}
    env["PATH"] = f"{env_dir / 'bin'}:{env.get('PATH', '')}"

    def pip(*args):
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                       check=True, env=env, cwd=tmp_path, capture_output=True, timeout=900)

    pip(f"{ROOT}[postgresql]")  # the core, from its path, as a user would
    pip(f"{EXAMPLE}[test]")
    out = subprocess.run([env_dir / "bin" / "claude-net", "plugins", "--json"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    plugins = json.loads(out.stdout)
    local = next(row for row in plugins["plugins"] if row["name"] == "local")
    assert local["source"] == "claude-net-local 0.1.0" and "execute" in local["hooks"] and plugins["failed"] == []
    # the tests and the pytest settings, away from the source tree: only the installed package is importable
    work = tmp_path / "outside"
    shutil.copytree(EXAMPLE / "tests", work / "tests")
    shutil.copy(EXAMPLE / "pyproject.toml", work / "pyproject.toml")
    run = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], env=env, cwd=work,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    kinds = env.get("CLAUDE_NET_TEST_DB", "both")
    expected = 12 if kinds == "both" else 6
    assert f"{expected} passed" in run.stdout, run.stdout[-2000:]
    where = subprocess.run([py, "-c", "import claude_net_local; print(claude_net_local.__file__)"], env=env,
                           cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(env_dir) in where
