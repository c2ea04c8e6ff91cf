"""Pure logic of restmq.redis with fakes and task.Clock: deadlines in Redis's time base, commands
waiting for the first connection, and the pub/sub PING watchdog. The same behaviour against
real processes is in tests/faults/test_redis_liveness.py and tests/faults/test_clock_skew.py."""
from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure

from restmq.clock import MAX_ROUND_TRIP, RedisClock
from restmq.errors import RedisUnavailable
from restmq.redis import DEADLINE, PubSubService, RedisService


class FakeConnection:
    """What RedisService and PubSubService use of a txredisapi protocol."""

    def __init__(self):
        self.connected = 1
        self._ready = True
        self.waiting_since = None
        self.sent: list[bytes] = []
        self.commands: list[tuple] = []
        self.replies: list[defer.Deferred] = []
        self.aborted = False
        self.transport = self

    def send(self, payload: bytes, now: float) -> defer.Deferred:
        if self.waiting_since is None:
            self.waiting_since = now
        self.sent.append(payload)
        self.replies.append(defer.Deferred())
        return self.replies[-1]

    def execute_command(self, *args) -> defer.Deferred:
        self.commands.append(args)
        self.replies.append(defer.Deferred())
        return self.replies[-1]

    def subscribe(self, channel: str) -> defer.Deferred:
        return self.execute_command("SUBSCRIBE", channel)

    def abortConnection(self) -> None:
        self.aborted = True


class FakeFactory:
    def __init__(self, *pool):
        self.pool = list(pool)
        self.size = len(self.pool)
        self.settled = bool(pool)


def service_with(clock: task.Clock, *pool) -> RedisService:
    svc = RedisService(reactor=clock)
    svc.now = clock.seconds
    svc._factory = FakeFactory(*pool)
    return svc


def last_argument(payload: bytes) -> str:
    return payload.split(b"\r\n")[-2].decode()


# -- Redis's clock ----------------------------------------------------------------------------

def test_offset_is_taken_from_time_as_if_read_when_the_reply_arrived():
    clock = RedisClock()
    assert not clock.known
    assert clock.sample(100.0, ["5000", "250000"], 100.01)
    assert clock.offset == pytest.approx(5000.25 - 100.01)
    assert clock.redis_ms(101.01) == 5001250


def test_a_slow_time_reply_does_not_replace_a_known_offset():
    clock = RedisClock()
    assert clock.sample(0.0, ["1000", "0"], 1.0)  # the first one is taken, however slow
    assert not clock.sample(10.0, ["2000", "0"], 10.0 + MAX_ROUND_TRIP + 0.1)
    assert clock.offset == pytest.approx(999.0)
    assert clock.sample(20.0, ["3000", "0"], 20.001)
    assert clock.offset == pytest.approx(2979.999)


def test_without_time_the_clocks_are_assumed_to_agree():
    clock = RedisClock()
    clock.assume_in_step()
    assert clock.redis_ms(12.5) == 12500


# -- deadlines --------------------------------------------------------------------------------

def test_deadline_is_in_redis_time_a_second_before_the_timeout():
    clock = task.Clock()
    clock.advance(50)
    conn = FakeConnection()
    svc = service_with(clock, conn)
    svc.redis_clock.offset = 10_000.0  # Redis's clock reads 10,000 s more than ours
    svc.execute("EVALSHA", "sha", 0, "q", DEADLINE)
    assert last_argument(conn.sent[0]) == str(int((50 + 10_000 + 5.0 - 1.0) * 1000))


def test_a_command_behind_an_unanswered_one_gets_the_older_deadline():
    """The watchdog drops the connection `timeout` after the oldest unanswered command, and
    with it fails every later one: their deadlines must come before that."""
    clock = task.Clock()
    conn = FakeConnection()
    svc = service_with(clock, conn)
    svc.redis_clock.offset = 0.0
    svc.execute("EVALSHA", "sha", 0, DEADLINE)
    clock.advance(3.5)
    svc.execute("EVALSHA", "sha", 0, DEADLINE)
    assert last_argument(conn.sent[0]) == last_argument(conn.sent[1]) == "4000"


# -- waiting for the first connection ---------------------------------------------------------

def test_commands_waiting_for_the_first_connection_fail_when_it_is_refused():
    clock = task.Clock()
    svc = service_with(clock)
    d = svc.execute("PING")
    assert not d.called
    svc.attempt_failed("Connection refused")
    failure = pytest.raises(RedisUnavailable, lambda: d.result.raiseException())
    assert "refused" in str(failure.value)
    d.addErrback(lambda f: None)
    assert not clock.getDelayedCalls()  # the timeout timer is gone
    # and later commands fail at once, without waiting
    svc._factory.settled = True
    later = svc.execute("PING")
    assert isinstance(later.result, Failure)
    later.addErrback(lambda f: None)


def test_commands_waiting_for_the_first_connection_time_out():
    clock = task.Clock()
    svc = service_with(clock)
    d = svc.execute("PING")
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    assert isinstance(d.result, Failure) and d.result.check(RedisUnavailable)
    d.addErrback(lambda f: None)


