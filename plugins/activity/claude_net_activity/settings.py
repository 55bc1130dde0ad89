"""The ``[activity]`` configuration section."""

from __future__ import annotations

from dataclasses import dataclass, field


def _help(default, text: str):
    return field(default=default, metadata={"help": text})


@dataclass
class ActivitySettings:
    retention_days: int = _help(90, "Rows older than this many days are pruned; 0 keeps everything forever.")
    prune_interval_seconds: float = _help(3600.0, "How often the retention task runs (first run at start).")
    prune_batch: int = _help(5000, "Rows deleted per statement while pruning (short transactions, no long lock).")
    max_detail: int = _help(8192, "Longest detail (command or path) stored per row, in characters; longer "
                                  "ones are cut and the original length kept in data.detail_length.")
    stream_keepalive_seconds: float = _help(15.0, "Seconds between keepalive comments on /api/activity/stream.")
