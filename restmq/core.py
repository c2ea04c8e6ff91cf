"""Queue operations over Redis: every method returns a Deferred, no HTTP in sight.

Key names follow the original RestMQ layout (PROTOCOL.md §8.1); multi-step operations are the Lua
scripts in restmq/scripts, each one atomic round trip.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from restmq.errors import BadRequest, EmptyQueue, InvalidName, RedisUnavailable, RestMQError
from restmq.lua import load_script
from restmq.redis import DEADLINE, text

POLICY_BROADCAST = "1"
POLICY_ROUNDROBIN = "2"
POLICY_NAMES = {"broadcast": POLICY_BROADCAST, "roundrobin": POLICY_ROUNDROBIN}
BATCH_COUNT = 10
BATCH_BYTES = 1024 * 1024
# Long work is cut into steps, each a short script, so that Redis serves every other client
# between them (one script of a million entries holds all of Redis for seconds). Each is about
# a millisecond of Redis time.
DEAD_STEP = 1000  # dead entries one pop or peek removes before it answers MORE
PURGE_STEP = 1000  # pending entries one purge script retires itself; more: retire_range steps
STATS_PAGE = 1000  # QUEUESET members one stats script reads (SSCAN COUNT)
JOBS_MAX_KEYS = 100_000  # the jobs page counts at most about this many keys...
JOBS_SCAN_SECONDS = 1.0  # ...and scans for at most this long; then it says "at least N"
MORE = "MORE"  # a script's reply when it stopped after its share of work

_RESERVED_NAMES = ("QUEUESET", "AUTHKEY")
_RESERVED_PREFIXES = ("AUTHKEY:", "queuestat:")
_RESERVED_SUFFIXES = (":queue", ":UUID", ":queuepolicy", ":PUBSUB", ":lock", ":refcount")
# Whitespace (str.isspace) and control characters (category Cc: U+0000-001F, U+007F-009F);
# tests/test_unit.py checks the equivalence over every code point.
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def is_safe_name(name: str) -> bool:
    """Harmless to the key layout: non-empty, encodable as UTF-8, and not reserved (a reserved
    name would read or write keys RestMQ keeps for something else)."""
    if not isinstance(name, str) or not name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    if name in _RESERVED_NAMES or name.startswith(_RESERVED_PREFIXES):
        return False
    return not name.endswith(_RESERVED_SUFFIXES)


def is_valid_name(name: str) -> bool:
    """The rule for new names: safe, 1-256 UTF-8 bytes, no whitespace or control character."""
    return (is_safe_name(name) and len(name.encode("utf-8")) <= 256
            and not _FORBIDDEN.search(name))


class RegisteredName(str):
    """A safe name that breaks the rule for new names but was found in QUEUESET (the
    original RestMQ accepted `my queue`): only Core.admit makes one, and only such a name
    gets past check_name, so no caller can create a new one by forgetting the lookup."""

    __slots__ = ()


def check_name(name: str) -> str:
    """The name, if valid or admitted as registered; InvalidName otherwise."""
    if is_valid_name(name) or (isinstance(name, RegisteredName) and is_safe_name(name)):
        return name
    raise InvalidName()


def policy_name(stored: Any) -> str:
    return "roundrobin" if stored == POLICY_ROUNDROBIN else "broadcast"


def status_flag(stored: Any) -> int | None:
    """The status as the control route shows it: 1, 0, or None when never set."""
    if stored is None:
        return None
    return 1 if stored == "1" else 0


def scan_pattern(name: str) -> str:
    """A SCAN MATCH pattern for every key starting with `name` (glob characters escaped)."""
    escaped = "".join("\\" + c if c in "\\*?[]" else c for c in name)
    return escaped + "*"


@dataclass(frozen=True)
class Message:
    key: str
    value: str
    count: int = 0


@dataclass(frozen=True)
class QueueStats:
    name: str
    length: int
    status: str  # the raw stored value, '' when absent
    policy: str  # the raw stored value, '' when absent


class Core:
    """The queue operations of PROTOCOL.md §8 on one Redis database.

    `redis` is a restmq.redis.RedisService (or anything with `execute`, `run_script`, `db`).
    Every method fails with RedisUnavailable or RedisFailure when Redis does, and with
    InvalidName for a name that is neither valid nor admitted (see `admit`).
    """

    log = Logger()

    def __init__(self, redis: Any, consumed_ttl: int = 3600, clock: Any = None):
        if clock is None:
            clock = getattr(redis, "reactor", None)
        if clock is None:
            from twisted.internet import reactor as clock
        self.redis = redis
        self.consumed_ttl = consumed_ttl
        self.clock = clock
        self.scripts = {name: load_script(name) for name in (
            "add", "add_once", "hard_get", "soft_get", "take", "del", "purge", "pop_batch",
            "set", "stats", "retire_range", "requeue")}

    def _run(self, name: str, *args: Any) -> defer.Deferred:
        return self.redis.run_script(self.scripts[name], *args)

    def _stepped(self, name: str, *args: Any) -> defer.Deferred:
        """Run a writing script until it answers something other than MORE. Every step
        carries the first one's deadline, so the whole operation is refused by Redis past it,
        and none is waited for beyond the command timeout: a 503 then means that no step
        after the last answered one was applied (and those only skipped dead entries)."""
        deadline = self.redis.deadline()
        give_up = self.clock.seconds() + self.redis.timeout

        def again(reply):  # the usual single step costs no coroutine
            if reply != MORE:
                return reply
            return defer.ensureDeferred(self._more_steps(name, args, deadline, give_up))

        return self._run(name, *args, deadline).addCallback(again)

    async def _more_steps(self, name: str, args: tuple, deadline: Any, give_up: float) -> Any:
        reply = MORE
        while reply == MORE:
            if self.redis.expired(deadline):
                raise RedisUnavailable(f"{name}: too many dead entries to skip in time")
            reply = await self._bounded(self._run(name, *args, deadline), give_up)
        return reply

    def _bounded(self, d: defer.Deferred, give_up: float) -> defer.Deferred:
        """d's outcome, or RedisUnavailable at `give_up` (clock time) if it has none by then.
        d itself is never cancelled: its reply must still be read off its connection."""
        out = defer.Deferred()

        def late():
            out.errback(RedisUnavailable("no answer within the command timeout"))

        timer = self.clock.callLater(max(0.0, give_up - self.clock.seconds()), late)

        def settled(result):
            if timer.active():
                timer.cancel()
                out.callback(result)  # a Failure goes down out's errback chain
            return None  # a late outcome is dropped here

        d.addBoth(settled)
        return out

    def _write(self, name: str, *args: Any) -> defer.Deferred:
        """Run a script that writes, with its deadline as the last argument."""
        return self.redis.run_script(self.scripts[name], *args, self._deadline())

    def _deadline(self) -> Any:
        """Where a script takes its deadline: the Redis service puts there, as it sends the
        command, Redis's time (not ours) a second before we may give up waiting for the
        reply, so a write Redis only gets to after our 503 or retry (a paused Redis) is
        never applied, whatever the offset between the two clocks."""
        return DEADLINE

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

        return self.redis.execute("SISMEMBER", "QUEUESET", name).addCallback(decide)

    def add(self, queue: str, value: str, ttl: int | None = None) -> defer.Deferred:
        """ADD: fires with the new key `<q>:<n>`; live consumers are woken by the script."""
        check_name(queue)
        return self._write("add", queue, value, "" if ttl is None else ttl, self.redis.db)

    def add_once(self, queue: str, value: str, window: int = 1000) -> defer.Deferred:
        """ADD for a retry after an unknown outcome: when one of the `window` newest pending
        messages already holds `value` (the first try did run), fires with its key instead."""
        check_name(queue)
        return self._write("add_once", queue, value, self.redis.db, window)

    def hard_get(self, queue: str) -> defer.Deferred:
        """HARD_GET: fires with the oldest Message (retained for consumed_ttl); EmptyQueue."""
        check_name(queue)
        return self._stepped("hard_get", queue, self.consumed_ttl, DEAD_STEP).addCallback(_message)

    def soft_get(self, queue: str) -> defer.Deferred:
        """SOFT_GET: fires with the oldest Message and its read count, leaving it queued."""
        check_name(queue)
        return self._stepped("soft_get", queue, DEAD_STEP).addCallback(_message)

    def take(self, queue: str) -> defer.Deferred:
        """TAKE: fires with the oldest Message, deleted from Redis; EmptyQueue."""
        check_name(queue)
        return self._stepped("take", queue, DEAD_STEP).addCallback(_message)

    def delete(self, queue: str, key: str) -> defer.Deferred:
        """DEL: fires with True when the value key existed."""
        check_name(queue)
        return self._write("del", queue, key).addCallback(lambda n: int(n) >= 1)

    def purge(self, queue: str) -> defer.Deferred:
        """PURGE: fires with 1 if a pending list existed, else 0; live consumers are ended.
        The purge itself is one script; the values of a long list are retired after it in
        steps, waited for until a second before the command timeout, then left to finish on
        their own."""
        check_name(queue)
        return defer.ensureDeferred(self._purge(queue))

    async def _purge(self, queue: str) -> int:
        # The reply waits for retiring at most until a second before the timeout: the purge
        # itself is done by then, and a client waiting 5 s must not see a timeout for it.
        give_up = self.clock.seconds() + self.redis.timeout - 1.0
        reply = await self._write("purge", queue, self.consumed_ttl, self.redis.db, PURGE_STEP)
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
                await self._write("retire_range", queue, start, end, self.consumed_ttl)
            except RestMQError as e:
                self.log.warn("purge of {queue}: values {queue}:{start} to {queue}:{last} not "
                              "retired ({error}); they stay in Redis without expiry",
                              queue=queue, start=start, last=last, error=e.detail or e.reason)
                return

    def pop_batch(self, queue: str) -> defer.Deferred:
        """POP_BATCH: fires with (policy name, [Message...]); empty when stopped or empty.
        Only the key-layout rule applies: delivery pops for queues a consumer was admitted to,
        and knows them again by their pub/sub channel, as plain text. Dead entries are removed
        in steps; messages popped by earlier steps are returned even when a later step fails
        (they are no longer in Redis's list)."""
        if not is_safe_name(queue):
            raise InvalidName()
        return defer.ensureDeferred(self._pop_batch(queue))

    async def _pop_batch(self, queue: str) -> tuple[str | None, list[Message]]:
        deadline = self.redis.deadline()
        give_up = self.clock.seconds() + self.redis.timeout
        policy, messages, size = None, [], 0
        while True:
            d = self._run("pop_batch", queue, self.redis.db, BATCH_COUNT - len(messages),
                          BATCH_BYTES - size, DEAD_STEP, deadline)
            if not messages:
                reply = await d
            else:
                try:
                    reply = await self._bounded(d, give_up)
                except RestMQError as e:
                    self.log.info("pop of {queue} stopped early: {error}", queue=queue,
                                  error=e.detail or e.reason)
                    return policy, messages
            if not reply:
                return policy, messages
            reply = text(reply)
            policy, more, pairs = reply[0], reply[1], reply[2:]
            for i in range(0, len(pairs), 2):
                messages.append(Message(pairs[i], pairs[i + 1]))
                size += len(pairs[i + 1].encode("utf-8"))
            if not more or len(messages) >= BATCH_COUNT or size >= BATCH_BYTES or \
                    self.redis.expired(deadline):
                return policy, messages

    def requeue(self, queue: str, messages: list[Message]) -> defer.Deferred:
        """Put popped messages (oldest first) back at the tail of the pending list, so that
        they are taken next, in order; fires with how many. Without their former ttl."""
        check_name(queue)
        pairs = [part for m in messages for part in (m.key, m.value)]
        return self.redis.run_script(self.scripts["requeue"], queue, self.redis.db,
                                     self._deadline(), *pairs).addCallback(int)

    def ping(self) -> defer.Deferred:
        """Fires when Redis answers; fails with RedisUnavailable otherwise."""
        return self.redis.execute("PING")

    def length(self, queue: str) -> defer.Deferred:
        """Fires with the pending count (0 for an unknown queue)."""
        check_name(queue)
        return self.redis.execute("LLEN", f"{queue}:queue").addCallback(int)

    def queues(self) -> defer.Deferred:
        """Fires with the sorted list of QUEUESET members."""
        return self.redis.execute("SMEMBERS", "QUEUESET").addCallback(
            lambda names: sorted(text(list(names or []))))

    def get_policy(self, queue: str) -> defer.Deferred:
        """Fires with 'broadcast' or 'roundrobin'."""
        check_name(queue)
        return self.redis.execute("GET", f"{queue}:queuepolicy").addCallback(policy_name)

    def set_policy(self, queue: str, name: str) -> defer.Deferred:
        """Stores the policy; fails with BadRequest('invalid policy') for an unknown name."""
        check_name(queue)
        if name not in POLICY_NAMES:
            return defer.fail(BadRequest("invalid policy"))
        return self._set(f"{queue}:queuepolicy", POLICY_NAMES[name])

    def get_status(self, queue: str) -> defer.Deferred:
        """Fires with the raw stored status ('1', '0', other text) or None when absent."""
        check_name(queue)
        return self.redis.execute("GET", f"queuestat::{queue}").addCallback(text)

    def set_status(self, queue: str, started: bool) -> defer.Deferred:
        """Stores 1 or 0; starting also publishes `wake` so the backlog drains at once."""
        check_name(queue)
        if not started:
            return self._set(f"queuestat::{queue}", "0")
        return self._set(f"queuestat::{queue}", "1", f"{queue}:PUBSUB",
                         json.dumps({"type": "wake", "db": self.redis.db}))

    def _set(self, key: str, value: str, *publish: str) -> defer.Deferred:
        """SET (and optionally PUBLISH) in one script with a deadline, like every write."""
        d = self.redis.run_script(self.scripts["set"], key, value, self._deadline(), *publish)
        return d

    def stats(self) -> defer.Deferred:
        """Fires with a list of QueueStats for every QUEUESET member, sorted by name. Read a
        page of STATS_PAGE queues per script (not atomic, as the spec's pipelined reads are
        not); RedisUnavailable when all pages are not read within the command timeout."""
        return defer.ensureDeferred(self._stats())

    async def _stats(self) -> list[QueueStats]:
        give_up = self.clock.seconds() + self.redis.timeout
        rows: dict[str, QueueStats] = {}
        cursor = "0"
        while True:
            d = self._run("stats", cursor, STATS_PAGE)
            reply = text(await (d if cursor == "0" else self._bounded(d, give_up)))
            cursor = str(reply[0])
            for i in range(1, len(reply), 4):
                rows[reply[i]] = QueueStats(reply[i], int(reply[i + 1]), reply[i + 2],
                                            reply[i + 3])
            if cursor == "0":
                return sorted(rows.values(), key=lambda row: row.name)

    @defer.inlineCallbacks
    def jobs(self, queue: str):
        """Fires with (objects, length, newest keys, complete): the distinct keys matching
        `<q>*` (SCAN), the pending count and up to 10 pending keys, newest first. The scan
        stops after about JOBS_MAX_KEYS keys or JOBS_SCAN_SECONDS: then `complete` is False
        and `objects` a lower bound."""
        check_name(queue)
        length = yield self.redis.execute("LLEN", f"{queue}:queue")
        latest = yield self.redis.execute("LRANGE", f"{queue}:queue", 0, 9)
        seen: set[str] = set()
        cursor = "0"
        pattern = scan_pattern(queue)
        stop = self.clock.seconds() + JOBS_SCAN_SECONDS
        while True:
            cursor, keys = yield self.redis.execute("SCAN", cursor, "MATCH", pattern,
                                                    "COUNT", 1000)
            seen.update(text(list(keys)))
            if str(cursor) == "0":
                return len(seen), int(length), text(list(latest or [])), True
            if len(seen) >= JOBS_MAX_KEYS or self.clock.seconds() >= stop:
                return len(seen), int(length), text(list(latest or [])), False

    @defer.inlineCallbacks
    def authkey(self, key: str):
        """Fires with the raw AUTHKEY record text, or None."""
        record = yield self.redis.execute("GET", f"AUTHKEY:{key}")
        return text(record)


def _message(reply) -> Message:
    if not reply:
        raise EmptyQueue()
    reply = text(reply)
    count = int(reply[2]) if len(reply) > 2 else 0
    return Message(reply[0], reply[1], count)