def test_commands_wait_for_the_first_reading_of_redis_clock_then_go():
    clock = task.Clock()
    conn = FakeConnection()
    svc = service_with(clock)
    svc._persistence_checked = True
    d = svc.execute("EVALSHA", "sha", 0, DEADLINE)
    svc._factory = FakeFactory(conn)
    svc.connection_added(conn)
    assert conn.sent == [b"*1\r\n$4\r\nTIME\r\n"] and not d.called
    conn.waiting_since = None
    conn.replies[0].callback(["7000", "0"])
    assert len(conn.sent) == 2
    assert last_argument(conn.sent[1]) == "7004000"  # Redis's 7000 s, now, plus 4 s
    conn.replies[1].callback("q:1")
    assert d.result == "q:1"


# -- the pub/sub watchdog ---------------------------------------------------------------------

class Listener:
    def __init__(self):
        self.events: list[str] = []

    def confirmed(self, channel):
        self.events.append(f"confirmed {channel}")

    def lost(self):
        self.events.append("lost")


def pubsub_with(clock: task.Clock, conn: FakeConnection) -> tuple[PubSubService, Listener]:
    listener = Listener()
    pubsub = PubSubService(RedisService(reactor=clock), listener, timeout=2.0, clock=clock)
    pubsub._pinger.start(1.0, now=False)
    pubsub.connected(conn)
    return pubsub, listener


def test_an_answered_ping_keeps_the_pubsub_connection():
    clock, conn = task.Clock(), FakeConnection()
    pubsub, listener = pubsub_with(clock, conn)
    pubsub.subscribe("q:PUBSUB")
    conn.replies[0].callback(["subscribe", "q:PUBSUB", 1])
    for _ in range(10):
        clock.advance(1.0)
        assert conn.commands[-1] == ("PING",)
        conn.replies[-1].callback(["pong", ""])
    assert conn.commands.count(("PING",)) == 10
    assert not conn.aborted and pubsub.confirmed == {"q:PUBSUB"}
    assert listener.events == ["confirmed q:PUBSUB"]
    pubsub._pinger.stop()


def test_an_unanswered_ping_drops_the_connection_and_pauses_delivery_at_once():
    clock, conn = task.Clock(), FakeConnection()
    pubsub, listener = pubsub_with(clock, conn)
    pubsub.subscribe("q:PUBSUB")
    conn.replies[0].callback(["subscribe", "q:PUBSUB", 1])
    clock.advance(1.0)
    assert conn.commands[-1] == ("PING",)
    clock.advance(2.0)
    assert not conn.aborted  # silent for exactly the timeout: not yet
    clock.advance(1.0)
    assert conn.aborted
    assert pubsub.confirmed == set() and pubsub._conn is None
    assert listener.events == ["confirmed q:PUBSUB", "lost"]
    pubsub.disconnected(conn)  # the transport's own news comes later: told once only
    assert listener.events.count("lost") == 1
    # The replacement subscribes again; delivery resumes only once Redis confirms.
    fresh = FakeConnection()
    pubsub.connected(fresh)
    assert fresh.commands == [("SUBSCRIBE", "q:PUBSUB")] and not pubsub.confirmed
    fresh.replies[0].callback(["subscribe", "q:PUBSUB", 1])
    assert pubsub.confirmed == {"q:PUBSUB"}
    pubsub._pinger.stop()


# -- the option -------------------------------------------------------------------------------

def test_pubsub_timeout_option():
    from twisted.python import usage

    from restmq.tap import Options
    options = Options()
    options.parseOptions([])
    assert options["pubsub-timeout"] == 5.0
    options = Options()
    options.parseOptions(["--pubsub-timeout", "0.5"])
    assert options["pubsub-timeout"] == 0.5
    for bad, message in (("0", "between 0.1 and 3600"), ("soon", "a number of seconds")):
        with pytest.raises(usage.UsageError, match=message):
            Options().parseOptions(["--pubsub-timeout", bad])


def test_redis_timeout_option_reaches_the_pool_of_every_plugin():
    from twisted.python import usage

    from restmq.tap import Options
    from restmq.tap import restmq as restmq_plugin
    from restmq.tap import syslogd as syslogd_plugin
    options = Options()
    options.parseOptions([])
    assert options["redis-timeout"] == 5.0
    for plugin in (restmq_plugin, syslogd_plugin):
        options = plugin.Options()
        options.parseOptions(["--port", "1", "--redis-port", "1", "--redis-timeout", "2.5"])
        redis = list(plugin.makeService(options))[0]
        assert isinstance(redis, RedisService) and redis.timeout == 2.5
    # Below 2 s a write's deadline (a second before the timeout) would leave it no time.
    for bad, message in (("1.9", "between 2 and 3600"), ("soon", "a number of seconds")):
        with pytest.raises(usage.UsageError, match=message):
            Options().parseOptions(["--redis-timeout", bad])


def test_a_shorter_timeout_moves_the_deadline_with_it():
    """--redis-timeout 2: writes get a deadline a second before it (the watchdog's side is in
    tests/unit/test_redis_timers.py)."""
    clock = task.Clock()
    clock.advance(50)
    conn = FakeConnection()
    svc = service_with(clock, conn)
    svc.timeout = 2.0
    svc.redis_clock.offset = 0.0
    svc.execute("EVALSHA", "sha", 0, DEADLINE)
    assert last_argument(conn.sent[0]) == "51000"
    assert not svc.expired(svc.deadline())
    clock.advance(1.0)
    svc.execute("EVALSHA", "sha", 0, DEADLINE)
    assert last_argument(conn.sent[1]) == "51000"  # the older one, see above
