"""Hub replicas for the tests: several real ``claude-net serve`` processes on one database, the
singleton lock holder among them, and the plain HTTP call the tests make to a process (imported as
``tests.replicas``; not a conftest, so the integration and plugin tests import the same one)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from claude_net.testing import HubProcess


def call(hub: HubProcess, method: str, path: str, token: str, body: Any = None, timeout: float = 30
         ) -> tuple[int, Any]:
    """(status, parsed JSON) of one request to a hub process, error statuses included."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(hub.url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(check, timeout: float = 15.0, interval: float = 0.1):
    """Poll ``check()`` until it returns something true, and return that; AssertionError after
    ``timeout`` seconds (the blocking twin of ``claude_net.testing.eventually``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:g} s")


async def _singleton_holders(database_url: str, name: str) -> list[str]:
    import asyncpg

    from claude_net.cluster import asyncpg_dsn, lock_key

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND"
            " ((l.classid::bigint << 32) | l.objid::bigint) = ($1::bigint & x'FFFFFFFFFFFFFFFF'::bigint)",
            lock_key(name))
        return [r["application_name"] for r in rows]
    finally:
        await conn.close()


def holder_pid(database_url: str, name: str, deadline: float) -> int | None:
    """The pid of the process holding singleton ``name`` (PostgreSQL), waited for until ``deadline``
    (``time.monotonic()``); None if no one holds it by then. Blocking: from async code, in a thread."""
    while time.monotonic() < deadline:
        holders = asyncio.run(_singleton_holders(database_url, name))
        if holders:
            assert len(holders) == 1, holders
            return int(holders[0].rsplit(" ", 1)[1])
        time.sleep(0.3)
    return None


def _start_together(config: str, database_url: str, directory: Path, count: int, hubs: list[HubProcess]) -> None:
    for i in range(count):
        workdir = directory / f"r{i}"
        workdir.mkdir()
        hubs.append(HubProcess(config, database_url=database_url, workdir=str(workdir)))
    # started at the same moment: their migrations race on purpose
    threads = [threading.Thread(target=h.start) for h in hubs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(h.proc is not None and h.proc.poll() is None for h in hubs), "a replica did not start"


def _stop(hubs: list[HubProcess]) -> None:
    for hub in hubs:
        hub.stop()


@contextlib.contextmanager
def replicas(config: str, database_url: str, directory: Path, count: int = 2) -> Iterator[list[HubProcess]]:
    """``count`` hub processes with ``config`` on ``database_url``, each in ``directory/r<i>``,
    started together; all stopped on exit."""
    hubs: list[HubProcess] = []
    try:
        _start_together(config, database_url, directory, count, hubs)
        yield hubs
    finally:
        _stop(hubs)


@contextlib.asynccontextmanager
async def replicas_async(config: str, database_url: str, directory: Path, count: int = 2
                         ) -> AsyncIterator[list[HubProcess]]:
    """:func:`replicas` for async tests: starting and stopping run in a thread, so the event loop
    (and a fake server on it that the hubs call) keeps going."""
    hubs: list[HubProcess] = []
    try:
        await asyncio.to_thread(_start_together, config, database_url, directory, count, hubs)
        yield hubs
    finally:
        await asyncio.to_thread(_stop, hubs)
