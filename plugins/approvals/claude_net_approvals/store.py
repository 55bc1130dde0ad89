"""The ``approvals`` table: one row per approval, one state machine for every kind.

``pending -> approved | denied | expired | cancelled``; an approved ``action`` approval is also
*claimed* (``used_at``) by the one run it allows. Every transition is one conditional UPDATE
(``... WHERE state = 'pending' RETURNING``), so two replicas, two admins or a decision racing
the expiry can never both win: exactly one caller sees the row come back and emits the event.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from claude_net import isotime

COLUMNS = ("id, kind, requester, action, target, detail, particulars, fingerprint, state, created_at, expires_at,"
           " decided_by, decided_via, telegram_user, decided_at, for_duration, used_at, request_id, via")
STATES = ("pending", "approved", "denied", "expired", "cancelled")

MIGRATION = [
    "CREATE TABLE IF NOT EXISTS approvals ("
    " id TEXT PRIMARY KEY, kind TEXT NOT NULL, requester TEXT NOT NULL, action TEXT NOT NULL,"
    " target TEXT, detail TEXT NOT NULL, particulars TEXT NOT NULL, fingerprint TEXT NOT NULL,"
    " state TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL,"
    " decided_by TEXT, decided_via TEXT, telegram_user TEXT, decided_at TEXT, for_duration TEXT,"
    " used_at TEXT, request_id TEXT, via TEXT)",
    "CREATE INDEX IF NOT EXISTS approvals_state ON approvals (state, expires_at)",
    "CREATE INDEX IF NOT EXISTS approvals_requester ON approvals (requester, state)",
    "CREATE INDEX IF NOT EXISTS approvals_fingerprint ON approvals (fingerprint, state)",
]


def new_id() -> str:
    return secrets.token_hex(5)


def later(seconds: float) -> str:
    return isotime(datetime.now(timezone.utc) + timedelta(seconds=seconds))


def fingerprint(kind: str, requester: str, action: str, target: str | None, particulars: Mapping[str, Any]) -> str:
    """Identifies "the same request": coalescing joins it, a re-send with an id must match it."""
    text = json.dumps([kind, requester, action, target, particulars], sort_keys=True, separators=(",", ":"),
                      default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The approval as the API, the service and the events show it."""
    try:
        particulars = json.loads(row["particulars"])
    except (TypeError, ValueError):
        particulars = {}
    return {
        "id": row["id"], "kind": row["kind"], "requester": row["requester"], "action": row["action"],
        "target": row["target"], "detail": row["detail"], "particulars": particulars, "state": row["state"],
        "created_at": row["created_at"], "expires_at": row["expires_at"], "decided_by": row["decided_by"],
        "decided_via": row["decided_via"], "telegram_user": row["telegram_user"], "decided_at": row["decided_at"],
        "for": row["for_duration"], "used_at": row["used_at"], "request_id": row["request_id"],
    }


async def get(db, approval_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(f"SELECT {COLUMNS} FROM approvals WHERE id = :id", {"id": approval_id})


async def listing(db, state: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    where = "WHERE state = :state " if state else ""
    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    return await db.fetch_all(f"SELECT {COLUMNS} FROM approvals {where}ORDER BY created_at DESC, id LIMIT :limit",
                              params)


async def find_same(db, requester: str, fp: str, now: str) -> dict[str, Any] | None:
    """A live approval for the same request: pending, or approved and not yet used."""
    return await db.fetch_one(
        f"SELECT {COLUMNS} FROM approvals WHERE fingerprint = :fp AND requester = :requester"
        " AND expires_at > :now AND (state = 'pending' OR (state = 'approved' AND used_at IS NULL AND kind = 'action'))"
        " ORDER BY created_at LIMIT 1", {"fp": fp, "requester": requester, "now": now})


async def count_pending(db, *, requester: str | None = None, target: str | None = None) -> int:
    if requester is not None:
        sql, params = "requester = :v", {"v": requester}
    else:
        sql, params = "target = :v AND kind = 'action'", {"v": target}
    return int(await db.fetch_val(
        f"SELECT COUNT(*) FROM approvals WHERE state = 'pending' AND expires_at > :now AND {sql}",
        {**params, "now": isotime()}) or 0)


async def insert(db, row: Mapping[str, Any]) -> dict[str, Any]:
    names = [c.strip() for c in COLUMNS.split(",")]
    values = {n: row.get(n) for n in names}
    return await db.fetch_one(
        f"INSERT INTO approvals ({COLUMNS}) VALUES ({', '.join(':' + n for n in names)}) RETURNING {COLUMNS}",
        values)


async def decide(db, approval_id: str, state: str, *, by: str, via: str, telegram_user: str | None,
                 for_duration: str | None, expires_at: str | None) -> dict[str, Any] | None:
    """pending -> ``state``; None when it was no longer pending (someone else decided first)."""
    return await db.fetch_one(
        "UPDATE approvals SET state = :state, decided_by = :by, decided_via = :via, telegram_user = :tg,"
        " decided_at = :now, for_duration = :for_, expires_at = COALESCE(:expires_at, expires_at)"
        f" WHERE id = :id AND state = 'pending' AND expires_at > :now RETURNING {COLUMNS}",
        {"state": state, "by": by, "via": via, "tg": telegram_user, "now": isotime(), "for_": for_duration,
         "expires_at": expires_at, "id": approval_id})


async def claim(db, approval_id: str) -> dict[str, Any] | None:
    """Mark an approved action approval as used by this run; None when it was used already."""
    return await db.fetch_one(
        "UPDATE approvals SET used_at = :now WHERE id = :id AND state = 'approved' AND used_at IS NULL"
        f" AND expires_at > :now RETURNING {COLUMNS}", {"id": approval_id, "now": isotime()})


async def expire_due(db, approval_id: str | None = None) -> list[dict[str, Any]]:
    """Pending approvals past their expiry (and approved action approvals never used in time) -> expired."""
    extra = " AND id = :id" if approval_id else ""
    params: dict[str, Any] = {"now": isotime()}
    if approval_id:
        params["id"] = approval_id
    return await db.fetch_all(
        "UPDATE approvals SET state = 'expired', decided_at = :now WHERE expires_at <= :now"
        " AND (state = 'pending' OR (state = 'approved' AND used_at IS NULL AND kind = 'action'))"
        f"{extra} RETURNING {COLUMNS}", params)


async def cancel(db, approval_id: str, by: str, via: str) -> dict[str, Any] | None:
    return await db.fetch_one(
        "UPDATE approvals SET state = 'cancelled', decided_by = :by, decided_via = :via, decided_at = :now"
        f" WHERE id = :id AND state = 'pending' RETURNING {COLUMNS}",
        {"id": approval_id, "by": by, "via": via, "now": isotime()})


async def next_expiry(db) -> str | None:
    return await db.fetch_val(
        "SELECT MIN(expires_at) FROM approvals WHERE state = 'pending'"
        " OR (state = 'approved' AND used_at IS NULL AND kind = 'action')")
