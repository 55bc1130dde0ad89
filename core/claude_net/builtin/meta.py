"""Built-in routes that describe the hub: health and the OpenAPI document."""

from __future__ import annotations

from claude_net import Route, hookimpl, __version__


async def health(ctx):
    return {"status": "up", "version": __version__}


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
    ]
