"""The HTTP surface: ``create_app`` wraps every plugin route with auth, validation and errors.

One place maps :class:`claude_net.errors.HubError` (and Quart's own HTTP errors) to
``{"ok": false, "error": "...", "code": "..."}``; anything unexpected is logged and answered with
a generic 500 that never leaks internals.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quart import Quart, Response, request
from quart.asgi import ASGIHTTPConnection
from quart.wrappers.request import Body, Request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .errors import BadRequest, Forbidden, HubError, PayloadTooLarge, RateLimited, RequestTimeout, Unauthorized
from .hub import EMITTED, Hub
from .ratelimit import retry_after_header
from .schema import JsonShape, check_text, coerce_query, decode_utf8, published, storable, text_problem, validate
from .types import NODE_NAME_RE, Actor, Event, Route, validate_node_name

log = logging.getLogger("claude_net.http")

#: routes reachable without a token; a test walks the URL map against this list
#: (the Telegram webhook authenticates each call with Telegram's secret-token header instead)
PUBLIC_PATHS = frozenset({"/api/health", "/api/openapi.json", "/api/telegram/webhook"})
#: ASGI scope key an in-process caller sets to name its channel in ``Actor.via`` (e.g. "mcp")
VIA_SCOPE_KEY = "claude_net.via"


#: request body bytes the hub holds before it stops reading from the client (see StreamingBody)
BODY_HIGH_WATER = 1024 * 1024
#: JSON bodies larger than this are decoded and parsed in a worker thread, not on the event loop
#: (measured: parsing 256 KiB of JSON takes ~1 ms; the thread hop costs ~0.1 ms)
PARSE_OFF_LOOP_BYTES = 256 * 1024
#: statuses of refusals that no action recorded: the request wrapper records them itself
RECORDED_REFUSALS = (400, 408, 413)


class StreamingBody(Body):
    """Quart's request body with backpressure.

    Quart's receiver appends whatever the server hands it to an unbounded buffer, so a handler
    that streams the body (``PUT /api/file/raw``) would still end up holding all of it when it
    consumes slower than the client sends. Here the receiver (:class:`StreamingHTTPConnection`)
    waits while ``BODY_HIGH_WATER`` bytes are buffered; Hypercorn then stops reading the socket
    and TCP slows the client down. Awaiting the whole body (``request.get_data()``: the JSON
    endpoints, bounded by their own limits) lifts the bound for that request.
    """

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._room = asyncio.Event()
        self._room.set()
        self._unbounded = False
        self._discarding = False

    def append(self, data: bytes) -> None:
        if self._discarding:
            return
        super().append(data)
        if not self._unbounded and len(self._data) >= BODY_HIGH_WATER:
            self._room.clear()

    def discard(self) -> None:
        """No one will read the rest: drop what is buffered and whatever still arrives, without waiting.

        Called when the response starts. A handler that answers before the whole body is in (a 413,
        a body refused for its shape) leaves the receiver waiting for room; Hypercorn's queue of
        request messages then fills, and it can neither deliver the disconnect nor close the
        connection, so the client's upload hangs until it times out. Draining lets Hypercorn close.
        """
        self._discarding = True
        self._data.clear()
        self._room.set()

    async def __anext__(self) -> bytes:
        try:
            return await super().__anext__()
        finally:
            self._room.set()

    def __await__(self):  # type: ignore[no-untyped-def]
        self._unbounded = True
        self._room.set()
        return super().__await__()

    async def room(self) -> None:
        """Return once the buffer is below the high-water mark (or the whole body is wanted)."""
        await self._room.wait()

    def take_complete(self) -> bytes | None:
        """The whole body at once if it has already arrived (the usual case for a small JSON
        body: no waiting task, no timer); None while more is on its way. Raises as awaiting the
        body would (too large)."""
        if self._must_raise is not None:
            raise self._must_raise
        if not self._complete.is_set():
            return None
        data = bytes(self._data)
        self._data.clear()
        return data


class StreamingRequest(Request):
    body_class = StreamingBody


class ResponseAborted(Exception):
    """Raised by a streamed response body that cannot finish (the failure is already recorded).

    The connection is closed without completing the response, so the client sees a truncated
    body (fewer bytes than ``Content-Length``, or no final chunk), never a short file that looks
    whole.
    """


class StreamingHTTPConnection(ASGIHTTPConnection):
    """Quart's ASGI HTTP handling with request-body backpressure and quiet aborted responses."""

    async def handle_messages(self, request: Request, receive: Any) -> None:
        body = self._request_body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                elif isinstance(body, StreamingBody):
                    await body.room()
            elif message["type"] == "http.disconnect":
                return

    async def _send_response(self, send: Any, response: Any) -> None:
        body = getattr(self, "_request_body", None)
        if isinstance(body, StreamingBody):
            body.discard()
        try:
            await super()._send_response(send, response)
        except ResponseAborted as exc:
            log.warning("response to %s %s cut short: %s", self.scope.get("method"), self.scope.get("path"), exc)


