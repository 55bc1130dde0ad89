"""Threads (issue 18): `thread` and `reply_to` on send, exec and the file calls, stored on messages
and activity rows, filtered in the feed and read back as one thread view."""

from __future__ import annotations

import json

import pytest

import claude_net_activity

from .testbox import Allow, TestBox


@pytest.fixture
def box():
    return TestBox()


def plugins(box):
    return [claude_net_activity, box, Allow("alpha", "box1")]


async def rows(h, thread: str, admin: str) -> list[dict]:
    status, body = await h.call("GET", f"/api/activity?hours=0&limit=1000&thread={thread}", admin)
    assert status == 200, body
    return list(reversed(body["events"]))


async def test_thread_round_trips_through_send_exec_files_and_the_feed(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        a, b = await h.token("alpha"), await h.token("beta")
        boss = await h.token("boss", admin=True)
        status, sent = await h.call("POST", "/api/send", a, {"to": "beta", "message": "deploy?", "thread": "deploy-42"})
        assert status == 200 and sent["thread"] == "deploy-42"
        status, inbox = await h.call("GET", "/api/inbox", b)
        assert inbox["messages"][0]["thread"] == "deploy-42" and "reply_to" not in inbox["messages"][0]

        status, out = await h.call("POST", "/api/exec", a, {"target": "box1", "command": "echo hi",
                                                            "thread": "deploy-42"})
        assert status == 200 and out["thread"] == "deploy-42" and out["exitCode"] == 0
        status, out = await h.call("POST", "/api/file/write", a, {"target": "box1", "path": "/tmp/t",
                                                                  "content": "x", "thread": "deploy-42"})
        assert status == 200 and out["thread"] == "deploy-42"
        status, out = await h.call("POST", "/api/file/read", a, {"target": "box1", "path": "/tmp/t",
                                                                 "thread": "deploy-42"})
        assert status == 200 and out["content"] == "x" and out["thread"] == "deploy-42"
        status, out = await h.call("PUT", "/api/file/raw?target=box1&path=/tmp/r&thread=deploy-42", a, raw=b"raw",
                                   headers={"Content-Type": "application/octet-stream"})
        assert status == 200 and out["thread"] == "deploy-42"
        status, data = await h.call("GET", "/api/file/raw?target=box1&path=/tmp/r&thread=deploy-42", a)
        assert (status, data) == (200, b"raw")
        # outside the thread: not in its feed
        await h.call("POST", "/api/exec", a, {"target": "box1", "command": "echo other"})
        await h.call("POST", "/api/send", a, {"to": "beta", "message": "unrelated"})

        feed = await rows(h, "deploy-42", boss)
        assert [(r["type"], r["result"]) for r in feed] == [
            ("message", "ok"), ("exec", "ok"), ("file_write", "ok"), ("file_read", "ok"),
            ("file_write", "ok"), ("file_read", "ok")]
        assert all(r["thread"] == "deploy-42" and "thread" not in r["data"] for r in feed)
        assert feed[1]["detail"] == "echo hi"
        # the column is what the filter uses: rows without a thread have NULL there
        status, body = await h.call("GET", "/api/activity?hours=0&limit=1000&type=exec", boss)
        assert sorted((r["detail"], r["thread"]) for r in body["events"]) == [
            ("echo hi", "deploy-42"), ("echo other", None)]


async def test_reply_to_inherits_the_thread_or_starts_one(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        a, b = await h.token("alpha"), await h.token("beta")
        boss = await h.token("boss", admin=True)
        _, first = await h.call("POST", "/api/send", a, {"to": "beta", "message": "q", "thread": "ops.1"})
        status, reply = await h.call("POST", "/api/send", b, {"to": "alpha", "message": "a", "reply_to": first["id"]})
        assert status == 200 and (reply["thread"], reply["reply_to"]) == ("ops.1", first["id"])
        _, inbox = await h.call("GET", "/api/inbox", a)
        assert [(m["message"], m["thread"], m.get("reply_to")) for m in inbox["messages"]] == [
            ("a", "ops.1", first["id"])]

        # a message outside any thread: the reply starts "m<id>" and the original joins it
        _, plain = await h.call("POST", "/api/send", a, {"to": "beta", "message": "plain"})
        _, reply = await h.call("POST", "/api/send", b, {"to": "alpha", "message": "re", "reply_to": plain["id"]})
        assert reply["thread"] == f"m{plain['id']}"
        # an exec that answers a message joins its thread
        status, out = await h.call("POST", "/api/exec", a, {"target": "box1", "command": "echo done",
                                                            "reply_to": reply["id"]})
        assert status == 200 and out["thread"] == f"m{plain['id']}" and out["reply_to"] == reply["id"]
        status, view = await h.call("GET", f"/api/threads/m{plain['id']}", boss)
        assert status == 200
        assert [m["message"] for m in view["messages"]] == ["plain", "re"]
        # the replied-to message opens the thread in the view; it is itself left as it was
        assert view["messages"][0]["thread"] is None and view["messages"][1]["thread"] == f"m{plain['id']}"
        _, inbox = await h.call("GET", "/api/inbox", b)
        assert [m.get("thread") for m in inbox["messages"] if m["id"] == plain["id"]] == [None]
        assert [e["type"] for e in view["events"]] == ["message", "exec"]  # the original's row predates the thread
        assert view["events"][1]["data"]["reply_to"] == reply["id"]
        # an explicit thread wins over the replied-to message's
        _, other = await h.call("POST", "/api/send", b, {"to": "alpha", "message": "x", "reply_to": first["id"],
                                                         "thread": "elsewhere"})
        assert (other["thread"], other["reply_to"]) == ("elsewhere", first["id"])


async def test_reply_to_a_message_the_caller_cannot_see_is_refused_and_recorded(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        a, b, c = await h.token("alpha"), await h.token("beta"), await h.token("gamma")
        boss = await h.token("boss", admin=True)
        _, private = await h.call("POST", "/api/send", a, {"to": "beta", "message": "secret plan", "thread": "p1"})
        answers = []
        for body in ({"to": "alpha", "message": "me too", "reply_to": private["id"]},
                     {"to": "alpha", "message": "nope", "reply_to": private["id"] + 1000}):
            answers.append(await h.call("POST", "/api/send", c, body))
        # the same answer for another pair's message and for one that does not exist: nothing leaks
        assert [s for s, _ in answers] == [404, 404]
        assert answers[0][1]["code"] == answers[1][1]["code"] == "reply_to_not_found"
        assert answers[0][1]["error"].replace(str(private["id"]), "N") == \
            answers[1][1]["error"].replace(str(private["id"] + 1000), "N")
        assert "secret" not in str(answers) and "p1" not in str(answers)
        status, body = await h.call("POST", "/api/exec", c, {"target": "box1", "command": "id",
                                                             "reply_to": private["id"]})
        assert status == 404 and body["code"] == "reply_to_not_found"
        status, body = await h.call("GET", f"/api/file/raw?target=box1&path=/x&reply_to={private['id']}", c)
        assert status == 404 and body["code"] == "reply_to_not_found"
        _, inbox = await h.call("GET", "/api/inbox", a)
        assert inbox["messages"] == []  # nothing was delivered
        assert not [call for call in box.calls if call[0] == "exec"]  # nothing ran
        status, feed = await h.call("GET", "/api/activity?hours=0&from=gamma", boss)
        refused = sorted((e["type"], e["result"], e["data"]["code"], e["data"]["reply_to"]) for e in feed["events"])
        assert refused == sorted([
            ("message", "denied", "reply_to_not_found", private["id"]),
            ("message", "denied", "reply_to_not_found", private["id"] + 1000),
            ("exec", "denied", "reply_to_not_found", private["id"]),
            ("file_read", "denied", "reply_to_not_found", private["id"])])
        # the recipient and an admin may reply to it
        for token in (b, boss):
            status, body = await h.call("POST", "/api/send", token, {"to": "alpha", "message": "ok",
                                                                     "reply_to": private["id"]})
            assert status == 200 and body["thread"] == "p1"


async def test_thread_view_orders_messages_and_actions(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        a, b = await h.token("alpha"), await h.token("beta")
        boss = await h.token("boss", admin=True)
        _, q = await h.call("POST", "/api/send", b, {"to": "alpha", "message": "please build", "thread": "build:7"})
        await h.call("POST", "/api/exec", a, {"target": "box1", "command": "echo build", "reply_to": q["id"]})
        await h.call("POST", "/api/file/write", a, {"target": "box1", "path": "/out", "content": "ok",
                                                    "thread": "build:7"})
        await h.call("POST", "/api/send", a, {"to": "beta", "message": "built", "reply_to": q["id"]})
        # a denied action in the thread is part of it too (alpha may not use box2)
        status, _ = await h.call("POST", "/api/exec", a, {"target": "box2", "command": "x", "thread": "build:7"})
        assert status == 403

        status, view = await h.call("GET", "/api/threads/build:7", boss)
        assert status == 200 and view["thread"] == "build:7" and view["admin_view"] is True
        assert [m["message"] for m in view["messages"]] == ["please build", "built"]
        assert [(e["type"], e["target"], e["result"]) for e in view["events"]] == [
            ("message", "alpha", "ok"), ("exec", "box1", "ok"), ("file_write", "box1", "ok"),
            ("message", "beta", "ok"), ("exec", "box2", "denied")]
        kinds = [(i["kind"], i.get("message") or i.get("detail")) for i in view["items"]]
        assert kinds == [("message", "please build"), ("event", "please build"), ("event", "echo build"),
                         ("event", "/out"), ("message", "built"), ("event", "built"), ("event", "x")]
        times = [i["time"] for i in view["items"]]
        assert times == sorted(times)
        assert view["truncated"] is False

        # limit bounds each list and says so
        status, small = await h.call("GET", "/api/threads/build:7?limit=1", boss)
        assert status == 200 and len(small["messages"]) == 1 and len(small["events"]) == 1 and small["truncated"]

        # a party sees the thread's messages it sent or received, and no activity rows
        status, mine = await h.call("GET", "/api/threads/build:7", b)
        assert status == 200 and [m["message"] for m in mine["messages"]] == ["please build", "built"]
        assert mine["events"] == [] and mine["admin_view"] is False


async def test_a_non_admin_cannot_read_another_pairs_thread(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        a, c = await h.token("alpha"), await h.token("gamma")
        await h.token("beta")
        boss = await h.token("boss", admin=True)
        await h.call("POST", "/api/send", a, {"to": "beta", "message": "private", "thread": "pair"})
        await h.call("POST", "/api/send", c, {"to": "alpha", "message": "mine", "thread": "shared"})
        await h.call("POST", "/api/send", a, {"to": "beta", "message": "not for gamma", "thread": "shared"})
        status, body = await h.call("GET", "/api/threads/pair", c)
        missing_status, missing = await h.call("GET", "/api/threads/no-such-thread", c)
        # the same 404 as a thread that does not exist
        assert (status, body["code"]) == (missing_status, missing["code"]) == (404, "thread_not_found")
        assert "private" not in str(body)
        status, shared = await h.call("GET", "/api/threads/shared", c)
        assert status == 200 and [m["message"] for m in shared["messages"]] == ["mine"]
        # the feed filter is admin-only, like the feed
        status, body = await h.call("GET", "/api/activity?thread=pair", c)
        assert status == 403
        status, body = await h.call("GET", "/api/threads/pair", boss)
        assert status == 200 and [m["message"] for m in body["messages"]] == ["private"]
        status, body = await h.call("GET", "/api/threads/no-such-thread", boss)
        assert status == 404 and body["code"] == "thread_not_found"


BAD_THREADS = ["", "-lead", "has space", "a" * 65, "semi;colon", "new\nline", "ünï", "a/b", 7, None, ["x"]]


async def test_bad_thread_and_reply_to_values_are_400(hub_harness, box):
    async with hub_harness(plugins=plugins(box)) as h:
        a = await h.token("alpha")
        boss = await h.token("boss", admin=True)
        await h.token("beta")
        for bad in BAD_THREADS:
            for path, body in (("/api/send", {"to": "beta", "message": "m"}),
                               ("/api/exec", {"target": "box1", "command": "echo"}),
                               ("/api/file/read", {"target": "box1", "path": "/x"}),
                               ("/api/file/write", {"target": "box1", "path": "/x", "content": "c"})):
                status, answer = await h.call("POST", path, a, {**body, "thread": bad})
                assert status == 400 and answer["ok"] is False and "thread" in answer["error"], (path, bad, answer)
        for bad in (0, -1, 2**63, "1", 1.5, True):
            status, answer = await h.call("POST", "/api/send", a, {"to": "beta", "message": "m", "reply_to": bad})
            assert status == 400 and "reply_to" in answer["error"], (bad, answer)
        for query in ("thread=a%20b", "thread=", "reply_to=x", "reply_to=0"):
            status, answer = await h.call("GET", f"/api/file/raw?target=box1&path=/x&{query}", a)
            assert status == 400, (query, answer)
            status, answer = await h.call("PUT", f"/api/file/raw?target=box1&path=/x&{query}", a, raw=b"x",
                                          headers={"Content-Type": "application/octet-stream"})
            assert status == 400, (query, answer)
        for query in ("thread=a%20b", "thread=-x", f"thread={'a' * 65}"):
            status, answer = await h.call("GET", f"/api/activity?{query}", boss)
            assert status == 400 and answer["ok"] is False, (query, answer)
        for thread in ("-x", "a%20b", "a" * 65, "%C3%BC"):
            status, answer = await h.call("GET", f"/api/threads/{thread}", boss)
            assert status == 400 and answer["code"] == "invalid_field", (thread, answer)
        # nothing was stored by any refused call
        assert await h.hub.db.fetch_val("SELECT COUNT(*) FROM messages") == 0
        assert not box.calls


def test_cli_send_thread_inbox_and_activity_filter(database_url, tmp_path):
    import subprocess
    import sys

    from claude_net.testing import HubProcess

    config = '[plugins]\nallow = ["activity"]\n'
    with HubProcess(config, database_url=database_url, workdir=str(tmp_path)) as hub:
        alpha, beta = hub.token("alpha"), hub.token("beta")

        def client(token: str, *args: str) -> subprocess.CompletedProcess:
            env = {**hub.env, "CLAUDE_NET_URL": hub.url, "CLAUDE_NET_TOKEN": token}
            return subprocess.run([sys.executable, "-m", "claude_net.cli", *args], env=env, cwd=hub.dir,
                                  capture_output=True, text=True, timeout=60)

        out = client(alpha, "send", "beta", "ship it?", "--thread", "rel-3")
        assert out.returncode == 0 and "thread rel-3" in out.stdout, out.stderr
        first = int(out.stdout.split("id ")[1].split(",")[0])
        out = client(beta, "send", "alpha", "shipped", "--reply-to", str(first))
        assert out.returncode == 0 and "thread rel-3" in out.stdout, out.stderr
        out = client(alpha, "inbox")
        assert out.returncode == 0 and f"beta [thread rel-3, re {first}]: shipped" in out.stdout, out.stdout
        out = client(alpha, "send", "beta", "x", "--thread", "bad thread")
        assert out.returncode != 0 and "thread" in out.stderr
        client(alpha, "send", "beta", "outside any thread")

        listing = hub.cli("activity", "--thread", "rel-3", "--json")
        rows = [json.loads(line) for line in listing.splitlines()]
        assert [(r["from"], r["thread"]) for r in rows] == [("alpha", "rel-3"), ("beta", "rel-3")]
        assert "thread rel-3" in hub.cli("activity", "--thread", "rel-3")
