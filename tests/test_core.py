"""restmq.core.Core against a real redis-server: the exact Redis state after every operation of
docs/redis-layout.md (#keys, #scripts, #operations, #plain-commands), dead-entry skipping, string
values, name validation (docs/http-api.md#queue-names) and compatibility with databases written by
the original RestMQ."""
from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from restmq.core import Core, Message, QueueStats
from restmq.errors import EmptyQueue, InvalidName
from restmq.redis import RedisService
from tests.resp import RedisClient

RETENTION = 100  # consumed_ttl of the default core: distinguishable from the 3600 default
MiB = 1024 * 1024


@pytest.fixture(scope="session")
def redis_proc(quiet_redis_proc):
    """This module's Redis: one no server process ticks on (see conftest.quiet_redis_proc)."""
    return quiet_redis_proc


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def core(service):
    return Core(service, consumed_ttl=RETENTION)


async def call(fn, *args):
    """Await fn(*args), whether it raises at once or fails its Deferred."""
    return await fn(*args)


def ttl_in(redis, key, low, high):
    ttl = redis("TTL", key)
    assert low <= ttl <= high, (key, ttl)


# --------------------------------------------------------------------------------------------
# ADD


@pytest_twisted.ensureDeferred
async def test_add_writes_the_layout(core, redis, subscribe):
    sub = subscribe("q:PUBSUB")
    assert await core.add("q", "first") == "q:1"
    assert sub.next_json() == {"type": "wake", "db": 0}
    assert redis("GET", "q:UUID") == "1"
    assert redis("GET", "q:1") == "first"
    assert redis("TTL", "q:1") == -1
    assert redis("SMEMBERS", "QUEUESET") == ["q"]
    assert redis("GET", "queuestat::q") == "1"
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:1"]
    assert redis("EXISTS", "q:queuepolicy") == 0

    assert await core.add("q", "second") == "q:2"
    assert sub.next_json() == {"type": "wake", "db": 0}
    # LPUSH at the head: newest first
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:2", "q:1"]
    assert redis("GET", "q:UUID") == "2"
    assert redis("SMEMBERS", "QUEUESET") == ["q"]
    assert sorted(redis("KEYS", "*")) == sorted(
        ["QUEUESET", "q:UUID", "q:1", "q:2", "q:queue", "queuestat::q"])
    sub.assert_nothing_pending(redis)


@pytest_twisted.ensureDeferred
async def test_add_keeps_a_stopped_queue_stopped(core, redis):
    redis("SET", "queuestat::q", "0")
    await core.add("q", "v")
    assert redis("GET", "queuestat::q") == "0"
    redis("SET", "queuestat::other", "weird")
    await core.add("other", "v")
    assert redis("GET", "queuestat::other") == "weird"


@pytest_twisted.ensureDeferred
async def test_add_with_ttl_expires_the_value(core, redis):
    assert await core.add("q", "v", 30) == "q:1"
    ttl_in(redis, "q:1", 25, 30)
    # only the value key expires
    assert redis("TTL", "q:queue") == -1
    assert redis("TTL", "q:UUID") == -1
    assert redis("TTL", "queuestat::q") == -1


@pytest_twisted.ensureDeferred
async def test_add_publishes_wake_with_the_db_number(redis_proc, redis, subscribe):
    svc = RedisService(port=redis_proc.port, db=2)
    svc.startService()
    try:
        sub = subscribe("q:PUBSUB")
        assert await Core(svc).add("q", "v") == "q:1"
        assert sub.next_json() == {"type": "wake", "db": 2}
        assert redis("EXISTS", "q:1") == 0
        other = RedisClient(redis_proc.port)
        try:
            assert other("SELECT", 2) == "OK"
            assert other("GET", "q:1") == "v"
            assert other("LRANGE", "q:queue", 0, -1) == ["q:1"]
        finally:
            other.close()
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_counter_never_resets(core, redis):
    await core.add("q", "a")
    await core.add("q", "b")
    await core.take("q")
    await core.hard_get("q")
    await core.purge("q")
    assert await core.add("q", "c") == "q:3"
    redis("DEL", "q:queue", "q:3")
    assert await core.add("q", "d") == "q:4"


# --------------------------------------------------------------------------------------------
# HARD_GET


@pytest_twisted.ensureDeferred
async def test_hard_get_is_fifo_and_retires(core, redis):
    for value in ("a", "b", "c"):
        await core.add("q", value)
    first = await core.hard_get("q")
    assert first == Message("q:1", "a", 0)
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:3", "q:2"]
    assert redis("GET", "q:1") == "a"  # still readable during the retention
    ttl_in(redis, "q:1", RETENTION - 5, RETENTION)
    assert await core.hard_get("q") == Message("q:2", "b", 0)
    assert await core.hard_get("q") == Message("q:3", "c", 0)
    with pytest.raises(EmptyQueue):
        await core.hard_get("q")
    assert redis("EXISTS", "q:queue") == 0
    for key in ("q:1", "q:2", "q:3"):
        ttl_in(redis, key, RETENTION - 5, RETENTION)
    # nothing else was touched
    assert redis("GET", "q:UUID") == "3"
    assert redis("GET", "queuestat::q") == "1"
    assert redis("SMEMBERS", "QUEUESET") == ["q"]


