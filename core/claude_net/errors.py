"""One error hierarchy for the whole hub.

Every error a plugin or the core raises on purpose is a :class:`HubError`. The HTTP layer maps
it, in one place (:mod:`claude_net.http`), to ``{"ok": false, "error": ..., "code": ...}`` with
:attr:`HubError.status`. Anything else that escapes a request is logged with its traceback and
answered with a generic 500 that never echoes internals.
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    """Base class. ``message`` is a human sentence; ``code`` a stable machine word."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        #: extra JSON fields merged into the error body (e.g. partial stdout of a timed-out exec)
        self.extra: dict[str, Any] = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error": self.message, "code": self.code}
        for key, value in self.extra.items():
            body.setdefault(key, value)
        return body


class BadRequest(HubError):
    status = 400
    code = "bad_request"


class NotSupported(BadRequest):
    """The target exists but cannot do this (e.g. snapshot on an SSH node)."""

    code = "not_supported"


class Unauthorized(HubError):
    status = 401
    code = "unauthorized"


class Forbidden(HubError):
    status = 403
    code = "forbidden"


class NotFound(HubError):
    status = 404
    code = "not_found"


class MethodNotAllowed(HubError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(HubError):
    """The client stopped sending its request body (``[limits] body_timeout``)."""

    status = 408
    code = "request_timeout"


class Conflict(HubError):
    status = 409
    code = "conflict"


class PayloadTooLarge(HubError):
    status = 413
    code = "too_large"


class RateLimited(HubError):
    status = 429
    code = "rate_limited"


class Unavailable(HubError):
    status = 503
    code = "unavailable"


class GatewayTimeout(HubError):
    status = 504
    code = "timeout"


class AuditError(Unavailable):
    """Raised by an audit subscriber (``on_event``) when it cannot record an event.

    The core treats it as fatal for the *pending* event of a guarded action: the action does not
    run and the caller gets a 503 (fail closed). Any other exception from an ``on_event``
    subscriber is logged and ignored.
    """

    code = "audit_unavailable"


class ApprovalPending(HubError):
    """The action waits for an admin's approval that has not come yet: HTTP 202.

    The body says so (``"pending": true``) and carries the approval (``id``, ``state``,
    ``expires_at``, ...); re-sending the same request with ``"approval": "<id>"`` waits again
    and runs it once it is approved.
    """

    status = 202
    code = "approval_pending"

    def __init__(self, message: str, *, approval: dict[str, Any], **extra: Any) -> None:
        super().__init__(message, pending=True, approval=approval, **extra)


class ConfigError(Exception):
    """Invalid configuration; the message names the file and the key."""


__all__ = [
    "ApprovalPending",
    "AuditError",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "GatewayTimeout",
    "HubError",
    "MethodNotAllowed",
    "NotFound",
    "NotSupported",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "Unauthorized",
    "Unavailable",
]
