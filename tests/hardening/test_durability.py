"""Durability: SIGKILL the hub under load, again and again; nothing acknowledged is lost or doubled.

A real ``claude-net serve`` subprocess. Sender threads send messages, each with its own
``Idempotency-Key``; a send that fails in any way (connection refused or reset, timeout, 5xx) is
retried with the *same* key until it gets a 200. A consumer thread reads its inbox and acks some
of the messages (``POST /api/inbox/ack``) while, meanwhile, the hub is killed with SIGKILL and
restarted several times. Afterwards:

* every send that got a 200 is stored exactly once, under the id its 200 answered (every retry of
  a key answered the same id), and nothing else is stored: no duplicates;
* nothing whose ack was confirmed was ever delivered again, and every message not acked is still
  unread (an ack whose answer was lost in a crash may have landed or not: either is fine);
* SQLite's ``PRAGMA integrity_check`` is ``ok``.

Same run against PostgreSQL. The consumer uses explicit acks: ``GET /api/inbox?ack=true`` marks
messages read in the same statement that returns them, so a crash between the commit and the
answer would lose them from the consumer's view (docs/security.md says which to use when).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import sqlite3
import threading
import time

import pytest

from claude_net.testing import HubProcess

pytestmark = pytest.mark.slow

SENDERS = 3
KILLS = 4
RUN_SECONDS = 1.6  # between kills
TIMEOUT = 3.0


class Client:
    """Tiny HTTP client; every failure (refused, reset, timeout, 5xx) is an ``OSError``-like None."""

    def __init__(self, hub: HubProcess, token: str) -> None:
        self.port, self.token = hub.port, token

    def call(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict] | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
            data = None
            if body is not None:
                data = json.dumps(body)
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=hdrs)
            response = conn.getresponse()
            payload = json.loads(response.read() or b"{}")
            return response.status, payload
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()


class Sender(threading.Thread):
    def __init__(self, client: Client, name: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client, self.name_, self.stop = client, name, stop
        self.acked: dict[str, set[int]] = {}  # key -> ids answered with 200 (must be exactly one)
        self.attempts = self.failures = 0

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            key = f"{self.name_}-{seq}"
            while True:  # retry the same key until it is acknowledged
                self.attempts += 1
                answer = self.client.call("POST", "/api/send", {"to": "consumer", "message": f"payload {key}"},
                                          headers={"Idempotency-Key": key})
                if answer is not None and answer[0] == 200:
                    self.acked.setdefault(key, set()).add(answer[1]["id"])
                    break
                if answer is not None and answer[0] < 500 and answer[0] != 429:
                    raise AssertionError(f"send {key}: {answer}")
                self.failures += 1
                if self.stop.is_set() and seq and key not in self.acked:
                    # stopping: an unacknowledged key may stay unsent (it may or may not be stored)
                    self.pending = key
                    return
                time.sleep(0.05)
            seq += 1
        self.pending = None


class Consumer(threading.Thread):
    """Reads the inbox; acks every message except those whose id is divisible by 10 (they stay unread)."""

    def __init__(self, client: Client, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client, self.stop = client, stop
        self.confirmed: set[int] = set()  # acks answered 200: these must never come back
        self.uncertain: set[int] = set()  # ack sent, no answer: may or may not have landed
        self.seen: set[int] = set()
        self.redelivered: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set():
            answer = self.client.call("GET", "/api/inbox?limit=500")
            if answer is None or answer[0] != 200:
                time.sleep(0.05)
                continue
            ids = [m["id"] for m in answer[1]["messages"]]
            self.redelivered += [i for i in ids if i in self.confirmed]
            self.seen.update(ids)
            wanted = [i for i in ids if i % 10 != 0 and i not in self.confirmed]
            if wanted:
                self.uncertain.update(wanted)
                result = self.client.call("POST", "/api/inbox/ack", {"ids": wanted})
                if result is not None and result[0] == 200:
                    self.confirmed.update(result[1]["acked"])
                    # "ignored": already read by an earlier ack whose answer was lost: also acked
                    self.confirmed.update(i for i in result[1]["ignored"] if i in wanted)
                    self.uncertain.difference_update(wanted)
            time.sleep(0.02)


def chaos(hub: HubProcess) -> dict:
    """Run senders and the consumer while the hub is SIGKILLed and restarted ``KILLS`` times."""
    stop = threading.Event()
    senders = [Sender(Client(hub, hub.sender_tokens[i]), f"s{i}", stop) for i in range(SENDERS)]
    consumer = Consumer(Client(hub, hub.consumer_token), stop)
    for thread in senders + [consumer]:
        thread.start()
    restarts = []
    try:
        for _ in range(KILLS):
            time.sleep(RUN_SECONDS)
            hub.proc.send_signal(signal.SIGKILL)
            hub.proc.wait(10)
            hub.log.close()
            time.sleep(0.2)
            started = time.monotonic()
            hub.start()
            restarts.append(time.monotonic() - started)
        time.sleep(RUN_SECONDS)
    finally:
        stop.set()
        for thread in senders + [consumer]:
            thread.join(30)
    return {"senders": senders, "consumer": consumer, "restarts": restarts}


def verify(run: dict, stored: list[dict], unread: set[int]) -> None:
    senders, consumer = run["senders"], run["consumer"]
    acked: dict[str, set[int]] = {}
    for sender in senders:
        acked.update(sender.acked)
    pending = {s.pending for s in senders if getattr(s, "pending", None)}
    print(f"\ndurability: {len(stored)} stored, {sum(s.attempts for s in senders)} send attempts, "
          f"{sum(s.failures for s in senders)} failed and retried, {len(consumer.confirmed)} acks confirmed, "
          f"{len(consumer.uncertain)} uncertain, {len(unread)} unread, restarts {run['restarts']}")
    assert sum(s.failures for s in senders) > 0, "the kills never hit a send: no chaos was tested"
    assert len(acked) > 50, len(acked)
    # every retry of a key was answered with the same id
    assert {k: v for k, v in acked.items() if len(v) != 1} == {}
    by_key: dict[str, list[int]] = {}
    for row in stored:
        by_key.setdefault(row["idempotency_key"], []).append(row["id"])
    # no duplicates: one row per key
    assert {k: v for k, v in by_key.items() if len(v) != 1} == {}
    # every acknowledged send is stored exactly once, under the id it was answered with
    missing = {k: v for k, v in acked.items() if by_key.get(k) != list(v)}
    assert missing == {}, f"acknowledged but not stored as answered: {list(missing.items())[:5]}"
    # nothing stored that nobody sent (at most the one key per sender in flight at the end)
    assert set(by_key) - set(acked) <= pending, set(by_key) - set(acked)
    for row in stored:
        assert row["message"] == f"payload {row['idempotency_key']}"
    # acks: nothing confirmed came back, every message not acked is still unread
    all_ids = {row["id"] for row in stored}
    assert consumer.redelivered == [], consumer.redelivered[:10]
    assert consumer.confirmed and consumer.confirmed <= all_ids
    assert unread & consumer.confirmed == set()
    assert all_ids - consumer.confirmed - consumer.uncertain <= unread
    assert unread <= all_ids - consumer.confirmed


def _prepare(hub: HubProcess) -> None:
    hub.sender_tokens = [hub.token(f"s{i}") for i in range(SENDERS)]
    hub.consumer_token = hub.token("consumer")


CONFIG = '[plugins]\nallow = ["permissions", "activity"]\n'


def test_sigkill_under_load_sqlite(tmp_path):
    hub = HubProcess(CONFIG, workdir=str(tmp_path))
    hub.start()
    try:
        _prepare(hub)
        run = chaos(hub)
        final = Client(hub, hub.consumer_token).call("GET", "/api/inbox?limit=500")
        assert final is not None and final[0] == 200  # the hub serves after it all
    finally:
        hub.stop()
    db = sqlite3.connect(tmp_path / "claude-net.db")
    db.row_factory = sqlite3.Row
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = [dict(r) for r in db.execute(
            "SELECT id, idempotency_key, message FROM messages WHERE to_machine = 'consumer'")]
        unread = {r[0] for r in db.execute("SELECT id FROM messages WHERE to_machine = 'consumer' AND read_at IS NULL")}
        # the audit trail survived too: no row left pending by a kill is corrupt, every send is there
        sends = db.execute("SELECT COUNT(*) FROM activity_log WHERE type = 'message' AND result = 'ok'").fetchone()[0]
    finally:
        db.close()
    verify(run, stored, unread)
    assert sends >= len(stored) - SENDERS * (KILLS + 1)  # a kill may fall between a send and its audit row
    first = sorted(unread)[:500]
    assert [m["id"] for m in final[1]["messages"]] == first[: len(final[1]["messages"])]


@pytest.mark.db("postgresql")
def test_sigkill_under_load_postgresql(tmp_path, database_url):
    hub = HubProcess(CONFIG, workdir=str(tmp_path), database_url=database_url)
    hub.start()
    try:
        _prepare(hub)
        run = chaos(hub)
        final = Client(hub, hub.consumer_token).call("GET", "/api/inbox?limit=500")
        assert final is not None and final[0] == 200
    finally:
        hub.stop()

    async def read():
        import asyncpg

        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            stored = [dict(r) for r in await conn.fetch(
                "SELECT id, idempotency_key, message FROM messages WHERE to_machine = 'consumer'")]
            unread = {r["id"] for r in await conn.fetch(
                "SELECT id FROM messages WHERE to_machine = 'consumer' AND read_at IS NULL")}
            return stored, unread
        finally:
            await conn.close()

    stored, unread = asyncio.run(read())
    verify(run, stored, unread)
    with contextlib.suppress(Exception):
        hub.log.close()