@pytest_twisted.ensureDeferred
async def test_hard_get_retention_rules(core, redis):
    await core.add("q", "short", 50)   # shorter remaining ttl than the retention: kept
    await core.add("q", "long", 1000)  # further away: cut to the retention
    await core.add("q", "none")        # no expiry: gets one
    await core.soft_get("q")           # q:1:refcount inherits ~50 s
    ttl_in(redis, "q:1:refcount", 45, 50)

    assert (await core.hard_get("q")).key == "q:1"
    ttl_in(redis, "q:1", 45, 50)
    ttl_in(redis, "q:1:refcount", 45, 50)

    assert (await core.hard_get("q")).key == "q:2"
    ttl_in(redis, "q:2", RETENTION - 5, RETENTION)

    redis("SET", "q:3:refcount", "4")  # a refcount without expiry gets one too
    assert (await core.hard_get("q")).key == "q:3"
    ttl_in(redis, "q:3", RETENTION - 5, RETENTION)
    ttl_in(redis, "q:3:refcount", RETENTION - 5, RETENTION)
    assert redis("GET", "q:3:refcount") == "4"


@pytest_twisted.ensureDeferred
async def test_hard_get_refcount_without_expiry_gets_one(core, redis):
    await core.add("q", "v")
    assert (await core.soft_get("q")).count == 1
    assert redis("TTL", "q:1:refcount") == -1
    await core.hard_get("q")
    ttl_in(redis, "q:1:refcount", RETENTION - 5, RETENTION)
    assert redis("GET", "q:1:refcount") == "1"


@pytest_twisted.ensureDeferred
async def test_hard_get_with_zero_retention_deletes(service, redis):
    core0 = Core(service, consumed_ttl=0)
    await core0.add("q", "v")
    await core0.add("q", "w", 500)
    await core0.soft_get("q")
    assert await core0.hard_get("q") == Message("q:1", "v", 0)
    assert redis("EXISTS", "q:1", "q:1:refcount") == 0
    assert await core0.hard_get("q") == Message("q:2", "w", 0)
    assert redis("EXISTS", "q:2") == 0


# --------------------------------------------------------------------------------------------
# SOFT_GET


@pytest_twisted.ensureDeferred
async def test_soft_get_counts_and_removes_nothing(core, redis):
    await core.add("q", "a")
    await core.add("q", "b")
    for n in (1, 2, 3):
        assert await core.soft_get("q") == Message("q:1", "a", n)
        assert redis("GET", "q:1:refcount") == str(n)
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:2", "q:1"]
    assert redis("GET", "q:1") == "a"
    assert redis("TTL", "q:1") == -1
    assert redis("TTL", "q:1:refcount") == -1
    assert redis("EXISTS", "q:2:refcount") == 0


@pytest_twisted.ensureDeferred
async def test_soft_get_refcount_inherits_the_value_expiry(core, redis):
    await core.add("q", "a", 100)
    redis("PEXPIRE", "q:1", 80_000)
    message = await core.soft_get("q")
    assert message == Message("q:1", "a", 1)
    value_pttl = redis("PTTL", "q:1")
    ref_pttl = redis("PTTL", "q:1:refcount")
    assert 0 < ref_pttl <= 80_000
    assert abs(ref_pttl - value_pttl) < 1000
    # a later read refreshes it to the value's remaining time again
    redis("PEXPIRE", "q:1", 40_000)
    assert (await core.soft_get("q")).count == 2
    assert abs(redis("PTTL", "q:1:refcount") - redis("PTTL", "q:1")) < 1000


@pytest_twisted.ensureDeferred
async def test_soft_get_empty(core, redis):
    with pytest.raises(EmptyQueue):
        await core.soft_get("q")
    assert redis("DBSIZE") == 0


# --------------------------------------------------------------------------------------------
# TAKE


@pytest_twisted.ensureDeferred
async def test_take_deletes_value_and_refcount(core, redis):
    await core.add("q", "a")
    await core.add("q", "b")
    await core.soft_get("q")
    assert await core.take("q") == Message("q:1", "a", 0)
    assert redis("EXISTS", "q:1", "q:1:refcount") == 0
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:2"]
    assert await core.take("q") == Message("q:2", "b", 0)
    with pytest.raises(EmptyQueue):
        await core.take("q")
    assert sorted(redis("KEYS", "*")) == ["QUEUESET", "q:UUID", "queuestat::q"]


# --------------------------------------------------------------------------------------------
# DEL