@dataclass
class RequestContext:
    hub: Hub
    actor: Actor | None
    body: dict[str, Any]
    query: dict[str, Any]
    params: dict[str, Any]
    request_id: str
    headers: Mapping[str, str] = field(default_factory=dict)


def json_response(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from a file name, a backend): JSON can still carry it escaped
        data = json.dumps(body, separators=(",", ":")).encode("ascii")
    return Response(data, status=status, headers=headers, content_type="application/json")


def error_response(exc: HubError, request_id: str | None = None) -> Response:
    if isinstance(exc.extra.get("field"), str):  # a field may be named by a caller's key (NUL, surrogate)
        exc.extra["field"] = storable(exc.extra["field"])
    headers = {"X-Request-Id": request_id} if request_id else None
    if exc.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="claude-net"'}
    if exc.status == 429 and "retryAfter" in exc.extra:
        headers = {**(headers or {}), "Retry-After": retry_after_header(exc.extra["retryAfter"])}
    return json_response(exc.to_json(), exc.status, headers)


async def _plugin_actor(hub: Hub) -> Actor | None:
    found = hub.pm.hook.authenticate_request(hub=hub, request=request)
    return await found if inspect.isawaitable(found) else found


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'", code="bad_auth_header")
    return value.strip()


class RouteView:
    def __init__(self, hub: Hub, route: Route) -> None:
        self.hub = hub
        self.route = route
        self.__name__ = f"{route.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.path.lower())}"

    async def __call__(self, **params: Any) -> Response:
        request_id = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(8)
        emitted: list[str] = []
        who: dict[str, Any] = {}
        reset = EMITTED.set(emitted)
        try:
            response = await self._handle(params, request_id, who)
        except HubError as exc:
            if exc.status in RECORDED_REFUSALS and not emitted:
                await self._record_refusal(who.get("actor"), who.get("target"), exc)
            return error_response(exc, request_id)
        finally:
            EMITTED.reset(reset)
        if "X-Request-Id" not in response.headers:  # (setdefault costs a raised KeyError here)
            response.headers["X-Request-Id"] = request_id
        return response

    async def _record_refusal(self, actor: Actor | None, target: str | None, exc: HubError) -> None:
        """A request refused as invalid (a bad name, path, command, text, size, shape) before any action
        recorded it: a ``denied`` row, so every refusal is in the activity feed. Rows are throttled like
        the other refusals: per node (its first few of a window one by one, then one row with the count)
        and, for callers without an identity, per address."""
        data: dict[str, Any] = {"code": exc.code, "status": exc.status}
        if exc.extra.get("field"):
            data["field"] = storable(str(exc.extra["field"]))[:200]
        what = f"{self.route.method} {self.route.path}"
        message = storable(exc.message)[:400]
        if actor is None:
            address = request.remote_addr or "unknown"
            refused = self.hub.auth_refusals.should_record(f"invalid request from {address}")
            if refused:
                await self.hub.emit(Event("request", None, target, f"{what} from {address} refused: {message}"
                                          + (f" ({refused} refused)" if refused > 1 else ""), "denied",
                                          data={**data, "refused": refused}))
            return
        refused = self.hub.rate_limiter.refusals.should_record(actor.name)
        if refused:
            if refused > 1:
                data["refused"] = refused
            await self.hub.emit(Event("request", actor.name, target, f"{what} refused: {message}"
                                      + (f" ({refused - 1} more refused before it, not recorded one by one)"
                                         if refused > 1 else ""), "denied",
                                      via=actor.via, unauthenticated=actor.unauthenticated, data=data))

    async def _refuse_anonymous(self, what: str) -> None:
        """Record a request without a valid token: at most once per address every few seconds (with a
        count), so nobody can flood the audit log without a token."""
        address = request.remote_addr or "unknown"
        refused = self.hub.auth_refusals.should_record(address)
        if refused:
            await self.hub.emit(Event("auth", None, None, f"{what} on {self.route.method} {self.route.path} "
                                      f"from {address}" + (f" ({refused} refused)" if refused > 1 else ""),
                                      "denied", data={"refused": refused}))

    async def _handle(self, params: dict[str, Any], request_id: str, who: dict[str, Any]) -> Response:
        route, hub = self.route, self.hub
        wants_body = route.method in ("POST", "PUT", "PATCH", "DELETE") and route.body_schema is not None
        query_args = dict(request.args)
        query_from = query_args.pop("from", None) if route.legacy_v1 else None
        # Authenticate before reading the body, so anonymous callers cost nothing; only legacy v1
        # messaging (opt-in) needs the body first, to learn the name from its `from` field.
        token = _bearer(request.headers.get("Authorization")) if route.auth else None
        actor: Actor | None = None
        if token is None and route.auth:  # another credential a plugin knows (the dashboard's session)
            actor = await _plugin_actor(hub)
        if actor is not None:
            who["actor"] = actor
            if hub.rate_limiter.enabled:
                await self._rate_limit(actor)
        elif token is not None:
            # In-process callers (the MCP endpoint calling this API for its tools) label their channel
            # in the ASGI scope, which no network client can set; everyone else is "http".
            actor = await hub.authenticate(token, via=request.scope.get(VIA_SCOPE_KEY) or "http")
            if actor is None:
                await self._refuse_anonymous("invalid or revoked token")
                raise Unauthorized("the token is invalid or has been revoked", code="invalid_token")
            who["actor"] = actor
            if hub.rate_limiter.enabled:  # before the body is read: a flooding node costs little
                await self._rate_limit(actor)
        elif route.auth and not (route.legacy_v1 and hub.settings.messaging.allow_unauthenticated):
            await self._refuse_anonymous("no token")
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)", code="missing_token")

        body, bad_text = await self._read_json() if wants_body else ({}, None)
        for key in ("target", "to", "name"):  # the node acted upon, for the record of a refusal
            if isinstance(body.get(key), str) and NODE_NAME_RE.fullmatch(body[key]):
                who["target"] = body[key]
                break
        if "from" in body and not isinstance(body["from"], str):  # null included: the schemas say string
            raise BadRequest("from must be a string (the name of the token's node)", code="invalid_field",
                             field="from")
        body_from = body.pop("from", None)
        if route.auth and actor is None:  # legacy v1: the name comes from `from`
            name = body_from or query_from
            if name is None:
                raise Unauthorized("a bearer token (or, for v1 clients, a 'from' field) is required",
                                   code="missing_token")
            validate_node_name(name, field_name="from")
            if await hub.db.fetch_val("SELECT 1 FROM tokens WHERE name = :n AND revoked_at IS NULL", {"n": name}):
                await hub.emit(Event("auth", None, name, f"unauthenticated v1 request claiming {name}, which has "
                                     f"a token, on {route.method} {route.path}", "denied", unauthenticated=True))
                raise Unauthorized(f"{name} has a token: send it as 'Authorization: Bearer <token>'",
                                   code="missing_token")
            hub.seen(name)
            actor = Actor(name=name, unauthenticated=True)
            who["actor"] = actor
            if hub.rate_limiter.enabled:
                await self._rate_limit(actor)
        elif actor is not None and body_from is not None and body_from != actor.name:
            await hub.emit(Event("auth", actor.name, None,
                                 f"'from' field {body_from[:70]!r} does not match the token of {actor.name} "
                                 f"on {route.method} {route.path}", "denied", via=actor.via))
            raise Forbidden(f"'from' is {body_from[:70]!r} but the token belongs to {actor.name}",
                            code="from_mismatch")
        if route.admin and (actor is None or not actor.admin):
            await hub.emit(Event("admin", actor.name if actor else None, None,
                                 f"{route.method} {route.path} (admin only)", "denied",
                                 via=actor.via if actor else "http"))
            raise Forbidden(f"{route.method} {route.path} is for admins only", code="admin_only")

        query = coerce_query(query_args, route.query_schema) if route.query_schema else query_args
        if wants_body:
            validate(body, route.body_schema)
        # The text rule comes after the schemas, so a field whose own pattern excludes NUL keeps its
        # specific code (invalid_path, invalid_name); it still comes before any handler, so nothing
        # past this line meets a lone surrogate or (outside x-allow-nul fields) a NUL.
        bad_text = _url_text_problem(params, request.args) or bad_text
        if bad_text is not None:
            raise bad_text
        ctx = RequestContext(hub, actor, body, query, params, request_id, request.headers)
        result = await route.handler(ctx)
        if isinstance(result, Response):
            return result
        return json_response({"ok": True, **(result or {})})

    async def _rate_limit(self, actor: Actor) -> None:
        """One token from the node's bucket, else 429 (recorded at most every few seconds per node)."""
        limiter = self.hub.rate_limiter
        wait = limiter.take(actor.name)
        if not wait:
            return
        refused = limiter.should_record(actor.name)
        limits = self.hub.settings.limits
        if refused:
            await self.hub.emit(Event(
                "rate_limit", actor.name, None,
                f"{self.route.method} {self.route.path}: more than {limits.rate_per_minute:g} requests per minute "
                f"(burst {limits.rate_burst}); {refused} request(s) refused", "denied",
                via=actor.via, unauthenticated=actor.unauthenticated, data={"refused": refused}))
        raise RateLimited(f"{actor.name} is sending more than {limits.rate_per_minute:g} requests per minute; "
                          f"retry in {retry_after_header(wait)} s", code="rate_limited",
                          retryAfter=float(retry_after_header(wait)))

    async def _read_json(self) -> tuple[dict[str, Any], BadRequest | None]:
        """The JSON object body, bounded before it is parsed: its size by the route's limit (by
        Content-Length up front, else while it arrives), its nesting depth and number of values by
        [limits] (counted from the bytes as they arrive, see :class:`JsonShape`). Large bodies are
        decoded and parsed in a worker thread. Returns the body and the first string in it that is
        not accepted text (raised by the caller once the schema has been checked)."""
        limits = self.hub.settings.limits
        limit = self.route.max_body or limits.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise PayloadTooLarge(f"the request body is {length} bytes; the limit is {limit}", limit=limit)
        request.max_content_length = limit
        shape = JsonShape(limits.json_max_depth, limits.json_max_items)
        scanned = False
        try:
            body = request.body
            raw = body.take_complete() if isinstance(body, StreamingBody) else None
            if raw is None and isinstance(body, StreamingBody):
                pieces, scanned = await self._receive(body, shape, limit), True
            else:
                pieces = [raw if raw is not None else await request.get_data(cache=False)]
        except RequestEntityTooLarge:
            raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes", limit=limit) from None
        size = sum(len(piece) for piece in pieces)
        if size > limit:
            raise PayloadTooLarge(f"the request body is {size} bytes; the limit is {limit}", limit=limit)
        if not size:
            raise BadRequest("a JSON object body is required", code="invalid_json")
        if size > PARSE_OFF_LOOP_BYTES:
            return await asyncio.to_thread(_decode_json_body, pieces, shape, scanned, self.route.body_schema)
        return _decode_json_body(pieces, shape, scanned, self.route.body_schema)

    async def _receive(self, body: StreamingBody, shape: JsonShape, limit: int) -> list[bytes]:
        """Read a body still on its way piece by piece, counting its shape as it comes, so an
        oversized or malformed one is refused (and the connection dropped) without reading the rest."""
        pieces: list[bytes] = []
        size = 0
        timeout = self.hub.settings.limits.body_timeout
        try:
            async with asyncio.timeout(timeout):
                async for piece in body:
                    size += len(piece)
                    if size > limit:
                        raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes", limit=limit)
                    shape.feed(piece)
                    pieces.append(piece)
        except TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
        return pieces  # (joined by the decoder, in a worker thread when large)


