"""A hostile agent's bytes at the HTTP edge (issue 19, items 1 and 4).

What text the hub accepts is decided once, in the request wrapper: a lone UTF-16 surrogate
anywhere (JSON keys or values at any depth, the query string, the URL path) and a NUL outside the
fields that hold bytes (a file's ``content``) are a 400 ``invalid_text`` naming the field, before
any handler, so no database, renderer or log meets them. JSON bodies are bounded before they are
parsed: size per route, nesting depth and number of values counted from the bytes as they arrive.
Every such refusal is an activity row, throttled per node.

In-process cases run on SQLite and PostgreSQL; the big-body case runs a real ``claude-net serve``
(Hypercorn) with the event-loop lag probe of the benchmarks (bench/loopprobe.py) and asserts the
bound docs/security.md states.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request

import pytest

import claude_net_activity
import claude_net_permissions
from claude_net.http import openapi_document
from claude_net.schema import JsonShape
from bench.common import ProbeHub
from claude_net.testing import database_for, eventually
from tests.core.testbox import TestBox

#: docs/security.md "Input at the edge": the longest the event loop may stall while a 65 MB
#: many-keys body is refused, and how long another client's request may take meanwhile
MAX_LOOP_LAG_MS = 250.0
MAX_HEALTH_MS = 500.0
#: ... and while an accepted file write of the largest size (64 MiB, ~85 MiB of JSON) is parsed
MAX_LOOP_LAG_BIG_WRITE_MS = 500.0


async def _rows(hub, **filters):
    where = " AND ".join(f"{k} = :{k}" for k in filters) or "1 = 1"
    return await hub.db.fetch_all(f"SELECT * FROM activity_log WHERE {where} ORDER BY id", filters)


def _raw(text: str) -> dict:
    """A body exactly as written (JSON escapes such as \\ud800 kept), sent as JSON."""
    return {"raw": text.encode(), "headers": {"Content-Type": "application/json"}}


@pytest.fixture
async def edge(hub_harness):
    box = TestBox()
    async with hub_harness(plugins=[box, claude_net_permissions, claude_net_activity]) as h:
        h.box = box
        h.boss = await h.token("boss", admin=True)
        h.agent = await h.token("agent")  # no grants at all
        yield h


async def _refusals(h, actor: str, n: int):
    return await eventually(lambda: _at_least(h, actor, n))


async def _at_least(h, actor, n):
    rows = await _rows(h.hub, type="request", result="denied", from_machine=actor)
    return rows if len(rows) >= n else None


async def test_a_surrogate_in_a_denied_exec_is_refused_and_recorded(edge):
    """The issue's request: a 403 whose denial row could not be written (UnicodeEncodeError)."""
    h = edge
    status, body = await h.call("POST", "/api/exec", h.agent, **_raw('{"target": "box1", "command": "id \\ud800"}'))
    assert status == 400 and body["code"] == "invalid_text" and body["field"] == "command", body
    assert "surrogate" in body["error"]
    rows = await _refusals(h, "agent", 1)
    assert rows[0]["target"] == "box1" and "surrogate" in rows[0]["detail"], dict(rows[0])
    assert h.box.calls == []
    # the hub is fine afterwards: the same agent's next (denied) exec is a 403 with its own row
    status, body = await h.call("POST", "/api/exec", h.agent, {"target": "box1", "command": "id"})
    assert status == 403, body
    denied = await eventually(lambda: _rows(h.hub, type="exec", result="denied", from_machine="agent"))
    assert denied[0]["detail"] == "id"
    # the activity feed (JSON) shows the refusal, readable
    status, feed = await h.call("GET", "/api/activity?hours=1&type=request", h.boss)
    assert status == 200 and any("surrogate" in e["detail"] for e in feed["events"]), feed


