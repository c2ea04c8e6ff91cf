"""The Redis connection service: the command pool, its timeouts and reconnects.

Everything that talks to Redis goes through `RedisService.execute` or `RedisService.run_script`,
which never wait longer than the command timeout and fail with the core's domain exceptions.
"""
from __future__ import annotations

from typing import Any

import txredisapi
from twisted.application import service
from twisted.internet import defer, error as ierror, task
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.logger import Logger

from restmq.errors import RedisFailure, RedisUnavailable
from restmq.lua import Script

COMMAND_TIMEOUT = 5.0
RECONNECT_MAX_DELAY = 5.0


def text(value: Any) -> Any:
    """Values that are not valid UTF-8 arrive as bytes: decode them with U+FFFD replacement."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [text(v) for v in value]
    return value


def encode_command(args: tuple) -> bytes:
    """One command in RESP: what txredisapi's _build_command does, at a fifth of the cost."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(txredisapi.RedisProtocol):
    """txredisapi's protocol (reply parsing, AUTH/SELECT, reconnects) with a lean command
    path: `send` writes prepared bytes and returns the reply's Deferred. Instead of one timer
    per command, `stalled` tells the service's watchdog that replies stopped coming."""

    waiting_since: float | None = None  # when the oldest unanswered command was sent, or
                                        # the last reply came while others still wait

    def send(self, payload: bytes, now: float) -> defer.Deferred:
        d = self.replyQueue.get()
        if self.waiting_since is None:
            self.waiting_since = now
        self.transport.write(payload)
        return d

    def replyReceived(self, reply):
        super().replyReceived(reply)
        self.waiting_since = self.factory.clock.seconds() if self.replyQueue.waiting else None

    def stalled(self, now: float, timeout: float) -> bool:
        return self.waiting_since is not None and now - self.waiting_since > timeout


class _Factory(txredisapi.RedisFactory):
    protocol = _Protocol
    # The spec asks for a reconnect attempt at least every 5 s.
    maxDelay = RECONNECT_MAX_DELAY
    initialDelay = 0.5
    settled = False  # a connection attempt has succeeded or failed at least once
    on_first_connection = None

    def addConnection(self, conn):
        self.settled = True
        super().addConnection(conn)
        if self.on_first_connection is not None and conn in self.pool:
            callback, self.on_first_connection = self.on_first_connection, None
            callback()


class _WatchedEndpoint:
    """Tells the factory when a connection attempt fails, so that requests stop waiting for
    the first connection of a fresh process once Redis is known to be unreachable."""

    def __init__(self, endpoint, factory: _Factory):
        self.endpoint, self.factory = endpoint, factory

    def connect(self, protocol_factory):
        def failed(failure):
            self.factory.settled = True
            return failure
        return self.endpoint.connect(protocol_factory).addErrback(failed)


