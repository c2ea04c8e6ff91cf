"""restmq.delivery in isolation: who gets a popped batch when consumers come, go, stall or fail,
with a fake core (pops answered by the test), a fake pub/sub and task.Clock; Core.requeue on a
real Redis; restmq.streams.StallWatch with task.Clock."""
from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import Logger

from restmq.core import Core, Message
from restmq.delivery import Delivery
from restmq.errors import RedisUnavailable
from restmq.delivery.streams import StallWatch
from tests.resp import RedisClient


class FakeCore:
    def __init__(self):
        self.pops: list[defer.Deferred] = []
        self.requeued: list[tuple[str, list[Message]]] = []
        self.requeue_fails = 0  # how many put-backs fail before they succeed

    def pop_batch(self, queue):
        d = defer.Deferred()
        self.pops.append(d)
        return d

    def requeue(self, queue, messages):
        self.requeued.append((queue, list(messages)))
        if self.requeue_fails:
            self.requeue_fails -= 1
            return defer.fail(RedisUnavailable())
        return defer.succeed(len(messages))


class FakePubSub:
    def __init__(self):
        self.confirmed: set[str] = set()

    def subscribe(self, channel):
        self.confirmed.add(channel)

    def unsubscribe(self, channel):
        self.confirmed.discard(channel)


class Consumer:
    def __init__(self, name, fail=False):
        self.name, self.fail = name, fail
        self.ready = True
        self.got: list[str] = []
        self.cut_for: str | None = None
        self.behind = 0  # bytes written that its peer has not acknowledged

    def send(self, batch):
        if self.fail:
            raise RuntimeError(f"{self.name} broke")
        self.got += [key for key, _ in batch]
        return True

    def end(self):
        pass

    def cut(self, why):
        self.cut_for = why

    def unsent(self):
        return self.behind


def batch(*numbers, queue="q"):
    return [Message(f"{queue}:{n}", f"v{n}") for n in numbers]


def make():
    core, pubsub, events = FakeCore(), FakePubSub(), []
    delivery = Delivery(core, pubsub, clock=task.Clock())
    delivery.log = Logger(observer=events.append)
    delivery.startService()
    return delivery, core, events


def texts(events):
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in events]


def test_a_batch_popped_while_consumers_changed_goes_to_the_consumer_now_registered():
    delivery, core, events = make()
    old, new = Consumer("old"), Consumer("new")
    delivery.register("q", old)
    delivery.unregister("q", old)
    delivery.register("q", new)
    core.pops[0].callback(("roundrobin", batch(1, 2, 3)))
    assert new.got == ["q:1", "q:2", "q:3"]
    assert not any("dropped" in t for t in texts(events))


def test_a_batch_nobody_can_take_is_put_back_in_order():
    delivery, core, events = make()
    gone = Consumer("gone")
    delivery.register("q", gone)
    delivery.unregister("q", gone)
    core.pops[0].callback(("roundrobin", batch(1, 2, 3)))
    assert core.requeued == [("q", batch(1, 2, 3))]


def nobody_takes(delivery, core, *numbers):
    gone = Consumer("gone")
    delivery.register("q", gone)
    delivery.unregister("q", gone)
    core.pops[0].callback(("roundrobin", batch(*numbers)))


def test_a_failed_put_back_is_tried_again_until_redis_takes_it():
    delivery, core, events = make()
    core.requeue_fails = 3
    nobody_takes(delivery, core, 1, 2)
    assert len(core.requeued) == 1
    delivery.clock.advance(0.5)
    delivery.clock.advance(1.0)
    assert len(core.requeued) == 3
    delivery.clock.advance(2.0)
    assert core.requeued == [("q", batch(1, 2))] * 4
    assert "q" not in delivery.runs  # done
    assert not any("lost" in t for t in texts(events))


def test_a_put_back_failing_for_a_minute_logs_every_key_as_lost():
    delivery, core, events = make()
    core.requeue_fails = 1000
    nobody_takes(delivery, core, 1, 2)
    delivery.clock.pump([0.5] * 119)
    assert not any("lost" in t for t in texts(events))
    delivery.clock.advance(0.5)  # 60 s
    logged = "\n".join(t for t in texts(events) if "lost" in t)
    assert "q:1" in logged and "q:2" in logged
    assert len(core.requeued) == 1 + 4 + 10 + 1  # 0.5, 1, 2, 4 s apart, then 5 s, at 60 s
    assert "q" not in delivery.runs


