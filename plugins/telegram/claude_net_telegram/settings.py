"""The ``[telegram]`` configuration section. Plain data: importing it costs nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from claude_net import help_field

#: event types echoed by default (denials of any other type are echoed too, see echo_denials)
DEFAULT_ECHO_TYPES = ["exec", "file_write", "container", "permit"]


@dataclass
class TelegramSettings:
    token: str = help_field("", "Bot token from @BotFather. Empty: the plugin stays idle. Never logged; "
                                "prefer the environment variable CLAUDE_NET_TELEGRAM__TOKEN.")
    chat_id: int = help_field(0, "The admin chat: commands are accepted only here and echoes go here "
                                 "(a group id is negative, e.g. -1001234567890).")
    admin_ids: list[int] = help_field([], "Numeric Telegram user ids allowed to command (usernames are never "
                                          "trusted). Empty: echo only, every command is refused.")
    admin_node: str = help_field("", "Node name commands act as (recorded as <name> via telegram). "
                                     "Empty: the first name in the top-level `admins`.")
    base_url: str = help_field("", "Bot API endpoint; the token is appended (or replaces {token}). Empty: "
                                   "https://api.telegram.org/bot. A self-hosted server: http://127.0.0.1:8081/bot")
    proxy: str = help_field("", "HTTP or SOCKS proxy for Bot API calls (empty: none).")
    mode: Literal["polling", "webhook"] = help_field("polling", "polling (long polling getUpdates, works behind "
                                                                "NAT) or webhook (Telegram calls the hub).")
    webhook_url: str = help_field("", "webhook mode: public HTTPS URL of this hub's /api/telegram/webhook.")
    webhook_secret: str = help_field("", "webhook mode: X-Telegram-Bot-Api-Secret-Token (1-256 of A-Z a-z 0-9 _ -). "
                                         "Empty: a random one per start (set it when several replicas serve).")
    poll_timeout: int = help_field(30, "Long-poll timeout of getUpdates in seconds.")
    request_timeout: float = help_field(15.0, "Timeout of every other Bot API call in seconds.")
    max_command_age: float = help_field(300.0, "Commands older than this many seconds (queued while the hub was "
                                               "down) are not run; 0 runs them whatever their age.")
    echo: bool = help_field(True, "Echo hub activity to the admin chat.")
    echo_types: list[str] = help_field(DEFAULT_ECHO_TYPES, "Event types echoed (exec, file_read, file_write, "
                                                           "container, permit, message, auth, ...).")
    echo_results: list[str] = help_field(["ok", "error", "denied"], "Results echoed for those types "
                                                                    "(pending is never echoed).")
    echo_denials: bool = help_field(True, "Also echo denials of every other type (file reads, bad tokens, "
                                          "refused Telegram commands).")
    echo_output_chars: int = help_field(300, "Characters of an exec's output shown in its echo.")
    echo_quiet_ok: bool = help_field(True, "Send echoes of successful actions without a notification sound.")
    outbox_size: int = help_field(500, "Echoes waiting to be sent; beyond this they are dropped and counted.")
    send_interval: float = help_field(0.0, "Least seconds between two messages to the chat (bursts are batched "
                                           "meanwhile). 0: 1 s for a private chat, 3 s for a group.")
    retry_initial: float = help_field(1.0, "First back-off after a failed send, in seconds (doubles each time).")
    retry_max: float = help_field(60.0, "Longest back-off between retries, in seconds.")
    shutdown_drain: float = help_field(2.0, "Seconds the hub waits at shutdown for queued echoes to go out.")
    approval_buttons: bool = help_field(True, "Post each approval request to the admin chat with Approve once / "
                                              "Approve for 1 h / Deny buttons, and edit it to the outcome.")
    job_echo: bool = help_field(True, "Echo each background job as one message edited as its output arrives, "
                                      "with a Cancel button.")
    edit_interval: float = help_field(3.0, "Least seconds between two edits of one message while a job runs "
                                           "(final states are shown at once, within the chat's pacing).")
    job_output_chars: int = help_field(800, "Characters of a running job's latest output shown in its message.")


#: X-Telegram-Bot-Api-Secret-Token: 1-256 characters, only A-Z, a-z, 0-9, _ and -
SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def idle_reason(settings: TelegramSettings) -> str | None:
    """Why the plugin cannot run with these settings (it then stays idle), or ``None``."""
    if not settings.token.strip():
        return "no bot token is configured ([telegram] token)"
    if not settings.chat_id:
        return "no admin chat is configured ([telegram] chat_id); the bot needs it for commands and echoes"
    if settings.mode == "webhook":
        if not settings.webhook_url.startswith(("https://", "http://")):
            return "webhook mode needs [telegram] webhook_url, the public https URL of /api/telegram/webhook"
        if settings.webhook_secret and not SECRET_RE.fullmatch(settings.webhook_secret):
            return "[telegram] webhook_secret must be 1-256 characters of A-Z, a-z, 0-9, '_' and '-'"
    for name in ("poll_timeout", "request_timeout", "outbox_size", "retry_initial", "retry_max", "edit_interval"):
        if getattr(settings, name) <= 0:
            return f"[telegram] {name} must be positive"
    return None


def admin_node(settings: TelegramSettings, admins: list[str]) -> str:
    """The node name Telegram commands act as: ``admin_node``, else the first core admin."""
    return settings.admin_node.strip() or (admins[0] if admins else "")
