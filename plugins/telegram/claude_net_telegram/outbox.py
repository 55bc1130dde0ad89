"""The echo outbox: bounded, batched, paced, retried — and never on a request's path.

``put`` is all ``on_event`` does: a ``put_nowait`` on a bounded :class:`asyncio.Queue`; a full
queue drops the echo and counts it. One background task (:meth:`Outbox.run`) takes what is
waiting, batches it into one message (under Telegram's length limit), waits for the chat's
pacing interval (so bursts coalesce instead of hitting the rate limit), and sends it, retrying
with exponential back-off while Telegram is unreachable and honouring ``429 retry_after``. Once
a send succeeds again, the number of dropped echoes is reported in the chat.
"""

from __future__ import annotations

import asyncio
import html
import logging
import random
import re
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from .redact import redact
from .render import BUDGET, join_batch, safe, utf16_len

log = logging.getLogger("claude_net.telegram")


@dataclass
class Item:
    html: str
    loud: bool = False


def retry_after_seconds(exc: BaseException) -> float:
    """``RetryAfter.retry_after`` as seconds, whatever PTB's int/timedelta transition says."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = getattr(exc, "retry_after", 1)
    if isinstance(value, timedelta):
        return value.total_seconds()
    try:
        return float(value)
    except (TypeError, ValueError):
        return 1.0


def plain(text: str) -> str:
    """The HTML message as plain text (for the fallback when Telegram rejects the markup)."""
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _transient(exc: BaseException) -> bool:
    """Worth retrying: a Bot API or network error (``telegram.error.TelegramError`` and its kind,
    httpx's errors, OS-level network errors) — not a bug or an unencodable message of ours."""
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return True
    return any(cls.__name__ in ("TelegramError", "HTTPError", "TransportError") for cls in type(exc).__mro__)


class Outbox:
    def __init__(self, send: Callable[[str, bool, bool], Awaitable[None]], *, maxsize: int, interval: float,
                 retry_initial: float, retry_max: float, secrets: tuple[str, ...] = ()) -> None:
        #: ``send(text, quiet, html)`` delivers one message or raises a telegram error
        self._send = send
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=max(1, maxsize))
        self.interval = interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._secrets = secrets
        self._carry: deque[Item] = deque()
        self._busy = False
        self.draining = False
        #: monotonic time before which nothing is sent to the chat (pacing, 429)
        self.next_send_at = 0.0
        #: set while sends fail: since when (monotonic), for the drop report and the log
        self.failing_since: float | None = None
        self.dropped_down = 0
        self.dropped_full = 0
        self.dropped_total = 0
        self.sent_messages = 0
        self.sent_items = 0
        self.failures = 0
        self.last_error = ""
        #: batches Telegram (or our own encoder) refused for good and that were skipped
        self.dropped_bad = 0
        self._bad_unreported = 0

    # -- the request path: never blocks, never raises ------------------------------------------

    def put(self, text: str, loud: bool = False) -> bool:
        try:
            self.queue.put_nowait(Item(safe(text), loud))
            return True
        except asyncio.QueueFull:
            if self.failing_since is not None:
                self.dropped_down += 1
            else:
                self.dropped_full += 1
            self.dropped_total += 1
            return False

    # -- the sender task -----------------------------------------------------------------------

    def pending(self) -> int:
        return self.queue.qsize() + len(self._carry) + (1 if self._busy else 0)

    def stats(self) -> dict:
        return {"queued": self.queue.qsize() + len(self._carry), "capacity": self.queue.maxsize,
                "sent_messages": self.sent_messages, "sent_echoes": self.sent_items,
                "dropped_total": self.dropped_total, "dropped_unreported": self.dropped_down + self.dropped_full,
                "failing_for_seconds": (round(time.monotonic() - self.failing_since, 1)
                                        if self.failing_since is not None else None),
                "failures": self.failures, "last_error": self.last_error, "dropped_bad": self.dropped_bad}

    def note_failure(self, exc: BaseException) -> None:
        """Something else (the bot's start-up) found Telegram unreachable."""
        self.last_error = redact(f"{type(exc).__name__}: {exc}", self._secrets)
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def pace(self, seconds: float | None = None) -> None:
        """A message just went to the chat (a command reply, or a 429): hold echoes back."""
        wait = self.interval if seconds is None else seconds
        self.next_send_at = max(self.next_send_at, time.monotonic() + wait)

    async def wait_turn(self) -> None:
        """Wait until the chat may receive the next message (cards share the echoes' pacing)."""
        await self._wait_turn()

    async def _wait_turn(self) -> None:
        while not self.draining:
            delay = self.next_send_at - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(min(delay, 0.25))

    def _take(self) -> list[Item]:
        items: list[Item] = []
        size = 0
        while True:
            if self._carry:
                item = self._carry.popleft()
            else:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            cost = utf16_len(item.html) + 2
            if items and size + cost > BUDGET:
                self._carry.appendleft(item)
                break
            items.append(item)
            size += cost
        return items

    async def run(self) -> None:
        while True:
            if not self._carry:
                self._carry.append(await self.queue.get())
            self._busy = True
            batch: list[Item] = []
            try:
                await self._wait_turn()  # meanwhile, more echoes arrive and join this batch
                batch = self._take()
                if batch:
                    await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug met by one batch: skip it, never stop the echo for good
                log.exception("telegram: could not send a batch of %d echo(es); skipping it", len(batch))
                self._skip(len(batch) or 1)
            finally:
                self._busy = False

    async def _deliver(self, batch: list[Item]) -> None:
        text = join_batch(item.html for item in batch)
        quiet = not any(item.loud for item in batch)
        delay = self.retry_initial
        as_html = True
        while True:
            try:
                await self._send(text if as_html else plain(text), quiet, as_html)
            except asyncio.CancelledError:
                self._carry.extendleft(reversed(batch))  # keep them for a drain or a restart
                raise
            except Exception as exc:  # every telegram error, network error or bug: keep the echoes
                name = type(exc).__name__
                if name == "RetryAfter":
                    wait = retry_after_seconds(exc)
                    log.warning("telegram: flood control, retrying the echo in %.1fs", wait)
                    self.pace(wait)
                    await self._wait_turn()
                    continue
                if name == "BadRequest" and as_html and "parse" in str(exc).lower():
                    log.error("telegram: the Bot API rejected an echo's markup (%s); sending it as plain text",
                              redact(str(exc), self._secrets))
                    as_html = False
                    continue
                if name == "BadRequest" or not _transient(exc):
                    # this message can never go out (too long, not encodable, a bug): retrying it
                    # for ever would hold back every echo after it
                    log.error("telegram: an echo batch of %d item(s) was refused for good (%s); skipping it",
                              len(batch), redact(f"{name}: {exc}", self._secrets))
                    self._skip(len(batch))
                    return
                self.failures += 1
                self.last_error = redact(f"{name}: {exc}", self._secrets)
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.warning("telegram: cannot send echoes (%s); keeping up to %d queued and retrying",
                                self.last_error, self.queue.maxsize)
                if self.draining:  # shutting down: keep trying briefly, without the long back-off
                    self._carry.extendleft(reversed(batch))
                    await asyncio.sleep(0.1)
                    return
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.retry_max)
                continue
            self.sent_messages += 1
            self.sent_items += len(batch)
            self.pace()
            if self.failing_since is not None:
                log.info("telegram: echoes are flowing again after %.0fs", time.monotonic() - self.failing_since)
                self.failing_since = None
            self._report_drops()
            return

    def _skip(self, count: int) -> None:
        self.dropped_bad += count
        self.dropped_total += count
        self._bad_unreported += count

    def _report_drops(self) -> None:
        notes = []
        if self._bad_unreported:
            count, self._bad_unreported = self._bad_unreported, 0
            notes.append(f"⚠️ {count} echo message{'s' if count != 1 else ''} could not be sent and "
                         f"{'were' if count != 1 else 'was'} skipped (see the hub's log)")
        if self.dropped_down:
            notes.append(f"⚠️ {self.dropped_down} echo message{'s were' if self.dropped_down != 1 else ' was'} "
                         "dropped while Telegram was unreachable")
        if self.dropped_full:
            notes.append(f"⚠️ {self.dropped_full} echo message{'s were' if self.dropped_full != 1 else ' was'} "
                         "dropped because the outbox was full")
        if notes:
            log.warning("telegram: %s", "; ".join(notes))
            self.dropped_down = self.dropped_full = 0
            self._carry.appendleft(Item("\n".join(notes), True))

    async def drain(self, timeout: float) -> None:
        """Give queued echoes up to ``timeout`` seconds to go out (hub shutdown); no pacing."""
        if timeout <= 0 or self.pending() == 0:
            return
        self.draining = True
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
