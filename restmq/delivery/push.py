"""Push dispatchers (docs/push.md): every HTTP process (unless `--no-push`) keeps one per push
queue, re-reading PUSHSET every second. A dispatcher claims what the queue's limits allow
(restmq.core.push: the token bucket and the in-flight count are in Redis, so they hold across
processes) on a `wake` notice, on the 1 s sweep, when one of its own attempts ends, and when
a `rate` answer's wait is over; it POSTs each message to the queue's `push_url` and settles
it: a 2xx acks, anything else releases it with a jittered backoff (dead-lettered after
max_attempts). A dispatcher that dies mid-request leaves the message leased: the lease
(push_timeout + 5 s, or twice push_timeout + 5 s with a pre hook) hands it back."""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client
from twisted.web.http_headers import Headers

from restmq import __version__
from restmq.delivery.push_http import (
    AttemptTimeout, CheckedEndpoints, ForbiddenTarget, PushAgent, QuietFactory, backoff,
    post_capped, retry_after)
from restmq.errors import RestMQError
from restmq.redis import keys
from restmq.redis.wire import text

SWEEP_INTERVAL = 1.0  # seconds between two reads of PUSHSET (and a claim on every queue)
PAUSE_DEFAULT, PAUSE_MAX = 1.0, 300.0  # seconds a 429 or 503 pauses the queue
SETTLE_TRIES = 5  # tries of an ack or release that meets Redis trouble, a second apart
ACK_MAX = 100  # receipts in one ack (the most an ack takes)
USER_AGENT = f"RestMQ/{__version__}".encode()
OUTCOMES = ("ok", "http_error", "timeout", "connect_error", "pre_hook", "forbidden_target")


