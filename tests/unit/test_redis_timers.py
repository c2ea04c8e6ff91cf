"""The Redis pool's watchdog on the injected clock alone (a MemoryReactorClock: connections
recorded, never made): a command left unanswered for the timeout fails with its connection, and
the deadlines sent to Redis are counted on the same clock."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from restmq.errors import RedisUnavailable
from restmq.redis import COMMAND_TIMEOUT, RedisService
from restmq.redis.connection import _Protocol


class Connection:
    """A ready txredisapi connection of the pool, as the service sees one."""

    connected = 1
    _ready = True
    waiting_since = None

    stalled = _Protocol.stalled

    def __init__(self):
        self.replies: list[defer.Deferred] = []
        self.aborted = False
        self.transport = self

    def send(self, payload: bytes, now: float) -> defer.Deferred:
        if self.waiting_since is None:
            self.waiting_since = now
        self.replies.append(defer.Deferred())
        return self.replies[-1]

    def abortConnection(self):
        self.aborted = True
        for d in self.replies:
            if not d.called:
                d.errback(RedisUnavailable("connection lost"))


def started(reactor: MemoryReactorClock,
            timeout: float = COMMAND_TIMEOUT) -> tuple[RedisService, Connection]:
    svc = RedisService(unix_socket="/nonexistent/redis.sock", reactor=reactor, timeout=timeout)
    svc.startService()
    assert reactor.unixClients  # a connection was asked of this reactor, not the global one
    conn = Connection()
    svc._factory.pool.append(conn)
    svc.redis_clock.assume_in_step()
    return svc, conn


def test_the_watchdog_fails_a_command_left_unanswered_for_the_timeout():
    reactor = MemoryReactorClock()
    reactor.advance(1000)
    svc, conn = started(reactor)
    assert svc.now() == 1000
    d = svc.execute("GET", "k")
    reactor.advance(COMMAND_TIMEOUT)
    assert not d.called and not conn.aborted
    reactor.advance(1)  # the watchdog's next look, past the timeout
    assert conn.aborted
    assert isinstance(d.result, Failure) and d.result.check(RedisUnavailable)
    d.addErrback(lambda f: None)
    svc._factory.pool.remove(conn)
    svc.stopService()


def test_the_watchdog_counts_a_shorter_timeout_and_looks_more_often():
    """--redis-timeout 2: the watchdog looks every half second and fails the command between
    2 and 2.5 s after it was sent."""
    reactor = MemoryReactorClock()
    svc, conn = started(reactor, timeout=2.0)
    d = svc.execute("GET", "k")
    reactor.advance(2.0)
    assert not d.called and not conn.aborted
    reactor.advance(0.5)
    assert conn.aborted and d.result.check(RedisUnavailable)
    d.addErrback(lambda f: None)
    svc._factory.pool.remove(conn)
    svc.stopService()


def test_the_watchdog_leaves_a_command_answered_in_time_alone():
    reactor = MemoryReactorClock()
    svc, conn = started(reactor)
    d = svc.execute("GET", "k")
    reactor.advance(COMMAND_TIMEOUT - 1)
    conn.replies[0].callback("v")
    conn.waiting_since = None
    reactor.advance(COMMAND_TIMEOUT * 3)
    assert d.result == "v" and not conn.aborted
    svc._factory.pool.remove(conn)
    svc.stopService()

