"""The acks of a push queue's attempts are committed in groups: the first goes to Redis at
once, those that come while it is on its way go together when it is answered (at most 100
receipts an ack), each attempt learns its own outcome, a failed group is tried again by each
of its attempts, and the attempts a group ends are followed by one claim, not one each.
Timers on task.Clock; the core and the HTTP client are fakes the test answers."""
from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers

from restmq.core.leases import Lease
from restmq.core.push import PushClaim, PushConfig
from restmq.delivery.push import PushService
from restmq.errors import RedisUnavailable
from tests.unit.fakes import PubSub



def config(concurrency: int) -> PushConfig:
    return PushConfig("http://example.com/work", None, "text/plain", 30, 1.0, 300.0, None, None,
                      concurrency)


class Core:
    """Claims and acks answered by the test; releases answered at once."""

    def __init__(self):
        self.claims: list[tuple[int, defer.Deferred]] = []
        self.acks: list[tuple[list[str], defer.Deferred]] = []
        self.released: list[str] = []
        self.redis = SimpleNamespace(execute=lambda *args: defer.succeed(["jobs"]))

    def admit(self, name):
        return defer.succeed(name)

    def push_claim(self, queue, most=10):
        self.claims.append((most, defer.Deferred()))
        return self.claims[-1][1]

    def ack(self, queue, receipts):
        self.acks.append((list(receipts), defer.Deferred()))
        return self.acks[-1][1]

    def push_release(self, queue, receipt, delay_ms):
        self.released.append(receipt)
        return defer.succeed(SimpleNamespace(released=[receipt], dead_lettered=[]))

    def count(self, queue, name):
        return defer.succeed(None)


class Response:
    code, headers = 204, Headers()

    def deliverBody(self, reader):  # noqa: N802
        reader.makeConnection(StringTransport())
        reader.connectionLost(None)


class Agent:
    def __init__(self):
        self.requests: list[defer.Deferred] = []

    def request(self, *args):
        self.requests.append(defer.Deferred())
        return self.requests[-1]


def started(n: int):
    """A service whose dispatcher of `jobs` (push_concurrency `n`) claimed `n` messages and
    POSTed each."""
    clock, core, agent = task.Clock(), Core(), Agent()
    service = PushService(core, PubSub(), clock, clock)
    service.agent = agent
    service.startService()
    leases = [Lease(f"jobs:{i}", "v", f"{i}.1.t", 1, 0.0) for i in range(n)]
    most, claim = core.claims.pop()
    claim.callback(PushClaim("jobs", "ok", leases[:most], config(n)))
    while len(agent.requests) < n:  # the claims after the first (at most 10 each)
        most, claim = core.claims.pop()
        got = len(agent.requests)
        claim.callback(PushClaim("jobs", "ok", leases[got:got + most], config(n)))
    core.claims.clear()
    return clock, core, agent, service


def acked(receipts):
    return SimpleNamespace(acked=list(receipts))


def test_acks_that_come_while_one_is_on_its_way_go_together_and_then_one_claim():
    clock, core, agent, service = started(5)
    for request in agent.requests:
        request.callback(Response())
    assert [r for r, _ in core.acks] == [["0.1.t"]]  # the first at once; the rest wait
    first = core.acks[0][1]
    first.callback(acked(["0.1.t"]))
    assert [r for r, _ in core.acks] == [["0.1.t"], ["1.1.t", "2.1.t", "3.1.t", "4.1.t"]]
    # The first attempt ended alone: one claim, for its room.
    assert [most for most, _ in core.claims] == [1]
    core.claims.pop()[1].callback(PushClaim("jobs", "empty"))
    core.acks[1][1].callback(acked(["1.1.t", "3.1.t", "4.1.t"]))  # 2.1.t's lease had ended
    assert not service.dispatchers["jobs"].attempts
    # The four ended together: one claim for all the room (the first's and theirs), not one
    # per attempt.
    assert [most for most, _ in core.claims] == [5]
    assert core.released == []  # a stale ack is not a failure: nothing released


def test_a_group_holds_at_most_100_receipts():
    clock, core, agent, service = started(150)
    for request in agent.requests:
        request.callback(Response())
    core.acks[0][1].callback(acked(["0.1.t"]))
    assert [len(r) for r, _ in core.acks] == [1, 100, 49]
    for receipts, d in core.acks[1:]:
        d.callback(acked(receipts))
    assert not service.dispatchers["jobs"].attempts


def test_a_failed_group_is_tried_again_by_each_of_its_attempts():
    clock, core, agent, service = started(3)
    for request in agent.requests:
        request.callback(Response())
    core.acks[0][1].errback(RedisUnavailable("down"))
    core.acks[1][1].errback(RedisUnavailable("down"))
    assert [r for r, _ in core.acks] == [["0.1.t"], ["1.1.t", "2.1.t"]]
    assert len(service.dispatchers["jobs"].attempts) == 3  # still settling
    clock.advance(1.0)  # each attempt tries again: the first goes, the others wait for it
    assert [r for r, _ in core.acks[2:]] == [["0.1.t"]]
    core.acks[2][1].callback(acked(["0.1.t"]))
    assert [r for r, _ in core.acks[3:]] == [["1.1.t", "2.1.t"]]
    core.acks[3][1].callback(acked(["1.1.t", "2.1.t"]))
    assert not service.dispatchers["jobs"].attempts
    assert core.released == []  # a 2xx is never released because its ack met trouble
