"""Built-in messaging (v1 behaviour): send, inbox with ack and long-poll, machines.

Also owns the core tables (tokens, node_seen, messages) and lists token holders as nodes, so an
agent with a token is reachable by message even when no backend knows it.
"""

from __future__ import annotations

import re
import time

from claude_net import Event, Migration, Node, PayloadTooLarge, Route, hookimpl
from claude_net.types import NODE_NAME_RE, WILDCARD, isotime
from claude_net.upgrade import adopt_v1_messages

NAME_PATTERN = NODE_NAME_RE.pattern
NAME_HELP = "be a node name: lowercase letters, digits and '-', at most 63 characters"
_SECRETISH = re.compile(r"cn_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}|(?i:(password|secret|token|api[_-]?key)\s*[=:]\s*)\S+")


@hookimpl
def migrations():
    return [
        Migration(
            "claude_net",
            1,
            [
                # a v1 database's own messages table: adopted in place, or a refusal that names
                # `claude-net import-v1` (the CREATE TABLE below then finds it and does nothing)
                adopt_v1_messages,
                "CREATE TABLE IF NOT EXISTS tokens ("
                " id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_hash TEXT NOT NULL,"
                " admin BOOLEAN NOT NULL DEFAULT FALSE, created_at TEXT NOT NULL,"
                " revoked_at TEXT, last_used_at TEXT)",
                "CREATE INDEX IF NOT EXISTS tokens_name ON tokens (name)",
                "CREATE TABLE IF NOT EXISTS node_seen (name TEXT PRIMARY KEY, last_seen TEXT NOT NULL)",
                "CREATE TABLE IF NOT EXISTS messages ("
                " id {autoid}, from_machine TEXT NOT NULL, to_machine TEXT NOT NULL,"
                " message TEXT NOT NULL, timestamp TEXT NOT NULL, read_at TEXT,"
                " unauthenticated BOOLEAN NOT NULL DEFAULT FALSE, idempotency_key TEXT)",
                "CREATE INDEX IF NOT EXISTS messages_inbox ON messages (to_machine, read_at, id)",
                "CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency"
                " ON messages (from_machine, to_machine, idempotency_key) WHERE idempotency_key IS NOT NULL",
            ],
            description="tokens, node_seen, messages",
        ),
        Migration(
            "claude_net",
            2,
            [
                # threads (docs/api.md "Threads"): the conversation a message belongs to, and the
                # message it answers; NULL for messages sent without either
                "ALTER TABLE messages ADD COLUMN thread TEXT",
                "ALTER TABLE messages ADD COLUMN reply_to BIGINT",
                "CREATE INDEX IF NOT EXISTS messages_thread ON messages (thread, id)",
            ],
            description="messages.thread, messages.reply_to",
        ),
        Migration(
            "claude_net",
            3,
            [
                # delivery apart from reading (docs/mcp.md "Channel"): when a push into the
                # recipient's session was written; the message stays unread until it is acked,
                # because the session may have dropped the push
                "ALTER TABLE messages ADD COLUMN pushed_at TEXT",
            ],
            description="messages.pushed_at",
        ),
    ]


@hookimpl
async def list_nodes(hub):
    rows = await hub.db.fetch_all("SELECT DISTINCT name FROM tokens WHERE revoked_at IS NULL")
    return [Node(name=r["name"], backend="hub", state="registered") for r in rows]


