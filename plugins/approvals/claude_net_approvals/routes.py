"""HTTP endpoints of approvals (docs/api.md, Approvals)."""

from __future__ import annotations

import json
import re

from claude_net import BadRequest, Route

from . import service, store

ID_RE = re.compile(r"^[a-z0-9]{4,40}$")
ID_PATH = {"approval_id": {"type": "string", "pattern": ID_RE.pattern}}
APPROVAL = {"type": "object", "properties": {
    "id": {"type": "string"}, "kind": {"type": "string", "enum": ["action", "agent_tool"]},
    "requester": {"type": "string"}, "action": {"type": "string"}, "target": {"type": ["string", "null"]},
    "detail": {"type": "string"}, "particulars": {"type": "object"},
    "state": {"type": "string", "enum": list(store.STATES)}, "created_at": {"type": "string"},
    "expires_at": {"type": "string"}, "decided_by": {"type": ["string", "null"]},
    "decided_via": {"type": ["string", "null"]}, "telegram_user": {"type": ["string", "null"]},
    "decided_at": {"type": ["string", "null"]}, "for": {"type": ["string", "null"]},
    "used_at": {"type": ["string", "null"]}, "request_id": {"type": ["string", "null"]}}}
ONE = {"type": "object", "properties": {"ok": {"const": True}, "approval": APPROVAL}}


def _id(ctx) -> str:
    value = ctx.params.get("approval_id", "")
    if not ID_RE.fullmatch(value or ""):
        raise BadRequest("that is not an approval id (lowercase letters and digits)", code="invalid_field",
                         field="approval_id")
    return value


async def list_view(ctx):
    return {"approvals": await service.list_approvals(ctx.hub, ctx.query.get("state"))}


async def one_view(ctx):
    return {"approval": await service.wait_view(ctx.hub, ctx.actor, _id(ctx), ctx.query.get("wait", 0))}


async def decide_view(ctx):
    body = ctx.body
    approval = await service.decide(ctx.hub, ctx.actor, _id(ctx), body["decision"], for_=body.get("for"),
                                    via=ctx.actor.via)
    return {"approval": approval}


async def cancel_view(ctx):
    return {"approval": await service.cancel(ctx.hub, ctx.actor, _id(ctx), via=ctx.actor.via)}


async def file_view(ctx):
    from quart import Response

    body = ctx.body
    approval, new = await service.file_agent_tool(
        ctx.hub, ctx.actor, tool_name=body["tool_name"], description=body.get("description", ""),
        input_preview=body.get("input_preview", ""), request_id=body.get("request_id"))
    data = json.dumps({"ok": True, "approval": approval, "coalesced": not new}, ensure_ascii=False)
    return Response(data.encode("utf-8"), status=201 if new else 200, content_type="application/json")


def routes() -> list[Route]:
    return [
        Route("GET", "/api/approvals", list_view, summary="Approvals, newest first (admin only)",
              description="`state` filters (pending, approved, denied, expired, cancelled). Due expiries are "
                          "applied first.",
              query_schema={"type": "object", "additionalProperties": False, "properties": {
                  "state": {"type": "string", "enum": list(store.STATES)}}},
              response_schema={"type": "object", "properties": {
                  "ok": {"const": True}, "approvals": {"type": "array", "items": APPROVAL}}},
              admin=True, tags=["approvals"]),
        Route("POST", "/api/approvals", file_view,
              summary="Ask the admin to approve one of your own tool uses (kind agent_tool)",
              description="An agent relays its own permission prompt (e.g. Claude Code's) to the admin. 201 with "
                          "the approval; an identical pending one is joined instead (200, `coalesced: true`). "
                          "Wait for the decision with `GET /api/approvals/{id}?wait=`. `[approvals] relay` says "
                          "which nodes may (403 relay_refused otherwise); at most `max_pending_per_requester` "
                          "pending at once (429 too_many_approvals).",
              body_schema={"type": "object", "additionalProperties": False, "required": ["kind", "tool_name"],
                           "properties": {
                               "kind": {"type": "string", "enum": ["agent_tool"]},
                               "tool_name": {"type": "string", "minLength": 1, "maxLength": 200},
                               "description": {"type": "string", "maxLength": 2000},
                               "input_preview": {"type": "string", "maxLength": 4000},
                               "request_id": {"type": "string", "maxLength": 200},
                               "from": {"type": "string"}}},
              response_schema=ONE, tags=["approvals"]),
        Route("GET", "/api/approvals/<approval_id>", one_view,
              summary="One approval (admin, or the node that asked); `wait` long-polls until it is decided",
              description="Others get 404. `wait` (seconds, at most `[approvals] wait_max`) returns as soon as the "
                          "approval leaves `pending` on any replica, or when the hub shuts down.",
              query_schema={"type": "object", "additionalProperties": False, "properties": {
                  "wait": {"type": "number", "minimum": 0, "maximum": 3600}}},
              path_schema=ID_PATH, response_schema=ONE, tags=["approvals"]),
        Route("POST", "/api/approvals/<approval_id>", decide_view,
              summary="Approve or deny a pending approval (admin only)",
              description="`decision`: approve or deny. `for` (approve only, e.g. `1h`): the requester may do the "
                          "same action on the same target without asking for that long (a recorded permit). 409 "
                          "already_decided (with `state`) when it is no longer pending.",
              body_schema={"type": "object", "additionalProperties": False, "required": ["decision"],
                           "properties": {"decision": {"type": "string", "enum": ["approve", "deny"]},
                                          "for": {"type": ["string", "null"], "maxLength": 32},
                                          "from": {"type": "string"}}},
              path_schema=ID_PATH, response_schema=ONE, admin=True, tags=["approvals"]),
        Route("POST", "/api/approvals/<approval_id>/cancel", cancel_view,
              summary="Withdraw a pending approval (the node that asked, or an admin)",
              path_schema=ID_PATH, response_schema=ONE, tags=["approvals"]),
    ]
