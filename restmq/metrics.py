"""`/metrics`: the Prometheus series of the queues, read from Redis at each scrape (so every
process behind one port answers the same numbers), and of this process (Redis command
durations and errors, live consumers, whether Redis answers, build, persistence mode), each of
those labelled `process` = `<hostname>:<pid>` so that a port shared by several processes never
makes a counter look reset. Rendered by prometheus_client, in steps on the reactor's thread
(restmq.exposition; docs/http-api.md#metrics).
"""
from __future__ import annotations

import itertools
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics)
from prometheus_client.core import CounterMetricFamily as Counter_
from prometheus_client.core import GaugeMetricFamily as Gauge_
from twisted.internet import defer
from twisted.logger import Logger

from restmq import __version__
from restmq.delivery.push import OUTCOMES as PUSH_OUTCOMES
from restmq.errors import RedisFailure, RedisTrouble
from restmq.exposition import Exposition, Family, Shared, cooperator
from restmq.redis import keys
from restmq.redis.wire import encode_args
from restmq.redis.health import MODES, within
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
        self.scraper: Scraper | None = None  # made by the first scrape (restmq.http.ops)

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


@dataclass(slots=True)
class QueueState:
    name: str
    pending: int = 0
    inflight: int = 0
    delayed: int = 0
    started: bool = False
    added: int = 0
    dead_letter: str | None = None
    dead_pending: int | None = 0  # None: its dead-letter queue could not be read
    counters: dict[str, int] | None = None


@dataclass
class Snapshot:
    """What one scrape read from Redis; `up` False when it could not."""

    up: bool
    queues: list[QueueState] = field(default_factory=list)
    truncated: bool = False
    counting: bool = False
    # `queues` by page of CHUNK; a page read unchanged since the last scrape is the same list
    pages: list[list[QueueState]] = field(default_factory=list)


_SCRIPTS = {flag: load_script("metrics", flag) for flag in (False, True)}
CHUNK = 500  # queues per run of the script: Redis is held a few milliseconds for each run
# Seconds a scrape waits for Redis (less when --redis-timeout is less): a Redis that answers
# nothing (paused, a dead host) must not make the scrape outlast Prometheus's scrape timeout
# (10 s by default), or Prometheus records no restmq_redis_up 0, only a failed scrape. A
# healthy scrape of 10,000 queues reads in about a tenth of a second.
READ_DEADLINE = 3.0


def _int(reply: Any) -> int:
    try:
        return int(reply)
    except (TypeError, ValueError):
        return 0


