"""The exceptions of the client library: every error reply of the server becomes a
RestMQError carrying the HTTP status and the server's reason (the `error` field of its JSON)."""
from __future__ import annotations


class RestMQError(Exception):
    """The server refused a request (`status` is its HTTP status, `reason` its words), or the
    request could not be made at all (`status` None)."""

    def __init__(self, status: int | None, reason: str):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}" if self.status is not None else self.reason


class Unavailable(RestMQError):
    """503: the server cannot reach Redis; also raised, with status None, when the server
    cannot be reached or does not answer in time."""


class OutcomeUnknown(Unavailable):
    """The request was sent and no reply came back, on its last attempt: it may or may not
    have taken effect. `idempotency_key` is the key an add carried (None without one): an add
    sent again with it, within the queue's dedup_window, is stored at most once."""

    def __init__(self, status: int | None, reason: str, idempotency_key: str | None = None):
        super().__init__(status, reason)
        self.idempotency_key = idempotency_key


class Unauthorized(RestMQError):
    """401: the ACL file or the auth key does not allow this request."""


class TooLarge(RestMQError):
    """413: the body, or a value over the queue's `max_message`."""


class IdempotencyConflict(RestMQError):
    """422: the idempotency key was used before for a different request."""


class ProtocolMismatch(RestMQError):
    """The server speaks protocol 1 only (its `/health` answers 404), and this call, or one
    of its arguments, needs protocol 2."""


BY_STATUS = {503: Unavailable, 401: Unauthorized, 413: TooLarge, 422: IdempotencyConflict}


def error_for(status: int, reason: str) -> RestMQError:
    return BY_STATUS.get(status, RestMQError)(status, reason)
