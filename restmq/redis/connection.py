"""The Redis connection service: the command pool, its timeouts and reconnects.

Everything that talks to Redis goes through `RedisService.execute` or `RedisService.run_script`,
which never wait longer than the command timeout and fail with the core's domain exceptions.
"""
from __future__ import annotations

from typing import Any, Sequence

import txredisapi
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from restmq.clock import RedisClock, reactor_clock
from restmq.errors import RedisFailure, RedisUnavailable
from restmq.redis.scripts import Script, script_command
from restmq.redis.wire import decoded, encode_command

COMMAND_TIMEOUT = 5.0
RECONNECT_MAX_DELAY = 5.0
CLOCK_INTERVAL = 10.0  # seconds between two readings of Redis's clock
DEADLINE_SLACK = 1.0  # a write's deadline comes this long before we can give up on it


class _Deadline:
    """A write's deadline. `start` (our `now()`) is when a multi-step operation began: every
    step sent with this deadline gets the earlier of the operation's and its own."""

    __slots__ = ("start",)

    def __init__(self, start: float | None = None):
        self.start = start

    def __repr__(self) -> str:
        return "DEADLINE" if self.start is None else f"DEADLINE({self.start})"


# Put in a script's arguments where it expects its deadline (see guard in scripts/lib/prelude.lua):
# `run_script` replaces it, once it knows the connection, with Redis's time at which the
# command may no longer run.
DEADLINE = _Deadline()


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

    def send_many(self, payload: bytes, count: int, now: float) -> list[defer.Deferred]:
        """`payload` holds `count` commands: their replies' Deferreds, in order."""
        ds = [self.replyQueue.get() for _ in range(count)]
        if self.waiting_since is None:
            self.waiting_since = now
        self.transport.write(payload)
        return ds

    def tryConvertData(self, data):
        # With the settings of our pool, what txredisapi does, at a third of the cost per
        # string of a long reply.
        if not self.convertNumbers and self.charset in ("utf-8", "utf8"):
            return decoded(data)
        return super().tryConvertData(data)

    def replyReceived(self, reply):
        super().replyReceived(reply)
        self.waiting_since = self.factory.now() if self.replyQueue.waiting else None

    def stalled(self, now: float, timeout: float) -> bool:
        return self.waiting_since is not None and now - self.waiting_since > timeout


class _Factory(txredisapi.RedisFactory):
    protocol = _Protocol
    # A reconnect attempt at least every 5 s (docs/redis-layout.md#connections).
    maxDelay = RECONNECT_MAX_DELAY
    initialDelay = 0.5
    settled = False  # a connection attempt has succeeded or failed at least once
    owner: "RedisService"

    def addConnection(self, conn):
        self.settled = True
        super().addConnection(conn)
        if conn in self.pool:
            self.owner.connection_added(conn)


class _WatchedEndpoint:
    """Tells the service when a connection attempt fails, so that requests stop waiting for
    the first connection of a fresh process once Redis is known to be unreachable."""

    def __init__(self, endpoint, factory: _Factory):
        self.endpoint, self.factory = endpoint, factory

    def connect(self, protocol_factory):
        def failed(failure):
            self.factory.settled = True
            self.factory.owner.attempt_failed(failure.getErrorMessage())
            return failure
        return self.endpoint.connect(protocol_factory).addErrback(failed)


