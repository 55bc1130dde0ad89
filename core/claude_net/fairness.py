"""Fair shares of a bounded resource (exec slots, backend worker threads) between sources.

One agent must not be able to hold everything that protects the hub and so delay every other
agent. :class:`FairShares` bounds what runs at once three ways: in total, per source (the node
that asked) and per target (the node it runs on); a call that does not fit waits in its
source's FIFO queue, and a queue longer than its bound is refused at once (429). Whenever room
frees up, it goes to the waiting source that holds the *fewest* slots (ties: the call that has
waited longest), so a source that saturates its own share never delays a source under its own
share by more than the time it takes one slot to free, and not at all while the total has room.

Everything runs on the event loop (no locks): acquiring is a dictionary update when there is
room, a future when there is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .errors import RateLimited


@dataclass(eq=False)
class _Waiter:
    source: str
    target: str | None
    exempt: bool
    seq: int
    future: asyncio.Future[None] = field(repr=False)


class FairShares:
    """``async with shares.slot(source, target) as waited:`` run within the shares.

    ``total``: slots across every source; ``per_source`` / ``per_target``: at most that many
    held by one source / on one target (0 or None: no such bound); ``queue_per_source``: calls
    of one source that may wait at once, past which :meth:`slot` raises :class:`RateLimited`
    (0 or None: unbounded). ``exempt`` calls (an admin's) count against ``total`` and take their
    turn like everyone's, but no per-source or per-target bound or queue bound applies to them.
    ``what`` names the resource in refusals ("execs", "LXD calls").
    """

    def __init__(self, total: int, *, per_source: int | None = None, per_target: int | None = None,
                 queue_per_source: int | None = None, what: str = "calls") -> None:
        self.total = max(1, int(total))
        self.per_source = per_source if per_source and per_source > 0 else None
        self.per_target = per_target if per_target and per_target > 0 else None
        self.queue_per_source = queue_per_source if queue_per_source and queue_per_source > 0 else None
        self.what = what
        self.running = 0
        self.by_source: Counter[str] = Counter()
        self.by_target: Counter[str] = Counter()
        self._queues: dict[str, deque[_Waiter]] = {}
        self._seq = itertools.count()

    # -- state ------------------------------------------------------------------------------------

    def waiting(self, source: str | None = None) -> int:
        if source is not None:
            return len(self._queues.get(source, ()))
        return sum(len(q) for q in self._queues.values())

    def stats(self) -> dict[str, object]:
        return {"running": self.running, "total": self.total, "waiting": self.waiting(),
                "bySource": dict(self.by_source), "byTarget": dict(self.by_target)}

    def _fits(self, source: str, target: str | None, exempt: bool) -> bool:
        if self.running >= self.total:
            return False
        if exempt:
            return True
        if self.per_source is not None and self.by_source[source] >= self.per_source:
            return False
        return not (self.per_target is not None and target is not None
                    and self.by_target[target] >= self.per_target)

    def _take(self, source: str, target: str | None, exempt: bool) -> None:
        self.running += 1
        self.by_source[source] += 1
        if target is not None and not exempt:  # an exempt call never fills a target's share
            self.by_target[target] += 1

    def _give_back(self, source: str, target: str | None, exempt: bool) -> None:
        self.running -= 1
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]
        if target is not None and not exempt:
            self.by_target[target] -= 1
            if self.by_target[target] <= 0:
                del self.by_target[target]

    def _grant(self) -> None:
        """Hand free slots to waiters: the source holding the fewest first, FIFO within a source."""
        while self.running < self.total and self._queues:
            best: _Waiter | None = None
            best_key: tuple[int, int] | None = None
            for source, queue in self._queues.items():
                held = self.by_source[source]
                for waiter in queue:
                    if self._fits(waiter.source, waiter.target, waiter.exempt):
                        key = (held, waiter.seq)
                        if best_key is None or key < best_key:
                            best, best_key = waiter, key
                        break  # FIFO within a source: its first call that fits
                    if not waiter.exempt and self.per_source is not None and held >= self.per_source:
                        break  # the source is at its share: none of its calls fits
            if best is None:
                return
            self._dequeue(best)
            self._take(best.source, best.target, best.exempt)
            best.future.set_result(None)

    def _dequeue(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.source)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            del self._queues[waiter.source]

    # -- use --------------------------------------------------------------------------------------

    async def acquire(self, source: str, target: str | None = None, *, exempt: bool = False) -> bool:
        """Take a slot (waiting for one if need be); returns whether it had to wait."""
        if not self._queues and self._fits(source, target, exempt):
            self._take(source, target, exempt)
            return False
        queue = self._queues.get(source)
        if (not exempt and self.queue_per_source is not None and queue is not None
                and len(queue) >= self.queue_per_source):
            raise RateLimited(
                f"{source} already has {self.by_source[source]} {self.what} running and {len(queue)} waiting, "
                f"the most one node may queue; wait for some of them to finish", code="queue_full",
                retryAfter=1.0)
        waiter = _Waiter(source, target, exempt, next(self._seq), asyncio.get_running_loop().create_future())
        self._queues.setdefault(source, deque()).append(waiter)
        self._grant()
        if waiter.future.done():
            return False
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self._give_back(source, target, exempt)  # granted, but the caller is gone: pass it on
            else:
                self._dequeue(waiter)
            self._grant()
            raise
        return True

    def release(self, source: str, target: str | None = None, *, exempt: bool = False) -> None:
        """Give back a slot taken by :meth:`acquire` (with the same arguments)."""
        self._give_back(source, target, exempt)
        self._grant()

    @contextlib.asynccontextmanager
    async def slot(self, source: str, target: str | None = None, *, exempt: bool = False) -> AsyncIterator[bool]:
        waited = await self.acquire(source, target, exempt=exempt)
        try:
            yield waited
        finally:
            self.release(source, target, exempt=exempt)
