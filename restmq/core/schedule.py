"""What is due, and when: the queues with leases ending, delayed messages becoming pending,
idempotency keys to forget (DUESET lists them by time), and one tick of a queue, which handles
what is due in it. Due times are Redis's clock, so every process agrees on them; the ticker of
each process (restmq.delivery.ticker) decides when to look."""
from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer

from restmq.names import is_safe_name
from restmq.redis import keys, text

TICK_QUEUES = 16  # queues one look at DUESET returns
TICK_STEP = 500  # entries of each kind one tick of a queue handles
TICK_SCAN = 100  # delivery counts one tick checks for messages gone
SCANS_MAX = 10_000  # queues whose clean-up scan position a process remembers


@dataclass(frozen=True)
class Due:
    """Redis's time (ms), the earliest due time of any queue (ms, None when nothing is due),
    and up to TICK_QUEUES queues due by now, earliest first."""

    now: int
    head: int | None
    queues: list[str]


@dataclass(frozen=True)
class Ticked:
    """One tick of a queue: Redis's time, the queue's next due time and the earliest of any
    queue (ms, None for none), and how many messages went back after their lease, became
    pending after their delay, or were dead-lettered."""

    now: int
    next: int | None
    head: int | None
    requeued: int
    promoted: int
    dead_lettered: int


def _ms(score: str) -> int | None:
    return None if score == "" else int(float(score))


class ScheduleMixin:
    """Core's look at what is due. Needs `redis`, `scripts`, the script runners of
    restmq.core.steps and the dead-letter beliefs of restmq.core.leases; keeps the position of
    each queue's clean-up scan in `_scans`."""

    def due(self) -> defer.Deferred:
        """DUE (read-only, one round trip): fires with Due."""
        def done(reply):
            reply = text(reply)
            queues = [q for q in reply[2:] if isinstance(q, str) and is_safe_name(q)]
            return Due(int(reply[0]), _ms(reply[1]), queues)

        return self._run("due", keys.due_keys(), TICK_QUEUES).addCallback(done)

    def tick(self, queue: str) -> defer.Deferred:
        """TICK of one queue (a name DUESET gave): fires with Ticked."""
        deadline = self.redis.deadline()

        def run(dead: str) -> defer.Deferred:
            return self._run("tick", keys.lease_keys(queue, dead or None), queue,
                             keys.channel(queue), self.redis.db, self.consumed_ttl, dead,
                             keys.channel(dead) if dead else "", deadline,
                             self._scans.get(queue, "0"), TICK_STEP, TICK_SCAN)

        def done(reply):
            if len(self._scans) >= SCANS_MAX:
                self._scans.clear()
            self._scans[queue] = reply[3]
            return Ticked(int(reply[0]), _ms(reply[1]), _ms(reply[2]), int(reply[4]),
                          int(reply[5]), int(reply[6]))

        return defer.ensureDeferred(self._believing(queue, run, deadline)).addCallback(done)
