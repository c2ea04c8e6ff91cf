"""Stopping the push dispatchers while a claim is on its way back from Redis (a rolling
restart of a busy push queue meets this at every stop): the messages it brings are
attempted and settled before the service counts as stopped, rather than sent while Redis is
being disconnected and then pushed again after their lease. Timers on task.Clock; the core
and the HTTP client are fakes the test answers."""
from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers

from restmq.core.leases import Lease
from restmq.core.push import PushClaim, PushConfig
from restmq.delivery.push import PushService
from tests.unit.fakes import PubSub

CONFIG = PushConfig("http://example.com/work", None, "text/plain", 30, 1.0, 300.0, None, None,
                    10)


class Core:
    def __init__(self):
        self.claims: list[defer.Deferred] = []
        self.acked: list[str] = []
        self.redis = SimpleNamespace(execute=lambda *args: defer.succeed(["jobs"]))

    def admit(self, name):
        return defer.succeed(name)

    def push_claim(self, queue, most=10):
        self.claims.append(defer.Deferred())
        return self.claims[-1]

    def ack(self, queue, receipts):
        self.acked += receipts
        return defer.succeed(SimpleNamespace(acked=receipts))

    def count(self, queue, name):  # counting is off: nothing to record
        return defer.succeed(None)


class Response:
    code, headers = 200, Headers()

    def deliverBody(self, reader):  # noqa: N802
        reader.makeConnection(StringTransport())
        reader.connectionLost(None)


class Agent:
    def __init__(self):
        self.requests: list[defer.Deferred] = []

    def request(self, *args):
        self.requests.append(defer.Deferred())
        return self.requests[-1]


def test_a_claim_answered_after_stop_began_is_attempted_and_settled_before_stopped():
    clock, core, agent = task.Clock(), Core(), Agent()
    service = PushService(core, PubSub(), clock, clock)
    service.agent = agent
    service.startService()  # the sweep reads PUSHSET: a dispatcher for jobs claims
    assert len(core.claims) == 1
    stopped: list = []
    service.stopService().addBoth(stopped.append)
    assert not stopped  # the claim is still out
    lease = Lease("jobs:1", "v", "1.1.t", 1, 0.0)
    core.claims[0].callback(PushClaim("jobs", "ok", [lease], CONFIG))
    assert len(agent.requests) == 1 and not stopped
    agent.requests[0].callback(Response())
    assert core.acked == ["1.1.t"] and stopped
    assert len(core.claims) == 1  # and nothing more was claimed
