"""Built-in routes that describe the hub: health, the OpenAPI document and the caller's identity."""

from __future__ import annotations

from claude_net import Route, hookimpl, __version__


async def health(ctx):
    return {"status": "up", "version": __version__}


async def whoami(ctx):
    limits, messaging = ctx.hub.settings.limits, ctx.hub.settings.messaging
    return {
        "name": ctx.actor.name,
        "admin": ctx.actor.admin,
        "limits": {
            "execTimeout": limits.exec_timeout,
            "execTimeoutMax": limits.exec_timeout_max,
            "execMaxOutput": limits.exec_max_output,
            "fileMaxBytes": limits.file_max_bytes,
            "messageMaxBytes": messaging.max_bytes,
        },
    }


async def openapi(ctx):
    from quart import current_app

    from claude_net.http import json_response, openapi_document

    return json_response(openapi_document(current_app))


@hookimpl
def register_routes():
    return [
        Route("GET", "/api/health", health, summary="Liveness check (no token needed)", auth=False, tags=["meta"]),
        Route("GET", "/api/openapi.json", openapi, summary="This API as OpenAPI 3.1 (no token needed)",
              auth=False, tags=["meta"]),
        Route("GET", "/api/whoami", whoami, summary="The caller's node name, admin flag and the hub's limits",
              description="Clients (the MCP server, scripts) use it to check a token and to learn which tools "
                          "to offer: admin-only actions need `admin: true`.",
              response_schema={"type": "object", "properties": {
                  "ok": {"const": True}, "name": {"type": "string"}, "admin": {"type": "boolean"},
                  "limits": {"type": "object", "properties": {
                      "execTimeout": {"type": "number"}, "execTimeoutMax": {"type": "number"},
                      "execMaxOutput": {"type": "integer"}, "fileMaxBytes": {"type": "integer"},
                      "messageMaxBytes": {"type": "integer"}}}}},
              tags=["meta"]),
    ]
