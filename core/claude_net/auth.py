"""Bearer tokens: random, shown once, stored as SHA-256 hashes, compared in constant time.

Format: ``cn_<id>_<secret>``. ``id`` (public, 12 hex chars) finds the row; only the hash of
``secret`` (256 random bits, so a plain fast hash is enough) is stored. Tokens are never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

from .db import Database
from .errors import Conflict, NotFound
from .types import isotime, validate_node_name

TOKEN_RE = re.compile(r"^cn_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    admin: bool
    created_at: str
    revoked_at: str | None = None
    last_used_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "admin": self.admin,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


@contextlib.contextmanager
def _tokens_changing(db: Database) -> Iterator[None]:
    """Around a change of the tokens table: tell every process's token cache, before the change
    and again after its commit (an entry cached in between is dropped by the second signal)."""
    signal = db.change_signal("tokens")
    if signal is not None:
        signal.bump()
    try:
        yield
    finally:
        if signal is not None:
            signal.bump()


class TokenCache:
    """Verified tokens, kept for a moment so the request path skips the database.

    Only on SQLite, where every process that can change the tokens table is on this machine:
    creating or revoking a token (the CLI, any process) bumps the database's ``tokens``
    :class:`~claude_net.db.ChangeSignal`, and an entry cached under an older value is never
    used again, so a revoked token fails on its very next call. ``TTL`` bounds an entry's life
    whatever happens (a change made with plain SQL, a crash between commit and signal). On
    PostgreSQL (replicas on other machines) there is no cache: every call reads the token row.
    Keys are SHA-256 digests of the tokens; only valid tokens are kept.
    """

    TTL = 2.0
    MAX_ENTRIES = 10000

    def __init__(self, db: Database) -> None:
        self.db = db
        self._entries: dict[bytes, tuple[TokenInfo, int, float]] = {}

    async def verify(self, token: str) -> TokenInfo | None:
        signal = self.db.change_signal("tokens")
        if signal is None:
            return await verify_token(self.db, token)
        key = hashlib.sha256(token.encode()).digest()
        seen = signal.value
        entry = self._entries.get(key)
        if entry is not None:
            info, at, until = entry
            if at == seen and time.monotonic() < until:
                return info
            del self._entries[key]
        info = await verify_token(self.db, token)
        if info is not None:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            # tagged with the value read *before* the lookup: a change during it voids the entry
            self._entries[key] = (info, seen, time.monotonic() + self.TTL)
        return info


async def create_token(db: Database, name: str, *, admin: bool = False, replace: bool = False) -> str:
    """Create a token for ``name`` and return it (the only time it is ever shown)."""
    validate_node_name(name)
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with _tokens_changing(db):
        async with db.transaction() as tx:
            active = await tx.fetch_val(
                "SELECT COUNT(*) FROM tokens WHERE name = :name AND revoked_at IS NULL", {"name": name}
            )
            if active and not replace:
                raise Conflict(f"{name} already has a token; use --replace to issue a new one and revoke the old")
            if active:
                await tx.execute(
                    "UPDATE tokens SET revoked_at = :now WHERE name = :name AND revoked_at IS NULL",
                    {"name": name, "now": isotime()},
                )
            await tx.execute(
                "INSERT INTO tokens (id, name, secret_hash, admin, created_at) VALUES (:id, :name, :hash, :admin, :now)",
                {"id": token_id, "name": name, "hash": _hash(secret), "admin": bool(admin), "now": isotime()},
            )
    return f"cn_{token_id}_{secret}"


async def verify_token(db: Database, token: str) -> TokenInfo | None:
    """Return the token's info if valid and not revoked, else None. Constant-time comparison."""
    match = TOKEN_RE.fullmatch(token or "")
    if match is None:
        return None
    token_id, secret = match.groups()
    row = await db.lookup(
        "SELECT id, name, secret_hash, admin, created_at FROM tokens WHERE id = :id AND revoked_at IS NULL",
        {"id": token_id},
    )
    # compare even when no row, so timing does not reveal which ids exist
    expected = row["secret_hash"] if row else "0" * 64
    if not hmac.compare_digest(expected, _hash(secret)) or row is None:
        return None
    return TokenInfo(row["id"], row["name"], bool(row["admin"]), row["created_at"])


async def list_tokens(db: Database, *, include_revoked: bool = False) -> list[TokenInfo]:
    where = "" if include_revoked else "WHERE revoked_at IS NULL"
    rows = await db.fetch_all(
        f"SELECT id, name, admin, created_at, revoked_at, last_used_at FROM tokens {where} ORDER BY name, created_at"
    )
    return [
        TokenInfo(r["id"], r["name"], bool(r["admin"]), r["created_at"], r["revoked_at"], r["last_used_at"])
        for r in rows
    ]


async def revoke_tokens(db: Database, name: str) -> int:
    validate_node_name(name)
    with _tokens_changing(db):
        rows = await db.fetch_all(
            "UPDATE tokens SET revoked_at = :now WHERE name = :name AND revoked_at IS NULL RETURNING id",
            {"name": name, "now": isotime()},
        )
    if not rows:
        raise NotFound(f"{name} has no active token")
    return len(rows)
