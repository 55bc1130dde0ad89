"""claude-net-telegram: watch and steer the hub from a Telegram admin chat.

Commands in the original spec's words (``@chasclaude permit managerclaude all``, ``status``,
``snapshot seanclaude``, ...) are accepted only from configured numeric user ids in the admin
chat, and run through the same authorize/event path as the HTTP API. Execs, denials, file
writes and container ops are echoed to the chat from a bounded outbox, off the request path.
See docs/telegram.md.

Hook implementations only, and cheap to import: python-telegram-bot is imported by
:mod:`.runtime`, which is loaded at startup and only when a token is configured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from claude_net import NotFound, Route, hookimpl

from .settings import TelegramSettings, idle_reason

__all__ = ["TelegramSettings", "start"]

log = logging.getLogger("claude_net.telegram")

STATE_KEY = "telegram"
WEBHOOK_PATH = "/api/telegram/webhook"


@dataclass
class Idle:
    """``hub.plugin_state["telegram"]`` when the plugin has nothing to do (no token, ...)."""

    reason: str
    active: bool = False

    def status(self) -> dict:
        return {"active": False, "idle": self.reason}


def start(hub):
    """Create the runtime and start the bot's background work; an awaitable, or None when idle."""
    settings = hub.settings.section("telegram")
    reason = idle_reason(settings)
    if reason is not None:
        if settings.token.strip():
            log.error("telegram: the plugin stays idle: %s", reason)
        else:
            log.info("telegram: the plugin stays idle: %s", reason)
        hub.plugin_state[STATE_KEY] = Idle(reason)
        return None
    from .runtime import TelegramRuntime  # python-telegram-bot is imported here, not before

    runtime = TelegramRuntime(hub, settings)
    hub.plugin_state[STATE_KEY] = runtime
    return runtime.start_workers()


@hookimpl
def config_sections():
    return {"telegram": TelegramSettings}


@hookimpl
def startup(hub):
    return start(hub)


@hookimpl
def shutdown(hub):
    runtime = hub.plugin_state.pop(STATE_KEY, None)
    return runtime.stop() if getattr(runtime, "active", False) else None


@hookimpl
def on_event(hub, event):
    runtime = hub.plugin_state.get(STATE_KEY)
    if runtime is not None and runtime.active:
        runtime.on_event(event)


async def _status(ctx):
    runtime = ctx.hub.plugin_state.get(STATE_KEY)
    return {"telegram": runtime.status() if runtime is not None else {"active": False, "idle": "not started"}}


async def _webhook(ctx):
    runtime = ctx.hub.plugin_state.get(STATE_KEY)
    if runtime is None or not runtime.active:
        raise NotFound("the Telegram webhook is not active on this hub", code="telegram_idle")
    return await runtime.webhook(ctx)


@hookimpl
def register_routes(hub):
    routes = [
        Route("GET", "/api/telegram/status", _status, admin=True, tags=["telegram"],
              summary="The Telegram bot's state: connection, mode, outbox (admin only)",
              description="Never shows the token or the webhook secret."),
    ]
    settings = hub.settings.section("telegram")
    if settings.mode == "webhook" and settings.token.strip():
        routes.append(Route(
            "POST", WEBHOOK_PATH, _webhook, auth=False, tags=["telegram"],
            summary="Telegram's webhook (webhook mode only)",
            description="Called by Telegram with each update. Authenticated by the "
                        "X-Telegram-Bot-Api-Secret-Token header (401 missing, 403 wrong), not by a bearer token.",
        ))
    return routes
