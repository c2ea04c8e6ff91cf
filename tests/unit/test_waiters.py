"""Waiters (long polls) in live delivery, on task.Clock with a fake core: served before the live
consumers, in arrival order, one claim each until one finds nothing; answered with nothing when
their time is up; taken out at once when their client leaves, with what a claim on its way
brings for them released; untouched by batch and purge notices; answered at shutdown."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from twisted.internet import defer, task

from restmq.delivery import Delivery
from restmq.delivery.live import SWEEP_INTERVAL
from restmq.delivery.waiters import Waiter
from restmq.errors import RedisUnavailable
from restmq.redis import keys
from tests.unit.fakes import LiveConsumer as Consumer, PopCore, PubSub


@dataclass
class Claimed:
    messages: list = field(default_factory=list)


@dataclass
class Msg:
    key: str
    receipt: str = "r"


def claimed(*names: str) -> Claimed:
    return Claimed([Msg(name) for name in names])


class Poll:
    """One long poll's side: its claims and releases, answered by the test."""

    def __init__(self, clock, name: str):
        self.name = name
        self.claims: list[defer.Deferred] = []
        self.releases: list[tuple[Claimed, defer.Deferred]] = []
        self.connected = True
        self.waiter = Waiter(self.claim, self.release, lambda: self.connected, clock, "q")
        self.answers: list = []
        self.waiter.answer.addBoth(self.answers.append)

    def claim(self):
        self.claims.append(defer.Deferred())
        return self.claims[-1]

    def release(self, what):
        d = defer.Deferred()
        self.releases.append((what, d))
        return d


def started(pubsub=None):
    clock, core = task.Clock(), PopCore()
    delivery = Delivery(core, pubsub or PubSub(), clock=clock)
    delivery.startService()
    return delivery, core, clock


def parked(delivery, clock, *names, seconds=20):
    """Long polls whose first claim (made by the request itself) found nothing, parked."""
    polls = [Poll(clock, name) for name in names]
    for poll in polls:
        delivery.park("q", poll.waiter, seconds)
    return polls


def idle(clock, seconds: float, *polls: Poll) -> None:
    """Let `seconds` pass while nothing is pending: the sweep's claims (one a second) find
    nothing."""
    step = 0.5
    while seconds > 1e-9:
        clock.advance(min(step, seconds))
        seconds -= min(step, seconds)
        for poll in polls:
            for d in poll.claims:
                if not d.called:
                    d.callback(claimed())


def notice(delivery, kind: str, **fields) -> None:
    delivery.message(keys.channel("q"), json.dumps({"type": kind, "db": 0, **fields}))


def test_waiters_are_served_in_arrival_order_one_claim_each_until_one_finds_nothing():
    delivery, core, clock = started()
    a, b, c, d = parked(delivery, clock, "a", "b", "c", "d")
    assert [len(p.claims) for p in (a, b, c, d)] == [1, 0, 0, 0]
    a.claims[0].callback(claimed("q:1", "q:2"))
    assert a.answers == [claimed("q:1", "q:2")]
    assert [len(p.claims) for p in (b, c, d)] == [1, 0, 0]
    b.claims[0].callback(claimed("q:3"))
    assert b.answers == [claimed("q:3")]
    c.claims[0].callback(claimed())  # nothing more pending: the round ends here
    assert (c.answers, len(d.claims)) == ([], 0)
    assert list(delivery.queues["q"].waiters) == [c.waiter, d.waiter]
    assert core.pops == []  # no live consumer, no batch pop

    notice(delivery, "wake")  # an add anywhere: c, first in line now, claims again
    assert (len(c.claims), len(d.claims)) == (2, 0)


def test_live_consumers_are_served_after_the_waiters():
    delivery, core, clock = started()
    [a] = parked(delivery, clock, "a")
    consumer = Consumer()
    delivery.register("q", consumer)  # a round runs already: this one comes after it
    assert core.pops == []
    a.claims[0].callback(claimed())
    assert len(core.pops) == 1
    core.pops[0].callback(("roundrobin", []))
    assert len(a.claims) == 2  # the consumer's round served the waiter first too
    a.claims[1].callback(claimed("q:1"))
    assert a.answers == [claimed("q:1")]
    assert len(core.pops) == 2


def test_a_waiter_whose_time_is_up_is_answered_with_nothing_and_leaves():
    pubsub = PubSub()
    delivery, core, clock = started(pubsub)
    [a] = parked(delivery, clock, "a", seconds=20)
    a.claims[0].callback(claimed())
    assert pubsub.wanted == {keys.channel("q")}  # held like a live consumer's
    idle(clock, 19.5, a)
    assert a.answers == []
    claims = len(a.claims)
    assert 1 + 19 // SWEEP_INTERVAL <= claims  # the sweep looked once a second
    idle(clock, 0.5, a)
    assert a.answers == [None]
    assert delivery.queues == {} and pubsub.wanted == set()
    claims = len(a.claims)
    clock.advance(SWEEP_INTERVAL * 3)
    assert len(a.claims) == claims  # nothing claimed for it after its time


def test_a_departed_waiter_is_out_at_once_and_nothing_is_claimed_for_it():
    pubsub = PubSub()
    delivery, core, clock = started(pubsub)
    a, b = parked(delivery, clock, "a", "b")
    a.claims[0].callback(claimed())
    a.claims[1].callback(claimed())  # the round b's arrival asked for
    a.waiter.depart()
    assert a.answers == [None]
    assert list(delivery.queues["q"].waiters) == [b.waiter]
    notice(delivery, "wake")
    assert (len(a.claims), len(b.claims)) == (2, 1)
    b.claims[0].callback(claimed())
    b.waiter.depart()
    assert delivery.queues == {} and pubsub.wanted == set()
    clock.advance(30)
    assert len(a.claims) == 2 and len(b.claims) == 1