class QueueReader:
    """Reads the state of the first `limit` names of QUEUESET in byte order (the same queues
    at every scrape while the set does not change): one SMEMBERS, then one pipeline (one
    round trip) of read-only script runs of CHUNK queues each, so that no run holds Redis for
    long; each answers one JSON text, decoded at once (ten thousand queues are 70,000 replies
    as separate commands, too slow to parse here). The dead-letter queues not among them cost
    a small pipeline more. The keys of the last scrape's queues are kept encoded, and the
    work here runs in steps on `coop` (see restmq.exposition)."""

    log = Logger()

    def __init__(self, redis: Any, counting: bool, coop: Any):
        self.redis, self.counting, self.coop = redis, counting, coop
        self.script = _SCRIPTS[counting]
        self._keys: dict[str, bytes] = {}
        self._pages: list[tuple[list[str], Any, list[QueueState]]] = []  # the last scrape's

    async def read(self, limit: int) -> Snapshot:
        """Raises RedisUnavailable or RedisFailure."""
        members = await self.redis.execute("SMEMBERS", keys.QUEUESET) or []
        raw = sorted(name if isinstance(name, bytes) else name.encode("utf-8")
                     for name in members)
        truncated = len(raw) > limit
        names = _named(raw[:limit])
        replies = await self._run(names, by_source=False)
        if any(isinstance(r, RedisFailure) and str(r).startswith("NOSCRIPT") for r in replies):
            replies = await self._run(names, by_source=True)  # EVAL also loads it
        for reply in replies:
            if isinstance(reply, RedisFailure):
                raise reply
        pages: list[tuple[list[str], Any, list[QueueState]]] = []
        await self.coop.cooperate(self._decode(names, replies, pages)).whenDone()
        self._pages = pages
        states = [state for _, _, page in pages for state in page]
        await _dead_letter_depths(self.redis, states)
        return Snapshot(True, states, truncated, self.counting, [page for _, _, page in pages])

    async def _run(self, names: list[str], by_source: bool) -> list:
        commands: list[bytes] = []
        await self.coop.cooperate(self._commands(names, by_source, commands)).whenDone()
        return await self.redis.pipeline(commands)

    def _commands(self, names: list[str], by_source: bool, out: list[bytes]):
        kept, self._keys = self._keys, {}
        head = ("EVAL", self.script.source) if by_source else ("EVALSHA", self.script.sha)
        for at in range(0, len(names), CHUNK):
            blocks = []
            for name in names[at:at + CHUNK]:
                block = kept.get(name)
                if block is None:
                    block = encode_args([k.encode("utf-8", "surrogateescape")
                                         for k in keys.metrics_keys([name], self.counting)])
                self._keys[name] = block
                blocks.append(block)
            count = len(blocks) * (8 if self.counting else 7)
            out.append(b"*%d\r\n%s%s" % (3 + count, encode_args((*head, count)),
                                            b"".join(blocks)))
            yield None

    def _decode(self, names: list[str], replies: list, pages: list):
        """A page whose names and reply are those of the last scrape keeps its states (the
        same objects: their series need not be rendered again)."""
        last = self._pages
        for i, (at, reply) in enumerate(zip(range(0, len(names), CHUNK), replies)):
            page_names = names[at:at + CHUNK]
            if i < len(last) and last[i][1] == reply and last[i][0] == page_names:
                pages.append(last[i])
                continue
            rows = json.loads(reply if isinstance(reply, str)
                              else reply.decode("utf-8", "replace"))
            broken = [_label(name) for name, row in zip(page_names, rows) if row is False]
            if broken:
                self._broken(broken)
            pages.append((page_names, reply, [self._state(name, row)
                                              for name, row in zip(page_names, rows)
                                              if row is not False]))
            yield None

    def _broken(self, labels: list[str]) -> None:
        """Logs the queues left out because a key of theirs has the wrong type; a page read
        unchanged is not decoded again, so this comes once per change, not once a scrape."""
        shown = ", ".join(repr(label) for label in labels[:10])
        more = f" and {len(labels) - 10} more" if len(labels) > 10 else ""
        self.log.warn("/metrics leaves out {count} queue(s) with a key of the wrong type "
                      "(not RestMQ's): {names}", count=len(labels), names=shown + more)

    def _state(self, name: str, row: list) -> QueueState:
        state = QueueState(_label(name), _int(row[0]), _int(row[1]), _int(row[2]), row[3] == "1",
                           _int(row[4]), row[5] or None)
        if self.counting and isinstance(row[6], list) and row[6]:
            flat = row[6]
            state.counters = {k: _int(v) for k, v in zip(flat[::2], flat[1::2])}
        return state


