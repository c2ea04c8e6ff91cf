"""`/metrics`: the Prometheus series of the queues, read from Redis at each scrape (so every
process behind one port answers the same numbers), and of this process (Redis command
durations and errors, live consumers, whether Redis answers, build, persistence mode), each of
those labelled `process` = `<hostname>:<pid>` so that a port shared by several processes never
makes a counter look reset. Rendered by prometheus_client (docs/http-api.md#metrics).
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Iterable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from restmq import __version__
from restmq.delivery.push import OUTCOMES as PUSH_OUTCOMES
from restmq.redis import keys, text
from restmq.redis.health import MODES
from restmq.redis.scripts import load_script

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_QUEUES = 10000  # --metrics-queues: most queues one scrape exports
BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)
ERROR_KINDS = ("unavailable", "timeout", "error")
LIVE_KINDS = ("comet", "websocket", "sse", "waiter")
# Counter fields of <q>:counters by metric: (metric, label name, {field: label value}).
LABELLED = (("restmq_messages_read", "op", {"read_get": "get", "read_soft_get": "soft_get",
                                             "read_take": "take", "read_pop": "pop"}),
            ("restmq_messages_delivered", "via", {"delivered_live": "live",
                                                  "delivered_claim": "claim",
                                                  "delivered_push": "push"}))
PLAIN = ("acked", "redelivered", "dead_lettered", "dropped", "deduplicated")
PUSH_PREFIX = "push_"

# No `_created` series: they double the process series and no alert or board needs them.
disable_created_metrics()


def process_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ProcessMetrics:
    """This process's series, in a private registry (never the library's global one, which
    would also export the interpreter's own series under names we do not document).
    RedisService reports each command to `observe` and each failure to `failed`."""

    def __init__(self, delivery: Any = None, process: str | None = None):
        self.process = process or process_label()
        self.delivery = delivery
        self.registry = CollectorRegistry(auto_describe=False)
        p = ["process"]
        self.duration = Histogram("restmq_redis_command_duration_seconds",
                                  "Time from sending a Redis command (or pipeline) to its reply.",
                                  p, buckets=BUCKETS, registry=self.registry
                                  ).labels(self.process)
        errors = Counter("restmq_redis_errors", "Redis commands that failed, by kind: "
                         "unavailable (no connection, lost), timeout (no answer in time), "
                         "error (an error reply).", p + ["kind"], registry=self.registry)
        self.errors = {kind: errors.labels(self.process, kind) for kind in ERROR_KINDS}
        self.up = Gauge("restmq_redis_up", "1 when Redis answered this scrape's reads.", p,
                        registry=self.registry).labels(self.process)
        Gauge("restmq_build_info", "RestMQ's version and protocol (always 1).",
              p + ["version", "protocol"], registry=self.registry
              ).labels(self.process, __version__, "2").set(1)
        persistence = Gauge("restmq_redis_persistence", "1 for Redis's persistence mode as "
                            "/health reports it (read at most every 10 s).", p + ["mode"],
                            registry=self.registry)
        self.modes = {mode: persistence.labels(self.process, mode) for mode in MODES}

    def observe(self, seconds: float) -> None:
        self.duration.observe(seconds)

    def failed(self, kind: str) -> None:
        self.errors[kind].inc()

    def set_persistence(self, mode: str | None) -> None:
        for name, gauge in self.modes.items():
            gauge.set(1 if name == mode else 0)


    def live_consumers(self) -> list[tuple[str, str, int]]:
        """(queue, kind, count) of the delivery's consumers and waiters now. Read in the
        reactor's thread: the delivery's tables change there."""
        found = []
        delivery = self.delivery
        for queue, state in sorted((delivery.queues if delivery else {}).items()):
            counts = dict.fromkeys(LIVE_KINDS, 0)
            for consumer in state.consumers:
                kind = getattr(consumer, "kind", "comet")
                counts[kind] = counts.get(kind, 0) + 1
            counts["waiter"] = len(state.waiters)
            found += [(queue, kind, n) for kind, n in counts.items()]
        return found


class _LiveSeries:
    def __init__(self, process: str, counts: list[tuple[str, str, int]]):
        self.process, self.counts = process, counts

    def collect(self):
        family = GaugeMetricFamily("restmq_live_consumers", "Live consumers and long-poll "
                                   "waiters of this process, by queue and kind.",
                                   labels=["queue", "kind", "process"])
        for queue, kind, n in self.counts:
            family.add_metric([queue, kind, self.process], n)
        yield family


@dataclass
class QueueState:
    name: str
    pending: int = 0
    inflight: int = 0
    delayed: int = 0
    started: bool = False
    added: int = 0
    dead_letter: str | None = None
    dead_pending: int = 0
    counters: dict[str, int] | None = None


@dataclass
class Snapshot:
    """What one scrape read from Redis; `up` False when it could not."""

    up: bool
    queues: list[QueueState] = field(default_factory=list)
    truncated: bool = False
    counting: bool = False
    live: list[tuple[str, str, int]] = field(default_factory=list)  # ProcessMetrics.live_consumers


_SCRIPTS = {flag: load_script("metrics", flag) for flag in (False, True)}


def _int(reply: Any) -> int:
    try:
        return int(reply)
    except (TypeError, ValueError):
        return 0


async def read_queues(redis: Any, limit: int, counting: bool) -> Snapshot:
    """The queue states of the first `limit` names of QUEUESET in byte order (the same queues
    at every scrape while the set does not change): one SMEMBERS, then one read-only script
    for all of them, whose one JSON reply is decoded at once (ten thousand queues are 70,000
    replies as separate commands, too slow to parse here). The dead-letter queues not among
    them cost a small pipeline more. Raises RedisUnavailable or RedisFailure."""
    members = await redis.execute("SMEMBERS", keys.QUEUESET) or []
    names = sorted({text(name) for name in members}, key=lambda n: n.encode("utf-8", "replace"))
    truncated = len(names) > limit
    names = names[:limit]
    rows: list = []
    if names:
        reply = await redis.run_script(_SCRIPTS[counting], keys.metrics_keys(names, counting))
        rows = json.loads(reply if isinstance(reply, str) else reply.decode("utf-8", "replace"))
    states = []
    for name, row in zip(names, rows):
        state = QueueState(name, _int(row[0]), _int(row[1]), _int(row[2]), row[3] == "1",
                           _int(row[4]), row[5] or None)
        if counting and isinstance(row[6], list) and row[6]:
            flat = row[6]
            state.counters = {k: _int(v) for k, v in zip(flat[::2], flat[1::2])}
        states.append(state)
    await _dead_letter_depths(redis, states)
    return Snapshot(True, states, truncated, counting)


async def _dead_letter_depths(redis: Any, states: list[QueueState]) -> None:
    known = {state.name: state.pending for state in states}
    missing = sorted({s.dead_letter for s in states if s.dead_letter and s.dead_letter not in known})
    if missing:
        replies = await redis.pipeline([c for name in missing for c in (
            ("LLEN", keys.pending(name)), ("ZCARD", keys.priority(name)))])
        for i, name in enumerate(missing):
            known[name] = _int(replies[2 * i]) + _int(replies[2 * i + 1])
    for state in states:
        if state.dead_letter:
            state.dead_pending = known[state.dead_letter]


class QueueSeries:
    """The series of one Snapshot, as a prometheus_client collector."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterable:
        snap = self.snapshot
        gauges = {name: GaugeMetricFamily(name, doc, labels=["queue"]) for name, doc in (
            ("restmq_queue_messages", "Pending messages (every priority level)."),
            ("restmq_queue_inflight_messages", "Messages leased out."),
            ("restmq_queue_delayed_messages", "Messages waiting for their due time."),
            ("restmq_queue_dead_letter_messages", "Pending messages of the queue's "
             "dead-letter queue, when it has one."),
            ("restmq_queue_started", "1 when the queue's status is started, else 0."))}
        added = CounterMetricFamily("restmq_messages_added", "Messages ever added (the "
                                    "queue's key counter).", labels=["queue"])
        for q in snap.queues:
            gauges["restmq_queue_messages"].add_metric([q.name], q.pending)
            gauges["restmq_queue_inflight_messages"].add_metric([q.name], q.inflight)
            gauges["restmq_queue_delayed_messages"].add_metric([q.name], q.delayed)
            if q.dead_letter:
                gauges["restmq_queue_dead_letter_messages"].add_metric([q.name], q.dead_pending)
            gauges["restmq_queue_started"].add_metric([q.name], 1 if q.started else 0)
            added.add_metric([q.name], q.added)
        yield from gauges.values()
        yield added
        if snap.counting:
            yield from self._counters()
        yield GaugeMetricFamily("restmq_metrics_truncated", "1 when there are more queues than "
                                "--metrics-queues and only the first (in byte order) are "
                                "exported.", value=1 if snap.truncated else 0)

    def _counters(self) -> Iterable:
        plain = {name: CounterMetricFamily(f"restmq_messages_{name}",
                                           f"Messages {name.replace('_', ' ')} (--counters).",
                                           labels=["queue"]) for name in PLAIN}
        labelled = [(CounterMetricFamily(metric, f"Messages by {label} (--counters).",
                                         labels=["queue", label]), fields)
                    for metric, label, fields in LABELLED]
        push = CounterMetricFamily("restmq_push_attempts", "Push attempts by outcome "
                                   "(--counters).", labels=["queue", "outcome"])
        for q in self.snapshot.queues:
            if q.counters is None:
                continue
            for name, family in plain.items():
                family.add_metric([q.name], q.counters.get(name, 0))
            for family, fields in labelled:
                for field_name, value in fields.items():
                    family.add_metric([q.name, value], q.counters.get(field_name, 0))
            for outcome, n in _push_outcomes(q.counters):
                push.add_metric([q.name, outcome], n)
        yield from plain.values()
        for family, _ in labelled:
            yield family
        yield push


def _push_outcomes(counters: dict[str, int]) -> list[tuple[str, int]]:
    """(outcome, attempts) of a queue that has counted a push attempt: every outcome, 0 where
    none happened yet, so that a rate over an outcome's series has its start (a series that
    appears at 1 hides its first increment from rate() and increase())."""
    found = {name[len(PUSH_PREFIX):]: n for name, n in counters.items()
             if name.startswith(PUSH_PREFIX)}
    if not found:
        return []
    return sorted({**dict.fromkeys(PUSH_OUTCOMES, 0), **found}.items())


class _Both:
    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def render(process: ProcessMetrics, snapshot: Snapshot) -> bytes:
    """The text exposition of both sets of series. It reads only `snapshot` (the scrape's
    own) and prometheus_client's metric objects (which lock their values), so it may run in
    a thread."""
    return generate_latest(_Both(QueueSeries(snapshot), process.registry,
                                 _LiveSeries(process.process, snapshot.live)))
