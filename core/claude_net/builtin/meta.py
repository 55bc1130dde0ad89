"""Built-in routes that describe the hub: health, the OpenAPI document and the caller's identity."""

from __future__ import annotations

from claude_net import Route, hookimpl, __version__


async def health(ctx):
    """Liveness for anyone; with an admin token, also the state of every background task.

    The public answer stays small: the version and the *names* of background tasks that are not
    running (restarting after a failure, or failed for good). Errors, counts and times are for
    admins only: an error text can quote anything (a path, a command, a host name).
    """
    from claude_net import HubError
    from claude_net.http import _bearer

    hub = ctx.hub
    answer = {"status": "up", "version": __version__, "tasks": {"degraded": hub.degraded_tasks()}}
    try:
        token = _bearer(ctx.headers.get("Authorization"))
    except HubError:
        token = None
    # a public route answers whatever credentials come along (a wrong one only gets no detail)
    try:
        actor = await hub.authenticate(token) if token else None
    except HubError:  # the database is down: liveness still answers
        actor = None
    if actor is None:
        return answer
    if actor.admin:
        answer["tasks"]["detail"] = hub.task_status()
    return answer


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
        Route("GET", "/api/health", health, summary="Liveness check (no token needed)", auth=False, tags=["meta"],
              description="Always 200 while the hub serves. `tasks.degraded` names background tasks that are "
                          "not running (restarting after a failure, or failed). With an admin token, "
                          "`tasks.detail` adds each task's state, failure count, last error and next restart; "
                          "any other credentials get the public answer.",
              response_schema={"type": "object", "properties": {
                  "ok": {"const": True}, "status": {"type": "string"}, "version": {"type": "string"},
                  "tasks": {"type": "object", "properties": {
                      "degraded": {"type": "array", "items": {"type": "string"}},
                      "detail": {"type": "object", "additionalProperties": {"type": "object"}}}}}}),
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
