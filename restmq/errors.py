"""Domain exceptions of the core and the request layer, each carrying its documented reason
(docs/http-api.md#errors).

Handlers turn them into HTTP replies in one place (restmq.http.base.BaseHandler); the core
never knows HTTP.
"""
from __future__ import annotations


class RestMQError(Exception):
    """Base class: `status` is the HTTP status, `reason` the text of `{"error": reason}`."""

    status = 500
    reason = "internal error"

    def __init__(self, reason: str | None = None):
        if reason is not None:
            self.reason = reason
        super().__init__(self.reason)

    headers: dict[str, str] = {}

    @classmethod
    def with_status(cls, status: int, reason: str, **headers: str) -> "RestMQError":
        """An error of any status, with extra reply headers (`Sec_WebSocket_Version="13"`)."""
        error = cls(reason)
        error.status = status
        error.headers = {name.replace("_", "-"): value for name, value in headers.items()}
        return error


class BadRequest(RestMQError):
    status = 400


class InvalidName(BadRequest):
    reason = "invalid queue name"


class MissingArgument(BadRequest):
    def __init__(self, name: str):
        super().__init__(f"missing argument: {name}")


class InvalidArgument(BadRequest):
    def __init__(self, name: str):
        super().__init__(f"invalid argument: {name}")
        self.name = name


class InvalidItem(InvalidArgument):
    """An argument of one item of an add: `field` of item `index` (from 0). Reads as
    `invalid argument: <field>`; a batch route names the item itself."""

    def __init__(self, field: str, index: int = 0):
        super().__init__(field)
        self.field, self.index = field, index


class EmptyQueue(RestMQError):
    status = 404
    reason = "empty queue"


class NotFound(RestMQError):
    status = 404
    reason = "not found"


class MethodNotAllowed(RestMQError):
    status = 405
    reason = "method not allowed"


class BodyTooLarge(RestMQError):
    status = 413
    reason = "request body too large"


class MessageTooLarge(RestMQError):
    """A value over the queue's configured `max_message` bytes; `index` is the item's (from 0)."""

    status = 413
    reason = "message too large"

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = index


class IdempotencyKeyReused(RestMQError):
    """An idempotency key already used by a different request on this queue."""

    status = 422
    reason = "idempotency key reused"


class Unauthorized(RestMQError):
    status = 401
    reason = "unauthorized"

    def __init__(self, challenge: bool = False):
        super().__init__()
        self.challenge = challenge


class RedisTrouble(RestMQError):
    """Redis could not do the work: always a 503; `detail` is for the log only."""

    status = 503

    def __init__(self, detail: str = ""):
        super().__init__()
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class RedisUnavailable(RedisTrouble):
    """No usable connection, a lost connection or a command not answered in time."""

    reason = "redis unavailable"


class RedisFailure(RedisTrouble):
    """Redis answered with an error reply."""

    reason = "redis error"