class PushService(service.Service):
    """The push dispatchers of one process: one per PUSHSET member, over one Agent with a
    persistent connection pool. `pubsub` holds each push queue's channel (its listener must
    pass this service the notices: restmq.redis.pubsub.FanOut)."""

    log = Logger()

    def __init__(self, core: Any, pubsub: Any, clock: Any, reactor: Any, db: int = 0,
                 private: bool = False, wall: Any = None):
        import time
        self.core, self.pubsub, self.clock, self.reactor = core, pubsub, clock, reactor
        self.db, self.private = db, private
        self.wall = wall or time.time
        self.dispatchers: dict[str, Dispatcher] = {}
        self.outcomes: dict[tuple[str, str], int] = {}  # (queue, outcome) -> attempts
        self.stopping = False
        self.pool = client.HTTPConnectionPool(reactor, persistent=True)
        self.pool._factory = QuietFactory
        self.pool.maxPersistentPerHost = 100
        self.pool.retryAutomatically = False  # a POST is not retried behind our back
        self.agent = PushAgent.usingEndpointFactory(
            reactor, CheckedEndpoints(reactor, private), pool=self.pool)
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = clock
        self._reading: defer.Deferred | None = None
        self._failing = False

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        self._sweep.start(SWEEP_INTERVAL, now=True)

    def stopService(self):
        """Stop claiming; the attempts under way get their push_timeout to end (their
        messages stay leased if they do not), then the pooled connections close. A claim
        already sent is waited for first: the messages it brings back are leased to this
        process, so they are attempted like the others rather than left to their lease."""
        super().stopService()
        self.stopping = True
        if self._sweep.running:
            self._sweep.stop()
        claims = [d.cycle for d in self.dispatchers.values() if d.cycle is not None]

        def attempts(_: Any) -> defer.Deferred:
            running = []
            for dispatcher in self.dispatchers.values():
                running += dispatcher.stop()
            return defer.DeferredList(running)

        return defer.DeferredList(claims).addBoth(attempts).addBoth(
            lambda _: self.pool.closeCachedConnections())

    # -- which queues --------------------------------------------------------------------------

    def sweep(self) -> None:
        if self._reading is None and not self.stopping:
            self._reading = self.core.redis.execute("SMEMBERS", keys.PUSHSET)
            self._reading.addCallbacks(self._members, self._sweep_failed)
            self._reading.addBoth(self._read)

    def _read(self, _: Any) -> None:
        self._reading = None

    def _sweep_failed(self, failure) -> None:
        failure.trap(RestMQError)
        if not self._failing:
            self._failing = True
            self.log.warn("push: cannot read the push queues ({error}); trying every second",
                          error=failure.value.reason)

    def _members(self, members: Any) -> None:
        self._failing = False
        if self.stopping:
            return
        wanted = set(text(list(members or [])))
        for queue in list(self.dispatchers):
            if queue not in wanted and not self.dispatchers[queue].attempts:
                self.dispatchers.pop(queue).stop()
                self.pubsub.unsubscribe(keys.channel(queue))
        for queue in sorted(wanted):
            if queue not in self.dispatchers:
                self.dispatchers[queue] = Dispatcher(self, queue)
                self.pubsub.subscribe(keys.channel(queue))
            self.dispatchers[queue].trigger()

    # -- pub/sub listener ----------------------------------------------------------------------

    def confirmed(self, channel: str) -> None:
        self._wake(channel)

    def lost(self) -> None:
        pass  # the 1 s sweep goes on claiming meanwhile

    def message(self, channel: str, message: str) -> None:
        # Every notice of every channel this process holds comes here (live consumers'
        # included): only those of a push queue's channel are read.
        dispatcher = self._dispatcher(channel)
        if dispatcher is None:
            return
        try:
            note = json.loads(message)
        except (ValueError, RecursionError):
            return
        if isinstance(note, dict) and note.get("type") == "wake" and note.get("db") == self.db:
            dispatcher.trigger()

    def _wake(self, channel: str) -> None:
        dispatcher = self._dispatcher(channel)
        if dispatcher is not None:
            dispatcher.trigger()

    def _dispatcher(self, channel: str) -> Dispatcher | None:
        if channel.endswith(keys.CHANNEL_SUFFIX):
            return self.dispatchers.get(channel[:-len(keys.CHANNEL_SUFFIX)])
        return None

    # -- outcomes ------------------------------------------------------------------------------

    def count(self, queue: str, outcome: str, key: str, status: int | None) -> None:
        """Every attempt's outcome (one of OUTCOMES) passes here, and only here: the place to
        count it into the queue's counters."""
        self.outcomes[(queue, outcome)] = self.outcomes.get((queue, outcome), 0) + 1
        # Not awaited: the attempt settles whether or not the count lands, and a count lost
        # to a Redis outage is only a missing increment (the lease protects the message).
        self.core.count(queue, "push_" + outcome).addErrback(self._count_failed, queue)
        if outcome == "forbidden_target":
            self.log.warn("push of {key}: target refused, it resolves to a loopback or private "
                          "address (start with --push-private to allow it)", key=key)
        elif outcome != "ok":
            self.log.info("push of {key}: {outcome} (status {status})", key=key,
                          outcome=outcome, status=status)

    def _count_failed(self, failure, queue: str) -> None:
        failure.trap(RestMQError)
        self.log.debug("push outcome of {queue} not counted ({error})", queue=queue,
                       error=failure.value.reason)


