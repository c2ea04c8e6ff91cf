"""Live delivery (PROTOCOL.md §7): who is connected to which queue, and who gets which message.

Consumers (comet, WebSocket, SSE) register here; `dispatch` pops batches with POP_BATCH and
hands roundrobin messages out in rotation, while broadcast batches come back through the
`<q>:PUBSUB` subscription so that every process writes them in the same order.
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from restmq.core import BATCH_BYTES, BATCH_COUNT, Core, Message
from restmq.errors import RestMQError
from restmq.jsontext import json_text

CHANNEL_SUFFIX = ":PUBSUB"
SWEEP_INTERVAL = 1.0
BROADCAST_WAIT = 5.0


class Consumer(Protocol):
    """What delivery needs of a live connection."""

    def send(self, batch: list[tuple[str, str]]) -> None:
        """Write messages given as (key, message object as JSON text), in order; a consumer
        that has gone or is too far behind closes itself."""

    def end(self) -> None:
        """Write the final `null` and end the stream (purge)."""


@dataclass(eq=False)
class _Queue:
    consumers: list = field(default_factory=list)
    counter: int = 0
    running: bool = False
    again: bool = False
    batch_arrived: defer.Deferred | None = None
    awaited_key: str | None = None
    # Last keys of recently arrived broadcast batches: the subscription can deliver a batch
    # before the script's reply reaches us on the command connection.
    arrived: deque = field(default_factory=lambda: deque(maxlen=64))


class Delivery(service.Service):
    """Per-process live delivery over one Core and one pub/sub connection (`pubsub`, a
    restmq.redis.PubSubService whose listener is this object)."""

    log = Logger()

    def __init__(self, core: Core, pubsub: Any, db: int = 0, clock: Any = None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.core = core
        self.pubsub = pubsub
        self.db = db
        self.clock = clock
        self.queues: dict[str, _Queue] = {}
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = clock

    # -- lifecycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._sweep.start(SWEEP_INTERVAL, now=False)

    def stopService(self):
        super().stopService()
        if self._sweep.running:
            self._sweep.stop()

    # -- consumers -----------------------------------------------------------------------------

    def register(self, queue: str, consumer: Consumer) -> None:
        state = self.queues.get(queue)
        if state is None:
            state = self.queues[queue] = _Queue()
            self.pubsub.subscribe(queue + CHANNEL_SUFFIX)
        state.consumers.append(consumer)
        self.trigger(queue)

    def unregister(self, queue: str, consumer: Consumer) -> None:
        """Idempotent: a consumer may leave on close, on error and on purge."""
        state = self.queues.get(queue)
        if state is None or consumer not in state.consumers:
            return
        state.consumers.remove(consumer)
        if not state.consumers:
            del self.queues[queue]
            self.pubsub.unsubscribe(queue + CHANNEL_SUFFIX)

    # -- dispatch -------------------------------------------------------------------------------

    def trigger(self, queue: str) -> None:
        """Run dispatch for `queue`; while one runs, remember that exactly one more is due."""
        state = self.queues.get(queue)
        if state is None:
            return
        if state.running:
            state.again = True
            return
        state.running = True
        defer.ensureDeferred(self._dispatch(queue, state)).addErrback(
            lambda f: self.log.failure("dispatch of {queue} failed", f, queue=queue))

    def sweep(self) -> None:
        for queue in list(self.queues):
            self.trigger(queue)

    async def _dispatch(self, queue: str, state: _Queue) -> None:
        try:
            while True:
                state.again = False
                if self.queues.get(queue) is not state:
                    return
                if queue + CHANNEL_SUFFIX not in self.pubsub.confirmed:
                    return  # resumed by the subscription's confirmation or the sweep
                try:
                    policy, batch = await self.core.pop_batch(queue)
                except RestMQError as e:
                    self.log.warn("live delivery of {queue} paused: {error}", queue=queue,
                                  error=e.reason)
                    return
                if policy == "roundrobin":
                    self._hand_out(queue, state, batch)
                elif batch and _full(batch):
                    await self._wait_for_broadcast(state, batch[-1].key)
                if batch and _full(batch):
                    state.again = True
                if not state.again:
                    return
        finally:
            state.running = False

    def _hand_out(self, queue: str, state: _Queue, batch: list[Message]) -> None:
        for message in batch:
            if not state.consumers:
                self.log.warn("{key} popped for {queue} but its consumers left: dropped",
                              key=message.key, queue=queue)
                continue
            consumer = state.consumers[state.counter % len(state.consumers)]
            state.counter += 1
            consumer.send(encode([message]))

    async def _wait_for_broadcast(self, state: _Queue, last_key: str) -> None:
        """Pace a full broadcast batch: pop again once it came back on the subscription."""
        if last_key in state.arrived:
            return
        waiter = state.batch_arrived = defer.Deferred()
        state.awaited_key = last_key
        waiter.addTimeout(BROADCAST_WAIT, self.clock, onTimeoutCancel=lambda *_: None)
        try:
            await waiter
        finally:
            state.batch_arrived = state.awaited_key = None

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
        except ValueError:
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
        if state is None:
            return
        encoded = encode(batch)  # once, for every consumer
        for consumer in list(state.consumers):
            consumer.send(encoded)
        if batch:
            state.arrived.append(batch[-1].key)
            if batch[-1].key == state.awaited_key and not state.batch_arrived.called:
                state.batch_arrived.callback(None)

    def _purge(self, queue: str) -> None:
        state = self.queues.get(queue)
        if state is None:
            return
        for consumer in list(state.consumers):
            consumer.end()
            self.unregister(queue, consumer)


def encode(batch: list[Message]) -> list[tuple[str, str]]:
    """(key, the delivered message object `{"key": K, "value": V}` as JSON text)."""
    return [(m.key, json_text({"key": m.key, "value": m.value})) for m in batch]


def _full(batch: list[Message]) -> bool:
    return (len(batch) >= BATCH_COUNT
            or sum(len(m.value.encode("utf-8")) for m in batch) >= BATCH_BYTES)