def _decode_json_body(pieces: list[bytes], shape: JsonShape, scanned: bool,
                      schema: Mapping[str, Any] | None) -> tuple[dict[str, Any], BadRequest | None]:
    """Check the shape (unless done while receiving), decode and parse a JSON object body; also
    find its first string that is not accepted text. Runs in a worker thread for large bodies."""
    if not scanned:
        for piece in pieces:
            shape.feed_all(piece)
    if json.detect_encoding(b"".join(pieces[:4])[:4]) not in ("utf-8", "utf-8-sig"):
        raise BadRequest("JSON bodies must be UTF-8 (RFC 8259)", code="invalid_json")
    try:
        text = decode_utf8(pieces)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_json") from None
    try:
        # json.loads with one decoder made once instead of per call
        body = _DECODER.decode(text)
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # JsonShape bounds the depth first; never a 500 should the bound be raised high
        raise BadRequest("the JSON body is nested too deeply", code="too_deep") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    # Strict UTF-8 and JSON's ban on raw control characters leave only escapes (\ud800, \u0000) to
    # produce a lone surrogate or a NUL: without one in the bytes there is nothing to look for.
    return body, check_text(body, schema) if shape.risky_escape else None


def _url_text_problem(params: Mapping[str, Any], args: Any) -> BadRequest | None:
    """The first URL path parameter or query parameter (name or value) that is not accepted text."""
    for key, value in params.items():
        if isinstance(value, str) and (problem := text_problem(value)):
            return BadRequest(f"the URL path part {key} {problem}", code="invalid_text", field=key)
    for key, value in args.items(multi=True):
        for part, problem in (("the name of query parameter", text_problem(key)),
                              ("query parameter", text_problem(value))):
            if problem:
                return BadRequest(f"{part} {storable(key)} {problem}", code="invalid_text", field=storable(key))
    return None


