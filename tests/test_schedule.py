"""What is due, against a real redis-server (docs/redis-layout.md#due-times): DUESET, the due
look, the tick of a queue (leases, delayed messages, idempotency keys, clean-up of delivery
counts, its next due time, its bounds), and priorities in every consuming script."""
from __future__ import annotations

import pytest
import pytest_twisted

from restmq.core import TICK_QUEUES, TICK_STEP, Core, Item, Message
from restmq.errors import IdempotencyKeyReused, InvalidItem
from tests.util import redis_ms, until_redis_passes

RETENTION = 100


@pytest.fixture(scope="session")
def redis_proc(quiet_redis_proc):
    """This module's Redis: one no server process ticks on (see conftest.quiet_redis_proc)."""
    return quiet_redis_proc


@pytest.fixture
def core(service):
    return Core(service, consumed_ttl=RETENTION)


@pytest.fixture
def dues(core):
    """The delays the core reports to its ticker (on_due), in seconds."""
    seen: list[float] = []
    core.on_due = seen.append
    return seen


# -- DUESET and the due look --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_due_lists_queues_due_by_redis_time_and_the_head(core, redis):
    now = redis_ms(redis)
    redis("ZADD", "DUESET", now - 10, "a", now - 5, "b", now + 60_000, "later")
    due = await core.due()
    assert due.queues == ["a", "b"]
    assert due.head == now - 10
    assert now <= due.now <= redis_ms(redis)
    redis("ZREM", "DUESET", "a", "b")
    due = await core.due()
    assert (due.queues, due.head) == ([], now + 60_000)
    redis("DEL", "DUESET")
    assert (await core.due()).head is None


@pytest_twisted.ensureDeferred
async def test_due_lists_at_most_16_queues(core, redis):
    now = redis_ms(redis)
    for n in range(TICK_QUEUES + 4):
        redis("ZADD", "DUESET", now - 100 + n, f"q{n}")
    assert (await core.due()).queues == [f"q{n}" for n in range(TICK_QUEUES)]


@pytest_twisted.ensureDeferred
async def test_a_claim_makes_its_queue_due_at_the_lease_end_and_tells_the_ticker(core, redis,
                                                                                   dues):
    await core.add("q", "a")
    assert redis("EXISTS", "DUESET") == 0 and dues == []
    claimed = await core.claim("q", lease=20)
    assert dues == [20]
    assert int(redis("ZSCORE", "DUESET", "q")) == int(claimed.messages[0].lease_until * 1000)
    # a later due time never moves the entry later; an earlier one moves it earlier
    await core.add("q", "b")
    await core.claim("q", lease=40)
    assert int(redis("ZSCORE", "DUESET", "q")) == int(claimed.messages[0].lease_until * 1000)
    await core.add("q", "c")
    await core.claim("q", lease=5)
    assert dues == [20, 40, 5]
    assert int(redis("ZSCORE", "DUESET", "q")) < int(claimed.messages[0].lease_until * 1000)


@pytest_twisted.ensureDeferred
async def test_tick_sets_the_next_due_time_then_forgets_the_queue(core, redis):
    await core.add("q", "a")
    await core.add("q", "b")
    short = await core.claim("q", lease=1)
    long = await core.claim("q", lease=30)
    await until_redis_passes(redis, int(short.messages[0].lease_until * 1000))
    ticked = await core.tick("q")
    assert (ticked.requeued, ticked.promoted, ticked.dead_lettered) == (1, 0, 0)
    assert ticked.next == int(long.messages[0].lease_until * 1000)
    assert int(redis("ZSCORE", "DUESET", "q")) == ticked.next == ticked.head
    # what is left is acked; the requeued message's count keeps a clean-up visit in a minute
    await core.ack("q", [long.messages[0].receipt])
    ticked = await core.tick("q")
    assert ticked.next == ticked.now + 60_000
    await core.take("q")  # the last message leaves: nothing to visit for
    ticked = await core.tick("q")
    assert (ticked.next, ticked.head) == (None, None)
    assert redis("EXISTS", "DUESET", "q:deliveries") == 0