class Dispatcher:
    """The dispatcher of one push queue in this process: one claim cycle at a time, and the
    attempts it started."""

    def __init__(self, owner: PushService, queue: str):
        self.owner, self.queue = owner, queue
        self.attempts: set[defer.Deferred] = set()
        self.cycle: defer.Deferred | None = None
        self.again = False
        self.timer = None  # the wait a `rate` answer named
        self.stopped = False
        self.admitted = False
        self.concurrency = 10  # push_concurrency as the last claim read it
        self._failing = False
        self.acks = _Acks(self)
        self.holding = False  # attempts are ending together: one claim after them all
        self.ended = False  # an attempt ended while holding
        self.queue_header = b""

    def stop(self) -> list[defer.Deferred]:
        self.stopped = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        return list(self.attempts)

    def trigger(self) -> None:
        if self.stopped or self.owner.stopping:
            return
        if self.cycle is not None:
            self.again = True
            return
        self.cycle = defer.ensureDeferred(self._cycle())
        self.cycle.addErrback(lambda f: self.owner.log.failure(
            "push dispatch of {queue} failed", f, queue=self.queue))
        self.cycle.addBoth(self._cycle_ended)

    def _cycle_ended(self, _: Any) -> None:
        self.cycle = None
        if self.again:
            self.again = False
            self.trigger()

    async def _cycle(self) -> None:
        while not (self.stopped or self.owner.stopping):
            self.again = False
            try:
                # Attempts of this process include post hooks, called after the message
                # left the in-flight set: they count here, so a post hook that hangs cannot
                # make the process open a request per message push_rate allows.
                most = min(10, self.concurrency - len(self.attempts))
                if most <= 0:
                    return  # the end of an attempt triggers the next claim
                if not self.admitted:
                    # A name the original RestMQ allowed (`my queue`) passes the queue
                    # operations only once found registered, as in every route.
                    self.queue, self.admitted = await self.owner.core.admit(self.queue), True
                claim = await self.owner.core.push_claim(self.queue, most)
            except RestMQError as e:
                if not self._failing:
                    self._failing = True
                    self.owner.log.warn("push claim of {queue} failed ({error}); the sweep "
                                        "tries again", queue=self.queue, error=e.reason)
                return
            self._failing = False
            if claim.state == "rate":
                self._after(claim.wait_ms / 1000)
                return
            if claim.state != "ok":
                return
            self.concurrency = claim.config.concurrency
            if not claim.messages:
                return
            for lease in claim.messages:
                attempt = defer.ensureDeferred(Attempt(self, claim.config, lease).run())
                attempt.addErrback(lambda f: self.owner.log.failure(
                    "push attempt of {queue} failed", f, queue=self.queue))
                self.attempts.add(attempt)
                attempt.addBoth(self._attempt_ended, attempt)

    def _attempt_ended(self, _: Any, attempt: defer.Deferred) -> None:
        self.attempts.discard(attempt)
        if self.holding:
            self.ended = True
        else:
            self.trigger()

    def ending_together(self, end: Any) -> None:
        """Calls `end()`, which ends several attempts at once (an ack for them all was
        answered), and then claims once for the room they all left, rather than once for
        the first and again for the rest."""
        self.holding, self.ended = True, False
        try:
            end()
        finally:
            self.holding = False
        if self.ended:
            self.ended = False
            self.trigger()

    def _after(self, seconds: float) -> None:
        if self.timer is not None and self.timer.active():
            if self.timer.getTime() <= self.owner.clock.seconds() + seconds:
                return
            self.timer.cancel()
        self.timer = self.owner.clock.callLater(seconds, self.trigger)


