"""Per-queue configuration, info, and what the original operations do with the keys of leases,
delays and priorities, against a real redis-server (docs/redis-layout.md#configuration,
#operations): the original operations clean those keys up but never create one, so a queue used
only through them keeps exactly the original layout."""
from __future__ import annotations

import pytest
import pytest_twisted

from restmq.core import Core, Item
from restmq.core.steps import PURGE_STEP
from restmq.errors import InvalidArgument, MessageTooLarge

RETENTION = 100


@pytest.fixture(scope="session")
def redis_proc(quiet_redis_proc):
    """This module's Redis: one no server process ticks on (see conftest.quiet_redis_proc)."""
    return quiet_redis_proc


@pytest.fixture
def core(service):
    return Core(service, consumed_ttl=RETENTION)


DEFAULTS = {"ttl": None, "delay": 0, "max_message": None, "lease": 30, "max_attempts": 0,
            "dead_letter": None, "dedup_window": 300, "push_url": None, "push_auth": None,
            "push_type": "text/plain; charset=utf-8", "push_timeout": 30, "push_rate": 10,
            "push_burst": 10, "push_concurrency": 10, "backoff_min": 1, "backoff_max": 300,
            "pre_hook": None, "post_hook": None}


# -- configuration ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_config_set_merges_and_reads_back(core, redis):
    assert (await core.config_get("q")).as_json() == {"queue": "q", "config": DEFAULTS,
                                                      "set": []}
    first = await core.config_set("q", {"lease": "5", "ttl": "60"})
    assert first.as_json() == {"queue": "q", "config": {**DEFAULTS, "lease": 5, "ttl": 60},
                               "set": ["lease", "ttl"]}
    second = await core.config_set("q", {"max_attempts": "3", "dead_letter": "d"}, ["ttl"])
    assert second.config == {**DEFAULTS, "lease": 5, "max_attempts": 3, "dead_letter": "d"}
    assert second.set == ["dead_letter", "lease", "max_attempts"]
    assert await core.config_get("q") == second
    assert redis("HGETALL", "q:config") == ["lease", "5", "max_attempts", "3",
                                            "dead_letter", "d"]
    # a configuration does not make a queue
    assert redis("EXISTS", "QUEUESET", "queuestat::q") == 0


@pytest_twisted.ensureDeferred
async def test_max_attempts_needs_a_dead_letter_queue_and_nothing_is_written(core, redis):
    with pytest.raises(InvalidArgument) as raised:
        await core.config_set("q", {"max_attempts": "2"})
    assert raised.value.reason == "invalid argument: max_attempts"
    assert redis("EXISTS", "q:config") == 0
    await core.config_set("q", {"max_attempts": "2", "dead_letter": "d", "lease": "9"})
    with pytest.raises(InvalidArgument):
        await core.config_set("q", {"lease": "1"}, ["dead_letter"])
    assert redis("HGETALL", "q:config") == ["max_attempts", "2", "dead_letter", "d",
                                            "lease", "9"]
    await core.config_set("q", {"max_attempts": "0"}, ["dead_letter"])
    assert redis("HGETALL", "q:config") == ["max_attempts", "0", "lease", "9"]


@pytest_twisted.ensureDeferred
async def test_config_set_refuses_what_is_no_attribute(core, redis):
    for changes, removed, reason in (({"push_link": "x"}, [], "invalid argument: push_link"),
                                     ({"dead_letter": "q"}, [], "invalid argument: dead_letter"),
                                     ({}, ["nope"], "invalid argument: unset")):
        with pytest.raises(InvalidArgument) as raised:
            core.config_set("q", changes, removed)
        assert raised.value.reason == reason
    assert redis("KEYS", "*") == []


@pytest_twisted.ensureDeferred
async def test_config_clear(core, redis):
    assert await core.config_clear("q") is False
    await core.config_set("q", {"lease": "5"})
    assert await core.config_clear("q") is True
    assert redis("KEYS", "*") == []


@pytest_twisted.ensureDeferred
async def test_max_message_refuses_longer_values_and_writes_nothing(core, redis):
    await core.add("q", "first")
    await core.config_set("q", {"max_message": "4"})
    before = {k: redis("DUMP", k) for k in redis("KEYS", "*")}
    with pytest.raises(MessageTooLarge) as raised:
        await core.add("q", "12345")
    assert (raised.value.status, raised.value.reason) == (413, "message too large")
    with pytest.raises(MessageTooLarge) as raised:
        await core.add_items("q", [Item("ok"), Item("1234"), Item("too long")])
    assert raised.value.index == 2
    assert {k: redis("DUMP", k) for k in redis("KEYS", "*")} == before
    assert await core.add("q", "é12") == "q:2"  # 4 bytes in UTF-8: the bound is in bytes
    with pytest.raises(MessageTooLarge):
        await core.add("q", "é123")


# -- info -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_info_of_a_queue_in_every_state(core, redis):
    empty = await core.info("q")
    assert empty.as_json() == {"queue": "q", "pending": 0, "inflight": 0, "delayed": 0,
                               "status": "", "policy": "broadcast", "dead_letter": None,
                               "next_due": None, "counters": None, "priority": {},
                               "added": 0, "subscribers": 0}
    await core.config_set("q", {"max_attempts": "1", "dead_letter": "q.dead"})
    await core.add_items("q", [Item("a"), Item("b", priority=2), Item("c", delay=60),
                               Item("d"), Item("e")])
    claimed = await core.claim("q", limit=2)
    await core.release("q", [claimed.messages[1].receipt])  # to the dead-letter queue
    await core.set_policy("q", "roundrobin")
    info = await core.info("q")
    due = int(redis("ZSCORE", "DUESET", "q"))
    assert info.as_json() == {"queue": "q", "pending": 2, "inflight": 1, "delayed": 1,
                              "status": 1, "policy": "roundrobin",
                              "dead_letter": {"queue": "q.dead", "pending": 1},
                              "next_due": due / 1000, "counters": None, "priority": {},
                              "added": 5, "subscribers": 0}
    assert info.priority == {}
    await core.add_items("q", [Item("f", priority=2), Item("g", priority=9)])
    assert (await core.info("q")).priority == {2: 1, 9: 1}
    await core.set_status("q", False)
    assert (await core.info("q")).as_json()["status"] == 0


