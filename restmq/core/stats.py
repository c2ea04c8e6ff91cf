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
        """Fires with the pending count (0 for an unknown queue)."""
        check_name(queue)
        return self.redis.execute("LLEN", keys.pending(queue)).addCallback(int)

    def queues(self) -> defer.Deferred:
        """Fires with the sorted list of QUEUESET members."""
        return self.redis.execute("SMEMBERS", keys.QUEUESET).addCallback(
            lambda names: sorted(text(list(names or []))))

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