@pytest_twisted.ensureDeferred
async def test_delete(core, redis):
    for value in ("a", "b", "c"):
        await core.add("q", value)
    await core.soft_get("q")
    redis("SET", "q:2:refcount", "7")
    assert await core.delete("q", "q:2") is True
    assert redis("EXISTS", "q:2", "q:2:refcount") == 0
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:3", "q:1"]
    assert await core.delete("q", "q:2") is False
    assert await core.delete("q", "q:99") is False
    # the oldest, with its refcount
    assert await core.delete("q", "q:1") is True
    assert redis("EXISTS", "q:1", "q:1:refcount") == 0
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:3"]
    # a key no longer pending but still retained
    await core.hard_get("q")
    assert await core.delete("q", "q:3") is True
    assert redis("EXISTS", "q:3") == 0


@pytest_twisted.ensureDeferred
async def test_delete_removes_every_occurrence_and_dead_key(core, redis):
    await core.add("q", "a")
    redis("LPUSH", "q:queue", "q:1")  # a duplicate entry written by other software
    redis("SET", "q:1:refcount", "2")
    assert await core.delete("q", "q:1") is True
    assert redis("EXISTS", "q:queue", "q:1", "q:1:refcount") == 0
    # a dead pending entry: value gone, so False, but the entry and refcount are removed
    redis("LPUSH", "q:queue", "q:5")
    redis("SET", "q:5:refcount", "1")
    assert await core.delete("q", "q:5") is False
    assert redis("EXISTS", "q:queue", "q:5:refcount") == 0


# --------------------------------------------------------------------------------------------
# PURGE


@pytest_twisted.ensureDeferred
async def test_purge(core, redis, subscribe):
    await core.add("q", "a")
    await core.add("q", "b", 30)
    await core.add("q", "c")
    await core.soft_get("q")
    await core.set_policy("q", "roundrobin")
    await core.set_status("q", False)
    sub = subscribe("q:PUBSUB")

    assert await core.purge("q") == 1
    assert sub.next_json() == {"type": "purge", "db": 0}
    assert redis("EXISTS", "q:queue") == 0
    assert redis("GET", "q:1") == "a"
    ttl_in(redis, "q:1", RETENTION - 5, RETENTION)
    ttl_in(redis, "q:1:refcount", RETENTION - 5, RETENTION)
    ttl_in(redis, "q:2", 25, 30)  # shorter remaining ttl kept
    ttl_in(redis, "q:3", RETENTION - 5, RETENTION)
    assert redis("GET", "q:UUID") == "3"
    assert redis("GET", "queuestat::q") == "0"
    assert redis("GET", "q:queuepolicy") == "2"
    assert redis("SMEMBERS", "QUEUESET") == ["q"]

    # no list any more: 0, but purge is still published
    assert await core.purge("q") == 0
    assert sub.next_json() == {"type": "purge", "db": 0}
    sub.assert_nothing_pending(redis)
    with pytest.raises(EmptyQueue):
        await core.hard_get("q")


@pytest_twisted.ensureDeferred
async def test_purge_unknown_queue_writes_nothing(core, redis, subscribe):
    sub = subscribe("never:PUBSUB")
    assert await core.purge("never") == 0
    assert sub.next_json() == {"type": "purge", "db": 0}
    assert redis("DBSIZE") == 0


@pytest_twisted.ensureDeferred
async def test_purge_with_zero_retention_deletes(service, redis):
    core0 = Core(service, consumed_ttl=0)
    await core0.add("q", "a")
    await core0.add("q", "b")
    await core0.soft_get("q")
    assert await core0.purge("q") == 1
    assert redis("EXISTS", "q:1", "q:2", "q:1:refcount", "q:queue") == 0
    assert redis("GET", "q:UUID") == "2"


# --------------------------------------------------------------------------------------------
# POP_BATCH


@pytest_twisted.ensureDeferred
async def test_broadcast_pop_takes_nothing_while_nobody_listens(core, redis, subscribe):
    """A broadcast pop that Redis runs after the last subscriber left (it was held up, e.g. by
    a write pause) must not publish its batch to nobody: it pops nothing."""
    await core.add("q", "kept")
    assert await core.pop_batch("q") == ("broadcast", [])
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:1"] and redis("GET", "q:1") == "kept"
    sub = subscribe("q:PUBSUB")
    policy, batch = await core.pop_batch("q")
    assert (policy, [m.key for m in batch]) == ("broadcast", ["q:1"])
    assert sub.next_json()["messages"] == [{"key": "q:1", "value": "kept"}]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("status", [None, "0", "01", "1 ", "true", ""])
