"""Live delivery's timers on task.Clock: the safety sweep that pops for every queue with
consumers once a second, and the bounded wait for a full broadcast batch to come back on the
subscription before the next pop."""
from __future__ import annotations

import json

from twisted.internet import task

from restmq.core import BATCH_COUNT, Message
from restmq.delivery import Delivery
from restmq.delivery.live import BROADCAST_WAIT, SWEEP_INTERVAL
from restmq.redis import keys
from tests.unit.fakes import LiveConsumer as Consumer, PopCore, PubSub


def started():
    clock, core = task.Clock(), PopCore()
    delivery = Delivery(core, PubSub(), clock=clock)
    delivery.startService()
    return delivery, core, clock


def full_batch(start: int = 1) -> list[Message]:
    return [Message(f"q:{n}", "v") for n in range(start, start + BATCH_COUNT)]


def test_the_sweep_pops_again_every_second_without_a_notification():
    delivery, core, clock = started()
    delivery.register("q", Consumer())
    core.pops[0].callback(("roundrobin", []))  # nothing yet
    clock.advance(SWEEP_INTERVAL - 0.25)
    assert len(core.pops) == 1
    clock.advance(0.25)
    assert len(core.pops) == 2
    core.pops[1].callback(("roundrobin", []))
    clock.advance(SWEEP_INTERVAL)
    assert len(core.pops) == 3


def test_the_sweep_pops_nothing_for_a_queue_without_consumers():
    delivery, core, clock = started()
    consumer = Consumer()
    delivery.register("q", consumer)
    core.pops[0].callback(("roundrobin", []))
    delivery.unregister("q", consumer)
    clock.advance(SWEEP_INTERVAL * 5)
    assert len(core.pops) == 1


def test_the_sweep_stops_with_the_service():
    delivery, core, clock = started()
    delivery.register("q", Consumer())
    core.pops[0].callback(("roundrobin", []))
    delivery.stopService()
    clock.advance(SWEEP_INTERVAL * 5)
    assert len(core.pops) == 1
    assert clock.getDelayedCalls() == []


def broadcast_note(batch: list[Message]) -> str:
    return json.dumps({"type": "batch", "db": 0,
                       "messages": [{"key": m.key, "value": m.value} for m in batch]})


def test_a_full_broadcast_batch_is_followed_by_the_next_pop_once_it_came_back():
    delivery, core, clock = started()
    consumer = Consumer()
    delivery.register("q", consumer)
    batch = full_batch()
    core.pops[0].callback(("broadcast", batch))
    assert len(core.pops) == 1  # waiting for the batch on the subscription
    delivery.message(keys.channel("q"), broadcast_note(batch))
    assert consumer.got == [m.key for m in batch]
    assert len(core.pops) == 2


def test_a_full_broadcast_batch_that_never_comes_back_delays_the_next_pop_five_seconds():
    delivery, core, clock = started()
    delivery.register("q", Consumer())
    core.pops[0].callback(("broadcast", full_batch()))
    delivery._sweep.stop()  # only the wait's own timer, not the sweep, may pop again here
    clock.advance(BROADCAST_WAIT - 0.25)
    assert len(core.pops) == 1
    clock.advance(0.25)
    assert len(core.pops) == 2