@pytest_twisted.ensureDeferred
async def test_tick_handles_at_most_a_step_of_leases_and_stays_due(core, redis):
    count = TICK_STEP + 20
    for n in range(count):
        await core.add("q", str(n))
    claimed = []
    while len(claimed) < count:
        claimed += (await core.claim("q", limit=100, lease=1)).messages
    await until_redis_passes(redis, int(max(m.lease_until for m in claimed) * 1000))
    first = await core.tick("q")
    assert first.requeued == TICK_STEP
    assert first.next == first.now  # due again at once
    second = await core.tick("q")
    assert second.requeued == 20
    # every message once; within a step, the earliest deadline first (each step's messages
    # go to the consuming end, so the second step's come before the first's)
    pending = redis("LRANGE", "q:queue", 0, -1)
    assert sorted(pending) == sorted(m.key for m in claimed)
    assert pending[::-1] == [f"q:{n}" for n in range(TICK_STEP + 1, count + 1)] + \
        [f"q:{n}" for n in range(1, TICK_STEP + 1)]


@pytest_twisted.ensureDeferred
async def test_tick_removes_counts_of_messages_gone(core, redis):
    await core.add("q", "a")
    await core.add("q", "b")
    r = (await core.claim("q", limit=2)).messages
    await core.release("q", [m.receipt for m in r])
    redis("DEL", "q:1")  # consumed by a program that does not know about counts
    redis("HSET", "q:deliveries", "junk", "1", "other:3", "2")
    await core.tick("q")
    assert redis("HGETALL", "q:deliveries") == ["q:2", "1"]


@pytest_twisted.ensureDeferred
async def test_tick_forgets_idempotency_keys_after_their_window(core, redis):
    await core.config_set("q", {"dedup_window": "1"})
    added = await core.add_items("q", [Item("a")], idempotency=("k1", "fp"))
    assert (await core.add_items("q", [Item("a")], idempotency=("k1", "fp"))) == \
        type(added)(added.keys, True)
    expires = int(redis("ZSCORE", "q:dedupexp", "k1"))
    await until_redis_passes(redis, expires)
    await core.tick("q")
    assert redis("EXISTS", "q:dedup", "q:dedupexp", "DUESET") == 0
    again = await core.add_items("q", [Item("a")], idempotency=("k1", "fp"))
    assert (again.keys, again.replayed) == (["q:2"], False)


# -- adds: delays, configuration, batches, idempotency ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_delayed_add_is_pending_once_due_as_if_added_then(core, redis, dues, subscribe):
    await core.add("q", "first")
    now = redis_ms(redis)
    added = await core.add_items("q", [Item("later", delay=1, ttl=60)])
    assert added.keys == ["q:2"] and dues == [1.0]
    due = int(redis("ZSCORE", "q:delayed", "q:2"))
    assert now + 1000 <= due <= redis_ms(redis) + 1000
    assert 60_000 < redis("PTTL", "q:2") <= 61_000  # the ttl counts from the due time
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:1"]
    sub = subscribe("q:PUBSUB")
    await until_redis_passes(redis, due)
    assert (await core.tick("q")).promoted == 1
    assert sub.next_json() == {"type": "wake", "db": 0}
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:2", "q:1"]  # at the producing end


@pytest_twisted.ensureDeferred
async def test_the_configured_delay_and_ttl_apply_to_legacy_adds(core, redis):
    await core.config_set("q", {"delay": "5", "ttl": "50"})
    assert await core.add("q", "a") == "q:1"
    assert redis("EXISTS", "q:queue") == 0
    assert redis("ZRANGE", "q:delayed", 0, -1) == ["q:1"]
    assert 54_000 < redis("PTTL", "q:1") <= 55_000
    assert await core.add("q", "b", 10) == "q:2"  # its own ttl wins
    assert 14_000 < redis("PTTL", "q:2") <= 15_000


@pytest_twisted.ensureDeferred
async def test_an_eta_more_than_30_days_ahead_is_refused(core, redis):
    now = redis_ms(redis) / 1000
    with pytest.raises(InvalidItem) as raised:
        await core.add_items("q", [Item("a"), Item("b", eta=now + 2592000 + 60)])
    assert (raised.value.reason, raised.value.index) == ("invalid argument: eta", 1)
    assert redis("KEYS", "*") == []
    past = await core.add_items("q", [Item("c", eta=now - 100)])
    assert redis("LRANGE", "q:queue", 0, -1) == past.keys  # a past eta is now


