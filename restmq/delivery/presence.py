"""The state live delivery (restmq.delivery.live) keeps per queue: what a live connection must
offer (Consumer), who is present on a queue in this process (Presence: consumers in rotation and
parked waiters), and the dispatch running for a queue (Run)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer

# The kinds a queue's presence is counted by: the live consumers' `kind`, then the waiters.
PRESENCE_KINDS = ("comet", "websocket", "sse", "waiter")


class Consumer(Protocol):
    """What delivery needs of a live connection."""

    ready: bool  # can take a roundrobin message now: connected, its output not backed up
    kind: str  # "comet", "websocket" or "sse", as /info/ and /metrics count them

    def send(self, batch: list[tuple[str, str]]) -> bool:
        """Write messages given as (key, message object as JSON text), in order; False when
        nothing was written because the consumer has gone (or was just cut for being too far
        behind)."""

    def end(self) -> None:
        """Write the final `null` and end the stream (purge)."""

    def unsent(self) -> int:
        """Bytes written that the peer has not acknowledged yet; 0 once the connection is
        gone."""

    def cut(self, why: str) -> None:
        """Log `why` and drop the connection."""


@dataclass(eq=False)
class Presence:
    """The local consumers of one queue, in connection order, and its parked waiters, in
    arrival order (a dict for its order and its removals in constant time)."""

    consumers: list = field(default_factory=list)
    waiters: dict = field(default_factory=dict)
    counter: int = 0
    policy: str | None = None  # as the last pop for this queue saw it

    def next_ready(self) -> Consumer | None:
        """The next consumer in rotation that can take a message now, skipping the others."""
        n = len(self.consumers)
        for step in range(n):
            consumer = self.consumers[(self.counter + step) % n]
            if consumer.ready:
                self.counter += step + 1
                return consumer
        return None

    def any_ready(self) -> bool:
        return any(consumer.ready for consumer in self.consumers)


@dataclass(eq=False)
class Run:
    """The dispatch running for one queue. It outlives the consumer list it started with:
    consumers may all leave and others arrive while a pop is on its way."""

    again: bool = False
    waiters: list = field(default_factory=list)
    batch_arrived: defer.Deferred | None = None
    awaited_key: str | None = None
    # Last keys of recently arrived broadcast batches: the subscription can deliver a batch
    # before the script's reply reaches us on the command connection.
    arrived: deque = field(default_factory=lambda: deque(maxlen=64))
    purges: int = 0  # purge notifications of the queue heard while this run went on

    def ended(self) -> defer.Deferred:
        d = defer.Deferred()
        self.waiters.append(d)
        return d
