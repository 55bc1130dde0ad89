"""The permissions plugin end to end over HTTP (with the activity plugin and a test backend) and the CLI."""

from __future__ import annotations

import asyncio
import base64
import json

import claude_net_activity
import claude_net_permissions


def plugins(box):
    return [claude_net_permissions, claude_net_activity, box]


async def _exec(h, token, target="box1", command="echo hi"):
    return await h.call("POST", "/api/exec", token, {"target": target, "command": command})


async def _permit(h, token, **body):
    return await h.call("POST", "/api/permit", token, body)


async def _activity(h, **filters):
    where = " AND ".join(f"{k} = :{k}" for k in filters) or "1 = 1"
    return await h.hub.db.fetch_all(f"SELECT * FROM activity_log WHERE {where} ORDER BY id", filters)


async def test_denied_then_permitted_then_revoked_takes_effect_on_next_call(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        alpha = await h.token("alpha")
        chas = await h.token("chasclaude", admin=True)

        status, body = await _exec(h, alpha)
        assert status == 403 and body["code"] == "denied"
        assert "alpha may not run commands on box1" in body["error"]
        assert "claude-net permit alpha box1" in body["error"]

        status, body = await _permit(h, chas, source="alpha", target="box1", allow=True)
        assert status == 200, body
        permission = body["permission"]
        assert permission["source"] == "alpha" and permission["target"] == "box1"
        assert permission["capabilities"] == ["exec", "file_read", "file_write"]
        assert permission["granted_by"] == "chasclaude" and permission["expires_at"] is None

        status, body = await _exec(h, alpha)
        assert status == 200, body
        assert body["stdout"] == "box1: echo hi"

        status, body = await _permit(h, chas, source="alpha", target="box1", allow=False)
        assert status == 200 and body["permission"]["allow"] is False

        status, body = await _exec(h, alpha)
        assert status == 403 and body["code"] == "denied"
        # the backend ran exactly the one permitted command
        assert box.calls == [("exec", "box1", "echo hi")]
        # every step is in the feed: 2 exec denials (once each), 1 exec ok, 2 permits ok
        results = [(r["type"], r["result"]) for r in await _activity(h)]
        assert results == [("exec", "denied"), ("permit", "ok"), ("exec", "ok"), ("permit", "ok"), ("exec", "denied")]


async def test_permit_all_then_revoke_one_then_revoke_all(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        mgr = await h.token("managerclaude")
        chas = await h.token("chasclaude", admin=True)
        status, body = await _permit(h, chas, source="managerclaude", target="all")
        assert status == 200 and body["permission"]["target"] == "*"
        assert (await _exec(h, mgr, "box1"))[0] == 200
        assert (await _exec(h, mgr, "box2"))[0] == 200

        status, body = await _permit(h, chas, source="managerclaude", target="box1", allow=False)
        assert status == 200 and body["permission"]["stored"] is True
        assert (await _exec(h, mgr, "box1"))[0] == 403
        assert (await _exec(h, mgr, "box2"))[0] == 200

        status, body = await _permit(h, chas, source="managerclaude", target="all", allow=False)
        assert status == 200
        assert body["permission"]["removed"] == 2 and body["permission"]["stored"] is False
        assert (await _exec(h, mgr, "box2"))[0] == 403
        status, body = await h.call("GET", "/api/permissions", chas)
        assert status == 200 and body["permissions"] == []


async def test_inherit_removes_only_the_pair_rule(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        alpha = await h.token("alpha")
        chas = await h.token("chasclaude", admin=True)
        await _permit(h, chas, source="alpha", target="*")
        await _permit(h, chas, source="alpha", target="box1", allow=False)
        assert (await _exec(h, alpha, "box1"))[0] == 403
        status, body = await _permit(h, chas, source="alpha", target="box1", allow=False, inherit=True)
        assert status == 200 and body["permission"]["removed"] == 1
        assert (await _exec(h, alpha, "box1"))[0] == 200


async def test_read_only_grant(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        reader = await h.token("reader")
        chas = await h.token("chasclaude", admin=True)
        box.files[("box1", "/etc/motd")] = b"hello"
        status, body = await _permit(h, chas, source="reader", target="all", capabilities=["file_read"])
        assert status == 200 and body["permission"]["capabilities"] == ["file_read"]

        status, body = await h.call("POST", "/api/file/read", reader, {"target": "box1", "path": "/etc/motd"})
        assert status == 200 and body["content"] == "hello"
        status, body = await h.call("POST", "/api/file/write", reader,
                                    {"target": "box1", "path": "/etc/motd", "content": "pwned"})
        assert status == 403 and "write files on box1" in body["error"]
        status, body = await _exec(h, reader)
        assert status == 403
        assert box.files[("box1", "/etc/motd")] == b"hello"
        assert [c[0] for c in box.calls] == ["file_read"]


async def test_expiring_grant(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        alpha = await h.token("alpha")
        chas = await h.token("chasclaude", admin=True)
        status, body = await _permit(h, chas, source="alpha", target="box1", expires="2h")
        assert status == 200 and body["permission"]["expires_at"] is not None
        assert (await _exec(h, alpha))[0] == 200
        await h.hub.db.execute("UPDATE exec_permissions SET expires_at = '2000-01-01T00:00:00.000000Z'")
        assert (await _exec(h, alpha))[0] == 403
        status, body = await h.call("GET", "/api/permissions", chas)
        assert body["permissions"][0]["expired"] is True


async def test_permit_and_view_are_admin_only_and_denials_recorded(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        alpha = await h.token("alpha")
        chas = await h.token("chasclaude", admin=True)
        await _permit(h, chas, source="*", target="*")  # even a full (*,*) grant...
        status, body = await _permit(h, alpha, source="alpha", target="all")
        assert status == 403 and body["code"] == "denied"
        assert "permit is an admin-only action" in body["error"]
        status, body = await h.call("GET", "/api/permissions", alpha)
        assert status == 403
        status, body = await h.call("POST", "/api/container/stop", alpha, {"name": "box1"})
        assert status == 403
        assert not [c for c in box.calls if c[0] == "container"]
        denied = [(r["type"], r["from_machine"]) for r in await _activity(h, result="denied")]
        assert denied == [("permit", "alpha"), ("admin", "alpha"), ("container", "alpha")]
        rows = await _activity(h, type="permit", result="denied")
        assert rows[0]["detail"] == "permit alpha -> *: exec, file_read, file_write"

        status, body = await h.call("GET", "/api/permissions?effective=true", chas)
        assert status == 200
        assert {"box1", "box2", "alpha", "chasclaude"} <= set(body["nodes"])
        assert body["permissions"][0]["source"] == "*" and body["permissions"][0]["target"] == "*"
        assert body["effective"]["alpha"]["box1"] == ["exec", "file_read", "file_write"]


async def test_permit_validation(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas = await h.token("chasclaude", admin=True)
        bad = [
            {"source": "a%", "target": "box1"},
            {"source": "a_b", "target": "box1"},
            {"source": "alice", "target": "b?x"},
            {"source": "Alice", "target": "box1"},
            {"source": "alice"},
            {"source": "alice", "target": "box1", "capabilities": ["root"]},
            {"source": "alice", "target": "box1", "capabilities": []},
            {"source": "alice", "target": "box1", "expires": "soon"},
            {"source": "alice", "target": "box1", "expires": "2020-01-01T00:00:00Z"},
            {"source": "alice", "target": "box1", "allow": "yes"},
            {"source": "alice", "target": "box1", "allow": False, "capabilities": ["exec"]},
            {"source": "alice", "target": "box1", "extra": 1},
        ]
        for body in bad:
            status, answer = await _permit(h, chas, **body)
            assert status == 400, (body, answer)
            assert answer["ok"] is False and answer["error"]
        status, body = await h.call("GET", "/api/permissions", chas)
        assert body["permissions"] == []
        status, body = await _permit(h, chas, source="alice", target="box1", expires="2030-01-01T00:00:00")
        assert status == 200 and body["permission"]["expires_at"] == "2030-01-01T00:00:00.000000Z"


async def test_file_write_and_container_with_grants(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        writer = await h.token("writer")
        chas = await h.token("chasclaude", admin=True)
        await _permit(h, chas, source="writer", target="box2", capabilities=["file_write"])
        content = base64.b64encode(b"\x00\x01").decode()
        status, body = await h.call("POST", "/api/file/write", writer,
                                    {"target": "box2", "path": "/tmp/x", "content": content, "encoding": "base64"})
        assert status == 200, body
        status, _ = await h.call("POST", "/api/file/write", writer,
                                 {"target": "box1", "path": "/tmp/x", "content": "x"})
        assert status == 403
        status, _ = await h.call("POST", "/api/file/read", writer, {"target": "box2", "path": "/tmp/x"})
        assert status == 403


# -- CLI ------------------------------------------------------------------------------------------


def _config(tmp_path, database_url):
    path = tmp_path / "claude-net.toml"
    path.write_text(f'database_url = "{database_url}"\n[plugins]\nallow = ["permissions", "activity"]\n')
    return str(path)


def test_cli_permit_revoke_permissions(tmp_path, database_url, capsys, monkeypatch):
    from claude_net.cli import main

    monkeypatch.setenv("CLAUDE_NET_CLI_ACTOR", "opsadmin")
    cfg = _config(tmp_path, database_url)
    assert main(["-c", cfg, "permit", "managerclaude", "all"]) == 0
    assert "permitted managerclaude -> *: exec, file_read, file_write" in capsys.readouterr().out
    assert main(["-c", cfg, "revoke", "managerclaude", "chasclaude"]) == 0
    assert "revoked managerclaude -> chasclaude" in capsys.readouterr().out
    assert main(["-c", cfg, "permit", "reader", "all", "--read-only", "--expires", "7d"]) == 0
    assert main(["-c", cfg, "permit", "writer", "box1", "--caps", "r,w"]) == 0
    capsys.readouterr()

    assert main(["-c", cfg, "permissions"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out[0].split()
    assert header == ["SOURCE", "\\", "TARGET", "*", "box1", "chasclaude"]
    rows = {line.split()[0]: line.split()[1:] for line in out[1:4]}
    assert rows == {"managerclaude": ["xrw", ".", "-"], "reader": ["r~", ".", "."], "writer": [".", "rw", "."]}

    assert main(["-c", cfg, "permissions", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert len(view["permissions"]) == 4

    assert main(["-c", cfg, "revoke", "managerclaude", "all"]) == 0
    assert "removed 2 rule(s)" in capsys.readouterr().out
    assert main(["-c", cfg, "permit", "Bad", "all"]) == 1
    assert "not a valid node name" in capsys.readouterr().err

    assert main(["-c", cfg, "activity", "--type", "permit", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["via"] for r in rows] == ["cli"] * 5
    assert {r["from"] for r in rows} == {"opsadmin"}
    assert rows[-1]["detail"] == "revoke managerclaude -> *: remove every rule of managerclaude"
    assert rows[-1]["data"]["removed"] == 2


def test_plugin_imports_stay_light():
    """`import claude_net_permissions` (done on every CLI start) must not pull in the web stack."""
    import subprocess
    import sys

    code = ("import sys, claude_net_permissions, claude_net_activity; "
            "print(sorted(m for m in ('quart', 'hypercorn', 'databases', 'sqlalchemy', 'aiosqlite') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_concurrent_permits_do_not_corrupt(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        chas = await h.token("chasclaude", admin=True)
        results = await asyncio.gather(*(_permit(h, chas, source=f"n{i}", target="all") for i in range(20)))
        assert all(status == 200 for status, _ in results)
        status, body = await h.call("GET", "/api/permissions", chas)
        assert len(body["permissions"]) == 20
