"""Timers and dates outside live delivery, on task.Clock and an injected wall clock: the syslog
receiver's retry while Redis is unavailable and its tstamp, the access log's one-second flush,
the Date header, and the plugin's wiring of one clock into every part."""
from __future__ import annotations

import json
import time

import pytest
from twisted.application import internet
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import Logger

from restmq.delivery import Ticker
from restmq.errors import RedisUnavailable
from restmq.frontends.syslogd import RETRY_DELAY, SyslogFactory
from restmq.http.accesslog import AccessLog, http_date
from tests.unit.fakes import WALL, Connection


class SyslogCore:
    """Fails the first `failures` adds with RedisUnavailable."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.calls: list[tuple[str, str, str]] = []

    def _answer(self, kind, queue, value):
        self.calls.append((kind, queue, value))
        if self.failures:
            self.failures -= 1
            return defer.fail(RedisUnavailable("paused"))
        return defer.succeed(f"{queue}:{len(self.calls)}")

    def add(self, queue, value):
        return self._answer("add", queue, value)

    def add_once(self, queue, value):
        return self._answer("add_once", queue, value)


def syslog(core, clock, wall):
    factory = SyslogFactory(core, 1024, clock=clock, wall=wall)
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 514))
    protocol.makeConnection(transport)
    protocol.log = Logger(observer=lambda event: None)
    return protocol, transport


def test_syslog_stamps_each_message_with_the_injected_wall_time():
    clock, core = task.Clock(), SyslogCore()
    protocol, _ = syslog(core, clock, wall=lambda: WALL + 0.25)
    protocol.dataReceived(b"<13>hello\n")
    kind, queue, value = core.calls[0]
    assert (kind, queue) == ("add", "syslogd:10.0.0.7")
    assert json.loads(value)["tstamp"] == WALL + 0.25


def test_syslog_retries_once_a_second_while_redis_is_unavailable_with_reading_paused():
    clock, core = task.Clock(), SyslogCore(failures=2)
    protocol, transport = syslog(core, clock, wall=lambda: WALL)
    protocol.dataReceived(b"<13>kept\n")
    assert [c[0] for c in core.calls] == ["add"]
    assert transport.producerState == "paused"
    clock.advance(RETRY_DELAY - 0.25)
    assert len(core.calls) == 1
    clock.advance(0.25)
    assert [c[0] for c in core.calls] == ["add", "add_once"]
    clock.advance(RETRY_DELAY)
    assert [c[0] for c in core.calls] == ["add", "add_once", "add_once"]
    assert len({c[2] for c in core.calls}) == 1  # the same message, stamped once
    assert transport.producerState == "producing"
    clock.advance(RETRY_DELAY * 5)
    assert len(core.calls) == 3


class Request:
    remote_ip, method, uri, version = "127.0.0.1", "GET", "/stats/?authkey=k", "HTTP/1.1"

    def request_time(self):
        return 0.001


class Handler:
    request = Request()

    def get_status(self):
        return 200


def test_the_access_log_is_written_one_second_after_the_first_line():
    clock, events = task.Clock(), []
    log = AccessLog(clock)
    log.log = Logger(namespace="restmq.access", observer=events.append)
    log(Handler())
    clock.advance(0.5)
    log(Handler())
    assert events == []
    clock.advance(0.5)
    assert len(events) == 1
    assert events[0]["lines"].count("GET /stats/?authkey=[redacted] HTTP/1.1") == 2
    assert clock.getDelayedCalls() == []


def test_the_date_header_comes_from_the_injected_wall_time():
    assert http_date(lambda: WALL) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert http_date(lambda: WALL + 86400.5) == "Wed, 15 Nov 2023 22:13:20 GMT"
    c = Connection(wall=lambda: WALL)
    c.send(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
    assert b"\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\n" in c.take()


def test_the_plugin_runs_every_timer_on_one_monotonic_clock():
    from twisted.internet import reactor

    from restmq.tap import restmq as plugin
    options = plugin.Options()
    options.parseOptions(["--port", "1", "--redis-port", "1"])
    top = plugin.makeService(options)
    assert reactor.seconds is time.monotonic
    children = list(top)
    redis, version_check, ticker, pubsub, delivery = children[:5]
    assert redis.reactor is reactor and pubsub.clock is reactor
    assert delivery.clock is reactor and delivery.core.clock is reactor
    assert isinstance(ticker, Ticker) and ticker.clock is reactor
    assert ticker.core is delivery.core and version_check.clock is reactor
    timers = [s for s in children if isinstance(s, internet.TimerService)]
    assert [t.clock for t in timers] == [reactor]
    app = children[-1].factory
    assert app.settings["clock"] is reactor and app.settings["wall_time"] is time.time
    assert app.settings["log_function"].clock is reactor


def test_the_acl_file_is_looked_at_every_acl_check_interval():
    from twisted.python import usage

    from restmq.tap import restmq as plugin
    for argv, step in (([], 5.0), (["--acl-check-interval", "0.5"], 0.5)):
        options = plugin.Options()
        options.parseOptions(["--port", "1", "--redis-port", "1", *argv])
        [timer] = [s for s in plugin.makeService(options) if isinstance(s, internet.TimerService)]
        assert timer.step == step and timer.call[0] == options.acl.check_for_change
    with pytest.raises(usage.UsageError, match="between 0.1 and 3600"):
        plugin.Options().parseOptions(["--acl-check-interval", "0"])


def test_the_syslog_plugin_runs_its_timers_on_the_same_clock():
    from twisted.internet import reactor

    from restmq.tap import syslogd as plugin
    options = plugin.Options()
    options.parseOptions(["--port", "1", "--redis-port", "1"])
    redis, version_check, listener = list(plugin.makeService(options))
    assert reactor.seconds is time.monotonic and redis.reactor is reactor
    assert version_check.clock is reactor
    assert listener.factory.clock is reactor and listener.factory.wall is time.time
    assert listener.factory.core.clock is reactor
