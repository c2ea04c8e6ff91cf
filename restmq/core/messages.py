"""The Core class and its message operations: add, the gets, delete, purge, the live
delivery's batch pop and put-back. Every method returns a Deferred, no HTTP in sight.

Key names follow the original RestMQ layout and are built by restmq.redis.keys, which also gives
each script its KEYS; multi-step operations are the Lua scripts in restmq/scripts, each one
atomic round trip.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from restmq.core.adds import AddsMixin, Item
from restmq.core.config import ConfigMixin
from restmq.core.leases import LeasesMixin
from restmq.core.peek import PeekMixin
from restmq.core.push import PushMixin
from restmq.core.policy import PolicyMixin
from restmq.core.schedule import ScheduleMixin
from restmq.core.stats import StatsMixin
from restmq.core.steps import DEAD_STEP, PURGE_STEP, StepsMixin
from restmq.errors import EmptyQueue, InvalidName, RedisUnavailable, RestMQError
from restmq.names import RegisteredName, check_name, is_safe_name, is_valid_name
from restmq.redis import keys, load_script, text

BATCH_COUNT = 10
BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Message:
    """A message as a consumer gets it; `count` is the read count of a soft get, `priority`
    its level where the operation reports it (the live pop, so that a put-back keeps it)."""

    key: str
    value: str
    count: int = 0
    priority: int = 0


class Core(AddsMixin, LeasesMixin, PushMixin, ConfigMixin, ScheduleMixin, PolicyMixin,
           StatsMixin, PeekMixin, StepsMixin):
    """The queue operations (docs/redis-layout.md#operations) on one Redis database: the
    message operations here, adds in restmq.core.adds, leases and dead letters in
    restmq.core.leases, the push claim in restmq.core.push, per-queue configuration and state
    in restmq.core.config, what is due
    (the tick) in restmq.core.schedule, the peek in restmq.core.peek, policy and status in
    restmq.core.policy, the queue list and stats in restmq.core.stats, the running of scripts
    in steps in restmq.core.steps.

    `redis` is a restmq.redis.RedisService (or anything with `execute`, `run_script`, `db`).
    Every method fails with RedisUnavailable or RedisFailure when Redis does, and with
    InvalidName for a name that is neither valid nor admitted (see `admit`).

    `on_due(seconds)` is called when an operation created a due time (a lease, a delayed
    message) that many seconds from now, so that the ticker (restmq.delivery.ticker) of this
    process meets it on time; it does nothing until the ticker sets it.
    """

    log = Logger()

    def __init__(self, redis: Any, consumed_ttl: int = 3600, clock: Any = None,
                 counters: bool = False):
        if clock is None:
            clock = getattr(redis, "reactor", None)
        if clock is None:
            from restmq.clock import reactor_clock
            clock = reactor_clock()
        self.redis = redis
        self.consumed_ttl = consumed_ttl
        self.clock = clock
        self.counters = counters  # --counters: the scripts keep <q>:counters
        self.scripts = {name: load_script(name, counters) for name in (
            "add", "hard_get", "soft_get", "take", "del", "purge", "pop_batch", "set", "stats",
            "retire_range", "requeue", "claim", "ack", "extend", "release", "redrive", "due",
            "tick", "config_set", "info", "peek", "push_claim", "push_pause")}
        self.on_due = _ignore
        # What this process believes (restmq.core.leases): queue -> its dead-letter queue, and
        # ('redrive', dead-letter queue) -> the origin its last redrive moved messages to.
        self._dead_letters: dict[Any, str] = {}
        self._scans: dict[str, str] = {}  # queue -> position of its clean-up scan (schedule)

    def count(self, queue: str, counter: str, n: int = 1) -> defer.Deferred:
        """Add `n` to a counter of `queue` from Python (a push dispatcher's outcome:
        `count(q, "push_" + outcome)`), on a server run with --counters; else does nothing.
        Fires with None; fails as `execute` does."""
        if not self.counters or n <= 0:
            return defer.succeed(None)
        return self.redis.execute("HINCRBY", keys.counters(queue), counter, n).addCallback(
            lambda _: None)

    def admit(self, name: str) -> defer.Deferred:
        """Fires with `name` when it is valid; when it breaks only the rule for new names, asks
        QUEUESET (one read, with the command deadline) and fires with a RegisteredName if the
        queue exists. Fails with InvalidName, or RedisUnavailable / RedisFailure."""
        if is_valid_name(name):
            return defer.succeed(name)
        if not is_safe_name(name):
            return defer.fail(InvalidName())

        def decide(member):
            if int(member) != 1:
                raise InvalidName()
            return RegisteredName(name)

        return self.redis.execute("SISMEMBER", keys.QUEUESET, name).addCallback(decide)

    def add(self, queue: str, value: str, ttl: int | None = None) -> defer.Deferred:
        """ADD of one message: fires with the new key `<q>:<n>`; live consumers are woken by
        the script. The queue's configuration applies (restmq.core.adds); without one this is
        exactly the original add. Fails with MessageTooLarge over a configured `max_message`."""
        check_name(queue)
        return self._add(queue, [Item(value, ttl)]).addCallback(_only_key)

    def add_once(self, queue: str, value: str, window: int = 1000) -> defer.Deferred:
        """ADD for a retry after an unknown outcome: when one of the `window` newest pending
        messages already holds `value` (the first try did run), fires with its key instead."""
        check_name(queue)
        return self._add(queue, [Item(value)], once=window).addCallback(_only_key)

    def hard_get(self, queue: str) -> defer.Deferred:
        """HARD_GET: fires with the oldest Message (retained for consumed_ttl); EmptyQueue."""
        check_name(queue)
        return self._stepped("hard_get", keys.consume_keys(queue), self.consumed_ttl,
                             DEAD_STEP).addCallback(_message)

    def soft_get(self, queue: str) -> defer.Deferred:
        """SOFT_GET: fires with the oldest Message and its read count, leaving it queued."""
        check_name(queue)
        return self._stepped("soft_get", keys.consume_keys(queue), DEAD_STEP).addCallback(_message)

    def take(self, queue: str) -> defer.Deferred:
        """TAKE: fires with the oldest Message, deleted from Redis; EmptyQueue."""
        check_name(queue)
        return self._stepped("take", keys.consume_keys(queue), DEAD_STEP).addCallback(_message)

    def delete(self, queue: str, key: str) -> defer.Deferred:
        """DEL: fires with True when the value key existed."""
        check_name(queue)
        return self._write("del", keys.delete_keys(queue, key)).addCallback(lambda n: int(n) >= 1)

    def purge(self, queue: str) -> defer.Deferred:
        """PURGE: fires with 1 if a pending list existed, else 0; live consumers are ended.
        The purge itself is one script; the values of a long list are retired after it in
        steps, waited for until a second before the command timeout, then left to finish on
        their own."""
        check_name(queue)
        return defer.ensureDeferred(self._purge(queue))

    async def _purge(self, queue: str) -> int:
        # The reply waits for retiring at most until a second before the timeout: the purge
        # itself is done by then, and its client must not see a timeout (503) for it.
        give_up = self.clock.seconds() + self.redis.timeout - 1.0
        reply = await self._write("purge", keys.purge_keys(queue), self.consumed_ttl,
                                  keys.channel(queue), self.redis.db, PURGE_STEP)
        if len(reply) == 3:
            retiring = defer.ensureDeferred(self._retire_range(queue, int(reply[1]),
                                                               int(reply[2])))
            try:
                await self._bounded(retiring, give_up)
            except RedisUnavailable:
                pass  # the purge is done; retiring goes on after the reply
        return int(reply[0])

    async def _retire_range(self, queue: str, first: int, last: int) -> None:
        """Retire <queue>:first..last in steps of PURGE_STEP; never fails, but logs the keys
        it could not retire (they stay in Redis without an expiry)."""
        for start in range(first, last + 1, PURGE_STEP):
            end = min(last, start + PURGE_STEP - 1)
            try:
                await self._write("retire_range", keys.retire_keys(queue), start, end,
                                  self.consumed_ttl)
            except RestMQError as e:
                self.log.warn("purge of {queue}: values {first} to {last} not retired ({error}); "
                              "they stay in Redis without expiry", queue=queue,
                              first=keys.value(queue, start), last=keys.value(queue, last),
                              error=e.detail or e.reason)
                return

    def pop_batch(self, queue: str) -> defer.Deferred:
        """POP_BATCH: fires with (policy name, [Message...]); empty when stopped or empty.
        Only the key-layout rule applies: delivery pops for queues a consumer was admitted to,
        and knows them again by their pub/sub channel, as plain text. Dead entries are removed
        in steps; messages popped by earlier steps are returned even when a later step fails
        (they are no longer in Redis's list). No client waits for this: a later step is waited
        for however late its reply (the pool's watchdog fails it if the connection dies), as
        what it popped is gone from Redis."""
        if not is_safe_name(queue):
            raise InvalidName()
        return defer.ensureDeferred(self._pop_batch(queue))

    async def _pop_batch(self, queue: str) -> tuple[str | None, list[Message]]:
        deadline = self.redis.deadline()
        policy, messages, size = None, [], 0
        while True:
            d = self._run("pop_batch", keys.pop_keys(queue), keys.channel(queue), self.redis.db,
                          BATCH_COUNT - len(messages), BATCH_BYTES - size, DEAD_STEP, deadline)
            try:
                reply = await d
            except RestMQError as e:
                if not messages:
                    raise
                self.log.info("pop of {queue} stopped early: {error}", queue=queue,
                              error=e.detail or e.reason)
                return policy, messages
            if not reply:
                return policy, messages
            reply = text(reply)
            policy, more, triples = reply[0], reply[1], reply[2:]
            for i in range(0, len(triples), 3):
                key, value, priority = triples[i:i + 3]
                messages.append(Message(key, value, priority=int(priority)))
                size += len(value.encode("utf-8"))
            if not more or len(messages) >= BATCH_COUNT or size >= BATCH_BYTES or \
                    self.redis.expired(deadline):
                return policy, messages

    def requeue(self, queue: str, messages: list[Message]) -> defer.Deferred:
        """Put popped messages (oldest first) back at the consuming end of their priority
        levels, so that they are taken next, in order; fires with how many. Without their
        former ttl. Like pop_batch, only the key-layout rule applies: the name is the one
        delivery popped for."""
        if not is_safe_name(queue):
            raise InvalidName()
        values = [part for m in messages for part in (m.value, m.priority)]
        return self.redis.run_script(
            self.scripts["requeue"], keys.requeue_keys(queue, [m.key for m in messages]),
            keys.channel(queue), self.redis.db, self._deadline(), *values).addCallback(int)

    def ping(self) -> defer.Deferred:
        """Fires when Redis answers; fails with RedisUnavailable otherwise."""
        return self.redis.execute("PING")

    @defer.inlineCallbacks
    def authkey(self, key: str):
        """Fires with the raw AUTHKEY record text, or None."""
        record = yield self.redis.execute("GET", keys.authkey(key))
        return text(record)


def _ignore(seconds: float) -> None:
    pass


def _only_key(added) -> str:
    return added.keys[0]


def _message(reply) -> Message:
    if not reply:
        raise EmptyQueue()
    reply = text(reply)
    count = int(reply[2]) if len(reply) > 2 else 0
    return Message(reply[0], reply[1], count)
