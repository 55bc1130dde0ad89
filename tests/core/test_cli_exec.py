"""``claude-net exec`` and ``claude-net jobs``, used as a person would: the real CLI in a subprocess
against a real ``claude-net serve`` whose SSH backend reaches a real sshd (two node names, one
server), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from claude_net.testing import HubProcess, require_component
from claude_net.text import printable_block
from claude_net_ssh.testserver import PrivateSshd, sshd_available


@pytest.fixture(scope="module")
def hub(package_db_kind, tmp_path_factory):
    from claude_net.testing import database_for

    ok, why = sshd_available()
    require_component("OpenSSH sshd", ok, why)
    with PrivateSshd(tmp_path_factory.mktemp("cli-sshd")) as sshd:
        node = "".join(f"{k} = {json.dumps(v)}\n" for k, v in sshd.node_config().items())
        config = ('[plugins]\nallow = ["ssh", "activity", "permissions"]\n'
                  f"[ssh.nodes.cli-a]\n{node}[ssh.nodes.cli-b]\n{node}[ssh.nodes.cli-c]\n{node}")
        with database_for(package_db_kind, tmp_path_factory.mktemp("cli-db")) as url:
            with HubProcess(config, database_url=url, workdir=str(tmp_path_factory.mktemp("cli-hub"))) as process:
                process.agent = process.token("cliagent")
                process.cli("permit", "cliagent", "cli-a")
                process.cli("permit", "cliagent", "cli-b")
                yield process


def cn(hub, *args, timeout=60):
    env = {**hub.env, "CLAUDE_NET_URL": hub.url, "CLAUDE_NET_TOKEN": hub.agent}
    return subprocess.run([sys.executable, "-m", "claude_net.cli", *args], env=env, cwd=hub.dir,
                          capture_output=True, text=True, timeout=timeout)


def test_exec_prints_the_output_and_exits_with_the_command_status(hub):
    out = cn(hub, "exec", "cli-a", "echo to-out; echo to-err >&2; exit 7")
    assert out.returncode == 7
    assert out.stdout == "to-out\n" and out.stderr == "to-err\n"
    assert cn(hub, "exec", "cli-a", "true").returncode == 0


def test_exec_on_a_node_not_granted_is_a_sentence_and_status_1(hub):
    out = cn(hub, "exec", "cli-c", "touch /tmp/never")
    assert out.returncode == 1 and out.stdout == ""
    assert "cliagent may not run commands on cli-c" in out.stderr and "(denied)" in out.stderr


def test_fan_out_prefixes_every_line_with_its_target_and_shows_control_characters(hub):
    out = cn(hub, "exec", "cli-*", r"printf 'one\ntwo\033[2Kfake\rcli-b| forged\n'")
    assert out.returncode == 1  # cli-c is denied
    lines = out.stdout.splitlines()
    assert lines[0].startswith("cli-a: exit 0 (")
    # each line of a node's output carries its target; escape sequences and carriage returns are
    # shown, not acted on, so nothing can pass for another target's line
    assert lines[1:3] == ["cli-a| one", r"cli-a| two\x1b[2Kfake\rcli-b| forged"]
    assert lines[3].startswith("cli-b: exit 0 (") and lines[4] == "cli-b| one"
    assert lines[6].startswith("cli-c: denied: cliagent may not run commands on cli-c")
    assert "3 target(s): 2 ok, 0 failed, 1 denied" in out.stderr


def test_a_list_of_targets_keeps_its_order(hub):
    out = cn(hub, "exec", "cli-b,cli-a", "echo x")
    assert out.returncode == 0
    assert [line.split(":")[0] for line in out.stdout.splitlines() if ": exit " in line] == ["cli-b", "cli-a"]


def test_background_job_listed_followed_and_its_status_returned(hub):
    started = cn(hub, "exec", "--background", "cli-a", "echo first; sleep 1; echo second; exit 3")
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.split()[1]
    assert started.stdout.startswith(f"job {job_id} running on cli-a")
    listed = cn(hub, "jobs")
    assert job_id in listed.stdout and "cli-a" in listed.stdout
    followed = cn(hub, "jobs", job_id, "--follow")
    assert followed.returncode == 3
    assert followed.stdout == "first\nsecond\n"
    assert f"job {job_id} on cli-a (by cliagent): exited, exit 3" in followed.stderr
    shown = cn(hub, "jobs", job_id, "--json")
    assert json.loads(shown.stdout)["output"] == "first\nsecond\n"


def test_cancel_ends_a_running_job(hub):
    started = cn(hub, "exec", "-b", "cli-b", "sleep 60")
    job_id = started.stdout.split()[1]
    cancelled = cn(hub, "jobs", job_id, "--cancel")
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"job {job_id} cancelled by cliagent"
    again = cn(hub, "jobs", job_id, "--cancel")
    assert again.returncode == 1 and "(job_not_running)" in again.stderr
    unknown = cn(hub, "jobs", "0123456789abcdef")
    assert unknown.returncode == 1 and "(unknown_job)" in unknown.stderr


def test_follow_without_an_id_is_a_usage_error(hub):
    out = cn(hub, "jobs", "--follow")
    assert out.returncode == 2 and "need a job id" in out.stderr


def test_printable_block_keeps_lines_and_tabs_and_shows_the_rest():
    assert printable_block("a\tb\nc\x1b[31md\re\u202ef\x85") == "a\tb\nc\\x1b[31md\\re\\u202ef\\x85"
    assert printable_block(None) == ""