async def test_pop_batch_needs_status_exactly_1(core, redis, subscribe, status):
    redis("SET", "q:UUID", "1")
    redis("SET", "q:1", "v")
    redis("LPUSH", "q:queue", "q:1")
    if status is not None:
        redis("SET", "queuestat::q", status)
    sub = subscribe("q:PUBSUB")
    policy, batch = await core.pop_batch("q")
    assert batch == []
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:1"]
    assert redis("GET", "q:1") == "v"
    sub.assert_nothing_pending(redis)


@pytest_twisted.ensureDeferred
async def test_pop_batch_broadcast_publishes(core, redis, subscribe):
    await core.add("q", "a")
    await core.add("q", "b")
    await core.add("q", "007")
    await core.soft_get("q")
    sub = subscribe("q:PUBSUB")
    policy, batch = await core.pop_batch("q")
    assert policy == "broadcast"
    assert batch == [Message("q:1", "a"), Message("q:2", "b"), Message("q:3", "007")]
    assert sub.next_json() == {"type": "batch", "db": 0, "messages": [
        {"key": "q:1", "value": "a"}, {"key": "q:2", "value": "b"},
        {"key": "q:3", "value": "007"}]}
    assert sorted(redis("KEYS", "*")) == ["QUEUESET", "q:UUID", "queuestat::q"]
    # empty: nothing returned, nothing published
    policy, batch = await core.pop_batch("q")
    assert batch == []
    sub.assert_nothing_pending(redis)


@pytest_twisted.ensureDeferred
async def test_pop_batch_explicit_broadcast_and_unknown_policy(core, redis, subscribe):
    sub = subscribe("q:PUBSUB")
    for stored in ("1", "3"):
        redis("SET", "q:queuepolicy", stored)
        key = await core.add("q", "x" + stored)
        assert sub.next_json()["type"] == "wake"
        policy, batch = await core.pop_batch("q")
        assert (policy, batch) == ("broadcast", [Message(key, "x" + stored)])
        assert sub.next_json() == {"type": "batch", "db": 0,
                                   "messages": [{"key": key, "value": "x" + stored}]}


@pytest_twisted.ensureDeferred
async def test_pop_batch_roundrobin_publishes_nothing(core, redis, subscribe):
    await core.add("q", "a")
    await core.add("q", "b")
    await core.soft_get("q")
    await core.set_policy("q", "roundrobin")
    sub = subscribe("q:PUBSUB")
    policy, batch = await core.pop_batch("q")
    assert (policy, batch) == ("roundrobin", [Message("q:1", "a"), Message("q:2", "b")])
    assert redis("EXISTS", "q:1", "q:2", "q:1:refcount", "q:queue") == 0
    sub.assert_nothing_pending(redis)


@pytest_twisted.ensureDeferred
async def test_pop_batch_at_most_10(core, redis, subscribe):
    for i in range(1, 13):
        await core.add("q", f"m{i}")
    sub = subscribe("q:PUBSUB")
    _, batch = await core.pop_batch("q")
    assert [m.key for m in batch] == [f"q:{i}" for i in range(1, 11)]
    assert len(sub.next_json()["messages"]) == 10
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:12", "q:11"]
    _, batch = await core.pop_batch("q")
    assert batch == [Message("q:11", "m11"), Message("q:12", "m12")]
    assert sub.next_json()["messages"] == [{"key": "q:11", "value": "m11"},
                                           {"key": "q:12", "value": "m12"}]