class RedisService(service.Service):
    """Owns the command pool: opened in startService, closed in stopService.

    `description` is the text the stats and control routes show. `redis_clock` is Redis's
    clock as seen from here (read with TIME on every new connection and every CLOCK_INTERVAL
    seconds). Time here is `now()`, the reactor's clock (monotonic, see restmq.clock): steps of
    the wall clock change neither when a command counts as stalled nor the deadlines sent to
    Redis. `reactor` connects and keeps time; a task.Clock will do for the timers alone.
    """

    log = Logger()

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, unix_socket: str | None = None,
                 password: str | None = None, db: int = 0, poolsize: int = 10,
                 timeout: float = COMMAND_TIMEOUT, reactor: Any = None):
        self.reactor = reactor_clock() if reactor is None else reactor
        self.host, self.port, self.unix_socket = host, port, unix_socket
        self.password, self.db, self.poolsize = password, db, poolsize
        self.timeout = timeout
        self.redis_clock = RedisClock()
        self._factory: _Factory | None = None
        self._next = 0
        self._watchdog = None
        self._clock_read_at = 0.0
        self._persistence_checked = False
        # restmq.metrics.ProcessMetrics (or anything with `observe(seconds)` and
        # `failed(kind)`), told of every command's round trip and failure; None: not measured.
        self.metrics: Any = None
        # Commands that arrived before the first connection was ready: (Deferred, args, timer).
        self._waiting: list[tuple[defer.Deferred, tuple, Any]] = []
        where = f"unix:{unix_socket}" if unix_socket else f"{host}:{port}"
        self.description = f"<Redis Connection: {where} - {poolsize} connection(s)>"

    def now(self) -> float:
        return self.reactor.seconds()

    def endpoint(self):
        if self.unix_socket:
            return UNIXClientEndpoint(self.reactor, self.unix_socket, timeout=self.timeout)
        return HostnameEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)

    def startService(self) -> None:
        super().startService()
        # replyTimeout covers txredisapi's own commands (AUTH, SELECT); the watchdog covers ours.
        factory = _Factory(None, self.db or None, self.poolsize, isLazy=True,
                           charset="utf-8", password=self.password,
                           replyTimeout=self.timeout, convertNumbers=False)
        factory.now = lambda: self.now()
        factory.owner = self
        factory.startConnecting(_WatchedEndpoint(self.endpoint(), factory))
        self._factory = factory
        self._watchdog = task.LoopingCall(self._check_stalls)
        self._watchdog.clock = self.reactor
        self._watchdog.start(min(1.0, self.timeout / 4), now=False)
        self.log.info("connecting to Redis: {redis}", redis=self.description)

    # -- connections come and go -----------------------------------------------------------

    def connection_added(self, conn) -> None:
        """Read Redis's clock on every new connection (Redis may be another host now); the
        first one also checks persistence."""
        self._read_clock(conn)
        if self.redis_clock.known:
            self._release_waiting()
        if not self._persistence_checked:
            self._persistence_checked = True
            self._check_persistence()

    def attempt_failed(self, reason: str) -> None:
        """A refused connection is known at once: what waits for one fails now, not after
        the timeout."""
        if self._factory is not None and not self._factory.size:
            self._fail_waiting(f"cannot connect to Redis: {reason}")

    def _read_clock(self, conn) -> None:
        sent = self._clock_read_at = self.now()
        d = conn.send(encode_command(("TIME",)), sent).addCallback(_reply)

        def read(reply):
            self.redis_clock.sample(sent, reply, self.now())
            self._release_waiting()

        def refused(failure):
            failure.trap(RedisFailure)
            self.log.warn("Redis refused TIME ({error}): write deadlines assume that its clock "
                          "and ours agree", error=failure.getErrorMessage())
            self.redis_clock.assume_in_step()
            self._release_waiting()

        d.addCallbacks(read, refused).addErrback(lambda f: f.trap(RedisUnavailable))

    def _check_persistence(self) -> None:
        """Warn once at start-up when a Redis crash would lose acknowledged messages, and
        log every warning `/health` reports."""
        from restmq.redis.health import read_settings

        def checked(settings):
            if settings.persistence in ("rdb", "none"):
                self.log.warn(
                    "Redis runs without AOF (appendonly no): messages acknowledged since its "
                    "last snapshot are lost if Redis crashes; see README.rst, Guarantees")
            elif settings.persistence in ("aof-everysec", "aof-no"):
                self.log.info("Redis AOF with appendfsync {mode}: a Redis crash can lose up "
                              "to about a second of acknowledged messages",
                              mode=settings.persistence[4:])
            for warning in settings.warnings:
                self.log.warn("Redis health warning: {warning} (see GET /health)",
                              warning=warning)

        def unknown(failure):
            self.log.info("could not read Redis persistence settings ({error})",
                          error=failure.getErrorMessage())

        read_settings(self).addCallbacks(checked, unknown)

    def _check_stalls(self) -> None:
        """A connection that has not answered for `timeout` seconds is dropped: its waiting
        commands fail (503) and the pool reconnects. Redis's clock is read again now and then."""
        now = self.now()
        for conn in list(self._factory.pool if self._factory else ()):
            if conn.stalled(now, self.timeout):
                self.log.warn("Redis did not answer for {t} s: dropping a connection",
                              t=self.timeout)
                conn.waiting_since = None
                conn.timed_out = True  # its commands fail as timeouts (the metrics)
                conn.transport.abortConnection()
        if now - self._clock_read_at >= CLOCK_INTERVAL or not self.redis_clock.known:
            conn = self._ready_connection()
            if conn is not None:
                self._read_clock(conn)

    def stopService(self):
        super().stopService()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._fail_waiting("the service is stopping")
        factory, self._factory = self._factory, None
        if factory is not None:
            return factory.disconnect()

    @property
    def connected(self) -> bool:
        return self._factory is not None and self._factory.size > 0

    # -- commands ----------------------------------------------------------------------------

    def _ready_connection(self):
        factory = self._factory
        if factory is None:
            return None
        pool = factory.pool
        for _ in range(len(pool)):
            self._next = (self._next + 1) % len(pool)
            conn = pool[self._next]
            if conn.connected and conn._ready:
                return conn
        return None

    def execute(self, *args: Any) -> defer.Deferred:
        """Run one command. Fires with its reply (text as str, or bytes where it is not valid
        UTF-8: pass it through `text`); fails with
        RedisUnavailable (no connection, timeout, lost connection) or RedisFailure (error reply).
        An argument that is DEADLINE becomes the write deadline for this command."""
        conn = self._ready_connection() if self.redis_clock.known else None
        if conn is not None:
            return self._send(conn, args)
        factory = self._factory
        # Just after start no connection (or no reading of Redis's clock) exists yet: wait for
        # it, bounded by the timeout, rather than fail the first requests of a fresh server.
        if factory is not None and (not factory.settled or factory.size):
            return self._wait(args)
        if self.metrics is not None:
            self.metrics.failed("unavailable")
        return defer.fail(RedisUnavailable("no connection to Redis"))

    def _send(self, conn, args: tuple) -> defer.Deferred:
        now = self.now()
        if _Deadline in map(type, args):  # (the scan runs in C: a batch has 500 arguments)
            # The watchdog fails this command (and all others on this connection) no sooner
            # than `timeout` after the connection's last sign of life before it was sent:
            # the deadline comes before that, in Redis's time.
            since = conn.waiting_since if conn.waiting_since is not None else now
            types, args = list(map(type, args)), list(args)
            i = types.index(_Deadline)  # (found in C too: a merged ack has hundreds)
            while True:
                args[i] = self._deadline_ms(args[i], since)
                try:
                    i = types.index(_Deadline, i + 1)
                except ValueError:
                    break
        return self._measured(conn.send(encode_command(args), now).addCallback(_reply), conn,
                              now)

    def _measured(self, d: defer.Deferred, conn, sent: float) -> defer.Deferred:
        """Report the round trip of the command (or pipeline) `d` to the metrics."""
        metrics = self.metrics
        if metrics is None:
            return d

        def record(result):
            metrics.observe(max(0.0, self.now() - sent))
            if isinstance(result, Failure):
                if result.check(RedisFailure):
                    if not str(result.value).startswith("NOSCRIPT"):  # answered by a load
                        metrics.failed("error")
                else:
                    metrics.failed("timeout" if getattr(conn, "timed_out", False)
                                   else "unavailable")
            return result

        return d.addBoth(record)

    def _deadline_ms(self, deadline: _Deadline, since: float) -> int:
        if deadline.start is not None:
            since = min(since, deadline.start)
        return self.redis_clock.redis_ms(since + self.timeout - DEADLINE_SLACK)

    def deadline(self) -> _Deadline:
        """The deadline of an operation of several writing commands starting now."""
        return _Deadline(self.now())

    def expired(self, deadline: _Deadline) -> bool:
        """Whether an operation started with `deadline` may no longer write."""
        return deadline.start is not None and \
            self.now() >= deadline.start + self.timeout - DEADLINE_SLACK

    def pipeline(self, commands: Sequence[tuple]) -> defer.Deferred:
        """Send `commands` back to back on one connection in one write (one round trip).
        Fires with their replies in order, an error reply standing in its place as a
        RedisFailure (not raised: one refused command does not void the others); fails with
        RedisUnavailable as `execute` does. No argument may be DEADLINE: for reads only. A
        command given as bytes is sent as it is (already encoded, see `encode_args`)."""
        if not commands:
            return defer.succeed([])
        conn = self._ready_connection() if self.redis_clock.known else None
        if conn is None:
            # As `execute`: just after start, wait (bounded) for the first connection.
            return self.execute("PING").addCallback(lambda _: self._pipeline_now(commands))
        return self._send_many(conn, commands)

    def _pipeline_now(self, commands: Sequence[tuple]) -> defer.Deferred:
        conn = self._ready_connection()
        if conn is None:
            return defer.fail(RedisUnavailable("no connection to Redis"))
        return self._send_many(conn, commands)

    def _send_many(self, conn, commands: Sequence[tuple]) -> defer.Deferred:
        payload = b"".join(args if isinstance(args, bytes) else encode_command(args)
                           for args in commands)
        ds = conn.send_many(payload, len(commands), self.now())
        replies: list = [None] * len(ds)
        lost: list = []

        def keep(reply, i):
            if isinstance(reply, txredisapi.ResponseError):
                reply = RedisFailure(str(reply))
            elif isinstance(reply, Exception):
                lost.append(reply)
            replies[i] = reply

        for i, d in enumerate(ds):
            d.addCallback(keep, i)

        def gathered(_):
            if lost:
                raise RedisUnavailable(str(lost[0]))
            return replies

        # Replies on one connection come in order: the last one comes last.
        return self._measured(ds[-1].addCallback(gathered), conn, self.now())

    def _wait(self, args: tuple) -> defer.Deferred:
        d = defer.Deferred()
        entry = (d, args, self.reactor.callLater(self.timeout, self._give_up, d))
        self._waiting.append(entry)
        return d

    def _give_up(self, d: defer.Deferred) -> None:
        self._waiting = [entry for entry in self._waiting if entry[0] is not d]
        d.errback(RedisUnavailable(f"no Redis connection within {self.timeout} s"))

    def _release_waiting(self) -> None:
        if not self._waiting or not self.redis_clock.known or self._ready_connection() is None:
            return
        waiting, self._waiting = self._waiting, []
        for d, args, timer in waiting:
            timer.cancel()
            self.execute(*args).chainDeferred(d)

    def _fail_waiting(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, []
        for d, _, timer in waiting:
            timer.cancel()
            d.errback(RedisUnavailable(reason))

    def run_script(self, script: Script, keys: Sequence[str], *args: Any) -> defer.Deferred:
        """Run a Lua script by EVALSHA with `keys` as KEYS (every key it touches, built by
        restmq.redis.keys) and `args` as ARGV; on NOSCRIPT load it by EVAL."""
        d = self.execute(*script_command(script, keys, args))
        # A method, not a closure that names itself: that would be a reference cycle per
        # run, left to the cycle collector.
        return d.addErrback(self._script_failed, script, keys, args)

    def _script_failed(self, failure, script: Script | None, keys: Sequence[str],
                       args: tuple) -> Any:
        """Loads `script` by EVAL on NOSCRIPT (given `script`: once, not again after EVAL)."""
        failure.trap(RedisFailure)
        if str(failure.value).startswith("EXPIRED"):
            # Redis ran it after its deadline (it was paused): nothing was written.
            raise RedisUnavailable(str(failure.value))
        if script is None or not str(failure.value).startswith("NOSCRIPT"):
            return failure
        return self.execute(*script_command(script, keys, args, by_source=True)) \
            .addErrback(self._script_failed, None, keys, args)


def _reply(reply):
    if isinstance(reply, Exception):
        if isinstance(reply, txredisapi.ResponseError):
            raise RedisFailure(str(reply))
        raise RedisUnavailable(str(reply))
    return reply
