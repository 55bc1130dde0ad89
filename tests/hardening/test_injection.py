"""Shell syntax and symlinks against real backends: confined to the node, never the host.

SaltStack CVE-2020-16846 (shell injection through an API that built host-side command lines) and
LXD's early file API (it followed symlinks inside a container on the host) are the cautionary
tales. Every command and path below would create a file in ``host_marker`` (a directory on the
host) if any host-side shell ever interpreted it, or would read/write a host file if a symlink
were resolved on the host; the fixture asserts the directory is still empty after each test.

* LXD: a real busybox container. Commands run inside it (as ``[sh, -c, command]`` via the LXD
  API); file paths go to LXD's file API, which resolves them inside the container.
* SSH: a private sshd on this machine (so "the node" *is* this host: exec there is the point of
  the node). What must hold is that paths (SFTP), ``cwd`` and ``env`` are data, never shell.
"""

from __future__ import annotations

import base64
import secrets

import pytest

import claude_net_activity
import claude_net_lxd
import claude_net_permissions

from .conftest import EventLog, in_box, lxd_overrides

pytestmark = [pytest.mark.db("sqlite"), pytest.mark.lxd]

SHELL_SYNTAX = {
    "dollar": "$(touch {m}/pwned-dollar)",
    "backtick": "`touch {m}/pwned-backtick`",
    "semicolon": "x; touch {m}/pwned-semicolon",
    "and": "x && touch {m}/pwned-and",
    "pipe": "x | touch {m}/pwned-pipe",
    "newline": "x\ntouch {m}/pwned-newline",
    "quote": "x'; touch {m}/pwned-quote; echo '",
    "redirect": "x > {m}/pwned-redirect",
}


@pytest.fixture
async def lxd_hub(hub_harness, lxd_box):
    events = EventLog()
    async with hub_harness(plugins=[claude_net_lxd, claude_net_permissions, claude_net_activity, events],
                           lxd=lxd_overrides()) as h:
        h.events = events
        h.box = lxd_box
        h.boss = await h.token("boss", admin=True)
        h.agent = await h.token("agent")
        status, body = await h.call("POST", "/api/permit", h.boss, {"source": "agent", "target": lxd_box})
        assert status == 200, body
        yield h


async def _rows(hub, **filters):
    where = " AND ".join(f"{k} = :{k}" for k in filters) or "1 = 1"
    return await hub.db.fetch_all(f"SELECT * FROM activity_log WHERE {where} ORDER BY id", filters)


async def test_shell_syntax_in_commands_runs_inside_the_container_only(lxd_hub, host_marker):
    h = lxd_hub
    m = str(host_marker)
    # the same directory exists *inside* the container, so the commands succeed there: proof that
    # they really ran, and ran in the container (the host directory stays empty: host_marker)
    in_box(h.box, f"mkdir -p {m}")
    commands = [f"touch {m}/pwned-plain-$(id -u)", f"touch {m}/`echo pwned-backtick`",
                f"true; touch {m}/pwned-semicolon", f"echo a\ntouch {m}/pwned-newline",
                f"true && touch {m}/pwned-and | cat", f"echo $(hostname) > {m}/pwned-hostname"]
    for command in commands:
        status, body = await h.call("POST", "/api/exec", h.agent, {"target": h.box, "command": command})
        assert status == 200 and body["exitCode"] == 0, (command, body)
    inside = in_box(h.box, f"ls {m}").split()
    assert sorted(inside) == ["pwned-and", "pwned-backtick", "pwned-hostname", "pwned-newline", "pwned-plain-0",
                              "pwned-semicolon"]
    assert in_box(h.box, f"cat {m}/pwned-hostname").strip() == h.box
    # NUL cannot be passed in an argument vector: refused before LXD, and recorded
    status, body = await h.call("POST", "/api/exec", h.agent, {"target": h.box, "command": "true\x00; id"})
    assert status == 400 and body["field"] == "command"
    rows = await _rows(h.hub, type="exec", from_machine="agent")
    assert [r["result"] for r in rows] == ["ok"] * len(commands)
    assert len(await _rows(h.hub, type="request", result="denied", from_machine="agent")) == 1