def summarize(text: str, limit: int = 80) -> str:
    text = _SECRETISH.sub(lambda m: (m.group(1) or "") + "[redacted]" if m.group(1) else "[redacted]", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


INSERT_MESSAGE = (
    "INSERT INTO messages (from_machine, to_machine, message, timestamp, unauthenticated, idempotency_key,"
    " thread, reply_to)"
    " VALUES (:f, :t, :m, :now, :u, :k, :thread, :reply_to)"
    " ON CONFLICT (from_machine, to_machine, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    " RETURNING id"
)
SELECT_DUPLICATE = (
    "SELECT id FROM messages WHERE from_machine = :f AND to_machine = :t AND idempotency_key = :k"
)


MESSAGE_COLUMNS = "id, from_machine, to_machine, message, timestamp, unauthenticated, thread, reply_to, pushed_at"

# -- threads ------------------------------------------------------------------------------------
# A thread is a short identifier the caller picks (or inherits through ``reply_to``); messages and
# activity rows carry it, so an admin can read a conversation and every action taken in it.

THREAD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
THREAD_HELP = "be 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
THREAD = {"type": "string", "pattern": THREAD_RE.pattern, "x-pattern-help": THREAD_HELP,
          "description": "the thread this belongs to (docs/api.md, Threads)"}
MAX_ID = 2**63 - 1
REPLY_TO = {"type": "integer", "minimum": 1, "maximum": MAX_ID,
            "description": "id of a message you sent or received; without `thread`, its thread is used"}
#: the query-string forms (the raw file endpoints)
THREAD_PROPS = {"thread": THREAD, "reply_to": REPLY_TO}


def validate_thread(value: object, *, field_name: str = "thread") -> str:
    from claude_net import BadRequest

    if not isinstance(value, str) or not THREAD_RE.fullmatch(value):
        raise BadRequest(f"{field_name} must {THREAD_HELP}", code="invalid_field", field=field_name)
    return value


async def resolve_thread(hub, actor, fields, *, event_type: str, target: str | None, detail: str) -> dict:
    """The ``thread``/``reply_to`` of a request as recorded: ``{}`` or ``{"thread": t, "reply_to": id}``.

    ``reply_to`` must name a message the caller sent or received (an admin: any message). Any
    other id, existing or not, is the same 404, so nobody learns of another pair's messages; the
    refusal is recorded (``denied``, code ``reply_to_not_found``). Without ``thread`` the reply
    joins the replied-to message's thread, or starts ``m<id>`` (which that message then opens).
    """
    from claude_net import BadRequest, NotFound

    thread, reply_to = fields.get("thread"), fields.get("reply_to")
    if thread is not None:
        validate_thread(thread)
    if reply_to is None:
        return {"thread": thread} if thread is not None else {}
    if isinstance(reply_to, bool) or not isinstance(reply_to, int) or not 1 <= reply_to <= MAX_ID:
        raise BadRequest("reply_to must be a message id (a positive integer)", code="invalid_field", field="reply_to")
    if actor.admin:
        row = await hub.db.fetch_one("SELECT id, thread FROM messages WHERE id = :id", {"id": reply_to})
    else:
        row = await hub.db.fetch_one(
            "SELECT id, thread FROM messages WHERE id = :id AND (from_machine = :me OR to_machine = :me)",
            {"id": reply_to, "me": actor.name})
    if row is None:
        await hub.emit(Event(event_type, actor.name, target, detail, "denied", via=actor.via,
                             unauthenticated=actor.unauthenticated,
                             data={"reply_to": reply_to, "code": "reply_to_not_found",
                                   **({"thread": thread} if thread is not None else {})}))
        raise NotFound(f"reply_to: no message #{reply_to} that you sent or received", code="reply_to_not_found",
                       field="reply_to")
    if thread is None:
        # a message outside any thread is left as it is (a refused reply changes nothing); the
        # thread view counts message N, when it has no thread, as the start of thread "m<N>"
        thread = row["thread"] if row["thread"] is not None else f"m{reply_to}"
    return {"thread": thread, "reply_to": reply_to}


def _message_json(row) -> dict:
    return {
        "id": row["id"],
        "from": row["from_machine"],
        "to": row["to_machine"],
        "message": row["message"],
        "time": row["timestamp"],
        "unauthenticated": bool(row["unauthenticated"]),
        "pushed": row["pushed_at"] is not None,
        **({"thread": row["thread"]} if row["thread"] is not None else {}),
        **({"reply_to": row["reply_to"]} if row["reply_to"] is not None else {}),
    }


async def send(ctx):
    hub, actor, body = ctx.hub, ctx.actor, ctx.body
    to, message = body["to"], body["message"]
    limit = hub.settings.messaging.max_bytes
    size = len(message.encode())
    if size > limit:
        raise PayloadTooLarge(f"the message is {size} bytes; the limit is {limit}", limit=limit)
    keys = ctx.headers.getlist("Idempotency-Key")  # (get() raises and catches a KeyError when absent)
    key = keys[0] if keys else None
    if key is not None and not (1 <= len(key) <= 200):
        from claude_net import BadRequest

        raise BadRequest("Idempotency-Key must be 1 to 200 characters", code="invalid_header")
    threading = await resolve_thread(hub, actor, body, event_type="message", target=to, detail=summarize(message))

    async def deliver():
        if to == WILDCARD:
            nodes, _ = await hub.nodes.all()
            recipients = [n.name for n in nodes if n.name != actor.name]
        else:
            await hub.nodes.get(to)
            recipients = [to]
        now = isotime()
        ids, duplicate = [], False
        values = [{"f": actor.name, "t": r, "m": message, "now": now, "u": actor.unauthenticated, "k": key,
                   "thread": threading.get("thread"), "reply_to": threading.get("reply_to")}
                  for r in recipients]
        if len(values) == 1:  # the common case: one autocommitted statement, no transaction round trips
            new_id = await hub.db.fetch_val(INSERT_MESSAGE, values[0])
            if new_id is None:
                ids.append(await hub.db.fetch_val(SELECT_DUPLICATE, values[0]))
                duplicate = True
            else:
                ids.append(new_id)
        else:
            async with hub.db.transaction() as tx:
                for row in values:
                    new_id = await tx.fetch_val(INSERT_MESSAGE, row)
                    if new_id is None:
                        new_id, duplicate = await tx.fetch_val(SELECT_DUPLICATE, row), True
                    ids.append(new_id)
        for recipient in recipients:
            await hub.bus.publish(f"inbox:{recipient}", {"to": recipient})
        return recipients, ids, duplicate

    if not await hub.authorize(actor, "message", to, {"message": message}):
        await hub.emit(Event("message", actor.name, to, summarize(message), "denied", via=actor.via,
                             unauthenticated=actor.unauthenticated, data=dict(threading)))
        from claude_net.hub import deny_sentence
        from claude_net import Forbidden

        raise Forbidden(deny_sentence(actor, "message", to), code="denied")
    try:
        recipients, ids, duplicate = await deliver()
    except Exception as exc:
        from claude_net import HubError

        await hub.emit(Event("message", actor.name, to, summarize(message), "error", via=actor.via,
                             unauthenticated=actor.unauthenticated,
                             data={"error": exc.message if isinstance(exc, HubError) else "internal error",
                                   **threading}))
        raise
    if not duplicate:
        await hub.emit(Event("message", actor.name, to, summarize(message), "ok", via=actor.via,
                             unauthenticated=actor.unauthenticated,
                             data={"ids": ids, "bytes": size, "recipients": len(recipients), **threading}))
    result = {"id": ids[0] if ids else None, **threading}
    if to == WILDCARD:
        result.update(ids=ids, recipients=recipients)
    if duplicate:
        result["duplicate"] = True
    return result


async def _fetch_inbox(hub, name: str, limit: int, ack: bool, authenticated_only: bool = False,
                       unpushed: bool = False) -> list[dict]:
    # authenticated_only: the MCP channel's push loop peeks without ack; token-less v1 messages
    # must stay unread for claude_net_inbox without waking (or blocking) that loop.
    # unpushed: that loop's own marker, so a restarted loop does not push what it already pushed
    only = (" AND NOT unauthenticated" if authenticated_only else "") + (" AND pushed_at IS NULL" if unpushed else "")
    if ack:
        rows = await hub.db.fetch_all(
            "UPDATE messages SET read_at = :now WHERE id IN ("
            " SELECT id FROM messages WHERE to_machine = :name AND read_at IS NULL" + only + " ORDER BY id LIMIT :limit"
            + ("" if hub.db.is_sqlite else " FOR UPDATE SKIP LOCKED")
            + ") RETURNING " + MESSAGE_COLUMNS,
            {"name": name, "limit": limit, "now": isotime()},
        )
        rows.sort(key=lambda r: r["id"])
    else:
        rows = await hub.db.fetch_all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages"
            " WHERE to_machine = :name AND read_at IS NULL" + only + " ORDER BY id LIMIT :limit",
            {"name": name, "limit": limit},
        )
    return [_message_json(r) for r in rows]