def test_stop_makes_a_waiting_put_back_try_once_more_at_once():
    delivery, core, events = make()
    core.requeue_fails = 1
    nobody_takes(delivery, core, 1, 2)
    stopped = delivery.stopService()
    assert stopped.called and len(core.requeued) == 2  # the last attempt succeeded
    assert not any("lost" in t for t in texts(events))


def test_a_put_back_failing_at_stop_is_lost_without_delaying_the_stop():
    delivery, core, events = make()
    core.requeue_fails = 2
    nobody_takes(delivery, core, 1, 2)
    stopped = delivery.stopService()
    assert stopped.called and len(core.requeued) == 2
    assert "q:1" in "\n".join(t for t in texts(events) if "lost" in t)


PURGE = '{"type": "purge", "db": 0}'


def test_a_batch_popped_before_a_purge_heard_of_is_not_put_back():
    delivery, core, events = make()
    a = Consumer("a")
    delivery.register("q", a)
    delivery.message("q:PUBSUB", PURGE)  # ends `a`; the pop is still on its way
    core.pops[0].callback(("roundrobin", batch(1, 2)))
    assert core.requeued == [] and a.got == []
    assert any("q:1, q:2 popped for q before a purge: dropped as purged" in t
               for t in texts(events))


def test_a_purge_heard_of_while_a_put_back_waits_to_be_retried_drops_it():
    delivery, core, events = make()
    core.requeue_fails = 1
    nobody_takes(delivery, core, 1, 2)
    delivery.message("q:PUBSUB", PURGE)
    delivery.clock.advance(0.5)
    assert len(core.requeued) == 1
    assert any("dropped as purged" in t for t in texts(events))
    assert "q" not in delivery.runs


def test_a_batch_popped_before_a_purge_still_goes_to_consumers_that_can_take_it():
    delivery, core, events = make()
    delivery.register("q", Consumer("old"))
    delivery.message("q:PUBSUB", PURGE)
    new = Consumer("new")
    delivery.register("q", new)
    core.pops[0].callback(("roundrobin", batch(1, 2)))
    assert new.got == ["q:1", "q:2"] and core.requeued == []


def test_a_purge_heard_of_before_the_pop_was_sent_changes_nothing():
    delivery, core, events = make()
    delivery.message("q:PUBSUB", PURGE)  # no consumer, no dispatch yet
    nobody_takes(delivery, core, 1, 2)
    assert core.requeued == [("q", batch(1, 2))]


def test_roundrobin_skips_consumers_whose_output_is_blocked():
    delivery, core, _ = make()
    a, b, c = Consumer("a"), Consumer("b"), Consumer("c")
    for consumer in (a, b, c):
        delivery.register("q", consumer)
    b.ready = False
    core.pops[0].callback(("roundrobin", batch(1, 2, 3, 4)))
    assert (a.got, b.got, c.got) == (["q:1", "q:3"], [], ["q:2", "q:4"])


def test_roundrobin_puts_back_what_no_ready_consumer_can_take_and_then_stops_popping():
    delivery, core, _ = make()
    a = Consumer("a")
    delivery.register("q", a)
    original = a.send

    def send_then_block(batch):
        a.ready = False  # its buffer filled with this write
        return original(batch)

    a.send = send_then_block
    core.pops[0].callback(("roundrobin", batch(1, 2, 3)))
    assert a.got == ["q:1"]
    assert core.requeued == [("q", batch(2, 3))]
    pops = len(core.pops)
    delivery.sweep()  # nobody is ready: no pop for nothing
    assert len(core.pops) == pops
    a.ready = True
    delivery.trigger("q")  # its output drained
    assert len(core.pops) == pops + 1


def test_a_message_for_a_consumer_found_gone_at_write_goes_to_the_next():
    delivery, core, _ = make()
    a, b = Consumer("a"), Consumer("b")
    delivery.register("q", a)
    delivery.register("q", b)
    a.send = lambda batch: False  # its connection closed between the pop and the write
    core.pops[0].callback(("roundrobin", batch(1, 2)))
    assert b.got == ["q:1", "q:2"]
    assert delivery.queues["q"].consumers == [b]


