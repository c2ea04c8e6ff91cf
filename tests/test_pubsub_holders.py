"""One queue's pub/sub channel held by two parts of a process at once: live delivery (while the
queue has a live consumer or a waiter here) and the queue's push dispatcher. The channel is
held by count, so the one letting go must not cut the other's notices.

In the test process, on a private redis-server: the real PubSubService, live delivery and push
service as the restmq plugin wires them, a push target in a thread (tests/push_target.py). The
push service runs on a clock of its own that the test never advances, so after its first
sweep nothing but a `wake` notice can make its dispatcher claim: a push reaching the target
shows the dispatcher was woken."""
from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from restmq.core import Core
from restmq.delivery import Delivery
from restmq.delivery.push import PushService
from restmq.redis import PubSubService, RedisService
from restmq.redis.pubsub import FanOut
from tests.conftest import RedisProcess
from tests.push_target import Target


@pytest.fixture
def private_redis():
    proc = RedisProcess().start()
    yield proc
    proc.stop()


class IdleConsumer:
    """A live consumer that takes nothing (never ready) and has nothing unsent."""

    ready = False

    def send(self, batch):
        return False

    def end(self):
        pass

    def unsent(self):
        return 0

    def cut(self, why):
        pass


async def until(probe, what: str, ok=bool, timeout: float = 10.0):
    """Await `probe()` every 20 ms until `ok` of its value holds."""
    give_up = time.monotonic() + timeout
    while True:
        value = await probe()
        if ok(value):
            return value
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        await task.deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_dispatcher_is_still_woken_after_the_last_live_consumer_of_its_queue_left(
        private_redis):
    redis = RedisService(port=private_redis.port)
    redis.startService()
    core = Core(redis, consumed_ttl=60)
    pubsub = PubSubService(redis)
    delivery = Delivery(core, pubsub)  # not started: its own sweep is not needed here
    frozen = task.Clock()
    push = PushService(core, pubsub, frozen, reactor, private=True)
    pubsub.listener = FanOut(delivery, push)
    target = Target().start()

    async def subscribers(queue: str) -> int:
        reply = await redis.execute("PUBSUB", "NUMSUB", f"{queue}:PUBSUB")
        return int(reply[1])

    try:
        pubsub.startService()
        await core.config_set("jobs", {"push_url": target.url()})
        push.startService()  # its one sweep: a dispatcher for jobs, holding jobs:PUBSUB
        await until(lambda: subscribers("jobs"), "the dispatcher's subscription")
        assert "jobs" in push.dispatchers

        consumer = IdleConsumer()
        delivery.register("jobs", consumer)  # a second holder of jobs:PUBSUB
        delivery.unregister("jobs", consumer)  # ... the last live one, letting go
        assert "jobs" not in delivery.queues
        # A marker on the same connection after it: once its unsubscribe is through, so
        # would be any unsubscribe of jobs:PUBSUB sent before it.
        delivery.register("marker", consumer)
        await until(lambda: subscribers("marker"), "the marker's subscription")
        delivery.unregister("marker", consumer)
        await until(lambda: subscribers("marker"), "the marker's unsubscribe",
                    ok=lambda n: n == 0)
        assert await subscribers("jobs") == 1

        await core.add("jobs", "after the consumer left")  # publishes `wake`
        await until(lambda: task.deferLater(reactor, 0, lambda: target.requests),
                    "the push the wake notice started")
        assert [r.body for r in target.requests] == [b"after the consumer left"]
        assert frozen.seconds() == 0  # no sweep ran: the notice woke the dispatcher
    finally:
        await push.stopService()
        await pubsub.stopService()
        await redis.stopService()
        target.stop()
