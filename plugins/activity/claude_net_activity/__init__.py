"""claude-net-activity: the audit trail — every action recorded, fail closed, queryable, streamed.

Hook implementations only; recording/querying/pruning live in :mod:`.store`, HTTP in
:mod:`.routes`, the CLI in :mod:`.cli`. See docs/activity.md.
"""

from __future__ import annotations

from claude_net import Command, Migration, hookimpl

from . import store
from .settings import ActivitySettings
from .store import prune, query, record

__all__ = ["ActivitySettings", "prune", "query", "record"]


@hookimpl
def config_sections():
    return {"activity": ActivitySettings}


@hookimpl
def migrations():
    return [
        Migration(
            store.PLUGIN, 1,
            [
                # The original spec's table (id, timestamp, from_machine, type, target, detail,
                # result), extended with what completing, filtering and auditing need.
                "CREATE TABLE IF NOT EXISTS activity_log ("
                " id {autoid},"
                " timestamp TEXT NOT NULL,"
                " from_machine TEXT,"
                " type TEXT NOT NULL,"
                " target TEXT,"
                " detail TEXT NOT NULL DEFAULT '',"
                " result TEXT NOT NULL,"
                " event_id TEXT NOT NULL,"
                " via TEXT,"
                " unauthenticated BOOLEAN NOT NULL DEFAULT FALSE,"
                " duration_ms DOUBLE PRECISION,"
                " exit_code INTEGER,"
                " data TEXT,"
                " completed_at TEXT)",
                "CREATE UNIQUE INDEX IF NOT EXISTS activity_log_event ON activity_log (event_id)",
                "CREATE INDEX IF NOT EXISTS activity_log_time ON activity_log (timestamp, id)",
                "CREATE INDEX IF NOT EXISTS activity_log_type_time ON activity_log (type, timestamp, id)",
                "CREATE INDEX IF NOT EXISTS activity_log_from_time ON activity_log (from_machine, timestamp, id)",
                "CREATE INDEX IF NOT EXISTS activity_log_target_time ON activity_log (target, timestamp, id)",
                "CREATE INDEX IF NOT EXISTS activity_log_result_time ON activity_log (result, timestamp, id)",
            ],
            description="activity_log audit trail",
        ),
        Migration(
            store.PLUGIN, 2,
            [
                # the thread an action was taken in (docs/activity.md, Threads); NULL outside one
                "ALTER TABLE activity_log ADD COLUMN thread TEXT",
                "CREATE INDEX IF NOT EXISTS activity_log_thread_time ON activity_log (thread, timestamp, id)",
            ],
            description="activity_log.thread",
        ),
        Migration(
            store.PLUGIN, 3,
            [
                # the life (claude_net.lives) of the process that wrote a pending row: a row whose
                # writer died is closed as interrupted by the next hub (store.close_orphans)
                "ALTER TABLE activity_log ADD COLUMN life TEXT",
                "CREATE INDEX IF NOT EXISTS activity_log_pending_life ON activity_log (life) WHERE result = 'pending'",
            ],
            description="activity_log.life",
        ),
    ]


@hookimpl
def on_event(hub, event):
    if event.live_only:  # progress for live subscribers; the action's own events are the record
        return None
    if store.record_queued(hub, event):
        return None
    return store.record(hub, event)


@hookimpl
def register_routes(hub):
    from .routes import routes

    return routes()


@hookimpl
def startup(hub):
    store.state_of(hub).closing.clear()
    # exactly one replica prunes (a PostgreSQL advisory lock); on SQLite this process does
    hub.spawn_singleton("activity-retention", lambda: store.retention_loop(hub))
    # every replica looks (a row is closed once, whoever sees its writer's life end first)
    hub.spawn(lambda: store.orphan_loop(hub), name="activity-orphans")


@hookimpl
def shutdown(hub):
    store.state_of(hub).closing.set()


def _configure(p) -> None:
    from .cli import configure

    configure(p)


def _run(args, ctx):
    from .cli import run

    return run(args, ctx)


@hookimpl
def register_commands():
    return [Command("activity", "show, follow or export the audit trail", _configure, _run)]
