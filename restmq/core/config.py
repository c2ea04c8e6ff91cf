"""Per-queue configuration (read by the scripts themselves at each operation, so no process
caches it and a change applies everywhere at once) and a queue's state at a glance (info)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from twisted.internet import defer

from restmq.core import arguments
from restmq.core.policy import policy_name
from restmq.errors import InvalidArgument
from restmq.names import check_name
from restmq.redis import DEADLINE, keys, text


@dataclass(frozen=True)
class QueueConfig:
    """`config`: every attribute's value in force (None: unset, no default); `set`: the
    stored attribute names, sorted."""

    queue: str
    config: dict[str, Any]
    set: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.queue, "config": self.config, "set": self.set}


@dataclass(frozen=True)
class DeadLetterState:
    queue: str
    pending: int


@dataclass(frozen=True)
class QueueInfo:
    """`status` and `policy` as stored (None when absent); `next_due`: Unix seconds of the
    queue's next due time (a lower bound), None when nothing is due; `priority`: pending
    messages per level 1 to 9 (levels without any left out); `added`: the messages ever
    numbered in the queue (its key counter, kept with or without counters, so a reader can
    derive add rates); `counters`: what the queue's counters hold on a server run with
    --counters (only those ever counted), else None; `subscribers`: the connections that
    subscribe to the queue's pub/sub channel on Redis (one per RestMQ process holding a live
    consumer, a waiter or a push dispatcher of the queue; any other subscriber counts too)."""

    queue: str
    pending: int
    inflight: int
    delayed: int
    status: str | None
    policy: str | None
    dead_letter: DeadLetterState | None
    next_due: float | None
    priority: dict[int, int]
    added: int = 0
    counters: dict[str, int] | None = None
    subscribers: int = 0

    def as_json(self) -> dict[str, Any]:
        """The reply of the info route: status 1, 0 or "" (absent) and the policy's name, as
        the stats routes show them."""
        status: Any = "" if self.status is None else (1 if self.status == "1" else 0)
        dead = None if self.dead_letter is None else {"queue": self.dead_letter.queue,
                                                      "pending": self.dead_letter.pending}
        return {"queue": self.queue, "pending": self.pending, "inflight": self.inflight,
                "delayed": self.delayed, "status": status, "policy": policy_name(self.policy),
                "dead_letter": dead, "next_due": self.next_due, "counters": self.counters,
                "priority": {str(p): n for p, n in sorted(self.priority.items())},
                "added": self.added, "subscribers": self.subscribers}


def _config(queue: str, stored: Mapping[str, str]) -> QueueConfig:
    return QueueConfig(queue, arguments.effective(stored), sorted(stored))


class ConfigMixin:
    """Core's configuration and info. Needs `redis`, `scripts` and, for info, the dead-letter
    beliefs of restmq.core.leases."""

    def config_get(self, queue: str) -> defer.Deferred:
        """Fires with the QueueConfig of `queue` (all defaults when it has none)."""
        check_name(queue)

        def read(reply):
            flat = text(list(reply or []))
            return _config(queue, dict(zip(flat[::2], flat[1::2])))

        return self.redis.execute("HGETALL", keys.config(queue)).addCallback(read)

    def config_set(self, queue: str, changes: Mapping[str, str],
                   removed: Sequence[str] = ()) -> defer.Deferred:
        """CONFIG_SET: store `changes` (attribute -> text, as restmq.core.arguments.
        config_changes checked them) and remove `removed`, merged with the stored record and
        checked as a whole first (max_attempts > 0 needs a dead_letter). Does not register the
        queue. Fires with the new QueueConfig; InvalidArgument(attribute) for the first
        attribute at fault, InvalidArgument('unset') for an unknown name to remove. The queue
        is a member of PUSHSET exactly while its record has a push_url."""
        check_name(queue)
        for name, value in changes.items():
            if name not in arguments.ATTRIBUTES:
                raise InvalidArgument(name)
            if name == "dead_letter":
                arguments.queue_other_than(value, queue, name)
        if any(name not in arguments.ATTRIBUTES for name in removed):
            raise InvalidArgument("unset")
        pairs = [part for item in changes.items() for part in item]

        def done(reply):
            reply = text(reply)
            if reply[0] == "invalid":
                raise InvalidArgument(reply[1])
            return _config(queue, dict(zip(reply[1::2], reply[2::2])))

        return self.redis.run_script(self.scripts["config_set"], keys.config_keys(queue),
                                     DEADLINE, "", len(changes), *pairs,
                                     *removed).addCallback(done)

    def config_clear(self, queue: str) -> defer.Deferred:
        """Remove the whole configuration (and the queue from PUSHSET); fires with whether
        there was one. Leases and delays in progress run on; max_attempts is 0 again."""
        check_name(queue)
        return self.redis.run_script(self.scripts["config_set"], keys.config_keys(queue),
                                     DEADLINE, "clear", 0).addCallback(
            lambda reply: int(reply[1]) == 1)

    def info(self, queue: str) -> defer.Deferred:
        """INFO: fires with the QueueInfo of `queue`, read in one script (one picture)."""
        check_name(queue)

        def run(dead: str) -> defer.Deferred:
            return self._run("info", keys.lease_keys(queue, dead or None), queue, dead,
                             keys.channel(queue))

        d = defer.ensureDeferred(self._believing(queue, run, self.redis.deadline()))
        return d.addCallback(_info, queue, self.counters)


def _info(reply: list, queue: str, counting: bool = False) -> QueueInfo:
    pending, inflight, delayed, status, policy, dead, dead_pending, due = reply[1:9]
    levels = {p: int(n) for p, n in zip(range(1, 10), reply[9:18]) if int(n)}
    counted = text(reply[20:])
    counters = {k: int(v) for k, v in sorted(zip(counted[::2], counted[1::2]))} \
        if counting else None
    return QueueInfo(queue, int(pending), int(inflight), int(delayed), status or None,
                     policy or None, DeadLetterState(dead, int(dead_pending)) if dead else None,
                     int(float(due)) / 1000 if due != "" else None, levels,
                     int(reply[18] or 0), counters, int(reply[19]))
