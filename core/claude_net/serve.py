"""``claude-net serve``: the Quart app under Hypercorn, with graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

log = logging.getLogger("claude_net.serve")


#: bytes Hypercorn asks for per socket read (its default is 64 KiB); asyncio hands over at most
#: 256 KiB per socket read, and Hypercorn queues up to 10 reads per request (2.5 MiB at most)
READ_SIZE = 256 * 1024
#: allocations between two young-generation garbage collections (CPython's default is 700)
GC_YOUNG_THRESHOLD = 20_000


def _tune_hypercorn() -> None:
    """Let Hypercorn read up to 256 KiB per call instead of 64 KiB.

    A read returns what has arrived, so small requests are unaffected; a large upload
    (``PUT /api/file/raw``) goes through Hypercorn's, h11's and Quart's per-read machinery up to 4
    times less often, which is a good part of the hub's CPU per upload (see bench/README.md).
    Memory stays bounded: asyncio pauses the socket when its buffer is full, and Hypercorn queues
    at most 10 reads per request.
    """
    import hypercorn.asyncio.tcp_server as tcp_server

    if getattr(tcp_server, "MAX_RECV", 0) < READ_SIZE:
        tcp_server.MAX_RECV = READ_SIZE


def _tune_gc(app) -> None:
    """Once the hub has started: freeze the startup heap and collect the young generation less often.

    Every plugin's libraries (pylxd, asyncssh, telegram, mcp, pydantic...) leave some 150,000
    objects that live as long as the process. CPython's collector walked all of them on every
    full collection: a pause of about 100 ms every few seconds under load. ``gc.freeze()`` moves
    them out of its sight. With 50 requests in flight, a young collection every 700 allocations
    re-examined the same few thousand live request objects each time; every 20,000 it costs a
    fraction of that, and garbage cycles still go within milliseconds.
    """
    import gc

    @app.before_serving
    async def settle_heap() -> None:  # registered after the hub's own startup, so it runs after it
        gc.collect()
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _configure_logging(settings, fmt: str) -> None:
    """Log lines to stderr in which no logged value (a path, a command, a header an agent sent)
    can start a line of its own or drive the terminal: see :class:`claude_net.text.EscapingFormatter`."""
    from .text import escape_log_output

    logging.basicConfig(level=settings.core.log_level.upper(), format=fmt)
    escape_log_output()


def worker_app():
    """App factory for ``--workers N``: each Hypercorn worker process builds its own hub."""
    from .config import load_settings
    from .http import create_app

    settings = load_settings()
    _configure_logging(settings, "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    _tune_hypercorn()
    app = create_app(settings)
    _tune_gc(app)
    return app


def serve(settings, *, host: str | None = None, port: int | None = None, workers: int = 1) -> int:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from .db import redact_url
    from .hub import Hub
    from .http import create_app
    from .plugins import config_problems

    _configure_logging(settings, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    hub = Hub(settings)
    problems = config_problems(settings, hub.pm, hub.config_sections())
    if problems:
        for p in problems:
            log.error("config: %s", p)
        return 2
    for failure in hub.pm.failures:
        log.error("plugin %s was not loaded: %s", failure.name, failure.error)
    config = Config()
    config.bind = [f"{host or settings.core.host}:{port or settings.core.port}"]
    config.accesslog = None
    # through the root logger's escaping handler, not a plain handler of Hypercorn's own
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 10
    config.keep_alive_timeout = 75
    if workers > 1:
        if hub.db.is_sqlite:
            log.error("--workers %d needs PostgreSQL: SQLite serves one hub process (set database_url; "
                      "see docs/operations.md)", workers)
            return 2
        import os

        from hypercorn.run import run

        # Workers are fresh processes (spawn): they read the same configuration from the environment.
        if settings.path is not None:
            os.environ["CLAUDE_NET_CONFIG"] = str(settings.path)
        os.environ["CLAUDE_NET_DATABASE_URL"] = settings.core.database_url
        config.workers = workers
        config.application_path = "claude_net.serve:worker_app()"
        log.info("claude-net serving on http://%s with %d workers on %s", config.bind[0], workers,
                 redact_url(settings.core.database_url))
        return run(config)
    app = create_app(hub=hub)
    _tune_hypercorn()
    _tune_gc(app)
    log.info("claude-net serving on http://%s with %s", config.bind[0], redact_url(settings.core.database_url))

    # Database calls hop to a worker thread (aiosqlite) and back. Under load the event loop
    # thread rarely sleeps, so a woken worker waits for CPython's GIL switch interval (5 ms by
    # default) before it may run: that wait, not SQLite, would dominate each request.
    sys.setswitchinterval(0.0005)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        def begin_stop() -> None:
            hub.stopping.set()  # long-polls and streams end now instead of at Hypercorn's grace timeout
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, begin_stop)
        await hypercorn_serve(app, config, shutdown_trigger=stop.wait)

    asyncio.run(main())
    return 0