def _parse_float(text: str) -> float | int:
    """JSON numbers with a fraction or exponent: integral ones (``2.0``, ``1e3``) are integers, as
    JSON Schema counts them, so ``"uid": 1000.0`` passes an integer field and reaches handlers as int."""
    value = float(text)
    if value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def _reject_constant(name: str) -> Any:
    """``NaN``, ``Infinity``, ``-Infinity`` are not JSON (Python's parser accepts them by default)."""
    raise ValueError(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_float=_parse_float, parse_constant=_reject_constant)


def _view(route_view: RouteView):
    async def view(**params: Any) -> Response:
        return await route_view(**params)

    view.__name__ = route_view.__name__
    return view


class _Mounts:
    """ASGI middleware that sends a path prefix to another ASGI app (e.g. the MCP endpoint)."""

    def __init__(self, app: Any, mounts: list[tuple[str, Any]]) -> None:
        self.app = app
        self.mounts = mounts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            for prefix, mounted in self.mounts:
                if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                    await mounted(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(settings: Any = None, *, plugins: Any = (), load_entrypoints: bool = True, hub: Hub | None = None) -> Quart:
    """Build the Quart app around a :class:`Hub` (created from ``settings`` unless given)."""
    from .config import load_settings

    if hub is None:
        hub = Hub(settings if settings is not None else load_settings(), plugins=plugins,
                  load_entrypoints=load_entrypoints)
    app = Quart("claude_net", static_folder=None)
    app.request_class = StreamingRequest
    app.asgi_http_class = StreamingHTTPConnection  # type: ignore[assignment]
    app.config["BODY_TIMEOUT"] = hub.settings.limits.body_timeout
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["MAX_CONTENT_LENGTH"] = max(hub.settings.limits.max_body_bytes,
                                           hub.settings.limits.file_max_bytes * 4 // 3 + 65536)
    app.extensions["claude_net"] = hub
    app.hub = hub  # type: ignore[attr-defined]
    hub.app = app

    routes: list[tuple[str, Route]] = []
    seen: dict[tuple[str, str], str] = {}
    for impl in hub.pm.hook.register_routes.get_hookimpls():
        for route in impl.function(**{a: hub for a in impl.argnames}) or ():
            key = (route.method.upper(), route.path)
            if key in seen:
                raise ValueError(f"route {key[0]} {key[1]} is registered by both {seen[key]} and {impl.plugin_name}")
            if not route.auth and route.path not in PUBLIC_PATHS:
                raise ValueError(f"plugin {impl.plugin_name}: route {route.path} wants auth=False but is not in "
                                 "the public allow-list")
            seen[key] = impl.plugin_name
            routes.append((impl.plugin_name, route))
            app.add_url_rule(route.path, endpoint=f"{impl.plugin_name}:{key[0]}:{route.path}",
                             view_func=_view(RouteView(hub, route)), methods=[key[0]])
    app.extensions["claude_net_routes"] = routes

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if (exc.code or 500) >= 500:
            return json_response({"ok": False, "error": "internal error; the hub's log has the details",
                                  "code": "internal"}, exc.code or 500)
        code = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
                413: "too_large"}.get(exc.code or 500, "http_error")
        message = {404: f"no such endpoint: {request.method} {request.path}",
                   405: f"{request.method} is not allowed on {request.path}",
                   408: f"the request body did not arrive within {hub.settings.limits.body_timeout:g} s",
                   413: "the request body is too large"}.get(exc.code or 500, exc.description or exc.name)
        headers = None
        if exc.code == 405 and getattr(exc, "valid_methods", None):  # RFC 9110: a 405 lists what is allowed
            headers = {"Allow": ", ".join(sorted(exc.valid_methods))}
        return json_response({"ok": False, "error": message, "code": code}, exc.code or 500, headers)

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"ok": False, "error": "internal error; the hub's log has the details",
                              "code": "internal"}, 500)

    @app.before_serving
    async def start_hub() -> None:
        await hub.start()

    @app.after_serving
    async def stop_hub() -> None:
        await hub.stop()

    mounts: list[tuple[str, Any]] = []
    for impl in hub.pm.hook.register_asgi_apps.get_hookimpls():
        for prefix, asgi in impl.function(**{a: hub for a in impl.argnames}) or ():
            if prefix.startswith("/api"):
                raise ValueError(f"plugin {impl.plugin_name}: mount {prefix} overlaps /api")
            mounts.append((prefix, asgi))
    if mounts:
        app.asgi_app = _Mounts(app.asgi_app, mounts)  # type: ignore[method-assign]
    return app


