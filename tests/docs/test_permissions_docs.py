"""docs/permissions.md's worked examples, run with the real ``claude-net`` CLI on SQLite and PostgreSQL.

Each example block is run as written. Then every rule its comments describe
(``# rule (managerclaude, *) = exec, file_read, file_write``) must be what ``claude-net
permissions --json`` stores, and every row of the decision table under it must be what the hub
decides (``claude-net permissions --effective --json``, with a token for each node the table names
so that it is a node).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from .mdblocks import ROOT, Block, block_with, table_after

# The worked examples check the CLI against the docs; permission storage and resolution run
# on both databases in tests/plugins/permissions. One database keeps the suite's time down.
pytestmark = pytest.mark.db("sqlite")

PAGE = "docs/permissions.md"
ALL = ["exec", "file_read", "file_write"]
RULE = re.compile(r"\(([^,()]+), ([^,()]+)\)\s*=\s*(.+)$")
CALL = re.compile(r"^(\S+) (exec|file_read|file_write) on (\S+)$")


@pytest.fixture
def cli(database_url, tmp_path):
    config = tmp_path / "claude-net.toml"
    config.write_text(f'database_url = "{database_url}"\n[lxd]\nenabled = false\n')
    env = {**os.environ, "CLAUDE_NET_CONFIG": str(config), "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}"}

    def run(script: str) -> str:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{script}\n{out.stderr}"
        return out.stdout

    return run


def rules(cli) -> dict[tuple[str, str], dict]:
    return {(r["source"], r["target"]): r for r in json.loads(cli("claude-net permissions --json"))["permissions"]}


def expected_rules(block: Block) -> dict[tuple[str, str], list[str] | None]:
    """(source, target) -> capabilities (None: an explicit deny), from each line's comment, else its flags."""
    wanted: dict[tuple[str, str], list[str] | None] = {}
    for line in block.text.splitlines():
        command, _, comment = line.partition("#")
        words = command.replace("'", "").split()
        if len(words) < 4 or words[1] not in ("permit", "revoke") or "all" == words[3] and words[1] == "revoke":
            continue
        target = "*" if words[3] == "all" else words[3]
        match = RULE.search(comment)
        if match:
            assert (match.group(1), match.group(2)) == (words[2], target), line
            text = match.group(3).strip()
            wanted[(words[2], target)] = (None if text == "explicit deny" else ALL if text == "everything"
                                          else [c.strip() for c in text.split(",")])
        elif words[1] == "permit":
            caps = (["file_read"] if "--read-only" in words
                    else words[words.index("--caps") + 1].split(",") if "--caps" in words else ALL)
            wanted[(words[2], target)] = caps
    return wanted


def check_rules(cli, block: Block) -> None:
    stored = rules(cli)
    for pair, caps in expected_rules(block).items():
        assert pair in stored, f"{block.where()}: no rule {pair} after running the block"
        if caps is None:
            assert stored[pair]["allow"] is False, (pair, stored[pair])
        else:
            assert stored[pair]["allow"] is True and sorted(stored[pair]["capabilities"]) == sorted(caps), \
                (block.where(), pair, stored[pair])


def check_table(cli, block: Block) -> None:
    calls = []
    for call, _rule, result in table_after(block):
        match = CALL.match(call)
        assert match, f"{block.where()}: unreadable table row {call!r}"
        calls.append((match.group(1), match.group(2), match.group(3), result.strip("*").startswith("allowed")))
    names = {c[0] for c in calls} | {c[2] for c in calls}
    known = {r["name"] for r in json.loads(cli("claude-net token list --json"))}
    for name in sorted(names - known):
        cli(f"claude-net token create {name} >/dev/null")
    effective = json.loads(cli("claude-net permissions --effective --json"))["effective"]
    for source, action, target, allowed in calls:
        assert (action in effective[source][target]) is allowed, \
            f"{block.where()}: the page says {source} {action} on {target} is {'allowed' if allowed else 'denied'}"


def test_worked_examples(cli):
    spec = block_with(PAGE, "claude-net permit managerclaude all", lang="")
    cli(spec.text)
    check_rules(cli, spec)
    check_table(cli, spec)

    everything = block_with(PAGE, "claude-net revoke managerclaude all", lang="")
    cli(everything.text)
    assert not [pair for pair in rules(cli) if pair[0] == "managerclaude"]

    inherit = block_with(PAGE, "--inherit   #", lang="")
    cli(spec.text)
    cli(inherit.text)
    stored = rules(cli)
    assert ("managerclaude", "chasclaude") not in stored and stored[("managerclaude", "*")]["allow"] is True

    precedence = block_with(PAGE, "claude-net permit alice all --caps exec", lang="")
    cli(precedence.text)
    check_rules(cli, precedence)
    check_table(cli, precedence)

    narrowed = block_with(PAGE, "claude-net permit reviewer all --read-only", lang="")
    cli(narrowed.text)
    check_rules(cli, narrowed)
    assert sorted(rules(cli)[("reviewer", "*")]["capabilities"]) == ["file_read"]