async def inbox(ctx):
    hub, actor, q = ctx.hub, ctx.actor, ctx.query
    limit, ack = q.get("limit", 50), q.get("ack", False)
    wait = min(q.get("wait", 0), hub.settings.messaging.max_wait)
    only, unpushed = q.get("authenticated_only", False), q.get("unpushed", False)
    messages = await _fetch_inbox(hub, actor.name, limit, ack, only, unpushed)
    if not messages and wait > 0:
        deadline = time.monotonic() + wait
        async with hub.bus.subscribe(f"inbox:{actor.name}", maxsize=1) as sub:
            messages = await _fetch_inbox(hub, actor.name, limit, ack, only, unpushed)  # closes the gap before subscribing
            while not messages and (remaining := deadline - time.monotonic()) > 0 and not hub.stopping.is_set():
                if await sub.get(timeout=min(remaining, 1.0)) is None:
                    continue
                messages = await _fetch_inbox(hub, actor.name, limit, ack, only, unpushed)
    return {"messages": messages, "count": len(messages)}


async def _stamp_own(hub, actor, column: str, ids: list[int]) -> tuple[list[int], list[int]]:
    """Stamp ``column`` (read_at, pushed_at) on the caller's own messages among ``ids`` that do
    not have it yet: (stamped ids, ignored ids: another node's, unknown or already stamped)."""
    if not ids:
        return [], []
    params = {f"i{n}": v for n, v in enumerate(ids)}
    rows = await hub.db.fetch_all(
        f"UPDATE messages SET {column} = :now WHERE to_machine = :name AND {column} IS NULL"
        f" AND id IN ({', '.join(':' + k for k in params)}) RETURNING id",
        {"name": actor.name, "now": isotime(), **params},
    )
    done = sorted(r["id"] for r in rows)
    return done, sorted(set(ids) - set(done))


