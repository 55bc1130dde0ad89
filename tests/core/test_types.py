"""Timestamps and event ids: the formats the database sorts by."""

import re
import threading
from datetime import datetime, timedelta, timezone

from claude_net import Event, isotime
from claude_net.types import new_event_id

STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def test_isotime_now_matches_the_datetime_formatting():
    for _ in range(2000):  # enough calls to cross a second boundary now and then
        before = datetime.now(timezone.utc)
        stamp = isotime()
        after = datetime.now(timezone.utc)
        assert STAMP.match(stamp), stamp
        moment = datetime.fromisoformat(stamp[:-1]).replace(tzinfo=timezone.utc)
        assert before - timedelta(microseconds=1) <= moment <= after
    moment = datetime(2026, 11, 26, 18, 42, 32, 123, tzinfo=timezone(timedelta(hours=2)))
    assert isotime(moment) == "2026-11-26T16:42:32.000123Z"


def test_isotime_from_many_threads_never_mixes_seconds():
    stamps: list[tuple[datetime, str, datetime]] = []

    def work():
        for _ in range(3000):
            before = datetime.now(timezone.utc)
            stamp = isotime()
            stamps.append((before, stamp, datetime.now(timezone.utc)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for before, stamp, after in stamps:
        moment = datetime.fromisoformat(stamp[:-1]).replace(tzinfo=timezone.utc)
        assert before - timedelta(microseconds=1) <= moment <= after, (before, stamp, after)


def test_event_ids_are_unique_and_sort_by_creation():
    ids = [new_event_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert [i[:16] for i in ids] == sorted(i[:16] for i in ids)  # the clock part never goes back
    assert Event("message", "a").id != Event("message", "a").id
