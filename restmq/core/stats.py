"""Reading about queues rather than messages: the queue list, lengths, the stats of every
queue (a page of queues per script) and the jobs page's bounded scan of a queue's keys."""
from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer

from restmq.core.steps import STATS_PAGE
from restmq.names import check_name
from restmq.redis import keys, text

JOBS_MAX_KEYS = 100_000  # the jobs page counts at most about this many keys...
JOBS_SCAN_SECONDS = 1.0  # ...and scans for at most this long; then it says "at least N"


@dataclass(frozen=True)
class QueueStats:
    name: str
    length: int
    status: str  # the raw stored value, '' when absent
    policy: str  # the raw stored value, '' when absent


class StatsMixin:
    """Core's reads of queue lengths, the queue list and stats."""

    def length(self, queue: str) -> defer.Deferred:
        """Fires with the pending count, priority messages included (0 for an unknown queue):
        the stats script for one queue."""
        check_name(queue)
        return self._run("stats", keys.stats_keys([queue])).addCallback(lambda r: int(r[0]))

    def queues(self) -> defer.Deferred:
        """Fires with the sorted list of QUEUESET members."""
        return self.redis.execute("SMEMBERS", keys.QUEUESET).addCallback(
            lambda names: sorted(text(list(names or []))))

    def stats(self) -> defer.Deferred:
        """Fires with a list of QueueStats for every QUEUESET member, sorted by name. Reads a
        page of STATS_PAGE queues at a time: an SSCAN, then one script for the page's queues
        (not one atomic picture: docs/redis-layout.md#stats); RedisUnavailable when all pages
        are not read within the command timeout."""
        return defer.ensureDeferred(self._stats())

    async def _stats(self) -> list[QueueStats]:
        give_up = self.clock.seconds() + self.redis.timeout
        rows: dict[str, QueueStats] = {}
        cursor = "0"
        first = True
        while True:
            d = self.redis.execute("SSCAN", keys.QUEUESET, cursor, "COUNT", STATS_PAGE)
            cursor, names = await (d if first else self._bounded(d, give_up))
            first = False
            cursor = str(text(cursor))
            names = list(names or [])  # as read: a name that is not UTF-8 stays bytes
            if names:
                d = self._run("stats", keys.stats_keys(names))
                reply = text(await self._bounded(d, give_up))
                for k, name in enumerate(text(names)):
                    length, status, policy = reply[3 * k:3 * k + 3]
                    rows[name] = QueueStats(name, int(length), status, policy)
            if cursor == "0":
                return sorted(rows.values(), key=lambda row: row.name)

    @defer.inlineCallbacks
    def jobs(self, queue: str):
        """Fires with (objects, length, newest keys, complete): the distinct keys matching
        `<q>*` (SCAN), the pending count and up to 10 pending keys, newest first. The scan
        stops after about JOBS_MAX_KEYS keys or JOBS_SCAN_SECONDS: then `complete` is False
        and `objects` a lower bound."""
        check_name(queue)
        length = yield self.redis.execute("LLEN", keys.pending(queue))
        latest = yield self.redis.execute("LRANGE", keys.pending(queue), 0, 9)
        seen: set[str] = set()
        cursor = "0"
        pattern = keys.match_all(queue)
        stop = self.clock.seconds() + JOBS_SCAN_SECONDS
        while True:
            cursor, found = yield self.redis.execute("SCAN", cursor, "MATCH", pattern,
                                                     "COUNT", 1000)
            seen.update(text(list(found)))
            if str(cursor) == "0":
                return len(seen), int(length), text(list(latest or [])), True
            if len(seen) >= JOBS_MAX_KEYS or self.clock.seconds() >= stop:
                return len(seen), int(length), text(list(latest or [])), False

