"""``claude-net enroll NODE`` against a real hub process and real LXD containers.

The proof that matters: after ``enroll``, a process in the container that uses only what enroll
wrote there (the token file, and the hub URL from the MCP configuration) calls the hub as that
node. The busybox containers have no network, so this also covers the LXD proxy device that
makes the hub reachable at http://127.0.0.1:PORT inside the container.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from claude_net.testing import HubProcess, database_for

from .conftest import lxc

MARKER = "x-claude-net-enroll"


@pytest.fixture(scope="module")
def hub(package_db_kind, tmp_path_factory, lxd_available, run_id):
    """A real hub (``claude-net serve``) whose LXD backend sees only this run's containers."""
    with database_for(package_db_kind, tmp_path_factory.mktemp("enroll-db")) as url:
        process = HubProcess(f'[lxd]\ninclude = ["{run_id}-*"]\n', database_url=url,
                             workdir=str(tmp_path_factory.mktemp("enroll-hub")))
        with process:
            process.admin = process.token("chasclaude", admin=True)
            yield process


def enroll(hub: HubProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "claude_net.cli", "enroll", *args], env=hub.env, cwd=hub.dir,
                          capture_output=True, text=True, timeout=120)


def api(hub: HubProcess, path: str, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(hub.url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def in_container(name: str, script: str, *, user: int = 0) -> subprocess.CompletedProcess:
    return lxc("exec", name, "--user", str(user), "--", "sh", "-c", script, check=False)


def container_file(name: str, path: str) -> str | None:
    out = in_container(name, f"cat {path}")
    return out.stdout if out.returncode == 0 else None


#: run in the container: the URL from the written config, the token from the written file
WHOAMI = r"""
url=$(sed -n 's/^ *"url": "\(http[^"]*\)\/mcp".*/\1/p' {config})
wget -q -O - --header "Authorization: Bearer $(cat {token})" "$url/api/whoami"
"""


def whoami_inside(name: str, config: str, token: str, *, user: int = 0) -> subprocess.CompletedProcess:
    return in_container(name, WHOAMI.format(config=config, token=token), user=user)


def activity(hub: HubProcess, node: str) -> list[dict]:
    status, body = api(hub, "/api/activity?hours=1", hub.admin)
    assert status == 200, body
    return [e for e in body["events"] if e["type"] == "enroll" and e["target"] == node]


def test_enroll_connects_an_agent_in_a_container(hub, containers):
    name = containers.launch("enroll")
    first = enroll(hub, name)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"enrolled {name} (user root, uid 0)"), first.stdout
    assert "token  created, written to /root/.claude-net-token" in first.stdout
    assert f"proxy device claude-net-hub" in first.stdout
    assert "cn_" not in first.stdout + first.stderr  # the token is never printed

    # a process in the container, with nothing but what enroll wrote, is that node to the hub
    inside = whoami_inside(name, "/root/.claude.json", "/root/.claude-net-token")
    assert inside.returncode == 0, inside.stderr
    who = json.loads(inside.stdout)
    assert who["ok"] is True and who["name"] == name and who["admin"] is False

    # the configuration is Claude Code's, with no secret in it; its header helper, run by the
    # container's shell, yields the header that authenticates
    config = json.loads(container_file(name, "/root/.claude.json"))
    entry = config["mcpServers"]["claude-net"]
    assert entry["type"] == "http" and entry["url"] == f"http://127.0.0.1:{hub.port}/mcp"
    assert entry[MARKER]["node"] == name and "cn_" not in json.dumps(config)
    helper = in_container(name, entry["headersHelper"])
    header = json.loads(helper.stdout)["Authorization"]
    token = container_file(name, "/root/.claude-net-token").strip()
    assert header == f"Bearer {token}" and api(hub, "/api/whoami", token)[1]["name"] == name
    mode = in_container(name, "stat -c '%a %u %g' /root/.claude-net-token /root/.claude.json").stdout.split("\n")
    assert mode[:2] == ["600 0 0", "600 0 0"]
    device = json.loads(lxc("query", f"/1.0/instances/{name}").stdout)["devices"]["claude-net-hub"]
    assert device == {"type": "proxy", "bind": "container", "listen": f"tcp:127.0.0.1:{hub.port}",
                      "connect": f"tcp:127.0.0.1:{hub.port}"}

    # idempotent: a second run changes nothing and says so
    before = (container_file(name, "/root/.claude.json"), token)
    second = enroll(hub, name)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"{name} is already enrolled; nothing changed"), second.stdout
    assert "token  unchanged" in second.stdout and "mcp    unchanged" in second.stdout
    assert (container_file(name, "/root/.claude.json"), container_file(name, "/root/.claude-net-token").strip()) \
        == before

    # both runs are in the activity feed, with what changed (and never the token)
    events = activity(hub, name)
    assert [e["result"] for e in events] == ["ok", "ok"]
    changes = sorted((e["data"]["changes"] for e in events), key=len)
    assert changes == [[], ["hub address", "token", "mcp config"]]
    assert all(e["from"] == "host" and e["via"] == "cli" and "cn_" not in json.dumps(e) for e in events)


