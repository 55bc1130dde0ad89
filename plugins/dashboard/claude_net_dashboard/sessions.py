"""Dashboard sessions: an admin's token, checked once, becomes a random session id in a cookie.

The browser holds only the session id (HttpOnly); the database holds its SHA-256 hash, the id of
the token that opened it (never the token), its CSRF token and its expiry. Every use joins the
``tokens`` table, so revoking or replacing the admin's token ends all its sessions on the very
next request, on every replica. Nothing is cached in the process.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from claude_net import Actor, Event, Forbidden, Unauthorized, isotime

PLUGIN = "dashboard"
COOKIE = "cn_dashboard"
CSRF_HEADER = "X-CSRF-Token"
#: methods that change something: they need the session's CSRF token
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# the public id part of a hub token (cn_<id>_<secret>, docs/security.md)
_TOKEN_ID = re.compile(r"^cn_([0-9a-f]{12})_")


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def settings_of(hub):
    return hub.settings.section("dashboard")


@dataclass(frozen=True)
class Session:
    key: str  # the hash stored in the database
    name: str
    csrf: str
    expires_at: str
    #: the admin token the session was opened with (revoking it ends the session and its work)
    token_id: str | None = None

    def actor(self) -> Actor:
        return Actor(name=self.name, admin=True, via="dashboard", token_id=self.token_id)


async def open_session(hub, actor: Actor, token: str, address: str) -> tuple[str, Session]:
    """Store a new session for an authenticated admin; returns (the cookie value, the session)."""
    match = _TOKEN_ID.match(token)
    if match is None:  # hub.authenticate accepted it, so this cannot happen with today's format
        raise Unauthorized("the token is not in the hub's format", code="invalid_token")
    settings = settings_of(hub)
    session_id = secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    session = Session(_digest(session_id), actor.name, secrets.token_urlsafe(32),
                      isotime(now + timedelta(hours=settings.session_hours)))
    async with hub.db.transaction() as tx:
        await tx.execute("DELETE FROM dashboard_sessions WHERE expires_at <= :now OR ended_at IS NOT NULL",
                         {"now": isotime(now)})
        live = await tx.fetch_all("SELECT id FROM dashboard_sessions WHERE name = :name ORDER BY created_at DESC",
                                  {"name": actor.name})
        for row in live[max(settings.max_sessions_per_admin - 1, 0):]:
            await tx.execute("DELETE FROM dashboard_sessions WHERE id = :id", {"id": row["id"]})
        await tx.execute(
            "INSERT INTO dashboard_sessions (id, token_id, name, csrf, created_at, expires_at, address)"
            " VALUES (:id, :token_id, :name, :csrf, :created_at, :expires_at, :address)",
            {"id": session.key, "token_id": match.group(1), "name": actor.name, "csrf": session.csrf,
             "created_at": isotime(now), "expires_at": session.expires_at, "address": address[:64]})
    return session_id, session


async def find_session(hub, session_id: str | None) -> Session | None:
    """The live session of this cookie value: not ended, not expired, its token not revoked, its
    holder still an admin. None otherwise."""
    if not session_id or len(session_id) > 128:
        return None
    row = await hub.db.fetch_one(
        "SELECT s.id, s.name, s.csrf, s.expires_at, s.token_id, t.admin FROM dashboard_sessions s"
        " JOIN tokens t ON t.id = s.token_id"
        " WHERE s.id = :id AND s.ended_at IS NULL AND s.expires_at > :now AND t.revoked_at IS NULL",
        {"id": _digest(session_id), "now": isotime()})
    if row is None or not (row["admin"] or hub.is_admin(row["name"])):
        return None
    return Session(row["id"], row["name"], row["csrf"], row["expires_at"], row["token_id"])


async def end_session(hub, session: Session) -> None:
    await hub.db.execute("UPDATE dashboard_sessions SET ended_at = :now WHERE id = :id",
                         {"now": isotime(), "id": session.key})


def csrf_ok(session: Session, offered: str | None) -> bool:
    return bool(offered) and hmac.compare_digest(session.csrf.encode(), str(offered).encode())


def same_origin(request) -> bool:
    """A browser names the page that sent a state change in ``Origin``; it must be this hub. No
    header (a non-browser client) passes: the CSRF token is the real check."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    host = request.headers.get("Host", "")
    return origin in (f"http://{host}", f"https://{host}")


async def request_actor(hub, request) -> Actor:
    """The ``authenticate_request`` answer for an API call carrying the session cookie."""
    session = await find_session(hub, request.cookies.get(COOKIE))
    if session is None:
        raise Unauthorized("the dashboard session has ended (signed out, expired or its token revoked); "
                           "sign in again", code="session_ended")
    if request.method in UNSAFE and not (csrf_ok(session, request.headers.get(CSRF_HEADER))
                                         and same_origin(request)):
        await hub.emit(Event("auth", session.name, None,
                             f"{request.method} {request.path} with a dashboard session but without its CSRF "
                             f"token (or from another origin)", "denied", via="dashboard"))
        raise Forbidden("this change needs the dashboard's CSRF token (X-CSRF-Token) from the same origin",
                        code="csrf_failed")
    return session.actor()


class SigninThrottle:
    """Failed sign-ins per address in a sliding window: past the limit, refuse before checking."""

    MAX_ADDRESSES = 10000

    def __init__(self, limit: int, window: float) -> None:
        self.limit = max(int(limit), 1)
        self.window = float(window)
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.setdefault(address, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def retry_after(self, address: str, now: float | None = None) -> float:
        """0 when this address may try; else the seconds until its oldest failure leaves the window."""
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if len(times) < self.limit:
            return 0.0
        return self.window - (now - times[0])

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) >= self.MAX_ADDRESSES:
            self._failures = {a: t for a, t in self._failures.items() if t and now - t[-1] < self.window}
        self._recent(address, now).append(now)


def throttle_of(hub) -> SigninThrottle:
    throttle = hub.plugin_state.get(PLUGIN)
    if throttle is None:
        settings = settings_of(hub)
        throttle = hub.plugin_state[PLUGIN] = SigninThrottle(settings.signin_failures,
                                                             settings.signin_window_seconds)
    return throttle
