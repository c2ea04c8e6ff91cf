"""Live delivery (docs/live-delivery.md): who is connected to which queue, and who gets which
message.

Consumers (comet, WebSocket, SSE) register here; `dispatch` pops batches with POP_BATCH and
hands roundrobin messages out in rotation, while broadcast batches come back through the
`<q>:PUBSUB` subscription so that every process writes them in the same order. Waiters (long
polls, restmq.delivery.waiters) park here too, and a dispatch serves them first.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from restmq.clock import reactor_clock
from restmq.core import BATCH_BYTES, BATCH_COUNT, Core, Message
from restmq.delivery.presence import PRESENCE_KINDS, Consumer, Presence, Run
from restmq.delivery.waiters import Waiter
from restmq.errors import RedisTrouble, RestMQError
from restmq.jsontext import json_text
from restmq.redis import keys
from restmq.redis.keys import CHANNEL_SUFFIX
SWEEP_INTERVAL = 1.0
BROADCAST_WAIT = 5.0
# A put-back that Redis refuses or leaves unanswered is tried again, after 0.5 s, 1 s, 2 s...
# (at most 5 s apart) for a minute, and once more at shutdown: a failover pauses writes for
# seconds, and the messages exist nowhere but here.
PUT_BACK_RETRY = (0.5, 5.0)
PUT_BACK_FOR = 60.0
# At stop, how long (from the stop) the live consumers' output may take to reach their peers
# before the connections close, and how often it is looked at meanwhile.
SHUTDOWN_GRACE = 10.0
DRAIN_POLL = 0.05
class Delivery(service.Service):
    """Per-process live delivery over one Core and one pub/sub connection (`pubsub`, a
    restmq.redis.PubSubService whose listener is this object). `stall_timeout` is how long
    a consumer may leave its output unread before it is cut (the handlers apply it)."""

    log = Logger()

    def __init__(self, core: Core, pubsub: Any, db: int = 0, clock: Any = None,
                 stall_timeout: float = 20.0):
        if clock is None:
            clock = reactor_clock()
        self.core = core
        self.pubsub = pubsub
        self.db = db
        self.clock = clock
        self.stall_timeout = stall_timeout
        self.queues: dict[str, Presence] = {}
        self.runs: dict[str, Run] = {}
        self.stopping = False
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = clock
        self._naps: set[defer.Deferred] = set()  # put-backs waiting to be tried again

    # -- lifecycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        self._sweep.start(SWEEP_INTERVAL, now=False)

    def stopService(self) -> defer.Deferred:
        """Stops popping, and answers the parked waiters with nothing (those with a claim on
        its way get what it brings). Fires once the dispatches in flight have handed out (or
        put back) what they popped, as the Redis connections must outlive them, and then once
        what was written to each live consumer has reached its peer, or SHUTDOWN_GRACE
        seconds after the stop: the connections are closed next, and what is still buffered
        for them here then is lost."""
        super().stopService()
        self.stopping = True
        until = self.clock.seconds() + SHUTDOWN_GRACE
        if self._sweep.running:
            self._sweep.stop()
        for state in list(self.queues.values()):
            for waiter in list(state.waiters):
                waiter.time_up()
        for nap in list(self._naps):
            nap.cancel()  # a put-back waiting to be tried again makes its last attempt now
        return defer.ensureDeferred(self._drain([run.ended() for run in self.runs.values()],
                                                until))

    async def _drain(self, runs: list[defer.Deferred], until: float) -> None:
        """Wait for `runs`, then until each live consumer has once had all its output
        acknowledged (later broadcast batches are not waited for), or until `until`."""
        await defer.DeferredList(runs)
        behind = [c for state in self.queues.values() for c in state.consumers]
        while True:
            behind = [consumer for consumer in behind if _unsent(consumer)]
            if not behind:
                return
            if self.clock.seconds() >= until:
                self.log.warn("stopping with {count} live consumer(s) still behind by {size} "
                              "bytes in all: what they were not sent is lost", count=len(behind),
                              size=sum(_unsent(consumer) for consumer in behind))
                return
            await task.deferLater(self.clock, DRAIN_POLL, lambda: None)

    # -- consumers -----------------------------------------------------------------------------

    def register(self, queue: str, consumer: Consumer) -> None:
        self._presence(queue).consumers.append(consumer)
        self.trigger(queue)

    def unregister(self, queue: str, consumer: Consumer) -> None:
        """Idempotent: a consumer may leave on close, on error and on purge."""
        state = self.queues.get(queue)
        if state is None or consumer not in state.consumers:
            return
        state.consumers.remove(consumer)
        self._forget_if_empty(queue, state)

    def park(self, queue: str, waiter: Waiter, seconds: float) -> None:
        """Take a long poll in as a waiter of `queue` for `seconds`; it holds the queue's
        subscription like a live consumer, gets no live deliveries, and leaves by itself
        (answered, timed out or departed). A dispatch follows at once: a wake notice that
        came between its first claim and now was not for it."""
        if self.stopping:
            waiter.time_up()
            return
        self._presence(queue).waiters[waiter] = None
        waiter.park(seconds, lambda: self._unpark(queue, waiter))
        self.trigger(queue)

    def _unpark(self, queue: str, waiter: Waiter) -> None:
        state = self.queues.get(queue)
        if state is not None and state.waiters.pop(waiter, False) is None:
            self._forget_if_empty(queue, state)

    def presence(self, queue: str) -> dict[str, int]:
        """How many live consumers of `queue` this process holds, by kind, and waiters (other
        processes hold their own: nothing here is shared)."""
        counts = dict.fromkeys(PRESENCE_KINDS, 0)
        state = self.queues.get(queue)
        if state is not None:
            for consumer in state.consumers:
                kind = getattr(consumer, "kind", "comet")
                counts[kind] = counts.get(kind, 0) + 1
            counts["waiter"] = len(state.waiters)
        return counts

    def _presence(self, queue: str) -> Presence:
        state = self.queues.get(queue)
        if state is None:
            state = self.queues[queue] = Presence()
            self.pubsub.subscribe(keys.channel(queue))
        return state

    def _forget_if_empty(self, queue: str, state: Presence) -> None:
        if not state.consumers and not state.waiters and self.queues.get(queue) is state:
            del self.queues[queue]
            self.pubsub.unsubscribe(keys.channel(queue))

    def _send(self, queue: str, consumer: Consumer, batch: list[tuple[str, str]]) -> bool | None:
        """Write `batch` to one consumer: True when written, False when it had gone (nothing
        written), None when it failed: then it is dropped, and so is what it was given."""
        try:
            if consumer.send(batch):
                return True
        except Exception:
            self.log.failure("live consumer of {queue} failed: dropped; it may have missed "
                             "{keys}", queue=queue, keys=", ".join(key for key, _ in batch))
            self._drop(queue, consumer, "failed")
            return None
        self.unregister(queue, consumer)
        return False

    def _drop(self, queue: str, consumer: Consumer, why: str) -> None:
        self.unregister(queue, consumer)
        try:
            consumer.cut(why)
        except Exception:
            self.log.failure("live consumer of {queue} could not be cut", queue=queue)

    # -- dispatch -------------------------------------------------------------------------------

    def trigger(self, queue: str) -> None:
        """Run dispatch for `queue`; while one runs, remember that exactly one more is due."""
        if self.stopping or queue not in self.queues:
            return
        run = self.runs.get(queue)
        if run is not None:
            run.again = True
            return
        run = self.runs[queue] = Run()
        d = defer.ensureDeferred(self._dispatch(queue, run))
        d.addErrback(lambda f: self.log.failure("dispatch of {queue} failed", f, queue=queue))
        d.addBoth(self._ended, queue, run)

    def _ended(self, _: Any, queue: str, run: Run) -> None:
        if self.runs.get(queue) is run:
            del self.runs[queue]
        for waiter in run.waiters:
            waiter.callback(None)

    def sweep(self) -> None:
        for queue in list(self.queues):
            self.trigger(queue)

    async def _dispatch(self, queue: str, run: Run) -> None:
        while True:
            run.again = False
            state = self.queues.get(queue)
            if state is None or self.stopping:
                return
            if keys.channel(queue) not in self.pubsub.confirmed:
                return  # resumed by the subscription's confirmation or the sweep
            if state.waiters:
                await self._serve_waiters(queue)
            if not await self._feed_consumers(queue, run) or not run.again:
                return

    async def _serve_waiters(self, queue: str) -> None:
        """One claim per waiter, in arrival order, until one finds nothing pending."""
        while not self.stopping:
            state = self.queues.get(queue)
            if state is None or not state.waiters:
                return
            waiter = next(iter(state.waiters))
            if not await waiter.serve():
                return
            self._unpark(queue, waiter)  # gone already, once answered: never served twice

    async def _feed_consumers(self, queue: str, run: Run) -> bool:
        """One POP_BATCH for the live consumers, if there are any. False: the run stops
        (Redis trouble, or every roundrobin consumer backed up)."""
        state = self.queues.get(queue)
        if state is None or not state.consumers or self.stopping:
            return True
        if state.policy == "roundrobin" and not state.any_ready():
            return False  # resumed by a consumer whose output drains, or the sweep
        purges = run.purges
        try:
            policy, batch = await self.core.pop_batch(queue)
        except RestMQError as e:
            self.log.warn("live delivery of {queue} paused: {error}", queue=queue,
                          error=e.reason)
            return False
        if policy is not None and queue in self.queues:
            self.queues[queue].policy = policy
        if policy == "roundrobin":
            await self._hand_out(queue, batch, lambda: run.purges != purges)
        elif batch and _full(batch):
            await self._wait_for_broadcast(run, batch[-1].key)
        if batch and _full(batch):
            run.again = True
        return True

    async def _hand_out(self, queue: str, batch: list[Message],
                        purged: Callable[[], bool]) -> None:
        """Roundrobin: each message to the next consumer that can take it, among those
        registered now (not when the pop started); what none can take goes back to Redis,
        unless `purged()` says that a purge was heard of since the pop was sent."""
        for i, message in enumerate(batch):
            if not self._give(queue, encode([message])):
                await self._put_back(queue, batch[i:], purged)
                return

    def _give(self, queue: str, encoded: list[tuple[str, str]]) -> bool:
        """False when no consumer could take it (nothing written)."""
        while True:
            state = self.queues.get(queue)
            consumer = state.next_ready() if state is not None else None
            if consumer is None:
                return False
            if self._send(queue, consumer, encoded) is not False:
                return True  # written, or lost with a consumer that failed (logged)

    async def _put_back(self, queue: str, messages: list[Message],
                        purged: Callable[[], bool]) -> None:
        """No client waits for this, so Redis trouble is waited out: the put-back is tried
        again (the script skips what an earlier attempt put back) for PUT_BACK_FOR seconds,
        and not past shutdown. Only then are the messages logged as lost.

        Messages popped by a pop sent before a purge we have heard of since are dropped
        instead: put back, they would undo the purge. Should the pop have run after the purge
        in Redis, they were added after it, and dropping them loses them; so only what nobody
        can take is dropped, and handing out is not held back by a purge."""
        give_up = self.clock.seconds() + PUT_BACK_FOR
        delay = PUT_BACK_RETRY[0]
        while True:
            if purged():
                self.log.warn("{keys} popped for {queue} before a purge: dropped as purged",
                              keys=", ".join(m.key for m in messages), queue=queue)
                return
            try:
                await self.core.requeue(queue, messages)
                return
            except RedisTrouble as e:
                error = e
            except RestMQError as e:
                return self._lost(queue, messages, e)
            remaining = give_up - self.clock.seconds()
            if self.stopping or remaining <= 0:
                return self._lost(queue, messages, error)
            await self._nap(min(delay, remaining))
            delay = min(2 * delay, PUT_BACK_RETRY[1])

    async def _nap(self, seconds: float) -> None:
        """Sleep, unless the service stops meanwhile."""
        nap = task.deferLater(self.clock, seconds, lambda: None)
        self._naps.add(nap)
        try:
            await nap
        except defer.CancelledError:
            pass
        finally:
            self._naps.discard(nap)

    def _lost(self, queue: str, messages: list[Message], error: RestMQError) -> None:
        for message in messages:
            self.log.error("{key} popped for {queue} could not be put back ({error}): lost",
                           key=message.key, queue=queue, error=error.reason)

    async def _wait_for_broadcast(self, run: Run, last_key: str) -> None:
        """Pace a full broadcast batch: pop again once it came back on the subscription."""
        if last_key in run.arrived:
            return
        waiter = run.batch_arrived = defer.Deferred()
        run.awaited_key = last_key
        waiter.addTimeout(BROADCAST_WAIT, self.clock, onTimeoutCancel=lambda *_: None)
        try:
            await waiter
        finally:
            run.batch_arrived = run.awaited_key = None

    # -- pub/sub listener -------------------------------------------------------------------

    def confirmed(self, channel: str) -> None:
        self.trigger(channel[:-len(CHANNEL_SUFFIX)])

    def lost(self) -> None:
        self.log.warn("pub/sub connection lost: live delivery paused until it is back")

    def message(self, channel: str, text: str) -> None:
        if not channel.endswith(CHANNEL_SUFFIX):
            return
        queue = channel[:-len(CHANNEL_SUFFIX)]
        try:
            note = json.loads(text)
        except (ValueError, RecursionError):  # anyone with Redis access may publish here
            return
        if not isinstance(note, dict) or note.get("db") != self.db:
            return
        kind = note.get("type")
        if kind == "wake":
            self.trigger(queue)
        elif kind == "batch":
            self._broadcast(queue, note.get("messages"))
        elif kind == "purge":
            self._purge(queue)

    def _broadcast(self, queue: str, messages: Any) -> None:
        if not isinstance(messages, list):
            return
        batch = [Message(str(m.get("key")), str(m.get("value")))
                 for m in messages if isinstance(m, dict)]
        state = self.queues.get(queue)
        if state is not None:
            encoded = encode(batch)  # once, for every consumer
            for consumer in list(state.consumers):
                self._send(queue, consumer, encoded)
        run = self.runs.get(queue)
        if batch and run is not None:
            run.arrived.append(batch[-1].key)
            if batch[-1].key == run.awaited_key and not run.batch_arrived.called:
                run.batch_arrived.callback(None)

    def _purge(self, queue: str) -> None:
        run = self.runs.get(queue)
        if run is not None:
            run.purges += 1
        state = self.queues.get(queue)
        if state is None:
            return
        for consumer in list(state.consumers):
            try:
                consumer.end()
            except Exception:
                self.log.failure("live consumer of {queue} failed at purge: dropped",
                                 queue=queue)
                self._drop(queue, consumer, "failed at purge")
            self.unregister(queue, consumer)


def _unsent(consumer: Consumer) -> int:
    try:
        return consumer.unsent()
    except Exception:  # a broken consumer cannot be waited for
        return 0


def encode(batch: list[Message]) -> list[tuple[str, str]]:
    """(key, the delivered message object `{"key": K, "value": V}` as JSON text)."""
    return [(m.key, json_text({"key": m.key, "value": m.value})) for m in batch]


def _full(batch: list[Message]) -> bool:
    return (len(batch) >= BATCH_COUNT
            or sum(len(m.value.encode("utf-8")) for m in batch) >= BATCH_BYTES)