def test_what_a_claim_brings_for_a_waiter_that_left_meanwhile_is_released_then_the_next_served():
    delivery, core, clock = started()
    a, b = parked(delivery, clock, "a", "b")
    a.waiter.depart()  # while its claim is on its way
    assert a.answers == [None]
    a.claims[0].callback(claimed("q:1"))
    assert [what for what, _ in a.releases] == [claimed("q:1")]
    assert b.claims == []  # the released message is next in line: b claims once it is back
    a.releases[0][1].callback(None)
    assert len(b.claims) == 1
    b.claims[0].callback(claimed("q:1"))
    assert b.answers == [claimed("q:1")]


def test_a_client_found_gone_after_its_claim_gets_nothing_and_the_claim_is_released():
    delivery, core, clock = started()
    [a] = parked(delivery, clock, "a")
    a.connected = False  # the departure not told yet (lost before anyone listened)
    a.claims[0].callback(claimed("q:1"))
    assert a.answers == [None]
    assert [what for what, _ in a.releases] == [claimed("q:1")]
    assert delivery.queues == {}


def test_a_release_that_fails_is_logged_and_the_next_waiter_is_served():
    delivery, core, clock = started()
    a, b = parked(delivery, clock, "a", "b")
    a.waiter.depart()
    a.claims[0].callback(claimed("q:1"))
    a.releases[0][1].errback(RedisUnavailable())  # still leased: back when the lease ends
    assert len(b.claims) == 1


def test_a_waiter_whose_time_is_up_during_its_claim_gets_what_the_claim_brings():
    delivery, core, clock = started()
    a, b = parked(delivery, clock, "a", "b", seconds=1)
    clock.advance(1)
    assert a.answers == [] and b.answers == [None]  # b was idle: answered at once
    a.claims[0].callback(claimed("q:1"))
    assert a.answers == [claimed("q:1")]
    [c] = parked(delivery, clock, "c", seconds=1)
    clock.advance(1)
    c.claims[0].callback(claimed())
    assert c.answers == [None] and delivery.queues == {}


def test_a_failed_claim_answers_its_error_and_ends_the_round():
    delivery, core, clock = started()
    [a] = parked(delivery, clock, "a")
    a.claims[0].callback(claimed())
    b, c = parked(delivery, clock, "b", "c")
    a.claims[1].errback(RedisUnavailable())
    [failure] = a.answers
    assert failure.check(RedisUnavailable)
    # The round ended there; the one c's arrival asked for serves b, first in line now.
    assert (len(b.claims), len(c.claims)) == (1, 0)
    b.claims[0].callback(claimed())
    assert len(c.claims) == 0 and list(delivery.queues["q"].waiters) == [b.waiter, c.waiter]
    clock.advance(SWEEP_INTERVAL)  # the sweep tries again
    assert len(b.claims) == 2


def test_the_sweep_claims_for_a_queue_that_has_only_waiters():
    delivery, core, clock = started()
    [a] = parked(delivery, clock, "a")
    a.claims[0].callback(claimed())
    clock.advance(SWEEP_INTERVAL)
    assert len(a.claims) == 2
    a.claims[1].callback(claimed("q:9"))  # written to Redis without a wake: the sweep finds it
    assert a.answers == [claimed("q:9")]


def test_waiters_wait_for_the_subscription_to_be_confirmed():
    pubsub = PubSub(confirm=False)
    delivery, core, clock = started(pubsub)
    [a] = parked(delivery, clock, "a")
    assert a.claims == []  # a wake published now would not reach this process
    pubsub.confirmed.add(keys.channel("q"))
    delivery.confirmed(keys.channel("q"))
    assert len(a.claims) == 1


def test_waiters_ignore_batch_and_purge_notices():
    delivery, core, clock = started()
    [a] = parked(delivery, clock, "a")
    a.claims[0].callback(claimed())
    notice(delivery, "batch", messages=[{"key": "q:1", "value": "x"}])
    notice(delivery, "purge")
    assert a.answers == [] and len(a.claims) == 1
    assert list(delivery.queues["q"].waiters) == [a.waiter]


def test_stopping_answers_the_parked_waiters_and_lets_a_claim_on_its_way_finish():
    delivery, core, clock = started()
    a, b = parked(delivery, clock, "a", "b")
    stopped = delivery.stopService()
    assert b.answers == [None] and a.answers == []
    assert not stopped.called  # the round serving a is still on its way
    a.claims[0].callback(claimed("q:1"))
    assert a.answers == [claimed("q:1")]
    assert stopped.called
    [c] = parked(delivery, clock, "c")  # parked after the stop: answered at once
    assert c.answers == [None] and c.claims == []


@pytest.mark.parametrize("seconds", [1, 20])
def test_a_waiter_is_served_once_per_round_however_many_triggers(seconds):
    delivery, core, clock = started()
    [a] = parked(delivery, clock, "a", seconds=seconds)
    for _ in range(5):
        notice(delivery, "wake")
    assert len(a.claims) == 1
    a.claims[0].callback(claimed())
    assert len(a.claims) == 2  # exactly one more round for the five triggers
    a.claims[1].callback(claimed())
    assert len(a.claims) == 2