async def test_shell_syntax_in_paths_cwd_and_env_is_data(lxd_hub, host_marker):
    h = lxd_hub
    m = str(host_marker)
    in_box(h.box, "rm -rf /tmp/inj && mkdir -p /tmp/inj")
    written = []
    for label, syntax in SHELL_SYNTAX.items():
        path = "/tmp/inj/" + syntax.format(m=m).replace("/", "_")
        if "\n" in path:  # a newline is a legal file-name byte: still just a name
            path = path.replace("\n", "_nl_")
        status, body = await h.call("POST", "/api/file/write", h.agent,
                                    {"target": h.box, "path": path, "content": label})
        assert status == 200, (label, body)
        status, body = await h.call("POST", "/api/file/read", h.agent, {"target": h.box, "path": path})
        assert status == 200 and body["content"] == label, (label, body)
        written.append(path)
    listed = in_box(h.box, "ls -1 /tmp/inj | wc -l").strip()
    assert listed == str(len(SHELL_SYNTAX))  # each one literal file, no side effects in the container either
    # cwd and env values are passed to LXD's exec API as data
    status, body = await h.call("POST", "/api/exec", h.agent, {
        "target": h.box, "command": 'printf %s "$X"', "env": {"X": f"$(touch {m}/pwned-env)`id`"}})
    assert status == 200 and body["stdout"] == f"$(touch {m}/pwned-env)`id`", body
    status, body = await h.call("POST", "/api/exec", h.agent, {
        "target": h.box, "command": "pwd", "cwd": f"/tmp/$(touch {m}/pwned-cwd)"})
    assert status in (200, 400, 404) and "pwned" not in in_box(h.box, "ls /tmp"), body
    # refused outright: NUL, '..', relative paths
    for path in ["/tmp/inj/a\x00b", "/tmp/../etc/shadow", "tmp/x", "/tmp/inj/../../etc/passwd"]:
        status, body = await h.call("POST", "/api/file/read", h.agent, {"target": h.box, "path": path})
        assert status == 400 and body["code"] in ("invalid_path", "invalid_field"), (path, body)
    rows = await _rows(h.hub, type="file_write", from_machine="agent", result="ok")
    assert len(rows) == len(SHELL_SYNTAX)


async def test_symlinks_to_host_paths_resolve_inside_the_container(lxd_hub, host_marker, tmp_path):
    h = lxd_hub
    secret = f"HOST-ONLY-{secrets.token_hex(8)}"
    host_file = tmp_path / "host-only-secret"
    host_file.write_text(secret)
    victim = tmp_path / "host-victim"
    victim.write_text("untouched")
    host_shadow = open("/etc/shadow").read() if __import__("os").path.exists("/etc/shadow") else None
    in_box(h.box, f"rm -rf /tmp/links && mkdir -p /tmp/links && cd /tmp/links"
                  f" && ln -s {host_file} to-host-secret"
                  f" && ln -s /etc/shadow to-shadow"
                  f" && ln -s {victim} to-host-victim"
                  f" && ln -s {host_marker} to-host-dir"
                  f" && ln -s ../../../../../../../{host_file} climbing"
                  f" && ln -s /proc/1/root/{host_file} via-proc")
    # 1. a link to a host-only path dangles inside the container: 404, never the host's file
    for link in ("to-host-secret", "climbing", "via-proc"):
        status, body = await h.call("POST", "/api/file/read", h.agent, {"target": h.box, "path": f"/tmp/links/{link}"})
        assert status in (404, 400), (link, body)
        assert secret not in str(body)
    # 2. the same path created inside the container: the link reads the *container's* file
    in_box(h.box, f"mkdir -p {tmp_path} && echo container-copy > {host_file}")
    status, body = await h.call("POST", "/api/file/read", h.agent,
                                {"target": h.box, "path": "/tmp/links/to-host-secret"})
    assert status == 200 and body["content"] == "container-copy\n", body
    # 3. /etc/shadow through a link is the container's (or absent), never the host's
    status, body = await h.call("POST", "/api/file/read", h.boss, {"target": h.box, "path": "/tmp/links/to-shadow"})
    if status == 200:
        content = body["content"] if body["encoding"] == "utf-8" else base64.b64decode(body["content"]).decode()
        assert content != host_shadow
        assert content == in_box(h.box, "cat /etc/shadow")
    else:
        assert status == 404, body
    # 4. writes through links (last component and a directory in the middle) land in the container
    for path in ("/tmp/links/to-host-victim", "/tmp/links/to-host-dir/pwned-through-link"):
        status, body = await h.call("POST", "/api/file/write", h.agent,
                                    {"target": h.box, "path": path, "content": "written", "mkdirs": True})
        # written inside the container, or refused because the link dangles there (no such directory)
        assert status in (200, 404) or body["code"] == "mkdir_failed", (path, body)
    assert in_box(h.box, f"cat {victim}") == "written"  # the container's file of that name
    assert victim.read_text() == "untouched"
    assert host_file.read_text() == secret
    # recorded, every one of them
    reads = await _rows(h.hub, type="file_read")
    writes = await _rows(h.hub, type="file_write")
    assert len(reads) == 5 and len(writes) == 2
    assert all(r["result"] in ("ok", "error") for r in reads + writes)


