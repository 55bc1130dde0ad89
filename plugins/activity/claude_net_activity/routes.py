"""HTTP endpoints: ``GET /api/activity`` (query) and ``GET /api/activity/stream`` (SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from claude_net import Route

from . import store

FILTER_PROPS = {
    "type": {"type": "string", "maxLength": 64, "description": "event type: message, exec, file_read, file_write, "
                                                               "permit, container, auth, admin, ..."},
    "from": {"type": "string", "maxLength": 63, "description": "acting node"},
    "target": {"type": "string", "maxLength": 63, "description": "node acted upon"},
    "result": {"type": "string", "enum": ["pending", "ok", "denied", "error"]},
    "thread": {"type": "string", "pattern": store.THREAD_PATTERN, "x-pattern-help": store.THREAD_HELP,
               "description": "only rows of this thread"},
    "q": {"type": "string", "minLength": 1, "maxLength": store.MAX_SEARCH,
          "description": "only rows whose detail contains this text (a literal substring, ignoring case)"},
}
EVENT = {"type": "object", "properties": {
    "id": {"type": "integer"}, "time": {"type": "string"}, "from": {"type": ["string", "null"]},
    "type": {"type": "string"}, "target": {"type": ["string", "null"]}, "detail": {"type": "string"},
    "result": {"type": "string", "enum": ["pending", "ok", "denied", "error"]}, "via": {"type": ["string", "null"]},
    "unauthenticated": {"type": "boolean"}, "duration_ms": {"type": ["number", "null"]},
    "exit_code": {"type": ["integer", "null"]}, "completed_at": {"type": ["string", "null"]},
    "event_id": {"type": "string"}, "thread": {"type": ["string", "null"]}, "data": {"type": "object"}}}
MESSAGE = {"type": "object", "properties": {
    "id": {"type": "integer"}, "from": {"type": "string"}, "to": {"type": "string"}, "message": {"type": "string"},
    "time": {"type": "string"}, "unauthenticated": {"type": "boolean"}, "thread": {"type": ["string", "null"]},
    "reply_to": {"type": ["integer", "null"]}, "read": {"type": "boolean"}}}


def _filters(query) -> dict:
    return {key: query.get(key) for key in (*store.FILTERS, store.SEARCH) if query.get(key) is not None}


async def activity(ctx):
    q = ctx.query
    events, cursor = await store.query(ctx.hub, hours=q.get("hours", 24), filters=_filters(q),
                                       limit=q.get("limit", 100), before=q.get("before"))
    return {"events": events, "count": len(events), "next": cursor}


async def thread_view(ctx):
    from claude_net import NotFound

    thread = store.validate_thread(ctx.params.get("thread"))
    limit = ctx.query.get("limit", 500)
    actor = ctx.actor
    messages, more_messages = await store.thread_messages(ctx.hub, thread, None if actor.admin else actor.name,
                                                          limit)
    events, more_events = ([], False) if not actor.admin else await store.thread_rows(ctx.hub, thread, limit)
    if not messages and not events:
        # the same answer whether the thread does not exist or holds nothing this caller may see
        raise NotFound(f"no thread {thread!r} with messages you sent or received"
                       if not actor.admin else f"no thread {thread!r}", code="thread_not_found")
    items = [{"kind": "message", **m} for m in messages] + [{"kind": "event", **e} for e in events]
    # messages sort by their time and id; an action's row by its start (a row keeps its pending time)
    items.sort(key=lambda i: (i["time"], 0 if i["kind"] == "message" else 1, i["id"]))
    return {"thread": thread, "messages": messages, "events": events, "items": items,
            "truncated": more_messages or more_events, "admin_view": bool(actor.admin)}


def _sse(payload: dict) -> bytes:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"id: {payload['id']}\ndata: {data}\n\n".encode()


async def _first_set(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def stream(ctx):
    from quart import Response

    hub = ctx.hub
    filters = _filters(ctx.query)
    keepalive = store.settings_of(hub).stream_keepalive_seconds
    closing = store.state_of(hub).closing

    async def events():
        async with hub.bus.subscribe(store.CHANNEL, maxsize=1000) as sub:
            # The subscription exists before the first byte is sent: nothing after it is missed.
            yield b"retry: 3000\n: connected\n\n"
            # ends when the plugin shuts down or as soon as the hub begins to stop (SIGTERM)
            closed = asyncio.ensure_future(_first_set(closing, hub.stopping))
            getter: asyncio.Future | None = None
            dropped = 0
            try:
                while not closing.is_set() and not hub.stopping.is_set():
                    if getter is None:
                        getter = asyncio.ensure_future(sub.queue.get())
                    done, _ = await asyncio.wait({getter, closed}, timeout=keepalive,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        payload, getter = getter.result(), None
                        if sub.dropped != dropped:
                            yield f"event: dropped\ndata: {json.dumps({'dropped': sub.dropped - dropped})}\n\n".encode()
                            dropped = sub.dropped
                        if store.matches(payload, filters):
                            yield _sse(payload)
                    elif closed in done:
                        break
                    else:
                        yield b": keepalive\n\n"
                yield b"event: end\ndata: {\"reason\":\"the hub is shutting down\"}\n\n"
            finally:
                for fut in (getter, closed):
                    if fut is not None and not fut.done():
                        fut.cancel()
                        with contextlib.suppress(BaseException):
                            await fut

    response = Response(events(), status=200, content_type="text/event-stream; charset=utf-8",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.timeout = None  # a stream lives until the client goes away or the hub stops
    return response


def routes() -> list[Route]:
    return [
        Route(
            "GET", "/api/threads/<thread>", thread_view,
            summary="A thread: its messages and (admins) every action taken in it, in time order",
            description=(
                "Admins see every message of the thread and every activity row recorded with it; any other "
                "node sees only the thread's messages it sent or received, and no activity rows. 404 when "
                "the caller can see nothing of the thread (whether or not it exists). `items` merges both "
                "lists in time order (each with `kind`: `message` or `event`); at most `limit` (default "
                "500) of each, `truncated` when more exist."
            ),
            query_schema={"type": "object", "additionalProperties": False, "properties": {
                "limit": {"type": "integer", "minimum": 1, "maximum": 1000}}},
            path_schema={"thread": FILTER_PROPS["thread"]},
            response_schema={"type": "object", "properties": {
                "ok": {"const": True}, "thread": {"type": "string"},
                "messages": {"type": "array", "items": MESSAGE}, "events": {"type": "array", "items": EVENT},
                "items": {"type": "array"}, "truncated": {"type": "boolean"}, "admin_view": {"type": "boolean"}}},
            tags=["activity"],
        ),
        Route(
            "GET", "/api/activity", activity,
            summary="The audit trail, newest first (admin only)",
            description=(
                "Rows of the last `hours` hours (default 24; 0 = no bound), filtered by `type`, `from`, "
                "`target`, `result` and `thread`. `limit` (default 100, at most 1000) rows per page; pass the answer's "
                "`next` as `before` for the next (older) page. `before` also takes an ISO 8601 time. "
                "A guarded action's row appears with result `pending` while it runs."
            ),
            query_schema={"type": "object", "additionalProperties": False, "properties": {
                "hours": {"type": "number", "minimum": 0, "maximum": 87840},
                "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                "before": {"type": "string", "maxLength": 64,
                           "pattern": r"^\s*([0-9]{1,18}|[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.]+)?"
                                      r"(Z|[+-][0-9]{2}:?[0-9]{2})?)?\s*$",
                           "x-pattern-help": "be a row id (the previous page's `next`) or an ISO 8601 time"},
                **FILTER_PROPS,
            }},
            response_schema={"type": "object", "properties": {
                "ok": {"const": True}, "events": {"type": "array", "items": EVENT},
                "count": {"type": "integer"}, "next": {"type": ["integer", "null"]}}},
            admin=True, tags=["activity"],
        ),
        Route(
            "GET", "/api/activity/stream", stream,
            summary="Live Server-Sent Events of new activity (admin only)",
            description=(
                "Each event is `id: <row id>` and `data: <row JSON>` (the same shape as /api/activity; "
                "details longer than 1000 characters are cut, `detail_truncated: true`). A guarded action "
                "sends its row twice: `pending`, then the final result with the same id. Filters as "
                "/api/activity. Comments `: keepalive` every few seconds; `event: dropped` if this client "
                "fell behind; `event: end` when the hub shuts down."
            ),
            query_schema={"type": "object", "additionalProperties": False, "properties": FILTER_PROPS},
            admin=True, stream=True, tags=["activity"],
        ),
    ]