def openapi_document(app: Quart) -> dict[str, Any]:
    """OpenAPI 3.1 for every route the app serves, built from the same schemas that validate."""
    from . import __version__

    error = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, Any] = {}
    for plugin, route in app.extensions["claude_net_routes"]:
        path = re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", r"{\1}", route.path)
        op: dict[str, Any] = {
            "summary": route.summary,
            "description": route.description or route.summary,
            "operationId": f"{route.method.lower()}{re.sub(r'[^a-zA-Z0-9]+', '_', path)}",
            "tags": list(route.tags) or [plugin],
            "x-plugin": plugin,
        }
        params = [
            {"name": m, "in": "path", "required": True,
             "schema": published((route.path_schema or {}).get(m, {"type": "string"}))}
            for m in re.findall(r"{([a-zA-Z_]+)}", path)
        ]
        if route.query_schema:
            required = set(route.query_schema.get("required", ()))
            for name, schema in route.query_schema.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in required,
                               "schema": published(schema)})
        if params:
            op["parameters"] = params
        if route.body_schema is not None and route.method != "GET":
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": published(route.body_schema)}}}
        elif route.body_media_type is not None:
            op["requestBody"] = {"required": False, "content": {
                route.body_media_type: {"schema": {"type": "string", "format": "binary"}}}}
        ok_schema = route.response_schema or {"type": "object", "properties": {"ok": {"const": True}}}
        if route.stream:
            # one parsed server-sent event (what clients and validators see per event)
            sse_event = {"type": "object", "properties": {"event": {"type": "string"}, "data": {"type": "string"},
                                                          "id": {"type": "string"}}}
            ok_content: dict[str, Any] = {"text/event-stream": {"schema": sse_event}}
            if route.response_schema is not None:  # it answers JSON too (e.g. without follow=1)
                ok_content["application/json"] = {"schema": ok_schema}
        elif route.response_media_type is not None:
            ok_content = {route.response_media_type: {"schema": {"type": "string", "format": "binary"}}}
        else:
            ok_content = {"application/json": {"schema": ok_schema}}
        responses: dict[str, Any] = {"200": {"description": "success", "content": ok_content}}
        statuses = ["400", "401", "403", "404", "409", "413", "429", "503", "504"] if route.auth else ["400"]
        if "requestBody" in op:
            statuses.append("408")  # the body did not arrive within [limits] body_timeout
        for status in sorted(statuses):
            responses[status] = {"description": "error", "content": {"application/json": {"schema": error}}}
        op["responses"] = responses
        if route.auth:
            op["security"] = [{"bearer": []}]
        else:
            op["security"] = []
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "claude-net hub API", "version": __version__,
                 "description": "Messaging, permissioned exec and files, container control and audit for AI agents."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["ok", "error", "code"],
                    "properties": {"ok": {"const": False}, "error": {"type": "string"}, "code": {"type": "string"}},
                }
            },
        },
    }
