"""Keep the bot token (and the webhook secret) out of every log line.

The token is part of every Bot API URL (``.../bot<token>/getUpdates``). httpx logs each request
URL at INFO, python-telegram-bot logs its base URL at DEBUG and puts the token in the message of
``InvalidToken``. :class:`Redactor` is a :class:`logging.Filter` attached to those loggers (and
ours): it replaces the secrets in the message, its arguments and the formatted traceback, and
drops httpx's routine INFO lines about Bot API requests altogether (one per long poll is noise).
"""

from __future__ import annotations

import logging
import re

#: what a Bot API token looks like: "<bot id>:<35 characters>"
TOKEN_SHAPE = re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}")
MASK = "<telegram-token>"
SECRET_MASK = "<webhook-secret>"

#: loggers that can see a Bot API URL, parameters or a token-bearing exception
LOGGERS = ("httpx", "httpcore", "telegram", "telegram.Bot", "telegram.ext", "telegram.request",
           "telegram.request.BaseRequest", "telegram.request.HTTPXRequest", "claude_net.telegram",
           # a background task's crash and unretrieved task exceptions are logged here
           "claude_net.hub", "asyncio")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every known secret and anything shaped like a bot token masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK if ":" in secret else SECRET_MASK)
    return TOKEN_SHAPE.sub(MASK, text)


class Redactor(logging.Filter):
    def __init__(self, *secrets: str) -> None:
        super().__init__("claude_net.telegram.redact")
        self.secrets = tuple(s for s in secrets if s)

    def _has_secret(self, text: str) -> bool:
        return any(s in text for s in self.secrets) or bool(TOKEN_SHAPE.search(text))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error path
            return True
        if self._has_secret(message):
            if record.name.startswith(("httpx", "httpcore")) and record.levelno < logging.WARNING:
                return False  # "HTTP Request: POST https://api.telegram.org/bot<token>/getUpdates ..."
            record.msg, record.args = redact(message, self.secrets), None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if self._has_secret(text):
                record.exc_text = redact(text, self.secrets)
        elif record.exc_text and self._has_secret(record.exc_text):
            record.exc_text = redact(record.exc_text, self.secrets)
        return True

    def install(self) -> None:
        for name in LOGGERS:
            logging.getLogger(name).addFilter(self)

    def uninstall(self) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeFilter(self)