class _Acks:
    """The acks of one push queue's attempts, committed in groups: the first goes to Redis at
    once; those that come while it is on its way wait, and go together (ACK_MAX receipts a
    script run) when it is answered. Under load a round trip and a script run then serve many
    pushes rather than one each; alone, an ack waits for nothing."""

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher
        self.waiting: list[tuple[str, defer.Deferred]] = []
        self.sending = 0

    def ack(self, receipt: str) -> defer.Deferred:
        """Fires with True (acked) or False (its lease had ended: stale), or fails as
        core.ack does."""
        d = defer.Deferred()
        self.waiting.append((receipt, d))
        if not self.sending:
            self._send()
        return d

    def _send(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting[:ACK_MAX], self.waiting[ACK_MAX:]
            self.sending += 1
            sent = defer.maybeDeferred(self.dispatcher.owner.core.ack, self.dispatcher.queue,
                                       [receipt for receipt, _ in batch])
            sent.addBoth(self._answered, batch)

    def _answered(self, result: Any, batch: list[tuple[str, defer.Deferred]]) -> None:
        self.sending -= 1
        if not self.sending:
            self._send()  # those that came meanwhile go now, before these attempts end
        if isinstance(result, Failure):
            # Each attempt tries its ack again on its own schedule (Attempt._settle).
            self.dispatcher.ending_together(lambda: [d.errback(result) for _, d in batch])
        else:
            acked = set(result.acked)
            self.dispatcher.ending_together(
                lambda: [d.callback(receipt in acked) for receipt, d in batch])


class Attempt:
    """One delivery of one message: the pre hook, the POST, the settling (ack, or release
    with backoff, a pause for 429/503, a dead letter at max_attempts), the post hook."""

    def __init__(self, dispatcher: Dispatcher, config: Any, lease: Any):
        self.dispatcher, self.config, self.lease = dispatcher, config, lease
        self.owner = dispatcher.owner
        self.queue = dispatcher.queue

    def _headers(self, content_type: str) -> Headers:
        dispatcher = self.dispatcher
        if not dispatcher.queue_header:  # the queue's name (as admitted) quoted once
            dispatcher.queue_header = quote(self.queue, safe="/:@-._~").encode("ascii")
        headers = Headers({b"content-type": [content_type.encode("latin-1")],
                           b"user-agent": [USER_AGENT],
                           b"restmq-queue": [dispatcher.queue_header],
                           b"restmq-key": [quote(self.lease.key, safe="/:@-._~").encode()],
                           b"restmq-attempt": [str(self.lease.deliveries).encode()]})
        if self.config.auth:
            headers.setRawHeaders(b"authorization", [self.config.auth.encode("latin-1")])
        return headers

    async def _call(self, url: str, body: bytes, content_type: str) -> tuple[str, int | None,
                                                                            Any]:
        """(outcome, status, reply headers) of one POST."""
        try:
            status, headers = await post_capped(self.owner.agent, url.encode("ascii"), body,
                                          self._headers(content_type), self.config.timeout,
                                          self.owner.clock)
        except (AttemptTimeout, ConnectTimeout):
            return "timeout", None, None
        except ForbiddenTarget:
            return "forbidden_target", None, None
        except Exception:  # refused, reset, DNS failure, a broken reply: all connection errors
            return "connect_error", None, None
        return ("ok" if 200 <= status < 300 else "http_error"), status, headers

    async def run(self) -> None:
        lease, config = self.lease, self.config
        outcome, status, headers = "ok", None, None
        if config.pre_hook:
            hook = json.dumps({"queue": self.queue, "key": lease.key,
                               "attempt": lease.deliveries}).encode()
            result, _, _ = await self._call(config.pre_hook, hook, "application/json")
            if result != "ok":
                outcome = "forbidden_target" if result == "forbidden_target" else "pre_hook"
        if outcome == "ok":
            outcome, status, headers = await self._call(
                config.url, lease.value.encode("utf-8"), config.content_type)
        self.owner.count(self.queue, outcome, lease.key, status)
        final = await self._settle(outcome, status, headers)
        if config.post_hook and final is not None:
            note = json.dumps({"queue": self.queue, "key": lease.key,
                               "attempt": lease.deliveries, "outcome": final,
                               "status": status}).encode()
            await self._call(config.post_hook, note, "application/json")

    async def _settle(self, outcome: str, status: int | None, headers: Any) -> str | None:
        """Ack or release; 'done', 'retry' or 'dead', None when Redis stayed out of reach (the
        lease hands the message back) or the lease had already ended (stale)."""
        core, receipt = self.owner.core, self.lease.receipt
        delay, pause = 0.0, None
        if outcome != "ok":
            wanted = retry_after(headers, self.owner.wall())
            delay = backoff(self.config.backoff_min, self.config.backoff_max,
                            self.lease.deliveries)
            if wanted is not None:
                delay = max(delay, wanted)
            if status in (429, 503):
                pause = min(PAUSE_MAX, wanted if wanted is not None else PAUSE_DEFAULT)
        for tries in range(SETTLE_TRIES):
            try:
                if outcome == "ok":
                    return "done" if await self.dispatcher.acks.ack(receipt) else None
                if pause:
                    await core.push_pause(self.queue, pause)
                    pause = None
                released = await core.push_release(self.queue, receipt, int(delay * 1000))
                return "dead" if released.dead_lettered else (
                    "retry" if released.released else None)
            except RestMQError as e:
                if tries == SETTLE_TRIES - 1 or self.owner.stopping:
                    self.owner.log.warn("push of {key}: could not settle ({error}); the lease "
                                        "hands it back", key=self.lease.key, error=e.reason)
                    return None
                await task.deferLater(self.owner.clock, 1.0, lambda: None)
        return None
