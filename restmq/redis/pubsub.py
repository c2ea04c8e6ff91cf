"""The dedicated pub/sub connection of an HTTP process: the channels live delivery wants,
subscribed again after every reconnect, and a PING that finds a connection gone silent.
"""
from __future__ import annotations

from typing import Any

import txredisapi
from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from restmq.redis.connection import COMMAND_TIMEOUT, RECONNECT_MAX_DELAY, RedisService
from restmq.redis.wire import text


class _Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        self.factory.owner.message_received(text(channel), text(message))


class _SubscriberFactory(txredisapi.RedisFactory):
    protocol = _Subscriber
    maxDelay = RECONNECT_MAX_DELAY
    initialDelay = 0.5
    owner: "PubSubService"

    def addConnection(self, conn):
        super().addConnection(conn)
        if conn in self.pool:
            self.owner.connected(conn)

    def delConnection(self, conn):
        super().delConnection(conn)
        self.owner.disconnected(conn)


class PubSubService(service.Service):
    """The dedicated pub/sub connection of an HTTP process
    (docs/live-delivery.md#several-processes).

    Keeps the set of wanted channels, subscribes them again after every reconnect, and tells
    `listener` (an object with `confirmed(channel)`, `lost()` and `message(channel, text)`)
    what happens. A channel counts as subscribed only once Redis has confirmed it.

    A connection can die without closing (a half-open TCP connection, a peer that stopped
    reading): broadcast batches published meanwhile would reach nobody here. So a PING goes
    out every `timeout / 2` seconds (at most 1 s), and a connection that leaves one
    unanswered for `timeout` seconds is dropped and replaced.
    """

    log = Logger()

    def __init__(self, redis: RedisService, listener: Any = None,
                 timeout: float = COMMAND_TIMEOUT, clock: Any = None):
        self.redis = redis
        self.listener = listener
        self.timeout = timeout
        self.clock = redis.reactor if clock is None else clock
        self.wanted: set[str] = set()
        self._holders: dict[str, int] = {}  # channel -> how many want it
        self.confirmed: set[str] = set()
        self._conn = None
        self._ping_sent: float | None = None  # when the unanswered PING went out
        self._factory: _SubscriberFactory | None = None
        self._pinger = task.LoopingCall(self._check_alive)
        self._pinger.clock = self.clock

    def startService(self) -> None:
        super().startService()
        factory = _SubscriberFactory(None, None, 1, isLazy=True, charset="utf-8",
                                     password=self.redis.password, convertNumbers=False)
        factory.owner = self
        factory.startConnecting(self.redis.endpoint())
        self._factory = factory
        self._pinger.start(min(1.0, self.timeout / 2), now=False)

    def stopService(self):
        super().stopService()
        if self._pinger.running:
            self._pinger.stop()
        factory, self._factory = self._factory, None
        self._conn = None
        self.confirmed.clear()
        if factory is not None:
            return factory.disconnect()

    def connected(self, conn) -> None:
        self._conn = conn
        self._ping_sent = None
        self.log.info("pub/sub connection ready, subscribing {n} channel(s)", n=len(self.wanted))
        for channel in sorted(self.wanted):
            self._subscribe(channel)

    def disconnected(self, conn) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._ping_sent = None
        self.confirmed.clear()
        if self.listener is not None:
            self.listener.lost()

    def _check_alive(self) -> None:
        conn = self._conn
        if conn is None or not conn.connected:
            return
        now = self.clock.seconds()
        if self._ping_sent is None:
            self._ping_sent = now
            conn.execute_command("PING").addBoth(self._pong, conn)
        elif now - self._ping_sent > self.timeout:
            self.log.warn("pub/sub connection did not answer for {t} s: reconnecting",
                          t=self.timeout)
            # Forget it first: live delivery stops popping before the connection is gone.
            self.disconnected(conn)
            conn.transport.abortConnection()

    def _pong(self, _, conn) -> None:
        if conn is self._conn:
            self._ping_sent = None

    def subscribe(self, channel: str) -> None:
        """One more holder wants `channel` (live delivery and a push dispatcher may both hold
        one queue's channel): subscribed with the first."""
        self._holders[channel] = self._holders.get(channel, 0) + 1
        if channel in self.wanted:
            return
        self.wanted.add(channel)
        if self._conn is not None:
            self._subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        """One holder less: unsubscribed when it was the last."""
        held = self._holders.get(channel, 0) - 1
        if held > 0:
            self._holders[channel] = held
            return
        self._holders.pop(channel, None)
        self.wanted.discard(channel)
        self.confirmed.discard(channel)
        if self._conn is not None:
            self._conn.unsubscribe(channel).addErrback(lambda f: None)

    def _subscribe(self, channel: str) -> None:
        conn = self._conn

        def done(_):
            if conn is self._conn and channel in self.wanted:
                self.confirmed.add(channel)
                if self.listener is not None:
                    self.listener.confirmed(channel)

        def failed(failure):
            self.log.warn("SUBSCRIBE {channel} failed: {error}", channel=channel,
                          error=failure.getErrorMessage())

        conn.subscribe(channel).addCallbacks(done, failed)

    def message_received(self, channel: str, message: str) -> None:
        if self.listener is not None:
            self.listener.message(channel, message)


class FanOut:
    """A pub/sub listener that tells each of `listeners` everything (live delivery and the
    push dispatchers of a process share its one connection)."""

    def __init__(self, *listeners: Any):
        self.listeners = listeners

    def confirmed(self, channel: str) -> None:
        for listener in self.listeners:
            listener.confirmed(channel)

    def lost(self) -> None:
        for listener in self.listeners:
            listener.lost()

    def message(self, channel: str, message: str) -> None:
        for listener in self.listeners:
            listener.message(channel, message)
