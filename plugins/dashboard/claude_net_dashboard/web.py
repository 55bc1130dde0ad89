"""The dashboard's web app, mounted at ``/ui``: sign-in, sign-out and the pages.

Pages are Jinja templates rendered here; their data comes from the hub's own HTTP API, fetched by
``static/dashboard.js`` with the session cookie and the CSRF token, so every read and every change
meets the same authentication, validation, policy and audit as any other client (``via:
dashboard``). Nothing here reads or changes the fleet by itself.
"""

from __future__ import annotations

from pathlib import Path

from quart import Quart, Response, redirect, render_template, request

from claude_net import Event

from . import sessions

HERE = Path(__file__).parent
PREFIX = "/ui"
PAGES = {
    "machines": "Machines",
    "activity": "Activity",
    "permissions": "Permissions",
    "approvals": "Approvals",
    "containers": "Containers",
}
#: no inline script or style, nothing from another origin, no framing; fetch/EventSource to this hub only
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # (no-referrer makes Chromium send "Origin: null" on forms)
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _secure(hub) -> bool:
    mode = sessions.settings_of(hub).secure_cookie
    return mode == "always" or (mode == "auto" and request.scheme in ("https", "wss"))


def _address() -> str:
    return (request.remote_addr or "unknown")[:64]


def create_web_app(hub) -> Quart:
    app = Quart(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"),
                static_url_path=f"{PREFIX}/static")
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024  # a sign-in form, nothing more
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = 3600
    app.config["RESPONSE_TIMEOUT"] = 30

    @app.after_request
    async def headers(response: Response) -> Response:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if response.mimetype == "text/html":
            response.headers["Cache-Control"] = "no-store"
        return response

    async def signin_page(error: str | None = None, status: int = 200) -> Response:
        html = await render_template("signin.html", error=error, page="signin", pages=PAGES, prefix=PREFIX)
        return Response(html, status=status, content_type="text/html; charset=utf-8")

    @app.get(PREFIX)
    @app.get(f"{PREFIX}/")
    async def index():
        session = await sessions.find_session(hub, request.cookies.get(sessions.COOKIE))
        return redirect(f"{PREFIX}/machines" if session else f"{PREFIX}/signin", 303)

    @app.get(f"{PREFIX}/signin")
    async def signin_form():
        return await signin_page()

    @app.post(f"{PREFIX}/signin")
    async def signin():
        address = _address()
        if not sessions.same_origin(request):
            await hub.emit(Event("auth", None, None, f"dashboard sign-in from {address} refused: posted from "
                                 "another origin", "denied", via="dashboard"))
            return await signin_page("Sign-in refused: the form was sent from another site.", 403)
        throttle = sessions.throttle_of(hub)
        wait = throttle.retry_after(address)
        if wait:
            refused = hub.auth_refusals.should_record(f"dashboard sign-in {address}")
            if refused:
                await hub.emit(Event("auth", None, None, f"dashboard sign-in from {address} refused: too many "
                                     f"failed sign-ins ({refused} refused)", "denied", via="dashboard",
                                     data={"refused": refused}))
            response = await signin_page(f"Too many failed sign-ins from this address; try again in "
                                         f"{int(wait) + 1} s.", 429)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        form = await request.form
        token = (form.get("token") or "").strip()
        actor = await hub.authenticate(token, via="dashboard") if token and len(token) < 200 else None
        if actor is None or not actor.admin:
            throttle.failed(address)
            if actor is None:
                reason, message, status = "invalid or revoked token", "That token is not valid.", 401
            else:
                reason = f"{actor.name} is not an admin"
                message, status = "That token belongs to an agent; only admins may use the dashboard.", 403
            await hub.emit(Event("auth", actor.name if actor else None, None,
                                 f"dashboard sign-in from {address} refused: {reason}", "denied", via="dashboard"))
            return await signin_page(message, status)
        session_id, session = await sessions.open_session(hub, actor, token, address)
        await hub.emit(Event("auth", actor.name, None, f"dashboard sign-in from {address}", "ok", via="dashboard",
                             data={"expires_at": session.expires_at}))
        response = redirect(f"{PREFIX}/machines", 303)
        response.set_cookie(sessions.COOKIE, session_id, max_age=int(sessions.settings_of(hub).session_hours * 3600),
                            path="/", secure=_secure(hub), httponly=True, samesite="Strict")
        return response

    @app.post(f"{PREFIX}/signout")
    async def signout():
        session = await sessions.find_session(hub, request.cookies.get(sessions.COOKIE))
        response = redirect(f"{PREFIX}/signin", 303)
        response.delete_cookie(sessions.COOKIE, path="/", secure=_secure(hub), httponly=True, samesite="Strict")
        if session is None:
            return response
        form = await request.form
        if not (sessions.csrf_ok(session, form.get("csrf")) and sessions.same_origin(request)):
            await hub.emit(Event("auth", session.name, None, "dashboard sign-out without its CSRF token refused",
                                 "denied", via="dashboard"))
            return Response("sign-out needs the page's CSRF token", status=403, content_type="text/plain")
        await sessions.end_session(hub, session)
        await hub.emit(Event("auth", session.name, None, "dashboard sign-out", "ok", via="dashboard"))
        return response

    @app.get(f"{PREFIX}/<page>")
    async def page(page: str):
        if page not in PAGES:
            return Response("no such page", status=404, content_type="text/plain")
        session = await sessions.find_session(hub, request.cookies.get(sessions.COOKIE))
        if session is None:
            return redirect(f"{PREFIX}/signin", 303)
        html = await render_template(f"{page}.html", page=page, pages=PAGES, prefix=PREFIX, name=session.name,
                                     csrf=session.csrf, expires_at=session.expires_at)
        return Response(html, content_type="text/html; charset=utf-8")

    return app
