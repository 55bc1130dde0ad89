"""claude-net-dashboard: the admin's web page at ``/ui/`` — machines, the live activity feed, the
permissions matrix, approvals and containers.

Hook implementations only: sessions in :mod:`.sessions`, the pages in :mod:`.web`, the page's
behaviour in ``static/dashboard.js``. See docs/dashboard.md.
"""

from __future__ import annotations

from claude_net import Migration, hookimpl

from . import sessions
from .settings import DashboardSettings

__all__ = ["DashboardSettings"]


@hookimpl
def config_sections():
    return {"dashboard": DashboardSettings}


@hookimpl
def validate_config(settings):
    section = settings.section("dashboard")
    problems = []
    if section.secure_cookie not in ("auto", "always", "never"):
        problems.append(("dashboard.secure_cookie", "must be 'auto', 'always' or 'never'"))
    if section.session_hours <= 0:
        problems.append(("dashboard.session_hours", "must be more than 0"))
    if section.signin_failures < 1 or section.signin_window_seconds <= 0:
        problems.append(("dashboard.signin_failures", "signin_failures must be at least 1 and "
                         "signin_window_seconds more than 0"))
    return problems


@hookimpl
def migrations():
    return [
        Migration(
            sessions.PLUGIN, 1,
            [
                # id: SHA-256 of the cookie value; token_id: the tokens row whose revocation ends it
                "CREATE TABLE IF NOT EXISTS dashboard_sessions ("
                " id TEXT PRIMARY KEY,"
                " token_id TEXT NOT NULL,"
                " name TEXT NOT NULL,"
                " csrf TEXT NOT NULL,"
                " created_at TEXT NOT NULL,"
                " expires_at TEXT NOT NULL,"
                " ended_at TEXT,"
                " address TEXT)",
                "CREATE INDEX IF NOT EXISTS dashboard_sessions_name ON dashboard_sessions (name, created_at)",
            ],
            description="dashboard_sessions",
        ),
    ]


@hookimpl
def register_asgi_apps(hub):
    if not hub.settings.section("dashboard").enabled:
        return []
    from .web import PREFIX, create_web_app

    return [(PREFIX, create_web_app(hub))]


@hookimpl
def authenticate_request(hub, request):
    # decided synchronously (firstresult): no cookie of ours, no opinion
    if sessions.COOKIE not in request.cookies or not hub.settings.section("dashboard").enabled:
        return None
    return sessions.request_actor(hub, request)