class RedisService(service.Service):
    """Owns the command pool: opened in startService, closed in stopService.

    `description` is the text the stats and control routes show.
    """

    log = Logger()

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, unix_socket: str | None = None,
                 password: str | None = None, db: int = 0, poolsize: int = 10,
                 timeout: float = COMMAND_TIMEOUT, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.host, self.port, self.unix_socket = host, port, unix_socket
        self.password, self.db, self.poolsize = password, db, poolsize
        self.timeout = timeout
        self._factory: _Factory | None = None
        self._next = 0
        self._watchdog = None
        where = f"unix:{unix_socket}" if unix_socket else f"{host}:{port}"
        self.description = f"<Redis Connection: {where} - {poolsize} connection(s)>"

    def endpoint(self):
        if self.unix_socket:
            return UNIXClientEndpoint(self.reactor, self.unix_socket, timeout=self.timeout)
        return HostnameEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)

    def startService(self) -> None:
        super().startService()
        # replyTimeout covers txredisapi's own commands (AUTH, SELECT, and ours while no
        # connection is ready); the watchdog covers the lean path.
        factory = _Factory(None, self.db or None, self.poolsize, isLazy=True,
                           charset="utf-8", password=self.password,
                           replyTimeout=self.timeout, convertNumbers=False)
        factory.clock = self.reactor
        factory.on_first_connection = self._check_persistence
        factory.startConnecting(_WatchedEndpoint(self.endpoint(), factory))
        self._factory = factory
        self._watchdog = task.LoopingCall(self._check_stalls)
        self._watchdog.clock = self.reactor
        self._watchdog.start(min(1.0, self.timeout / 4), now=False)
        self.log.info("connecting to Redis: {redis}", redis=self.description)

    def _check_persistence(self) -> None:
        """Warn once at start-up when a Redis crash would lose acknowledged messages."""
        def checked(reply):
            settings = dict(zip(reply[::2], reply[1::2])) if reply else {}
            if settings.get("appendonly") != "yes":
                self.log.warn(
                    "Redis runs without AOF (appendonly no): messages acknowledged since its "
                    "last snapshot are lost if Redis crashes; see README.rst, Guarantees")
            elif settings.get("appendfsync") not in ("always",):
                self.log.info("Redis AOF with appendfsync {mode}: a Redis crash can lose up "
                              "to about a second of acknowledged messages",
                              mode=settings.get("appendfsync"))

        def unknown(failure):
            self.log.info("could not read Redis persistence settings ({error})",
                          error=failure.getErrorMessage())

        d = self.execute("CONFIG", "GET", "append*")
        d.addCallbacks(checked, unknown)

    def _check_stalls(self) -> None:
        """A connection that has not answered for `timeout` seconds is dropped: its waiting
        commands fail (503) and the pool reconnects."""
        now = self.reactor.seconds()
        for conn in list(self._factory.pool if self._factory else ()):
            if conn.stalled(now, self.timeout):
                self.log.warn("Redis did not answer for {t} s: dropping a connection",
                              t=self.timeout)
                conn.waiting_since = None
                conn.transport.abortConnection()

    def stopService(self):
        super().stopService()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        factory, self._factory = self._factory, None
        if factory is not None:
            return factory.disconnect()

    @property
    def connected(self) -> bool:
        return self._factory is not None and self._factory.size > 0

    def _usable(self) -> bool:
        if self._factory is None:
            return False
        if self._factory.size:
            return True
        # Just after start no connection exists yet: let commands wait for the first one
        # (bounded by the timeout) instead of failing the first requests of a fresh server.
        return not self._factory.settled

    def execute(self, *args: Any) -> defer.Deferred:
        """Run one command. Fires with its reply (text as str, or bytes where it is not valid
        UTF-8: pass it through `text`); fails with
        RedisUnavailable (no connection, timeout, lost connection) or RedisFailure (error reply)."""
        factory = self._factory
        if factory is not None and factory.pool:
            pool = factory.pool
            self._next = (self._next + 1) % len(pool)
            conn = pool[self._next]
            if conn.connected and conn._ready:
                d = conn.send(encode_command(args), self.reactor.seconds())
                return d.addCallback(_reply)
        if not self._usable():
            return defer.fail(RedisUnavailable())
        # No ready connection yet: txredisapi waits for one, bounded by our timeout.
        d = self._factory.handler.execute_command(*args)
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(_translate)

    def run_script(self, script: Script, *args: Any) -> defer.Deferred:
        """Run a Lua script by EVALSHA with `args` as ARGV; on NOSCRIPT load it by EVAL."""
        d = self.execute("EVALSHA", script.sha, 0, *args)

        def noscript(failure):
            failure.trap(RedisFailure)
            if str(failure.value).startswith("EXPIRED"):
                # Redis ran it after its deadline (it was paused): nothing was written.
                raise RedisUnavailable(str(failure.value))
            if not str(failure.value).startswith("NOSCRIPT"):
                return failure
            return self.execute("EVAL", script.source, 0, *args).addErrback(noscript)

        return d.addErrback(noscript)


def _reply(reply):
    if isinstance(reply, Exception):
        if isinstance(reply, txredisapi.ResponseError):
            raise RedisFailure(str(reply))
        raise RedisUnavailable(str(reply))
    return reply


def _translate(failure):
    if failure.check(txredisapi.ResponseError):
        raise RedisFailure(str(failure.value))
    if failure.check(txredisapi.ConnectionError, defer.TimeoutError, defer.CancelledError,
                     ierror.ConnectionLost, ierror.ConnectionDone, ierror.ConnectError):
        raise RedisUnavailable(str(failure.value))
    return failure


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
    """The dedicated pub/sub connection of an HTTP process (PROTOCOL.md §7.6).

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
        if channel in self.wanted:
            return
        self.wanted.add(channel)
        if self._conn is not None:
            self._subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
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