def test_a_roundrobin_consumer_that_fails_is_dropped_and_the_others_get_the_rest():
    delivery, core, events = make()
    a, bad, c = Consumer("a"), Consumer("bad", fail=True), Consumer("c")
    for consumer in (a, bad, c):
        delivery.register("q", consumer)
    core.pops[0].callback(("roundrobin", batch(1, 2, 3, 4, 5)))
    # q:2 was being written to the failing consumer: lost with it (at most once), and logged.
    assert a.got == ["q:1", "q:3", "q:5"] and c.got == ["q:4"]
    assert bad not in delivery.queues["q"].consumers and bad.cut_for
    logged = "\n".join(texts(events))
    assert "q" in logged and "q:2" in logged


def test_a_broadcast_consumer_that_fails_does_not_cost_the_others_their_batch():
    delivery, core, events = make()
    bad, b = Consumer("bad", fail=True), Consumer("b")
    delivery.register("q", bad)
    delivery.register("q", b)
    note = {"type": "batch", "db": 0,
            "messages": [{"key": m.key, "value": m.value} for m in batch(1, 2)]}
    delivery.message("q:PUBSUB", json.dumps(note))
    assert b.got == ["q:1", "q:2"]
    assert bad not in delivery.queues["q"].consumers
    assert any("q" in t for t in texts(events))


def test_a_consumer_that_fails_at_purge_does_not_keep_the_others_registered():
    delivery, core, _ = make()

    class BadEnd(Consumer):
        def end(self):
            raise RuntimeError("broke at the end")

    bad, b = BadEnd("bad"), Consumer("b")
    delivery.register("q", bad)
    delivery.register("q", b)
    delivery.message("q:PUBSUB", json.dumps({"type": "purge", "db": 0}))
    assert "q" not in delivery.queues


def test_stop_waits_for_the_dispatch_in_flight():
    delivery, core, _ = make()
    a = Consumer("a")
    delivery.register("q", a)
    stopped = delivery.stopService()
    assert isinstance(stopped, defer.Deferred) and not stopped.called
    core.pops[0].callback(("roundrobin", batch(1, 2)))
    assert a.got == ["q:1", "q:2"]
    assert stopped.called
    pops = len(core.pops)
    delivery.trigger("q")  # stopped: no more pops
    assert len(core.pops) == pops


def test_stop_waits_until_the_consumers_output_reached_their_peers():
    delivery, core, events = make()
    a, b = Consumer("a"), Consumer("b")
    delivery.register("q", a)
    delivery.register("r", b)
    core.pops[0].callback(("roundrobin", batch(1)))
    core.pops[1].callback(("roundrobin", batch(2, queue="r")))
    a.behind, b.behind = 1000, 500
    stopped = delivery.stopService()
    delivery.clock.advance(1)
    assert not stopped.called
    a.behind = 0
    delivery.clock.advance(1)
    assert not stopped.called
    a.behind = 10  # a later broadcast batch: `a` was drained once, it is not waited for
    b.behind = 0
    delivery.clock.advance(1)
    assert stopped.called
    assert not any("behind" in t for t in texts(events))


def test_stop_waits_at_most_the_grace_for_a_consumer_that_does_not_read():
    delivery, core, events = make()
    a = Consumer("a")
    delivery.register("q", a)
    core.pops[0].callback(("roundrobin", batch(1)))
    a.behind = 4096
    stopped = delivery.stopService()
    delivery.clock.pump([1] * 9)
    assert not stopped.called
    delivery.clock.advance(1)
    assert stopped.called
    assert any("1 live consumer(s) still behind by 4096 bytes" in t for t in texts(events))


# -- REQUEUE against a real Redis: what delivery does with a batch nobody could take ----------