@pytest.mark.parametrize("case", ["message", "key", "nested_key", "file_path", "write_path", "env_value", "pair"])
async def test_a_lone_surrogate_anywhere_in_a_body_is_a_clean_400_with_a_row(edge, case):
    h = edge
    await h.call("POST", "/api/permit", h.boss, {"source": "agent", "target": "box1"})
    requests = {
        "message": ("/api/send", '{"to": "boss", "message": "hi \\udc00 there"}', "message", "invalid_text"),
        "key": ("/api/send", '{"to": "boss", "message": "hi", "\\ud800x": 1}', "\\ud800x", "unknown_field"),
        "nested_key": ("/api/exec", '{"target": "box1", "command": "true", "env": {"A\\ud800": "1"}}',
                       "env.<name>", "invalid_field"),
        "file_path": ("/api/file/read", '{"target": "box1", "path": "/tmp/\\ud800"}', "path", "invalid_text"),
        "write_path": ("/api/file/write", '{"target": "box1", "path": "/tmp/\\udfff", "content": "x"}', "path",
                       "invalid_text"),
        "env_value": ("/api/exec", '{"target": "box1", "command": "true", "env": {"A": "\\ud83d"}}', "env.A",
                      "invalid_text"),
        # a high surrogate followed by another high one: the first is alone even though a pair follows
        "pair": ("/api/send", '{"to": "boss", "message": "\\ud83d\\ud83d\\ude00"}', "message", "invalid_text"),
    }
    path, text, field, code = requests[case]
    status, body = await h.call("POST", path, h.agent, **_raw(text))
    assert status == 400 and body["code"] == code and body["field"] == field, body
    json.dumps(body).encode()  # the answer itself is encodable
    rows = await _refusals(h, "agent", 1)
    assert rows[-1]["detail"].startswith(f"POST {path} refused"), dict(rows[-1])
    assert h.box.calls == [] and await h.hub.db.fetch_all("SELECT * FROM messages") == []


async def test_a_valid_surrogate_pair_is_text(edge):
    h = edge
    status, body = await h.call("POST", "/api/send", h.agent, **_raw('{"to": "boss", "message": "ok \\ud83d\\ude00"}'))
    assert status == 200, body
    status, inbox = await h.call("GET", "/api/inbox", h.boss)
    assert inbox["messages"][0]["message"] == "ok \U0001f600"


async def test_nul_in_a_message_is_a_400_on_every_database(edge):
    """On PostgreSQL a NUL in a message was a 500 (text cannot hold it); SQLite stored it."""
    h = edge
    status, body = await h.call("POST", "/api/send", h.agent, {"to": "boss", "message": "a\x00b"})
    assert status == 400 and body["code"] == "invalid_text" and body["field"] == "message", body
    assert "NUL" in body["error"]
    assert await h.hub.db.fetch_all("SELECT * FROM messages") == []
    rows = await _refusals(h, "agent", 1)
    assert "NUL" in rows[0]["detail"] and "\x00" not in rows[0]["detail"]
    # the escaped text "\\u0000" is six ordinary characters
    status, body = await h.call("POST", "/api/send", h.agent, **_raw('{"to": "boss", "message": "a\\\\u0000b"}'))
    assert status == 200, body


async def test_nul_is_content_in_a_file_but_not_in_its_name(edge):
    h = edge
    await h.call("POST", "/api/permit", h.boss, {"source": "agent", "target": "box1"})
    status, body = await h.call("POST", "/api/file/write", h.agent,
                                {"target": "box1", "path": "/tmp/bin", "content": "a\x00b"})
    assert status == 200, body
    assert h.box.files[("box1", "/tmp/bin")] == b"a\x00b"
    status, body = await h.call("POST", "/api/file/write", h.agent,
                                {"target": "box1", "path": "/tmp/ok", "content": "x", "mkdirs": True, "\x00": 1})
    assert status == 400 and body["field"] == "\\x00", body
    # a surrogate is refused even in content: it is not a character, there are no bytes to write
    status, body = await h.call("POST", "/api/file/write", h.agent,
                                **_raw('{"target": "box1", "path": "/tmp/s", "content": "\\ud800"}'))
    assert status == 400 and body["code"] == "invalid_text" and body["field"] == "content", body


