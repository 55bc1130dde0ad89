"""In-process publish/subscribe for wake-ups (inbox long-polls, live activity streams).

Payloads are small JSON-able dicts. Subscribers get a bounded queue; a slow subscriber loses
its oldest notifications (and is told via ``dropped``) rather than growing without bound.
Scale-out replaces the transport (PostgreSQL LISTEN/NOTIFY) behind the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any


class Subscription:
    def __init__(self, bus: Bus, channel: str, maxsize: int) -> None:
        self.bus = bus
        self.channel = channel
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _deliver(self, payload: dict[str, Any]) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(payload)

    async def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Next payload, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        self.bus._remove(self)


class Bus:
    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = defaultdict(set)

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        self.publish_local(channel, payload)

    def publish_local(self, channel: str, payload: dict[str, Any]) -> None:
        for sub in list(self._subs.get(channel, ())):
            sub._deliver(payload)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str, maxsize: int = 1000) -> AsyncIterator[Subscription]:
        sub = Subscription(self, channel, maxsize)
        self._subs[channel].add(sub)
        try:
            yield sub
        finally:
            self._remove(sub)

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                self._subs.pop(sub.channel, None)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
