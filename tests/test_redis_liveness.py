"""Pure logic of restmq.redis with fakes and task.Clock: the pub/sub PING watchdog. The same
behaviour against real processes is in tests/faults/test_redis_liveness.py."""
from __future__ import annotations

import pytest
from twisted.internet import defer, task

from restmq.redis import PubSubService, RedisService


class FakeConnection:
    """What RedisService and PubSubService use of a txredisapi protocol."""

    def __init__(self):
        self.connected = 1
        self._ready = True
        self.commands: list[tuple] = []
        self.replies: list[defer.Deferred] = []
        self.aborted = False
        self.transport = self

    def execute_command(self, *args) -> defer.Deferred:
        self.commands.append(args)
        self.replies.append(defer.Deferred())
        return self.replies[-1]

    def subscribe(self, channel: str) -> defer.Deferred:
        return self.execute_command("SUBSCRIBE", channel)

    def abortConnection(self) -> None:
        self.aborted = True


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
