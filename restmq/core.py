"""Queue operations over Redis: every method returns a Deferred, no HTTP in sight.

Key names follow the original RestMQ layout (PROTOCOL.md §8.1); multi-step operations are the Lua
scripts in restmq/scripts, each one atomic round trip.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from restmq.errors import BadRequest, EmptyQueue, InvalidName
from restmq.lua import load_script
from restmq.redis import text

POLICY_BROADCAST = "1"
POLICY_ROUNDROBIN = "2"
POLICY_NAMES = {"broadcast": POLICY_BROADCAST, "roundrobin": POLICY_ROUNDROBIN}
BATCH_COUNT = 10
BATCH_BYTES = 1024 * 1024

_RESERVED_NAMES = ("QUEUESET", "AUTHKEY")
_RESERVED_PREFIXES = ("AUTHKEY:", "queuestat:")
_RESERVED_SUFFIXES = (":queue", ":UUID", ":queuepolicy", ":PUBSUB", ":lock", ":refcount")
# Whitespace (str.isspace) and control characters (category Cc: U+0000-001F, U+007F-009F);
# tests/test_unit.py checks the equivalence over every code point.
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def is_valid_name(name: str) -> bool:
    """PROTOCOL.md §1.1: 1-256 UTF-8 bytes, no whitespace or control character, not reserved."""
    if not isinstance(name, str) or not name:
        return False
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return False
    if size > 256:
        return False
    if _FORBIDDEN.search(name):
        return False
    if name in _RESERVED_NAMES or name.startswith(_RESERVED_PREFIXES):
        return False
    return not name.endswith(_RESERVED_SUFFIXES)


def check_name(name: str) -> str:
    if not is_valid_name(name):
        raise InvalidName()
    return name


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
    InvalidName for a name outside §1.1.
    """

    def __init__(self, redis: Any, consumed_ttl: int = 3600):
        self.redis = redis
        self.consumed_ttl = consumed_ttl
        self.scripts = {name: load_script(name) for name in (
            "add", "add_once", "hard_get", "soft_get", "take", "del", "purge", "pop_batch",
            "set", "stats", "requeue")}

    def _run(self, name: str, *args: Any) -> defer.Deferred:
        return self.redis.run_script(self.scripts[name], *args)

    def _write(self, name: str, *args: Any) -> defer.Deferred:
        """Run a script that writes, with its deadline as the last argument."""
        return self.redis.run_script(self.scripts[name], *args, self._deadline())

    def _deadline(self) -> int:
        """When a write may no longer run (ms since the epoch): a second before we give up
        waiting for its reply, so a write Redis only gets to after our 503 or retry (a
        paused Redis) is never applied. Tolerates a Redis clock up to 1 s behind ours."""
        return int((time.time() + self.redis.timeout - 1.0) * 1000)

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
        return self._write("hard_get", queue, self.consumed_ttl).addCallback(_message)

    def soft_get(self, queue: str) -> defer.Deferred:
        """SOFT_GET: fires with the oldest Message and its read count, leaving it queued."""
        check_name(queue)
        return self._write("soft_get", queue).addCallback(_message)

    def take(self, queue: str) -> defer.Deferred:
        """TAKE: fires with the oldest Message, deleted from Redis; EmptyQueue."""
        check_name(queue)
        return self._write("take", queue).addCallback(_message)

    def delete(self, queue: str, key: str) -> defer.Deferred:
        """DEL: fires with True when the value key existed."""
        check_name(queue)
        return self._write("del", queue, key).addCallback(lambda n: int(n) >= 1)

    def purge(self, queue: str) -> defer.Deferred:
        """PURGE: fires with 1 if a pending list existed, else 0; live consumers are ended."""
        check_name(queue)
        return self._write("purge", queue, self.consumed_ttl, self.redis.db).addCallback(int)

    def pop_batch(self, queue: str) -> defer.Deferred:
        """POP_BATCH: fires with (policy name, [Message...]); empty when stopped or empty."""
        check_name(queue)
        d = self._write("pop_batch", queue, self.redis.db, BATCH_COUNT, BATCH_BYTES)

        def parse(reply):
            if not reply:
                return None, []
            reply = text(reply)
            pairs = reply[1:]
            return reply[0], [Message(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]

        return d.addCallback(parse)

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
        """Fires with a list of QueueStats for every QUEUESET member, sorted by name."""
        def parse(reply):
            reply = text(reply or [])
            rows = [QueueStats(reply[i], int(reply[i + 1]), reply[i + 2], reply[i + 3])
                    for i in range(0, len(reply), 4)]
            return sorted(rows, key=lambda row: row.name)

        return self._run("stats").addCallback(parse)

    @defer.inlineCallbacks
    def jobs(self, queue: str):
        """Fires with (objects, length, newest keys): the distinct keys matching `<q>*`
        (SCAN), the pending count and up to 10 pending keys, newest first."""
        check_name(queue)
        length = yield self.redis.execute("LLEN", f"{queue}:queue")
        latest = yield self.redis.execute("LRANGE", f"{queue}:queue", 0, 9)
        seen: set[str] = set()
        cursor = "0"
        pattern = scan_pattern(queue)
        while True:
            cursor, keys = yield self.redis.execute("SCAN", cursor, "MATCH", pattern,
                                                    "COUNT", 1000)
            seen.update(text(list(keys)))
            if str(cursor) == "0":
                break
        return len(seen), int(length), text(list(latest or []))

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