@pytest_twisted.ensureDeferred
async def test_a_batch_gets_consecutive_keys_all_or_nothing(core, redis, subscribe):
    await core.add("q", "zero")
    sub = subscribe("q:PUBSUB")
    added = await core.add_items("q", [Item("a"), Item("b"), Item("c")])
    assert added.keys == ["q:2", "q:3", "q:4"]
    assert sub.next_json() == {"type": "wake", "db": 0}
    sub.assert_nothing_pending(redis)  # one wake for the batch
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:4", "q:3", "q:2", "q:1"]
    redis("SET", "q:6", "restored from a snapshot")  # the counter rolled back under it
    assert (await core.add_items("q", [Item("d"), Item("e")])).keys == ["q:7", "q:8"]


@pytest_twisted.ensureDeferred
async def test_an_idempotency_key_replays_or_refuses(core, redis):
    first = await core.add_items("q", [Item("a"), Item("b")], idempotency=("k", "fp1"))
    again = await core.add_items("q", [Item("a"), Item("b")], idempotency=("k", "fp1"))
    assert (again.keys, again.replayed) == (first.keys, True)
    with pytest.raises(IdempotencyKeyReused):
        await core.add_items("q", [Item("x")], idempotency=("k", "fp2"))
    assert redis("GET", "q:UUID") == "2"
    assert redis("HGET", "q:dedup", "k") == "fp1 q:1,q:2"
    assert redis("ZSCORE", "DUESET", "q") == redis("ZSCORE", "q:dedupexp", "k")


# -- priorities -------------------------------------------------------------------------------


async def with_priorities(core) -> None:
    """q:1 (0), q:2 (3), q:3 (9), q:4 (3), q:5 (0)."""
    await core.add_items("q", [Item("p0a"), Item("p3a", priority=3), Item("p9", priority=9),
                               Item("p3b", priority=3), Item("p0b")])


ORDER = ["q:3", "q:2", "q:4", "q:1", "q:5"]


@pytest_twisted.ensureDeferred
async def test_every_consumer_takes_higher_priorities_first(core, redis):
    await with_priorities(core)
    assert redis("HGETALL", "q:prio") == ["q:2", "3", "q:3", "9", "q:4", "3"]
    assert (await core.length("q")) == 5
    assert (await core.soft_get("q")).key == "q:3"
    taken = [(await core.hard_get("q")).key, (await core.take("q")).key,
             *[m.key for m in (await core.claim("q", limit=3)).messages]]
    assert taken == ORDER
    assert redis("EXISTS", "q:priority") == 0
    assert redis("HGETALL", "q:prio") == ["q:4", "3"]  # still leased: keeps its level


@pytest_twisted.ensureDeferred
async def test_the_live_pop_takes_priorities_first(core, redis, subscribe):
    subscribe("q:PUBSUB")  # a broadcast pop takes nothing while nobody listens
    await with_priorities(core)
    await core.set_status("q", True)
    policy, messages = await core.pop_batch("q")
    assert [m.key for m in messages] == ORDER
    assert redis("EXISTS", "q:prio", "q:priority", "q:queue") == 0


@pytest_twisted.ensureDeferred
async def test_a_released_or_expired_priority_message_returns_to_its_level(core, redis):
    await with_priorities(core)
    claimed = await core.claim("q", limit=2, lease=1)
    assert [m.key for m in claimed.messages] == ["q:3", "q:2"]
    await core.release("q", [claimed.messages[0].receipt])
    await until_redis_passes(redis, int(claimed.messages[1].lease_until * 1000))
    await core.tick("q")
    assert [m.key for m in (await core.claim("q", limit=5)).messages] == ORDER


@pytest_twisted.ensureDeferred
async def test_a_delayed_priority_message_keeps_its_level(core, redis):
    await core.add_items("q", [Item("old"), Item("urgent", delay=1, priority=7)])
    due = int(redis("ZSCORE", "q:delayed", "q:2"))
    await until_redis_passes(redis, due)
    await core.tick("q")
    assert (await core.hard_get("q")) == Message("q:2", "urgent", 0)


@pytest_twisted.ensureDeferred
async def test_a_dead_priority_entry_is_skipped_and_forgotten(core, redis):
    await with_priorities(core)
    redis("DEL", "q:3")
    assert (await core.hard_get("q")).key == "q:2"
    assert redis("HEXISTS", "q:prio", "q:3") == 0
    assert redis("ZRANGE", "q:priority", 0, -1) == ["q:4"]
