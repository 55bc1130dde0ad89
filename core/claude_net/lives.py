"""Which hub processes are alive: a process's *life* and the test that another one is over.

A serving hub holds one life for as long as it runs (:attr:`Hub.life`, taken in
:meth:`Hub.start`). Work it leaves half-done in the database (an activity row still
``pending``, a running job) is stamped with the life's id; any process can later ask whether
that life is over and, if so, close the work honestly (``interrupted``) instead of leaving it
open forever.

The proof of life is a lock that the operating system or the database server lets go of when the
process dies, however it dies (kill -9 included):

* PostgreSQL: a session advisory lock named after the id, held on a connection of its own;
  another replica's ``pg_try_advisory_xact_lock`` succeeds only once that connection is gone.
* SQLite: an exclusive ``flock`` on ``<database>.lives/<id>``, next to the database file (one
  host: SQLite is not shared between machines). An in-memory database belongs to one process,
  so every other life there is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import os
import re
import uuid
from typing import Any

log = logging.getLogger("claude_net.lives")

LIFE_RE = re.compile(r"^[0-9a-f]{32}$")


def _lock_name(life: str) -> str:
    return f"life:{life}"


class Life:
    """This process's life on one hub's database (see the module doc)."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.id = uuid.uuid4().hex
        self.held = False
        self._fd: int | None = None
        self._conn: Any = None
        self._holder: asyncio.Task[Any] | None = None

    # -- the SQLite side ----------------------------------------------------------------------

    @functools.cached_property
    def _folder(self) -> str | None:
        """Where SQLite lives are kept (None: an in-memory database); the URL is parsed once."""
        import databases

        path = databases.DatabaseURL(self.hub.settings.core.database_url).database
        if not path or path == ":memory:" or path.startswith("file:"):
            return None
        return os.path.abspath(path) + ".lives"

    def _hold_file(self) -> None:
        folder = self._folder
        if folder is None:
            self.held = True
            return
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(folder, self.id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.held = fd, True

    def _file_gone(self, life: str) -> bool:
        folder = self._folder
        if folder is None:
            return True
        path = os.path.join(folder, life)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)  # its owner is gone: the file has told all it can
            return True
        finally:
            os.close(fd)

    # -- the PostgreSQL side ------------------------------------------------------------------

    async def _hold_pg(self, ready: asyncio.Future[None]) -> None:
        """Hold the advisory lock; reconnect (and take it again) when the connection is lost."""
        import asyncpg

        from .cluster import asyncpg_dsn, lock_key

        key = lock_key(_lock_name(self.id))
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(asyncpg_dsn(self.hub.settings.core.database_url), timeout=10,
                                             server_settings={"application_name": f"claude-net life pid {os.getpid()}"})
                async with asyncio.timeout(10):  # not wait_for: on 3.11 it can swallow a cancellation
                    await conn.execute("SELECT pg_advisory_lock($1)", key)
                self._conn, self.held = conn, True
                if not ready.done():
                    ready.set_result(None)
                while not conn.is_closed():
                    await asyncio.sleep(2)
                    async with asyncio.timeout(10):
                        await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep holding it
                if not ready.done():
                    ready.set_exception(exc)
                    return
                log.warning("lost the connection that marks this hub process alive (%s); reconnecting", exc)
                await asyncio.sleep(1)
            finally:
                self._conn, self.held = None, False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()

    # -- the interface ------------------------------------------------------------------------

    async def hold(self) -> None:
        """Take this life's lock (before the process stamps any work with :attr:`id`)."""
        if self.hub.db.is_sqlite:
            await asyncio.to_thread(self._hold_file)
            return
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._holder = asyncio.ensure_future(self._hold_pg(ready))
        await asyncio.wait_for(asyncio.shield(ready), 15)

    async def gone(self, life: str) -> bool:
        """Whether ``life`` (another process's id, from the database) is over."""
        if life == self.id:
            return False
        if not LIFE_RE.fullmatch(life or ""):
            return True  # not an id a hub wrote: nothing holds it
        if self.hub.db.is_sqlite:
            return await asyncio.to_thread(self._file_gone, life)
        from .cluster import lock_key

        async with self.hub.db.transaction() as tx:
            return bool(await tx.fetch_val("SELECT pg_try_advisory_xact_lock(:k)", {"k": lock_key(_lock_name(life))}))

    async def release(self) -> None:
        if self._holder is not None:
            self._holder.cancel()
            with contextlib.suppress(BaseException):
                await self._holder
            self._holder = None
        if self._fd is not None:
            folder = self._folder
            with contextlib.suppress(OSError):
                if folder is not None:
                    os.unlink(os.path.join(folder, self.id))
            os.close(self._fd)
            self._fd = None
        self.held = False