def _label(name: str) -> str:
    """The `queue` label of a name: the name itself, or, for a name that is not UTF-8 (other
    software wrote it into QUEUESET), its bytes that are not text written as `\\xff`, so
    that two such names stay two series (U+FFFD would make them one)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _named(raw: list[bytes]) -> list[str]:
    """The names to read, as text (bytes that are not UTF-8 kept as surrogates, so that
    their keys are the very bytes around them), in byte order. A name whose label another
    name has (a name not UTF-8 and a name spelt like its label) is left out after the
    first: an exposition may not carry one series twice."""
    names, labels = [], set()
    for name in raw:
        decoded = name.decode("utf-8", "surrogateescape")
        label = _label(decoded)
        if label not in labels:
            labels.add(label)
            names.append(decoded)
    return names


async def _dead_letter_depths(redis: Any, states: list[QueueState]) -> None:
    known = {state.name: state.pending for state in states}
    missing = sorted({s.dead_letter for s in states if s.dead_letter and s.dead_letter not in known})
    if missing:
        replies = await redis.pipeline([c for name in missing for c in (
            ("LLEN", keys.pending(name)), ("ZCARD", keys.priority(name)))])
        for i, name in enumerate(missing):
            pair = replies[2 * i:2 * i + 2]
            # A key of the wrong type (not RestMQ's) leaves the depth unknown, not 0.
            known[name] = None if any(isinstance(r, RedisFailure) for r in pair) \
                else _int(pair[0]) + _int(pair[1])
    for state in states:
        if state.dead_letter:
            state.dead_pending = known[state.dead_letter]


def queue_families(snap: Snapshot) -> Iterator[Family]:
    """The families of the queue series of one Snapshot (their samples made as rendered)."""
    qs = snap.queues

    def gauge(name: str, doc: str, get: Callable[[QueueState], int], kind: type = Gauge_):
        # By page: a page read again unchanged keeps its text (the values come from its rows)
        return Family(kind, name, doc, ("queue",), parts=[
            (page, (((q.name,), get(q)) for q in page)) for page in snap.pages])

    yield gauge("restmq_queue_messages", "Pending messages (every priority level).",
                lambda q: q.pending)
    yield gauge("restmq_queue_inflight_messages", "Messages leased out.", lambda q: q.inflight)
    yield gauge("restmq_queue_delayed_messages", "Messages waiting for their due time.",
                lambda q: q.delayed)
    yield Family(Gauge_, "restmq_queue_dead_letter_messages", "Pending messages of the "
                 "queue's dead-letter queue, when it has one.", ("queue",),
                 (((q.name,), q.dead_pending) for q in qs
                  if q.dead_letter and q.dead_pending is not None))
    yield gauge("restmq_queue_started", "1 when the queue's status is started, else 0.",
                lambda q: 1 if q.started else 0)
    yield gauge("restmq_messages_added", "Messages ever added (the queue's key counter).",
                lambda q: q.added, Counter_)
    if snap.counting:
        yield from _counter_families([q for q in qs if q.counters is not None])
    yield Family(Gauge_, "restmq_metrics_truncated", "1 when there are more queues than "
                 "--metrics-queues and only the first (in byte order) are exported.", (),
                 [((), 1 if snap.truncated else 0)])


def _counter_families(qs: list[QueueState]) -> Iterator[Family]:
    for name in PLAIN:
        yield Family(Counter_, f"restmq_messages_{name}",
                     f"Messages {name.replace('_', ' ')} (--counters).", ("queue",),
                     (((q.name,), q.counters.get(name, 0)) for q in qs))
    for metric, label, fields in LABELLED:
        yield Family(Counter_, metric, f"Messages by {label} (--counters).", ("queue", label),
                     (((q.name, value), q.counters.get(field_name, 0))
                      for q in qs for field_name, value in fields.items()))
    yield Family(Counter_, "restmq_push_attempts", "Push attempts by outcome (--counters).",
                 ("queue", "outcome"), (((q.name, outcome), n) for q in qs
                                        for outcome, n in _push_outcomes(q.counters)))


def _push_outcomes(counters: dict[str, int]) -> list[tuple[str, int]]:
    """(outcome, attempts) of a queue that has counted a push attempt: every outcome, 0 where
    none happened yet, so that a rate over an outcome's series has its start (a series that
    appears at 1 hides its first increment from rate() and increase())."""
    found = {name[len(PUSH_PREFIX):]: n for name, n in counters.items()
             if name.startswith(PUSH_PREFIX)}
    if not found:
        return []
    return sorted({**dict.fromkeys(PUSH_OUTCOMES, 0), **found}.items())


def live_family(process: str, counts: list[tuple[str, str, int]]) -> Family:
    return Family(Gauge_, "restmq_live_consumers", "Live consumers and long-poll waiters of "
                  "this process, by queue and kind.", ("queue", "kind", "process"),
                  [((queue, kind, process), n) for queue, kind, n in counts])


class Scraper:
    """What `GET /metrics` answers: the queue series read from Redis, then this process's,
    rendered in steps on the reactor's thread (restmq.exposition). A request that comes while
    a scrape is being made gets that scrape's reply (its queue values were read after the
    first of them came), so scrapers that come together cost one read and one rendering."""

    def __init__(self, redis: Any, process: ProcessMetrics, health: Any, limit: int,
                 counting: bool, clock: Any):
        coop = cooperator(clock)
        self.process, self.health, self.limit, self.clock = process, health, limit, clock
        self.deadline = min(READ_DEADLINE, getattr(redis, "timeout", READ_DEADLINE))
        self.reader = QueueReader(redis, counting, coop)
        self.exposition = Exposition(coop)
        self.shared = Shared(lambda: defer.ensureDeferred(self._scrape()))

    def body(self) -> defer.Deferred:
        """Fires with the text of the exposition (bytes), Redis or not."""
        return self.shared.get()

    async def _scrape(self) -> bytes:
        process = self.process
        try:
            # Past the deadline the read is left to finish or fail on its own (cancelling it
            # would hand its replies to the next command of the connection); what it leaves
            # behind for the next scrape is keyed on the replies, so never stale.
            snapshot = await within(defer.ensureDeferred(self.reader.read(self.limit)),
                                    self.deadline, self.clock)
        except RedisTrouble:
            snapshot = Snapshot(False)
        process.up.set(1 if snapshot.up else 0)
        process.set_persistence(await self._persistence(snapshot.up))
        live = live_family(process.process, process.live_consumers())
        return await self.exposition.render(
            itertools.chain(queue_families(snapshot), [process.registry, live]))

    async def _persistence(self, up: bool) -> str | None:
        health = self.health
        if up:
            try:
                return (await health.current()).persistence
            except RedisTrouble:
                pass
        return health.settings.persistence if health.settings else None