async def test_nul_in_the_query_string_and_the_url_path_is_refused_and_recorded(edge):
    h = edge
    status, body = await h.call("GET", "/api/activity?hours=1&type=exec%00x", h.boss)
    assert status == 400 and body["code"] == "invalid_text" and body["field"] == "type", body
    status, body = await h.call("GET", "/api/inbox?limit=5&x%00=1", h.agent)
    assert status == 400 and body["code"] in ("unknown_field", "invalid_text"), body
    status, body = await h.call("GET", "/api/file/raw?target=box1&path=/tmp/a%00b", h.agent)
    assert status == 400 and body["field"] == "path", body
    await _refusals(h, "boss", 1)
    await _refusals(h, "agent", 2)


async def test_the_legacy_v1_from_parameter_is_checked_too(hub_harness):
    """Without a token (messaging.allow_unauthenticated), the name comes from ``from``: a NUL or a
    non-UTF-8 byte there is refused, and the refusal of a caller without identity is recorded."""
    async with hub_harness(plugins=[claude_net_activity], messaging={"allow_unauthenticated": True}) as h:
        h.hub.auth_refusals.every = 0.0
        status, body = await h.call("GET", "/api/inbox?from=old%00box")
        assert status == 400 and body["code"] == "invalid_name", body
        status, body = await h.call("GET", "/api/inbox?from=old%ED%A0%80box")
        assert status == 400, body
        status, body = await h.call("POST", "/api/send", None,
                                    **_raw('{"from": "oldbox", "to": "x", "message": "\\ud800"}'))
        assert status == 400 and body["code"] == "invalid_text", body
        rows = await eventually(lambda: _at_least_anonymous(h, 3))
        assert all(r["from_machine"] is None or r["from_machine"] == "oldbox" for r in rows)


async def _at_least_anonymous(h, n):
    rows = await _rows(h.hub, type="request", result="denied")
    return rows if len(rows) >= n else None