async def test_agent_without_a_grant_cannot_touch_the_container(lxd_hub, host_marker):
    h = lxd_hub
    stranger = await h.token("stranger")
    for path, body in [("/api/exec", {"command": f"touch {host_marker}/pwned"}),
                       ("/api/file/read", {"path": "/etc/hostname"}),
                       ("/api/file/write", {"path": "/tmp/x", "content": "x"})]:
        status, answer = await h.call("POST", path, stranger, {"target": h.box, **body})
        assert status == 403 and answer["code"] == "denied"
    assert len(await _rows(h.hub, from_machine="stranger", result="denied")) == 3


# -- SSH: the node is this host; only paths, cwd and env must stay data ---------------------------


@pytest.mark.ssh
async def test_ssh_paths_cwd_and_env_are_never_shell(hub_harness, host_marker, tmp_path):
    from claude_net.testing import require_component
    from claude_net_ssh.testserver import PrivateSshd, sshd_available

    import claude_net_ssh

    ok, why = sshd_available()
    require_component("OpenSSH sshd", ok, why)
    m = str(host_marker)
    with PrivateSshd(tmp_path / "sshd") as sshd:
        async with hub_harness(plugins=[claude_net_ssh, claude_net_activity],
                               ssh={"connect_timeout": 3.0, "nodes": {"ser-8": sshd.node_config()}}) as h:
            boss = await h.token("boss", admin=True)
            target_dir = tmp_path / "files"
            target_dir.mkdir()
            for label, syntax in SHELL_SYNTAX.items():
                name = syntax.format(m=m).replace("/", "_").replace("\n", "_nl_")
                path = f"{target_dir}/{name}"
                status, body = await h.call("POST", "/api/file/write", boss,
                                            {"target": "ser-8", "path": path, "content": label})
                assert status == 200, (label, body)
                status, body = await h.call("POST", "/api/file/read", boss, {"target": "ser-8", "path": path})
                assert status == 200 and body["content"] == label
            assert len(list(target_dir.iterdir())) == len(SHELL_SYNTAX)
            status, body = await h.call("POST", "/api/exec", boss, {
                "target": "ser-8", "command": 'printf %s "$X"', "env": {"X": f"$(touch {m}/pwned-env)"}})
            assert status == 200 and body["stdout"] == f"$(touch {m}/pwned-env)", body
            status, body = await h.call("POST", "/api/exec", boss, {
                "target": "ser-8", "command": "pwd", "cwd": f"/tmp/$(touch {m}/pwned-cwd)"})
            assert body.get("exitCode") != 0 or status != 200, body  # no such directory; nothing ran in it
            rows = await h.hub.db.fetch_all("SELECT type, result FROM activity_log WHERE type LIKE 'file_%'")
            assert len(rows) == 2 * len(SHELL_SYNTAX)