async def ack(ctx):
    acked, ignored = await _stamp_own(ctx.hub, ctx.actor, "read_at", ctx.body["ids"])
    return {"acked": acked, "ignored": ignored} if ctx.body["ids"] else {"acked": []}


async def pushed(ctx):
    """Mark messages delivered into the recipient's session (the MCP channel's push), not read."""
    done, ignored = await _stamp_own(ctx.hub, ctx.actor, "pushed_at", ctx.body["ids"])
    return {"pushed": done, "ignored": ignored}


async def machines(ctx):
    hub = ctx.hub
    nodes, errors = await hub.nodes.all()
    unread = {r["to_machine"]: r["n"] for r in await hub.db.fetch_all(
        "SELECT to_machine, COUNT(*) AS n FROM messages WHERE read_at IS NULL GROUP BY to_machine")}
    seen = await hub.last_seen()
    rows = [
        {
            "name": n.name,
            "backend": n.backend,
            "state": n.state,
            "capabilities": sorted(n.capabilities),
            "lastSeen": seen.get(n.name),
            "unread": unread.get(n.name, 0),
            "info": dict(n.info),
        }
        for n in nodes
    ]
    return {"machines": rows, "unavailable": errors}


NAME = {"type": "string", "pattern": NAME_PATTERN, "x-pattern-help": NAME_HELP}
MESSAGE = {"type": "object", "properties": {
    "id": {"type": "integer"}, "from": {"type": "string"}, "to": {"type": "string"},
    "message": {"type": "string"}, "time": {"type": "string"}, "unauthenticated": {"type": "boolean"},
    "pushed": {"type": "boolean", "description": "already pushed into the recipient's session by the MCP "
               "channel (POST /api/inbox/pushed); still unread until acked"},
    "thread": {"type": "string", "description": "present when the message belongs to a thread"},
    "reply_to": {"type": "integer", "description": "present when the message answers another"}}}