@pytest_twisted.ensureDeferred
async def test_pop_batch_stops_at_1_mib(core, redis, subscribe):
    subscribe("q:PUBSUB")  # broadcast pops only while some process listens
    half = "x" * (MiB // 2)
    for _ in range(3):
        await core.add("q", half)
    await core.add("q", "small")
    _, batch = await core.pop_batch("q")  # 512 KiB + 512 KiB = 1 MiB: stop
    assert [m.key for m in batch] == ["q:1", "q:2"]
    assert all(m.value == half for m in batch)
    _, batch = await core.pop_batch("q")  # 512 KiB + 5 bytes: under the limit, list empties
    assert [m.key for m in batch] == ["q:3", "q:4"]

    await core.add("q", "y" * (MiB + 1))
    await core.add("q", "tiny")
    _, batch = await core.pop_batch("q")
    assert [m.key for m in batch] == ["q:5"]
    assert len(batch[0].value) == MiB + 1
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:6"]

    # the limit counts bytes (UTF-8), not characters
    redis("DEL", "q:queue")
    snow = "\u2603" * (MiB // 3 + 1)  # just over 1 MiB of UTF-8 in 349 526 characters
    await core.add("q", snow)
    await core.add("q", "after")
    _, batch = await core.pop_batch("q")
    assert [m.key for m in batch] == ["q:7"]
    assert batch[0].value == snow


# --------------------------------------------------------------------------------------------
# Dead entries


def seed_dead_entries(redis):
    """q:1 deleted, q:2 expired, q:3 live; refcounts for all three."""
    redis("SET", "q:UUID", "3")
    for n in (1, 2, 3):
        redis("SET", f"q:{n}:refcount", "5")
    redis("SET", "q:2", "gone", "PX", 1)
    redis("SET", "q:3", "live")
    redis("LPUSH", "q:queue", "q:1", "q:2", "q:3")
    redis("SET", "queuestat::q", "1")
    redis("SADD", "QUEUESET", "q")


async def wait_expired(redis, key):
    while redis("EXISTS", key):
        await sleep(0.01)


@pytest_twisted.ensureDeferred
async def test_hard_get_skips_dead_entries(core, redis):
    seed_dead_entries(redis)
    await wait_expired(redis, "q:2")
    assert await core.hard_get("q") == Message("q:3", "live", 0)
    assert redis("EXISTS", "q:queue", "q:1:refcount", "q:2:refcount") == 0
    assert redis("GET", "q:3:refcount") == "5"


@pytest_twisted.ensureDeferred
async def test_soft_get_skips_dead_entries(core, redis):
    seed_dead_entries(redis)
    await wait_expired(redis, "q:2")
    assert await core.soft_get("q") == Message("q:3", "live", 6)
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:3"]
    assert redis("EXISTS", "q:1:refcount", "q:2:refcount") == 0


@pytest_twisted.ensureDeferred
async def test_take_skips_dead_entries(core, redis):
    seed_dead_entries(redis)
    await wait_expired(redis, "q:2")
    assert await core.take("q") == Message("q:3", "live", 0)
    assert sorted(redis("KEYS", "*")) == ["QUEUESET", "q:UUID", "queuestat::q"]


@pytest_twisted.ensureDeferred
async def test_pop_batch_skips_dead_entries(core, redis, subscribe):
    seed_dead_entries(redis)
    await wait_expired(redis, "q:2")
    # 10 live messages after the dead ones: dead entries do not count towards the 10
    for i in range(10):
        await core.add("q", f"m{i}")
    sub = subscribe("q:PUBSUB")
    _, batch = await core.pop_batch("q")
    assert [m.key for m in batch] == [f"q:{n}" for n in range(3, 13)]
    assert [m["key"] for m in sub.next_json()["messages"]] == [f"q:{n}" for n in range(3, 13)]
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:13"]
    assert redis("EXISTS", "q:1:refcount", "q:2:refcount", "q:3:refcount") == 0


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("op", ["hard_get", "soft_get", "take"])
async def test_only_dead_entries_is_empty(core, redis, op):
    redis("LPUSH", "q:queue", "q:1", "q:2")
    redis("SET", "q:1:refcount", "1")
    redis("SET", "q:2:refcount", "1")
    with pytest.raises(EmptyQueue):
        await getattr(core, op)("q")
    assert redis("DBSIZE") == 0


@pytest_twisted.ensureDeferred
async def test_pop_batch_only_dead_entries(core, redis, subscribe):
    redis("SET", "queuestat::q", "1")
    redis("LPUSH", "q:queue", "q:1", "q:2")
    redis("SET", "q:2:refcount", "1")
    sub = subscribe("q:PUBSUB")
    _, batch = await core.pop_batch("q")
    assert batch == []
    assert redis("KEYS", "*") == ["queuestat::q"]
    sub.assert_nothing_pending(redis)


# --------------------------------------------------------------------------------------------
# Values are strings


NUMERIC = ["007", "1.50", "-0", "42", "1e3", " 5", "0x10", "inf", "nan", "-1"]


@pytest_twisted.ensureDeferred
async def test_numeric_looking_values_stay_strings(core, redis, subscribe):
    subscribe("q:PUBSUB")
    for value in NUMERIC:
        await core.add("q", value)
        assert redis("GET", f"q:{redis('GET', 'q:UUID')}") == value
    soft = await core.soft_get("q")
    assert soft.value == "007" and type(soft.value) is str
    got = [(await core.hard_get("q")).value for _ in range(4)]
    assert got == ["007", "1.50", "-0", "42"]
    assert (await core.take("q")).value == "1e3"
    _, batch = await core.pop_batch("q")
    assert [m.value for m in batch] == NUMERIC[5:]
    assert all(type(m.value) is str and type(m.key) is str for m in batch)


@pytest_twisted.ensureDeferred
async def test_numeric_strings_in_queue_names_and_status(core, redis):
    assert await core.add("42", "7") == "42:1"
    message = await core.hard_get("42")
    assert message == Message("42:1", "7", 0)
    assert await core.get_status("42") == "1"
    assert await core.length("42") == 0


@pytest_twisted.ensureDeferred
async def test_non_utf8_values_are_decoded_with_replacement(core, redis):
    raw = {1: b"caf\xe9", 2: b"\xff\xfe", 3: b"ok\x80ok", 4: b"\xc3"}
    for n, value in raw.items():
        redis("SET", f"q:{n}", value)
        redis("LPUSH", "q:queue", f"q:{n}")
    redis("SET", "queuestat::q", "1")
    redis("SET", "q:queuepolicy", "2")
    assert await core.soft_get("q") == Message("q:1", "caf\ufffd", 1)
    assert await core.hard_get("q") == Message("q:1", "caf\ufffd", 0)
    assert await core.take("q") == Message("q:2", "\ufffd\ufffd", 0)
    _, batch = await core.pop_batch("q")
    assert batch == [Message("q:3", "ok\ufffdok"), Message("q:4", "\ufffd")]


@pytest_twisted.ensureDeferred
async def test_non_utf8_values_in_a_broadcast_batch(core, redis, subscribe):
    """The published batch carries the raw bytes; decoded with replacement it is valid JSON with
    the same values the script returned."""
    redis("SET", "q:1", b"caf\xe9")
    redis("SET", "q:2", b'\xc3"')
    redis("LPUSH", "q:queue", "q:1", "q:2")
    redis("SET", "queuestat::q", "1")
    sub = subscribe("q:PUBSUB")
    policy, batch = await core.pop_batch("q")
    assert (policy, batch) == ("broadcast", [Message("q:1", "caf\ufffd"),
                                             Message("q:2", '\ufffd"')])
    payload = sub.next()
    assert isinstance(payload, bytes)
    assert json.loads(payload.decode("utf-8", "replace")) == {"type": "batch", "db": 0, "messages": [
        {"key": "q:1", "value": "caf\ufffd"}, {"key": "q:2", "value": '\ufffd"'}]}


@pytest_twisted.ensureDeferred
async def test_non_ascii_round_trip(core, redis, subscribe):
    values = ["héllo", "\u2603 snow", "\U0001F600 emoji", "日本語", "\u00a0nbsp", "a\x00b",
              "line\r\nbreak", "tab\t", '{"json": "\\u00e9"}']
    for value in values:
        await core.add("fila-ç", value)
    assert redis("GET", "fila-ç:1") == "héllo"
    assert redis("SMEMBERS", "QUEUESET") == ["fila-ç"]
    assert (await core.soft_get("fila-ç")).value == "héllo"
    assert (await core.hard_get("fila-ç")) == Message("fila-ç:1", "héllo", 0)
    assert (await core.take("fila-ç")).value == values[1]
    sub = subscribe("fila-ç:PUBSUB")
    _, batch = await core.pop_batch("fila-ç")
    assert [m.value for m in batch] == values[2:]
    assert [m["value"] for m in sub.next_json()["messages"]] == values[2:]
    assert await core.queues() == ["fila-ç"]


# --------------------------------------------------------------------------------------------
# Plain commands: length, queues, policy, status, wake


@pytest_twisted.ensureDeferred
async def test_length(core, redis):
    assert await core.length("q") == 0
    await core.add("q", "a")
    await core.add("q", "b")
    assert await core.length("q") == 2
    await core.hard_get("q")
    assert await core.length("q") == 1
    assert redis("SMEMBERS", "QUEUESET") == ["q"]


@pytest_twisted.ensureDeferred
async def test_queues_sorted_by_code_point(core, redis):
    assert await core.queues() == []
    names = ["b", "B", "a", "é", "Z", "\U0001F600", "ä", "a:b", "_", "10", "9"]
    for name in names:
        redis("SADD", "QUEUESET", name)
    redis("SADD", "QUEUESET", b"bad\xff")  # written by other software
    expected = sorted(names + ["bad\ufffd"])
    assert expected[:4] == ["10", "9", "B", "Z"]
    assert await core.queues() == expected


@pytest_twisted.ensureDeferred
async def test_policy(core, redis):
    assert await core.get_policy("q") == "broadcast"
    assert await core.set_policy("q", "roundrobin") == "OK"
    assert redis("GET", "q:queuepolicy") == "2"
    assert await core.get_policy("q") == "roundrobin"
    await core.set_policy("q", "broadcast")
    assert redis("GET", "q:queuepolicy") == "1"
    assert await core.get_policy("q") == "broadcast"
    redis("SET", "q:queuepolicy", "7")
    assert await core.get_policy("q") == "broadcast"
    # setting a policy does not register the queue
    assert redis("EXISTS", "QUEUESET") == 0
    with pytest.raises(Exception) as info:
        await call(core.set_policy, "q", "fifo")
    assert "invalid policy" in str(info.value)
    assert redis("GET", "q:queuepolicy") == "7"


@pytest_twisted.ensureDeferred
async def test_status(core, redis, subscribe):
    sub = subscribe("q:PUBSUB")
    assert await core.get_status("q") is None
    await core.set_status("q", False)
    assert redis("GET", "queuestat::q") == "0"
    assert await core.get_status("q") == "0"
    sub.assert_nothing_pending(redis)
    await core.set_status("q", True)
    assert redis("GET", "queuestat::q") == "1"
    assert sub.next_json() == {"type": "wake", "db": 0}
    assert await core.get_status("q") == "1"
    redis("SET", "queuestat::q", "x")
    assert await core.get_status("q") == "x"
    assert redis("EXISTS", "QUEUESET") == 0


# --------------------------------------------------------------------------------------------
# stats and jobs


@pytest_twisted.ensureDeferred
async def test_stats(core, redis):
    assert await core.stats() == []
    await core.add("b", "1")
    await core.add("b", "2")
    await core.add("a", "1")
    await core.set_policy("a", "roundrobin")
    await core.set_status("a", False)
    await core.set_policy("b", "broadcast")
    redis("SADD", "QUEUESET", "ghost")
    assert await core.stats() == [
        QueueStats("a", 1, "0", "2"),
        QueueStats("b", 2, "1", "1"),
        QueueStats("ghost", 0, "", ""),
    ]


@pytest_twisted.ensureDeferred
async def test_stats_of_a_queue_whose_name_is_not_utf8(core, redis):
    """Other software may register such a name: its keys are read with the very bytes of the
    name, and the row shows it with U+FFFD."""
    redis("SADD", "QUEUESET", b"bad\xff")
    redis("LPUSH", b"bad\xff:queue", "x", "y")
    redis("SET", b"queuestat::bad\xff", "0")
    redis("SET", b"bad\xff:queuepolicy", "2")
    assert await core.stats() == [QueueStats("bad\ufffd", 2, "0", "2")]


@pytest_twisted.ensureDeferred
async def test_jobs_counts_keys_with_the_prefix(core, redis):
    assert await core.jobs("a") == (0, 0, [], True)
    await core.add("a", "1")
    await core.add("a", "2")
    await core.soft_get("a")
    await core.add("ab", "x")
    redis("SET", "a-other", "1")
    redis("SET", "b:1", "1")
    redis("SET", "xa:1", "1")
    # a:UUID a:1 a:2 a:queue a:1:refcount ab:UUID ab:1 ab:queue a-other
    assert await core.jobs("a") == (9, 2, ["a:2", "a:1"], True)
    assert await core.jobs("ab") == (3, 1, ["ab:1"], True)


@pytest_twisted.ensureDeferred
async def test_jobs_scans_until_the_cursor_is_zero(core, redis):
    for i in range(12):
        await core.add("q", str(i))
    many = []
    for i in range(2500):
        many += [f"q:extra:{i}", "v"]
    redis("MSET", *many)
    for i in range(500):
        many[2 * i] = f"other:{i}"
    redis("MSET", *many[:1000])
    objects, length, latest, complete = await core.jobs("q")
    assert complete
    # extras, values, q:UUID, q:queue and queuestat::q (it starts with "q" too)
    assert objects == 2500 + 12 + 3
    assert length == 12
    assert latest == [f"q:{n}" for n in range(12, 2, -1)]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("name, impostors", [
    ("a*[b]?", ["aXbY:1", "a*b?:1", "a*[b]:1", "ab:1"]),
    ("a\\b", ["ab:1", "ab", "a\\\\b:1"]),
    ("x?", ["xy:1", "x:1"]),
    ("[ab]", ["a:1", "b:1", "[a]:1"]),
    ("a]b[", ["a]b:1", "ab[:1"]),
])
async def test_jobs_escapes_glob_characters(core, redis, name, impostors):
    for key in impostors:
        redis("SET", key, "1")
    await core.add(name, "v")
    redis("SET", name + "zzz", "1")
    assert await core.jobs(name) == (4, 1, [name + ":1"], True)  # UUID, :1, :queue, zzz


# --------------------------------------------------------------------------------------------
# Compatibility with the original RestMQ layout


@pytest_twisted.ensureDeferred
async def test_continues_a_database_written_by_the_original(core, redis):
    redis("SET", "q:UUID", "41")
    for n in (39, 40, 41):
        redis("SET", f"q:{n}", f"old {n}")
        redis("LPUSH", "q:queue", f"q:{n}")
    redis("SADD", "QUEUESET", "q")
    redis("SET", "queuestat::q", "1")

    assert await core.add("q", "new") == "q:42"
    assert redis("GET", "q:UUID") == "42"
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:42", "q:41", "q:40", "q:39"]
    assert await core.hard_get("q") == Message("q:39", "old 39", 0)
    assert await core.soft_get("q") == Message("q:40", "old 40", 1)
    assert await core.hard_get("q") == Message("q:40", "old 40", 0)
    assert await core.take("q") == Message("q:41", "old 41", 0)
    assert await core.hard_get("q") == Message("q:42", "new", 0)
    assert await core.queues() == ["q"]


@pytest_twisted.ensureDeferred
async def test_what_core_writes_reads_back_with_plain_commands(core, redis):
    await core.add("q", "one")
    await core.add("q", "two", 60)
    await core.set_policy("q", "roundrobin")
    await core.set_status("q", False)
    await core.soft_get("q")
    # an original-style consumer: RPOP the tail, GET the value
    key = redis("RPOP", "q:queue")
    assert (key, redis("GET", key)) == ("q:1", "one")
    assert redis("GET", "q:1:refcount") == "1"
    assert redis("RPOP", "q:queue") == "q:2"
    assert redis("GET", "q:2") == "two"
    assert redis("GET", "q:UUID") == "2"
    assert redis("GET", "q:queuepolicy") == "2"
    assert redis("GET", "queuestat::q") == "0"
    assert redis("SMEMBERS", "QUEUESET") == ["q"]
    assert redis("TYPE", "q:UUID") == "string"
    assert redis("INCR", "q:UUID") == 3


# --------------------------------------------------------------------------------------------
# Names


INVALID = ["", " ", "a b", "a\tb", "a\nb", "a\x00b", "a\x7f", "a\x85b", "a\u2028b", "a\u3000b",
           "x" * 257, "\u00e9" * 129, "\ud800", "QUEUESET", "AUTHKEY", "AUTHKEY:", "AUTHKEY:1",
           "queuestat:", "queuestat::5", "q:queue", "q:UUID", "q:queuepolicy", "q:PUBSUB",
           "q:lock", "q:refcount", ":queue"]

VALID = ["x" * 256, "\u00e9" * 128, "syslogd:::1", "syslogd:10.0.0.1", ":", "a/b", "a+b",
         "AUTHKEYS", "QUEUESETS", "queuestat", "q:queue:x", "q:1", "QUEUESET:x", "Queuestat:x"]

OPERATIONS = [
    ("add", ("v",)), ("hard_get", ()), ("soft_get", ()), ("take", ()), ("delete", ("k:1",)),
    ("purge", ()), ("length", ()), ("get_policy", ()), ("set_policy", ("roundrobin",)),
    ("get_status", ()), ("set_status", (True,)), ("set_status", (False,)), ("jobs", ()),
]


@pytest_twisted.ensureDeferred
async def test_invalid_names_are_refused_before_any_redis_write(core, redis):
    redis("CONFIG", "RESETSTAT")
    for name in INVALID:
        for op, args in OPERATIONS:
            with pytest.raises(InvalidName):
                await call(getattr(core, op), name, *args)
    assert redis("DBSIZE") == 0
    stats = redis("INFO", "commandstats")
    commands = {line.split(":")[0].split("|")[0] for line in stats.splitlines()
                if line.startswith("cmdstat_")}
    assert commands <= {"cmdstat_config", "cmdstat_dbsize"}, stats  # nothing from the core


@pytest_twisted.ensureDeferred
async def test_pop_batch_refuses_names_that_break_the_key_layout(core, redis):
    """Live delivery pops only for admitted consumers and names the queue by its channel, so
    pop_batch applies the key-layout rule alone: reserved, empty and unencodable names."""
    redis("SET", "queuestat::QUEUESET", "1")
    redis("LPUSH", "QUEUESET:queue", "QUEUESET:1")
    redis("SET", "QUEUESET:1", "x")
    for name in ("QUEUESET", "q:queue", "", "\ud800"):
        with pytest.raises(InvalidName):
            await call(core.pop_batch, name)
    assert redis("GET", "QUEUESET:1") == "x"


@pytest_twisted.ensureDeferred
async def test_valid_edge_names_are_accepted(core, redis):
    for name in VALID:
        assert await core.add(name, "v") == f"{name}:1"
        assert redis("LRANGE", f"{name}:queue", 0, -1) == [f"{name}:1"]
        assert await core.hard_get(name) == Message(f"{name}:1", "v", 0)
    assert await core.queues() == sorted(VALID)


@pytest_twisted.ensureDeferred
async def test_admit_looks_up_only_names_that_break_the_rule_for_new_names(core, redis):
    redis("SADD", "QUEUESET", "my queue", "AUTHKEY", "q:queue")
    redis("CONFIG", "RESETSTAT")
    assert await core.admit("plain") == "plain"
    for name in ("AUTHKEY", "q:queue", "", "\ud800"):  # registered or not: never looked up
        with pytest.raises(InvalidName):
            await call(core.admit, name)
    assert "cmdstat_sismember" not in redis("INFO", "commandstats")
    with pytest.raises(InvalidName):
        await call(core.admit, "your queue")
    name = await core.admit("my queue")
    assert name == "my queue"
    # the admitted name passes every operation's check; the plain string does not
    assert await core.add(name, "v") == "my queue:1"
    assert await core.length(name) == 1
    assert await core.take(name) == Message("my queue:1", "v", 0)
    with pytest.raises(InvalidName):
        await call(core.add, "my queue", "v")
    assert redis("INFO", "commandstats").count("cmdstat_sismember:calls=2,") == 1