@pytest_twisted.ensureDeferred
async def test_requeue_puts_messages_back_next_in_line_and_wakes_consumers(service, redis,
                                                                          redis_proc):
    core = Core(service)
    for i in range(1, 5):
        await core.add("q", f"v{i}")
    await core.set_policy("q", "roundrobin")
    _, popped = await core.pop_batch("q")
    assert [m.key for m in popped] == ["q:1", "q:2", "q:3", "q:4"]
    await core.add("q", "v5")
    listener = RedisClient(redis_proc.port)
    try:
        listener("SUBSCRIBE", "q:PUBSUB")
        assert await core.requeue("q", popped[1:]) == 3
        assert listener._reply() == ["message", "q:PUBSUB", '{"type": "wake", "db": 0}']
    finally:
        listener.close()
    # The oldest put back is taken first; the newer message waits behind them.
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:5", "q:4", "q:3", "q:2"]
    assert [await core.take("q") for _ in range(4)] == [
        Message("q:2", "v2"), Message("q:3", "v3"), Message("q:4", "v4"), Message("q:5", "v5")]


@pytest_twisted.ensureDeferred
async def test_a_repeated_requeue_puts_nothing_back_twice(service, redis):
    """A put-back whose reply was lost is tried again: what the first attempt put back (its
    value exists again) is skipped."""
    core = Core(service)
    for i in range(1, 4):
        await core.add("q", f"v{i}")
    await core.set_policy("q", "roundrobin")
    _, popped = await core.pop_batch("q")
    assert await core.requeue("q", popped[1:]) == 2
    assert await core.requeue("q", popped) == 1  # only q:1 was still missing
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:3", "q:2", "q:1"]
    assert [await core.take("q") for _ in range(3)] == [
        Message("q:1", "v1"), Message("q:2", "v2"), Message("q:3", "v3")]


@pytest_twisted.ensureDeferred
async def test_requeue_after_its_deadline_writes_nothing(service, redis):
    core = Core(service)
    core._deadline = lambda: 1  # long past
    with pytest.raises(RedisUnavailable):
        await core.requeue("q", [Message("q:1", "v1")])
    assert redis("EXISTS", "q:1", "q:queue") == 0


# -- StallWatch: when a stream's peer counts as no longer reading --------------------------------

class Outbox:
    """What StallWatch reads of a stream's Outbox: how much is outstanding, and a counter of
    what the peer acknowledged (the kernel's, on a real socket)."""

    def __init__(self):
        self.transport = self
        self.connected = True
        self.written = self.acked_count = 0

    def holding(self, size: int) -> None:
        self.acked_count = self.written - size

    def outstanding(self) -> int:
        return self.written - self.acked_count

    def acked(self) -> int:
        return self.acked_count

    def write(self, size: int) -> None:
        self.written += size


def watch(outbox):
    clock, stalls = task.Clock(), []

    def wrote(size):
        outbox.write(size)
        stall.wrote(size)

    stall = StallWatch(outbox, clock, 5, lambda: stalls.append(clock.seconds()))
    stall.write = wrote
    return stall, clock, stalls


def test_a_peer_that_takes_nothing_for_the_timeout_is_reported():
    outbox = Outbox()
    stall, clock, stalls = watch(outbox)
    stall.write(1000)
    outbox.holding(1000)
    clock.advance(4.9)
    assert stalls == []
    clock.advance(0.1)
    assert stalls == [5]


def test_a_slow_peer_that_keeps_reading_is_left_alone_until_it_stops():
    outbox = Outbox()
    stall, clock, stalls = watch(outbox)
    stall.write(1000)
    outbox.holding(1000)
    for held in (900, 800, 700):  # it reads a little in every period
        outbox.holding(held)
        clock.advance(5)
    assert stalls == []
    clock.advance(5)  # then nothing more for a whole period
    assert stalls == [20]


def test_a_peer_that_read_everything_is_not_watched_until_the_next_write():
    outbox = Outbox()
    stall, clock, stalls = watch(outbox)
    stall.write(10)
    outbox.holding(0)
    clock.advance(5)  # nothing outstanding
    assert not clock.getDelayedCalls()
    stall.write(10)
    outbox.holding(10)
    clock.advance(5)
    assert stalls == [10]


def test_no_report_once_stopped_or_disconnected():
    outbox = Outbox()
    stall, clock, stalls = watch(outbox)
    stall.write(10)
    outbox.holding(10)
    stall.stop()
    clock.advance(10)
    stall.write(10)
    outbox.connected = False
    clock.advance(10)
    assert stalls == []