@hookimpl
def register_routes(hub):
    max_wait = hub.settings.messaging.max_wait
    return [
        Route(
            "POST", "/api/send", send,
            summary="Send a message to a node (or '*' for every known node)",
            description="Stored until the recipient reads it. An `Idempotency-Key` header makes retries safe: "
                        "a repeated key from the same sender stores the message once. `thread` and `reply_to` "
                        "(a message you sent or received; 404 otherwise) put it in a thread.",
            body_schema={
                "type": "object", "additionalProperties": False, "required": ["to", "message"],
                "properties": {
                    "to": {"type": "string", "pattern": f"{NAME_PATTERN}|^\\*$", "x-pattern-help": NAME_HELP + " or '*'"},
                    "message": {"type": "string", "minLength": 1},
                    "from": {"type": "string", "description": "v1 compatibility: must equal the token's node"},
                    **THREAD_PROPS,
                },
            },
            response_schema={"type": "object", "properties": {
                "ok": {"const": True}, "id": {"type": "integer"}, "ids": {"type": "array"},
                "duplicate": {"type": "boolean"}, "thread": {"type": "string"}, "reply_to": {"type": "integer"}}},
            legacy_v1=True, tags=["messaging"],
        ),
        Route(
            "GET", "/api/inbox", inbox,
            summary="Your unread messages, oldest first",
            description="`ack=true` marks exactly the returned messages read in the same transaction; "
                        "`wait=N` long-polls up to N seconds for the first message; `unpushed=true` leaves out "
                        "messages already marked pushed (POST /api/inbox/pushed).",
            query_schema={"type": "object", "additionalProperties": False, "properties": {
                "limit": {"type": "integer", "minimum": 1, "maximum": 500},
                "ack": {"type": "boolean"},
                "wait": {"type": "number", "minimum": 0, "maximum": max_wait},
                "authenticated_only": {"type": "boolean", "description": "leave out (and leave unread) "
                                       "messages of token-less v1 senders"},
                "unpushed": {"type": "boolean", "description": "only messages not yet marked pushed "
                             "(POST /api/inbox/pushed); what the MCP channel's push loop waits for"},
            }},
            response_schema={"type": "object", "properties": {"ok": {"const": True}, "count": {"type": "integer"},
                                                              "messages": {"type": "array", "items": MESSAGE}}},
            legacy_v1=True, tags=["messaging"],
        ),
        Route(
            "POST", "/api/inbox/ack", ack,
            summary="Mark messages read after processing them",
            body_schema={"type": "object", "additionalProperties": False, "required": ["ids"], "properties": {
                "ids": {"type": "array", "maxItems": 1000,
                        "items": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
                "from": {"type": "string"}}},
            legacy_v1=True, tags=["messaging"],
        ),
        Route(
            "POST", "/api/inbox/pushed", pushed,
            summary="Mark your messages delivered into your session (pushed), leaving them unread",
            description="What the MCP channel calls once a message's notification was written to the client, "
                        "so that `GET /api/inbox?unpushed=true` leaves it out from then on. The messages stay "
                        "unread (the session may have dropped the push) until acked. Ids that are not your "
                        "messages, or already marked, come back in `ignored`.",
            body_schema={"type": "object", "additionalProperties": False, "required": ["ids"], "properties": {
                "ids": {"type": "array", "maxItems": 1000,
                        "items": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}}}},
            response_schema={"type": "object", "properties": {
                "ok": {"const": True}, "pushed": {"type": "array", "items": {"type": "integer"}},
                "ignored": {"type": "array", "items": {"type": "integer"}}}},
            tags=["messaging"],
        ),
        Route(
            "GET", "/api/machines", machines,
            summary="Every known node with backend, state, last seen and unread count",
            query_schema={"type": "object", "additionalProperties": False, "properties": {}},
            tags=["messaging"],
        ),
    ]
