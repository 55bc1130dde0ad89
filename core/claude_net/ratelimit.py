"""Per-node request rate limits: one token bucket per authenticated node, in memory; and the
throttle that keeps refusals (rate limited, invalid, unauthenticated) from flooding the audit log.

``[limits] rate_per_minute`` tokens flow into each node's bucket per minute, up to
``rate_burst``; every request of that node (except the public endpoints) takes one. An empty
bucket is a 429 ``rate_limited`` with ``Retry-After``. ``rate_per_minute = 0`` turns limiting
off. Buckets live in the process: with several replicas each enforces the limit on its own.
"""

from __future__ import annotations

import math
import time


class RecordThrottle:
    """Counts refusals per key and says when to record them, so a flood never becomes a flood of
    audit rows: the first ``burst`` refusals of a window of ``every`` seconds are recorded one by
    one, later ones only counted, and the next record (in a later window) carries that count."""

    MAX_KEYS = 10000

    def __init__(self, every: float = 10.0, burst: int = 1) -> None:
        self.every = every
        self.burst = max(int(burst), 1)
        # key -> (refusals not yet recorded, start of the window, records made in the window)
        self._refused: dict[str, tuple[int, float, int]] = {}

    def should_record(self, key: str, now: float | None = None) -> int:
        """Count a refusal; return how many to record now (0: recorded enough lately, stay quiet)."""
        now = time.monotonic() if now is None else now
        count, start, recorded = self._refused.get(key, (0, -math.inf, 0))
        count += 1
        if now - start >= self.every:
            if len(self._refused) >= self.MAX_KEYS:  # forget keys that have been quiet for a window
                self._refused = {k: v for k, v in self._refused.items() if now - v[1] < self.every}
            self._refused[key] = (0, now, 1)
            return count
        if recorded < self.burst:
            self._refused[key] = (0, start, recorded + 1)
            return count
        self._refused[key] = (count, start, recorded)
        return 0


class RateLimiter:
    #: a node's refusals are recorded at most once per this many seconds (with a count)
    RECORD_EVERY = 10.0
    #: buckets kept before full (idle) ones are dropped
    MAX_BUCKETS = 10000
    #: an identified node's invalid requests (400, 413, ...) recorded one by one per window of
    #: RECORD_EVERY seconds; beyond that they are counted into the next record
    REFUSALS_BURST = 20

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = max(float(per_minute), 0.0) / 60.0
        self.burst = float(max(int(burst), 1))
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._throttle = RecordThrottle(self.RECORD_EVERY)
        #: audit rows of refused (invalid) requests, per node: kept even when rate limiting is off
        self.refusals = RecordThrottle(self.RECORD_EVERY, burst=self.REFUSALS_BURST)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token for ``key``: 0.0 if allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.MAX_BUCKETS:
                self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def should_record(self, key: str, now: float | None = None) -> int:
        """Count a refusal; return how many to record now (0: recorded recently, stay quiet)."""
        return self._throttle.should_record(key, now)

    def _prune(self, now: float) -> None:
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[key]


def retry_after_header(seconds: float) -> str:
    """Whole seconds for the Retry-After header (at least 1)."""
    return str(max(1, math.ceil(seconds)))
