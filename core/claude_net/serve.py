"""``claude-net serve``: the Quart app under Hypercorn, with graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

log = logging.getLogger("claude_net.serve")


def serve(settings, *, host: str | None = None, port: int | None = None) -> int:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from .db import redact_url
    from .hub import Hub
    from .http import create_app

    logging.basicConfig(level=settings.core.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hub = Hub(settings)
    problems = settings.bind_sections(hub.config_sections(), strict=False)
    if problems:
        for p in problems:
            log.error("config: %s", p)
        return 2
    for failure in hub.pm.failures:
        log.error("plugin %s was not loaded: %s", failure.name, failure.error)
    app = create_app(hub=hub)
    config = Config()
    config.bind = [f"{host or settings.core.host}:{port or settings.core.port}"]
    config.accesslog = None
    config.graceful_timeout = 10
    config.keep_alive_timeout = 75
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
