"""Fakes shared by the unit tier: an HTTP connection of our Application over a StringTransport,
driven by task.Clock, with a core and a delivery that answer at once and touch no Redis; and
the core and pub/sub connection live delivery runs on, answered by the test."""
from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from restmq.http import Context, make_application

WALL = 1_700_000_000.0  # the wall time the fakes show: 2023-11-14 22:13:20 UTC


class FakeCore:
    """What the live routes ask of the core before a stream starts."""

    def admit(self, name):
        return defer.succeed(name)

    def ping(self):
        return defer.succeed(True)


class FakeDelivery:
    """Records the live consumers that register; delivers nothing by itself."""

    def __init__(self, clock, stall_timeout: float = 20.0):
        self.clock, self.stall_timeout = clock, stall_timeout
        self.consumers: list = []

    def register(self, queue, consumer):
        self.consumers.append(consumer)

    def unregister(self, queue, consumer):
        if consumer in self.consumers:
            self.consumers.remove(consumer)

    def trigger(self, queue):
        pass


class PopCore:
    """Live delivery's batch pops, answered by the test (`pops`, one Deferred per pop)."""

    def __init__(self):
        self.pops: list[defer.Deferred] = []

    def pop_batch(self, queue):
        self.pops.append(defer.Deferred())
        return self.pops[-1]


class PubSub:
    """The subscriptions live delivery asks for; confirmed at once unless `confirm` is False
    (then the test adds to `confirmed` and tells delivery)."""

    def __init__(self, confirm: bool = True):
        self.confirm = confirm
        self.wanted: set[str] = set()
        self.confirmed: set[str] = set()

    def subscribe(self, channel):
        self.wanted.add(channel)
        if self.confirm:
            self.confirmed.add(channel)

    def unsubscribe(self, channel):
        self.wanted.discard(channel)
        self.confirmed.discard(channel)


class LiveConsumer:
    """A live consumer that can always take a message, and records the keys it got."""

    ready = True

    def __init__(self):
        self.got: list[str] = []

    def send(self, batch):
        self.got += [key for key, _ in batch]
        return True


class Transport(StringTransport):
    """A StringTransport that can close its writing side (as TCP does). Its `producer` is the
    Outbox of a stream: `producer.pauseProducing()` plays Twisted's buffer filling up."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


class Connection:
    """One connection to an Application built with `make_application(**settings)` on a
    task.Clock (and `core`, else a FakeCore); `clock`, `transport`, `protocol` and `delivery`
    are there to drive and read."""

    def __init__(self, core=None, **settings):
        self.clock = task.Clock()
        self.delivery = FakeDelivery(self.clock)
        ctx = Context(core=core or FakeCore(), delivery=self.delivery)
        settings.setdefault("wall", lambda: WALL)
        app = make_application(ctx, clock=self.clock, **settings)
        self.protocol = app.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = Transport()
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        """What the server wrote since the last take."""
        out = self.transport.value()
        self.transport.clear()
        return out

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        """The peer goes away."""
        self.protocol.connectionLost(Failure(ConnectionDone()))


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])