# -- the original operations clean up, and create nothing new ---------------------------------


async def leased_and_delayed(core, redis) -> tuple:
    """q:1 released once (pending with a count), q:2 leased, q:3 delayed, q:4 priority 5."""
    await core.add_items("q", [Item("a"), Item("b"), Item("c", delay=600),
                               Item("d", priority=5)])
    claimed = await core.claim("q", limit=3)
    assert [m.key for m in claimed.messages] == ["q:4", "q:1", "q:2"]
    await core.release("q", [claimed.messages[0].receipt, claimed.messages[1].receipt])
    redis("HSET", "q:origin", "q:1", '{"queue": "elsewhere"}')
    return claimed


@pytest_twisted.ensureDeferred
async def test_consumers_forget_counts_priorities_and_origins(core, redis):
    await leased_and_delayed(core, redis)
    assert (await core.hard_get("q")).key == "q:4"
    assert (await core.take("q")).key == "q:1"
    assert redis("HGETALL", "q:deliveries") == ["q:2", redis("HGET", "q:deliveries", "q:2")]
    assert redis("EXISTS", "q:prio", "q:origin", "q:priority") == 0


@pytest_twisted.ensureDeferred
async def test_the_live_pop_forgets_counts_and_origins(core, redis, subscribe):
    await leased_and_delayed(core, redis)
    await core.set_status("q", True)
    subscribe("q:PUBSUB")  # a broadcast pop takes nothing while nobody listens
    policy, messages = await core.pop_batch("q")
    assert [m.key for m in messages] == ["q:4", "q:1"]
    assert redis("HKEYS", "q:deliveries") == ["q:2"]
    assert redis("EXISTS", "q:prio", "q:origin") == 0


@pytest_twisted.ensureDeferred
async def test_del_takes_a_message_out_of_every_place(core, redis):
    claimed = await leased_and_delayed(core, redis)
    for key in ("q:1", "q:2", "q:3", "q:4"):
        assert await core.delete("q", key)
    assert redis("EXISTS", "q:queue", "q:priority", "q:prio", "q:inflight", "q:delayed",
                 "q:deliveries", "q:origin") == 0
    assert (await core.ack("q", [claimed.messages[2].receipt])).acked == []


@pytest_twisted.ensureDeferred
async def test_purge_empties_pending_leased_and_delayed(core, redis, subscribe):
    claimed = await leased_and_delayed(core, redis)
    sub = subscribe("q:PUBSUB")
    assert await core.purge("q") == 1
    assert sub.next_json() == {"type": "purge", "db": 0}
    assert redis("EXISTS", "q:queue", "q:priority", "q:prio", "q:inflight", "q:delayed",
                 "q:deliveries", "q:origin") == 0
    for key in ("q:1", "q:2", "q:3", "q:4"):
        assert 0 < redis("TTL", key) <= RETENTION  # retired, like purged pending values
    assert (await core.ack("q", [claimed.messages[2].receipt])).stale != []
    # its status reflects only the pending list
    await core.add_items("q", [Item("later", delay=600)])
    assert await core.purge("q") == 0


@pytest_twisted.ensureDeferred
async def test_a_long_purge_retires_leased_and_delayed_values_in_steps(core, redis):
    count = PURGE_STEP + 50
    await core.add_items("q", [Item(str(n)) for n in range(100)])
    for start in range(0, count - 100, 100):
        await core.add_items("q", [Item(str(n), delay=600) for n in range(100)])
    await core.claim("q", limit=100)
    assert redis("ZCARD", "q:inflight") == 100 and redis("LLEN", "q:queue") == 0
    assert await core.purge("q") == 0  # no pending list existed
    assert redis("EXISTS", "q:inflight", "q:delayed", "q:deliveries") == 0
    last = int(redis("GET", "q:UUID"))
    assert last > PURGE_STEP
    assert all(0 < redis("TTL", f"q:{n}") <= RETENTION for n in (1, 100, 101, last))


@pytest_twisted.ensureDeferred
async def test_the_original_operations_create_no_new_key(core, redis, subscribe):
    subscribe("q:PUBSUB")  # so that the broadcast pop below takes q:4
    await core.add("q", "a", 60)
    await core.add_once("q", "b")
    await core.add_once("q", "b")
    await core.soft_get("q")
    await core.hard_get("q")
    await core.take("q")
    await core.add("q", "c")
    await core.delete("q", "q:3")
    await core.set_status("q", True)
    await core.add("q", "d")
    await core.pop_batch("q")
    await core.add("q", "e")
    await core.length("q")
    await core.stats()
    await core.purge("q")
    # q:1 and its read count are retired, q:4 (popped) and q:3 (deleted) gone, q:5 purged
    assert sorted(redis("KEYS", "*")) == ["QUEUESET", "q:1", "q:1:refcount", "q:5", "q:UUID",
                                          "queuestat::q"]
