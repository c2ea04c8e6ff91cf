"""Peek: the pending messages of a queue in the order consumers would get them, read without
consuming or changing anything (restmq/scripts/peek.lua)."""
from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer

from restmq.errors import InvalidArgument, RedisUnavailable
from restmq.names import check_name
from restmq.redis import keys, text

PEEK_STEP = 1000  # entries one peek script examines before the next step goes on


@dataclass(frozen=True)
class Pending:
    """A pending message as a peek shows it."""

    key: str
    value: str
    priority: int


@dataclass(frozen=True)
class Peeked:
    """A page of pending messages, and whether more follow it."""

    messages: list[Pending]
    more: bool


class PeekMixin:
    """Core's peek. Needs `redis`, `clock`, `scripts` and StepsMixin's `_run` and `_bounded`."""

    def peek(self, queue: str, limit: int, after: str | None = None,
             max_bytes: int = 1024 * 1024) -> defer.Deferred:
        """Fires with Peeked: up to `limit` pending messages after the key `after` (from the
        start without it), priority levels first, fewer when their values would pass
        `max_bytes` (at least one). Dead entries are skipped, never removed. Runs in steps of
        PEEK_STEP entries, all within the command timeout (else RedisUnavailable). Fails with
        InvalidArgument('after') when `after` is not pending."""
        check_name(queue)
        return defer.ensureDeferred(self._peek(queue, limit, after or "", max_bytes))

    async def _peek(self, queue: str, limit: int, cursor: str, max_bytes: int) -> Peeked:
        give_up = self.clock.seconds() + self.redis.timeout
        messages: list[Pending] = []
        size, first = 0, True
        while True:
            d = self._run("peek", keys.peek_keys(queue), cursor, limit - len(messages),
                          max_bytes - size, PEEK_STEP, len(messages))
            reply = text(await self._bounded(d, give_up))
            if reply[0] == "bad_after":
                if first:
                    raise InvalidArgument("after")
                # The entry a step stopped at was consumed before the next step: the page
                # ends here, and its last message is where the client goes on.
                return Peeked(messages, True)
            first = False
            state, cursor, found = reply[0], reply[1], reply[2:]
            for i in range(0, len(found), 3):
                key, value, priority = found[i:i + 3]
                messages.append(Pending(key, value, int(priority)))
                size += len(value.encode("utf-8"))
            if state != "budget":
                return Peeked(messages, state == "more")
            if self.clock.seconds() >= give_up:
                raise RedisUnavailable("peek: too many dead entries to skip in time")
