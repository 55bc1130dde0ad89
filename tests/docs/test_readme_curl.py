"""README's "Five minutes with curl" and its CLI sequel, run as written against a real hub and a real LXD container.

The walkthrough block is taken from README.md and run by bash from the repository root, step by
step. Substitutions, all named here: the test's hub (``claude-net serve`` with the installed
plugins) stands in for the first line, ``scripts/run-hub &``; ``localhost:8765`` becomes that
hub's port; ``ADMIN=cn_...`` gets the admin token run-hub would print; ``seanclaude`` is a real
LXD container of this test run (its name substituted in the expected output too); the long-poll
waits 2 s instead of 30. Each JSON answer must have the shape the README prints under it: the same
keys (more only where the README writes ``...``), equal strings and booleans, numbers where it shows
numbers, timestamps where it shows timestamps.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest


from .conftest import hub_process
from .mdblocks import ROOT, block_with, commands

BLOCK = block_with("README.md", "curl -s localhost:8765/api/send")
#: the same session continued with the CLI's client and operator verbs
CLI_BLOCK = block_with("README.md", "CLAUDE_NET_TOKEN=$B $CN send")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
STEP = "<<<step {}>>>"


def expected_json(lines: list[str]) -> tuple[object, bool]:
    """The JSON the README prints (comment lines joined), and whether it is open (``...``)."""
    text = " ".join(lines)
    is_open = ",...}" in text
    return json.loads(text.replace(",...}", "}")), is_open


def same_shape(expected: object, actual: object, is_open: bool = False, where: str = "$") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        missing = set(expected) - set(actual)
        assert not missing, f"{where}: the README shows {sorted(missing)}, the hub did not answer them: {actual}"
        extra = set(actual) - set(expected)
        assert is_open or not extra, f"{where}: the hub answers {sorted(extra)} that the README does not show"
        for key, value in expected.items():
            same_shape(value, actual[key], False, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            same_shape(e, a, False, f"{where}[{i}]")
    elif isinstance(expected, bool) or expected is None:
        assert actual is expected, f"{where}: README {expected!r}, hub {actual!r}"
    elif isinstance(expected, (int, float)):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{where}: {actual!r}"
    elif isinstance(expected, str) and TIMESTAMP.match(expected):
        assert isinstance(actual, str) and TIMESTAMP.match(actual), f"{where}: {actual!r} is not a timestamp"
    else:
        assert actual == expected, f"{where}: README {expected!r}, hub {actual!r}"


def same_text(shown: list[str], printed: str, where: str) -> None:
    """The printed lines are the README's, where a timestamp stands for any timestamp."""
    stamp = TIMESTAMP.pattern[1:-1]
    for expected, actual in zip(shown, printed.splitlines(), strict=True):
        pattern = stamp.join(re.escape(part) for part in re.split(stamp, expected))
        assert re.fullmatch(pattern, actual), f"{where}: README {expected!r}, printed {actual!r}"


def test_five_minutes_with_curl(database_url, tmp_path, seanclaude):
    steps = commands(BLOCK.text)
    assert steps[0][0].split("#")[0].strip() == "scripts/run-hub &", "the walkthrough no longer starts with run-hub"
    with hub_process(f'[lxd]\ninclude = ["{seanclaude}"]\n', database_url, tmp_path / "hub") as hub:
        admin = hub.token("chasclaude", admin=True)
        text = BLOCK.substitute({"localhost:8765": f"localhost:{hub.port}", "ADMIN=cn_...": f"ADMIN={admin}",
                                 "wait=30": "wait=2"}).replace("seanclaude", seanclaude)
        steps = commands(text)[1:]  # the hub above stands in for scripts/run-hub
        curl_steps = len(steps)
        steps += commands(CLI_BLOCK.substitute({"localhost:8765": f"localhost:{hub.port}"})
                          .replace("seanclaude", seanclaude))
        script = "set -euo pipefail\n" + "".join(
            f"printf '\\n{STEP.format(i)}\\n'\n{command}\n" for i, (command, _) in enumerate(steps))
        run = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**hub.env, "PATH": f"{ROOT / '.venv/bin'}:{hub.env['PATH']}"})
        assert run.returncode == 0, f"README's walkthrough fails: {run.stderr[-3000:]}"
        outputs = re.split(r"\n<<<step (\d+)>>>\n", "\n" + run.stdout)
        answers = {int(outputs[i]): outputs[i + 1].strip() for i in range(1, len(outputs), 2)}
        checked = 0
        for i, (command, shown) in enumerate(steps):
            if not command.lstrip().startswith("curl"):
                if i >= curl_steps and shown:
                    same_text(shown, answers[i], f"{CLI_BLOCK.where()}: {command}")
                    checked += 1
                else:
                    assert answers[i] == "", f"{command!r} printed {answers[i]!r}"
                continue
            answer = json.loads(answers[i])
            if shown:
                expected, is_open = expected_json(shown)
                same_shape(expected, answer, is_open, where=command.split("-H")[0].strip())
                checked += 1
            else:
                assert answer["ok"] is True, (command, answer)
        assert checked == 7  # curl: send, inbox, the denied and the allowed exec; CLI: send, inbox, revoke

        machines = next(json.loads(answers[i]) for i, (c, _) in enumerate(steps) if "/api/machines" in c)
        nodes = {m["name"]: m for m in machines["machines"]}
        assert nodes[seanclaude]["backend"] == "lxd" and "exec" in nodes[seanclaude]["capabilities"]
        activity = next(json.loads(answers[i]) for i, (c, _) in enumerate(steps) if "/api/activity" in c)
        seen = {(e["type"], e["result"]) for e in activity["events"]}
        assert {("message", "ok"), ("exec", "denied"), ("permit", "ok"), ("exec", "ok")} <= seen