@pytest.mark.parametrize("path", ["/api/exec", "/api/send"])
async def test_deep_nesting_is_a_400_with_a_row_and_no_traceback(edge, path, caplog):
    h = edge
    caplog.set_level(logging.DEBUG)
    for raw in (b"[" * 100_000, b'{"target": "box1", "command": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                b'{"to": "boss", "message": "x", "a": ' + b'{"a": ' * 40 + b"1" + b"}" * 41):
        status, body = await h.call("POST", path, h.agent, raw=raw, headers={"Content-Type": "application/json"})
        assert status == 400 and body["code"] == "too_deep", body
    rows = await _refusals(h, "agent", 3)
    assert all("nested more than 32 levels" in r["detail"] for r in rows), [r["detail"] for r in rows]
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()], caplog.text
    # 32 levels is still accepted JSON (the schema then says what it thinks of it)
    raw = b'{"to": "boss", "message": "x", "a": ' + b"[" * 31 + b"]" * 31 + b"}"
    status, body = await h.call("POST", "/api/send", h.agent, raw=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and body["code"] == "unknown_field", body


async def test_a_raised_depth_limit_still_never_lets_recursion_escape(hub_harness, caplog):
    async with hub_harness(plugins=[claude_net_activity], limits={"json_max_depth": 1_000_000,
                                                                  "json_max_items": 1_000_000}) as h:
        agent = await h.token("agent")
        status, body = await h.call("POST", "/api/send", agent, raw=b"[" * 100_000 + b"]" * 100_000,
                                    headers={"Content-Type": "application/json"})
        assert status == 400 and body["code"] == "too_deep", body
        assert not [r for r in caplog.records if r.exc_info], caplog.text


async def test_too_many_values_is_a_413_counted_before_parsing(edge):
    h = edge
    many = b'{"to": "boss", "message": "x", ' + b",".join(b'"k%d": 1' % i for i in range(20_000)) + b"}"
    status, body = await h.call("POST", "/api/send", h.agent, raw=many, headers={"Content-Type": "application/json"})
    assert status == 413 and body["code"] == "too_many_items" and body["limit"] == 10000, body
    await _refusals(h, "agent", 1)
    # strings full of commas and brackets are not structure
    status, body = await h.call("POST", "/api/send", h.agent, {"to": "boss", "message": ",[{" * 20_000})
    assert status == 200, body


@pytest.mark.db("sqlite")
async def test_one_agents_refusals_do_not_flood_the_audit(edge):
    """The first refusals of a window are rows one by one; later ones are counted into the next row."""
    h = edge
    limiter = h.hub.rate_limiter
    burst = limiter.REFUSALS_BURST
    for _ in range(burst + 30):
        status, _body = await h.call("POST", "/api/send", h.agent, {"to": "boss", "message": "\x00"})
        assert status == 400
    rows = await _refusals(h, "agent", burst)
    assert len(rows) == burst
    limiter.refusals.every = 0.0  # the window is over
    await h.call("POST", "/api/send", h.agent, {"to": "boss", "message": "\x00"})
    rows = await _refusals(h, "agent", burst + 1)
    assert "(30 more refused before it" in rows[-1]["detail"], rows[-1]["detail"]
    # another node's refusals have their own allowance
    status, _body = await h.call("POST", "/api/send", h.boss, {"to": "agent", "message": "\x00"})
    await _refusals(h, "boss", 1)


def test_shape_counting_does_not_depend_on_how_the_bytes_arrive():
    bodies = [b'{"a": "x[[[[\\"[[", "b": [1, 2, [3]]}', b'{"a": "\\\\", "b": [[[]]]}', b'{"a": "\\\\\\"[[["}',
              b'{"k": "\\u0000"}', b'{"k": "\\\\u0000"}', json.dumps({"a": [{"b": "]]},,"}] * 3}).encode()]
    for raw in bodies:
        results = []
        for piece in (len(raw), 1, 2, 3, 5, 7):
            shape = JsonShape(32, 100)
            for start in range(0, len(raw), piece):
                shape.feed(raw[start:start + piece])
            results.append((shape.depth, shape.items, shape.risky_escape))
        assert len(set(results)) == 1 and results[0][0] == 0, (raw, results)


@pytest.mark.db("sqlite")
async def test_the_published_schemas_state_the_nul_rule(edge):
    document = openapi_document(edge.app)
    send = document["paths"]["/api/send"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert send["properties"]["message"]["pattern"] == r"^[^\u0000]*$"
    write = document["paths"]["/api/file/write"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "pattern" not in write["properties"]["content"] and write["properties"]["content"]["x-allow-nul"]
    activity = {p["name"]: p for p in document["paths"]["/api/activity"]["get"]["parameters"]}
    assert activity["type"]["schema"]["pattern"] == r"^[^\u0000]*$"


# -- a real server: a 65 MB many-keys body must not stall everyone else ---------------------------


def _get(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.status, json.loads(r.read())


def _send_big(port: int, token: str, body: bytes, *, chunked: bool = False,
              until_closed: bool = False) -> tuple[int, bytes, float, float]:
    """POST ``body`` to /api/file/write, reading the answer while still sending (the hub may answer
    early). Returns (status, answer, seconds until the status line arrived, seconds until the hub
    closed the connection: with ``until_closed``, else -1)."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    answer = bytearray()
    done = threading.Event()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        started = time.monotonic()
        answered: list[float] = []
        closed: list[float] = []

        def read() -> None:
            try:
                while until_closed or not _complete(answer):
                    part = s.recv(65536)
                    if not part:
                        closed.append(time.monotonic() - started)
                        break
                    if not answer:
                        answered.append(time.monotonic() - started)
                    answer.extend(part)
            except ConnectionResetError:
                closed.append(time.monotonic() - started)
            except OSError:
                pass
            finally:
                done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            s.sendall((f"POST /api/file/write HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                       f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode())
            view = memoryview(body)
            for start in range(0, len(body), 1 << 20):
                piece = view[start:start + (1 << 20)]
                s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
                if done.is_set():
                    break
            if chunked and not done.is_set():
                s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the hub answered and closed before the whole body was through: expected
        done.wait(60)
    head = bytes(answer).split(b"\r\n\r\n", 1)
    return (int(head[0].split(b" ", 2)[1]), head[1] if len(head) > 1 else b"", answered[0] if answered else -1.0,
            closed[0] if closed else -1.0)


def _complete(answer: bytearray) -> bool:
    """A whole response is in (headers and Content-Length bytes of body)."""
    head, sep, rest = bytes(answer).partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value)
    return False


class Poller(threading.Thread):
    """Another client: GET /api/health every 20 ms on its own connection, timing each answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.perf_counter()
            _get(self.url + "/api/health")
            self.samples.append((time.perf_counter() - started) * 1000)
            time.sleep(0.02)


@pytest.fixture
def probe_hub(db_kind, tmp_path):
    with database_for(db_kind, tmp_path) as url:
        config = '[plugins]\ndeny = ["lxd", "ssh", "telegram", "mcp"]\n'
        with ProbeHub(config, database_url=url, workdir=str(tmp_path)) as hub:
            hub.boss = hub.token("boss", admin=True)
            hub.agent = hub.token("agent")  # no grants
            yield hub


def _while_probed(hub, send):
    """``send()`` while another client polls /api/health: ``(its result, the hub's loop lag, the poller)``."""
    _get(hub.url + "/api/bench/lag?reset=1", hub.boss)
    poller = Poller(hub.url)
    poller.start()
    time.sleep(0.3)
    try:
        result = send()
        time.sleep(0.3)
    finally:
        poller.halt.set()
        poller.join(30)
    _, lag = _get(hub.url + "/api/bench/lag", hub.boss)
    return result, lag, poller


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_65_mb_many_keys_body_is_refused_without_stalling_the_loop(probe_hub, chunked):
    hub = probe_hub
    many = b"{" + b",".join(b'"k%07d":1' % i for i in range(6_000_000)) + b"}"
    assert len(many) > 65_000_000
    (status, answer, seconds, closed), lag, poller = _while_probed(
        hub, lambda: _send_big(hub.port, hub.agent, many, chunked=chunked, until_closed=True))
    assert status == 413 and json.loads(answer)["code"] == "too_many_items", answer[:300]
    assert seconds < 5, f"the refusal took {seconds:.1f} s"
    # the rest of the body is not read: the hub closes the connection (it used to hold it open, unread,
    # until the client gave up)
    assert 0 <= closed < 5, f"the connection was closed after {closed:.1f} s"
    print(f"\n65 MB many-keys ({'chunked' if chunked else 'content-length'}): refused after {seconds * 1000:.0f} ms; "
          f"loop lag max {lag['max_ms']} ms p99 {lag['p99_ms']} ms; health max {max(poller.samples):.0f} ms "
          f"over {len(poller.samples)} calls")
    assert lag["n"] > 50 and lag["max_ms"] < MAX_LOOP_LAG_MS, lag
    assert max(poller.samples) < MAX_HEALTH_MS, sorted(poller.samples)[-5:]
    # recorded, as the agent's refusal
    _, feed = _get(hub.url + "/api/activity?hours=1&type=request", hub.boss)
    assert any(e["from"] == "agent" and e["data"]["code"] == "too_many_items" for e in feed["events"]), feed


@pytest.mark.slow
@pytest.mark.db("sqlite")
def test_the_largest_accepted_json_write_holds_the_loop_only_briefly(probe_hub):
    """A 64 MiB file ([limits] file_max_bytes) as base64 through POST /api/file/write (~85 MiB of
    JSON): the body is received, decoded and parsed (in a worker thread, in slices where it can be)
    and its base64 decoded; no backend owns the target, so the answer is a 404 after all that work."""
    import base64
    import os

    hub = probe_hub
    body = json.dumps({"target": "nobox", "path": "/tmp/x", "encoding": "base64",
                       "content": base64.b64encode(os.urandom(64 << 20)).decode()}).encode()
    (status, answer, _, _), lag, poller = _while_probed(hub, lambda: _send_big(hub.port, hub.boss, body))
    assert status == 404 and json.loads(answer)["code"] == "unknown_node", answer[:300]
    print(f"\n64 MiB file written as JSON: loop lag max {lag['max_ms']} ms p99 {lag['p99_ms']} ms; "
          f"health max {max(poller.samples):.0f} ms")
    assert lag["max_ms"] < MAX_LOOP_LAG_BIG_WRITE_MS, lag