def test_rotate_replaces_the_token_in_place(hub, containers):
    name = containers.launch("rotate")
    assert enroll(hub, name).returncode == 0
    old = container_file(name, "/root/.claude-net-token").strip()
    rotated = enroll(hub, name, "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "token  rotated (the old one is revoked)" in rotated.stdout
    assert "mcp    unchanged" in rotated.stdout  # the config holds no token: nothing to edit
    new = container_file(name, "/root/.claude-net-token").strip()
    assert new != old
    assert api(hub, "/api/whoami", old)[0] == 401
    assert json.loads(whoami_inside(name, "/root/.claude.json", "/root/.claude-net-token").stdout)["name"] == name


def test_a_token_enroll_cannot_write_again_is_refused_without_rotate(hub, containers):
    name = containers.launch("hastoken")
    hub.token(name)  # created on the host; its secret never reached the container
    refused = enroll(hub, name)
    assert refused.returncode == 1
    assert "already has a token" in refused.stderr and "--rotate" in refused.stderr
    assert container_file(name, "/root/.claude-net-token") is None
    assert container_file(name, "/root/.claude.json") is None  # nothing was written
    assert [e["result"] for e in activity(hub, name)] == ["error"]
    assert enroll(hub, name, "--rotate").returncode == 0
    assert json.loads(whoami_inside(name, "/root/.claude.json", "/root/.claude-net-token").stdout)["name"] == name


@pytest.mark.db("sqlite")  # file handling only; the token paths run on both databases above
def test_a_configuration_it_did_not_write_is_kept_unless_forced(hub, containers):
    name = containers.launch("foreign")
    theirs = {"theme": "dark", "mcpServers": {
        "claude-net": {"type": "stdio", "command": "my-own-claude-net"},
        "other": {"type": "http", "url": "http://example.invalid/mcp"}}}
    lxc("exec", name, "--", "sh", "-c", "cat > /root/.claude.json", input=json.dumps(theirs))
    refused = enroll(hub, name)
    assert refused.returncode == 1
    assert "did not write" in refused.stderr and "--force" in refused.stderr
    assert json.loads(container_file(name, "/root/.claude.json")) == theirs
    assert container_file(name, "/root/.claude-net-token") is None
    tokens = hub.cli("token", "list", "--json")
    assert name not in [t["name"] for t in json.loads(tokens)]  # refused before any token existed

    forced = enroll(hub, name, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "replaced a server it had not written (--force)" in forced.stdout
    config = json.loads(container_file(name, "/root/.claude.json"))
    assert config["theme"] == "dark" and config["mcpServers"]["other"] == theirs["mcpServers"]["other"]
    assert MARKER in config["mcpServers"]["claude-net"]
    # now it is enroll's own entry: later runs update it without --force
    assert enroll(hub, name).stdout.startswith(f"{name} is already enrolled")

    # a token file path holding something else is not overwritten either
    other = containers.launch("foreignfile")
    lxc("exec", other, "--", "sh", "-c", "echo 'my notes' > /root/.claude-net-token")
    refused = enroll(hub, other)
    assert refused.returncode == 1 and "does not hold a claude-net token" in refused.stderr
    assert container_file(other, "/root/.claude-net-token") == "my notes\n"


def test_the_first_regular_user_gets_the_files_and_only_they_can_read_the_token(hub, containers):
    name = containers.launch("user")
    lxc("exec", name, "--", "sh", "-c",
        "echo 'agent:x:1000:1000:agent:/home/agent:/bin/sh' >> /etc/passwd;"
        " echo 'other:x:1001:1001:other:/home/other:/bin/sh' >> /etc/passwd;"
        " mkdir -p /home/agent/project /home/other && chown -R 1000:1000 /home/agent && chown 1001:1001 /home/other")
    done = enroll(hub, name, "--mcp-json", "/home/agent/project/.mcp.json")
    assert done.returncode == 0, done.stderr
    assert f"enrolled {name} (user agent, uid 1000)" in done.stdout
    token, config = "/home/agent/.claude-net-token", "/home/agent/project/.mcp.json"
    assert in_container(name, f"stat -c '%a %u %g' {token} {config}").stdout.split("\n")[:2] == \
        ["600 1000 1000", "600 1000 1000"]
    assert container_file(name, "/home/agent/.claude.json") is None
    assert json.loads(whoami_inside(name, config, token, user=1000).stdout)["name"] == name
    denied = in_container(name, f"cat {token}", user=1001)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    # --user picks another one
    again = enroll(hub, name, "--user", "other", "--rotate")
    assert again.returncode == 0, again.stderr
    assert "(user other, uid 1001)" in again.stdout
    assert json.loads(whoami_inside(name, "/home/other/.claude.json", "/home/other/.claude-net-token",
                                    user=1001).stdout)["name"] == name


@pytest.mark.db("sqlite")  # argument checks only; the token paths run on both databases above
def test_bad_input_is_a_sentence_not_a_traceback(hub, containers):
    name = containers.launch("badinput")
    for args, words in (([name, "--user", "ghost"], "no user 'ghost' in the node's /etc/passwd"),
                        (["Not_A_Name"], "is not a valid node name"),
                        (["nosuchnode-enroll"], "unknown node"),
                        (["chasclaude"], "messaging-only node"),
                        (["x1", "--url", "ftp://host"], "--url must be")):
        out = enroll(hub, *args)
        assert out.returncode != 0 and words in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr

    # a token file that cannot be written leaves no token behind: the next run simply creates one
    out = enroll(hub, name, "--token-file", "/nonexistent/dir/token")
    assert out.returncode == 1 and "/nonexistent/dir does not exist" in out.stderr, out.stderr
    assert name not in [t["name"] for t in json.loads(hub.cli("token", "list", "--json"))]
    retry = enroll(hub, name)
    assert retry.returncode == 0 and "token  created" in retry.stdout, retry.stderr
    assert [e["result"] for e in activity(hub, name)].count("error") == 2  # --user ghost, the unwritable path
