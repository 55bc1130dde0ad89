"""HTTP endpoints: ``POST /api/permit`` and ``GET /api/permissions``."""

from __future__ import annotations

from claude_net import Route

from . import model, service

NAME_OR_ALL = {
    "type": "string", "maxLength": 63, "pattern": r"^(\*|[a-z0-9][a-z0-9-]{0,62})$",
    "x-pattern-help": "be a node name (lowercase letters, digits and '-', at most 63 characters), '*' or 'all'",
}

PERMISSION = {"type": "object", "properties": {
    "source": {"type": "string"}, "target": {"type": "string"}, "allow": {"type": "boolean"},
    "capabilities": {"type": "array", "items": {"type": "string", "enum": list(model.CAPABILITIES)}},
    "granted_by": {"type": ["string", "null"]}, "granted_at": {"type": "string"},
    "expires_at": {"type": ["string", "null"]}, "expired": {"type": "boolean"},
    "stored": {"type": "boolean"}, "removed": {"type": "integer"},
    "ask": {"type": "array", "items": {"type": "string", "enum": list(model.CAPABILITIES)}},
    "snapshot": {"type": ["string", "null"], "enum": [*model.SNAPSHOT_WHEN, None]}}}


async def permit(ctx):
    body = ctx.body
    if "message" in body:
        others = sorted(k for k in ("capabilities", "ask", "snapshot", "expires", "inherit", "allow") if k in body)
        if others:
            from claude_net import BadRequest

            raise BadRequest(f"message sets a message rule on its own; send {', '.join(others)} in another permit",
                             code="invalid_field", field="message")
        rule = await service.set_message_rule(ctx.hub, ctx.actor, body["source"], body["target"], body["message"])
        return {"message_rule": rule}
    permission = await service.set_permission(
        ctx.hub, ctx.actor, body["source"], body["target"],
        allow=body.get("allow", True), capabilities=body.get("capabilities"),
        expires=body.get("expires"), inherit=body.get("inherit", False),
        ask=body.get("ask"), snapshot=body.get("snapshot"),
    )
    return {"permission": permission}


async def permissions(ctx):
    return await service.permissions_view(ctx.hub, effective=ctx.query.get("effective", False))


def routes() -> list[Route]:
    return [
        Route(
            "POST", "/api/permit", permit,
            summary="Grant, narrow or revoke a pathway source -> target (admin only)",
            description=(
                "`target` (and `source`) may be a node name, `*` or `all` (every node). "
                "`allow: true` stores the rule granting `capabilities` (default all of exec, file_read, "
                "file_write; e.g. `[\"file_read\"]` for read-only), optionally until `expires` "
                "('30m', '2h', '7d', '1w' or an ISO 8601 time). `ask` (a subset of the granted capabilities) makes "
                "those need an admin's approval of each request; `snapshot: \"before\"` snapshots an LXD "
                "target before every exec and file write (refused for a node without snapshots). `message` "
                "(true/false; null removes it), sent alone, stores a message rule instead: who may message whom "
                "(no message rule at all: messaging is open). `allow: false` on a node stores an explicit "
                "deny that beats broader grants; on `*`/`all` it deletes every rule of `source`; with "
                "`inherit: true` it deletes only this pair's rule. Takes effect on the next call. "
                "Non-admins get 403 and the attempt is recorded."
            ),
            body_schema={
                "type": "object", "additionalProperties": False, "required": ["source", "target"],
                "properties": {
                    "source": NAME_OR_ALL,
                    "target": NAME_OR_ALL,
                    "allow": {"type": "boolean"},
                    "capabilities": {"type": "array", "minItems": 1, "maxItems": 3,
                                     "items": {"type": "string", "enum": list(model.CAPABILITIES)}},
                    "expires": {"type": ["string", "null"], "maxLength": 64},
                    "inherit": {"type": "boolean"},
                    "ask": {"type": "array", "maxItems": 3, "uniqueItems": True,
                            "items": {"type": "string", "enum": list(model.CAPABILITIES)}},
                    "snapshot": {"type": ["string", "null"], "enum": [*model.SNAPSHOT_WHEN, None]},
                    "message": {"type": ["boolean", "null"]},
                    "from": {"type": "string"},
                },
            },
            response_schema={"type": "object", "properties": {"ok": {"const": True}, "permission": PERMISSION}},
            tags=["permissions"],
        ),
        Route(
            "GET", "/api/permissions", permissions,
            summary="The permissions matrix: every rule and every known node (admin only)",
            description="`effective=true` adds the resolved capabilities of every ordered pair of known nodes.",
            query_schema={"type": "object", "additionalProperties": False,
                          "properties": {"effective": {"type": "boolean"}}},
            response_schema={"type": "object", "properties": {
                "ok": {"const": True}, "permissions": {"type": "array", "items": PERMISSION},
                "allowances": {"type": "array", "items": {"type": "object"}}, "effective_ask": {"type": "object"},
                "nodes": {"type": "array", "items": {"type": "string"}},
                "capabilities": {"type": "array", "items": {"type": "string"}},
                "effective": {"type": "object"}, "unavailable": {"type": "object"}}},
            admin=True, tags=["permissions"],
        ),
    ]
