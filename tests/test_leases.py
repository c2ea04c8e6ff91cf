"""Leases against a real redis-server (docs/redis-layout.md#leases): claim, ack, extend,
release, stale receipts, lease expiry on the tick, dead letters after max_attempts and their
redrive, with the exact Redis state after each step and the replies the routes render.

Time is never waited for with a sleep of the lease's length: a test polls Redis's own clock
(TIME) until it passes a deadline, then runs the tick itself."""
from __future__ import annotations

import json
import re

import pytest
import pytest_twisted

from restmq.core import DEAD_STEP, Core
from restmq.errors import InvalidArgument, InvalidName
from tests.util import redis_ms, until_redis_passes

RETENTION = 100


@pytest.fixture(scope="session")
def redis_proc(quiet_redis_proc):
    """This module's Redis: one no server process ticks on (see conftest.quiet_redis_proc)."""
    return quiet_redis_proc
RECEIPT = re.compile(r"(\d+)\.(\d+)\.([0-9a-f]{16})\Z")


@pytest.fixture
def core(service):
    return Core(service, consumed_ttl=RETENTION)


async def expire_and_tick(core, redis, queue: str, claimed) -> None:
    """Let the leases of `claimed` end (Redis's clock) and run the tick of `queue`."""
    await until_redis_passes(redis, int(max(m.lease_until for m in claimed.messages) * 1000))
    await core.tick(queue)


def leased_state(redis, queue: str) -> tuple:
    return (redis("LRANGE", f"{queue}:queue", 0, -1),
            redis("ZRANGE", f"{queue}:inflight", 0, -1),
            redis("HGETALL", f"{queue}:deliveries"))


# -- claim -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_claim_leases_the_oldest_messages_and_keeps_them_in_redis(core, redis):
    for value in ("a", "b", "c"):
        await core.add("q", value)
    before = redis_ms(redis)
    claimed = await core.claim("q", limit=2, lease=10)
    after = redis_ms(redis)
    assert [(m.key, m.value, m.deliveries) for m in claimed.messages] == \
        [("q:1", "a", 1), ("q:2", "b", 1)]
    tokens = {RECEIPT.match(m.receipt).group(3) for m in claimed.messages}
    assert len(tokens) == 1  # one token per request
    assert [RECEIPT.match(m.receipt).group(1, 2) for m in claimed.messages] == \
        [("1", "1"), ("2", "1")]
    until = claimed.messages[0].lease_until
    assert before + 10_000 <= until * 1000 <= after + 10_000
    token = tokens.pop()
    assert leased_state(redis, "q") == (["q:3"], ["q:1", "q:2"],
                                        ["q:1", f"1.{token}", "q:2", f"1.{token}"])
    assert int(redis("ZSCORE", "q:inflight", "q:1")) == int(until * 1000)
    assert redis("GET", "q:1") == "a" and redis("TTL", "q:1") == -1  # held, not consumed
    assert int(redis("ZSCORE", "DUESET", "q")) == int(until * 1000)
    assert claimed.as_json() == {"queue": "q", "messages": [m.as_json() for m in
                                                            claimed.messages]}
    assert claimed.messages[0].as_json() == {"key": "q:1", "value": "a",
                                             "receipt": claimed.messages[0].receipt,
                                             "deliveries": 1, "lease_until": until}
    # In flight is not pending: the legacy get sees only q:3.
    assert (await core.hard_get("q")).key == "q:3"


@pytest_twisted.ensureDeferred
async def test_each_claim_request_has_its_own_token(core, redis):
    await core.add("q", "a")
    await core.add("q", "b")
    first = (await core.claim("q")).messages[0].receipt
    second = (await core.claim("q")).messages[0].receipt
    assert first.split(".")[2] != second.split(".")[2]


@pytest_twisted.ensureDeferred
async def test_claim_of_an_empty_queue_writes_nothing(core, redis):
    claimed = await core.claim("q")
    assert claimed.messages == [] and claimed.as_json() == {"queue": "q", "messages": []}
    assert redis("KEYS", "*") == []


@pytest_twisted.ensureDeferred
async def test_claim_lease_defaults_to_the_configured_one_then_30_s(core, redis):
    await core.add("q", "a")
    await core.add("q", "b")
    now = redis_ms(redis)
    default = (await core.claim("q")).messages[0].lease_until * 1000
    assert now + 30_000 <= default <= redis_ms(redis) + 30_000
    await core.config_set("q", {"lease": "7"})
    now = redis_ms(redis)
    configured = (await core.claim("q")).messages[0].lease_until * 1000
    assert now + 7_000 <= configured <= redis_ms(redis) + 7_000


@pytest_twisted.ensureDeferred
async def test_claim_skips_dead_entries_and_forgets_their_counts(core, redis):
    for value in ("a", "b"):
        await core.add("q", value)
    redis("HSET", "q:deliveries", "q:1", "3")
    redis("DEL", "q:1")
    claimed = await core.claim("q", limit=5)
    assert [m.key for m in claimed.messages] == ["q:2"]
    assert redis("HEXISTS", "q:deliveries", "q:1") == 0


@pytest_twisted.ensureDeferred
async def test_claim_skips_many_dead_entries_in_steps(core, redis):
    dead = 2 * DEAD_STEP + 500
    redis("EVAL", "for n = 1, tonumber(ARGV[1]) do redis.call('LPUSH', 'q:queue', 'q:' .. n) "
          "end redis.call('SET', 'q:UUID', ARGV[1])", 0, dead)
    await core.add("q", "live")
    claimed = await core.claim("q", limit=2)
    assert [(m.key, m.value) for m in claimed.messages] == [(f"q:{dead + 1}", "live")]
    assert redis("EXISTS", "q:queue") == 0


@pytest_twisted.ensureDeferred
async def test_claim_refuses_bad_arguments_before_redis(core, redis):
    for kwargs, name in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
                         ({"lease": 0}, "lease"), ({"lease": 43201}, "lease")):
        with pytest.raises(InvalidArgument) as raised:
            core.claim("q", **kwargs)
        assert raised.value.reason == f"invalid argument: {name}"
    with pytest.raises(InvalidName):
        core.claim("bad name")
    assert redis("KEYS", "*") == []


# -- ack, extend, release --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ack_retires_the_message_and_removes_every_trace(core, redis):
    await core.add("q", "a")
    claimed = await core.claim("q")
    r = claimed.messages[0].receipt
    acked = await core.ack("q", [r])
    assert acked.as_json() == {"queue": "q", "acked": [r], "stale": []}
    assert leased_state(redis, "q") == ([], [], [])
    assert redis("GET", "q:1") == "a"  # readable by its key for the retention
    assert 0 < redis("TTL", "q:1") <= RETENTION
    # acked: stale from now on, for every settle call
    assert (await core.ack("q", [r])).stale == [r]
    assert (await core.extend("q", [r], 10)).stale == [r]
    assert (await core.release("q", [r])).stale == [r]


@pytest_twisted.ensureDeferred
async def test_settle_calls_answer_per_receipt(core, redis):
    for value in ("a", "b"):
        await core.add("q", value)
    one, two = (await core.claim("q", limit=2)).messages
    other = one.receipt.rsplit(".", 1)[0] + ".0123456789abcdef"  # another delivery's token
    upper = one.receipt.upper()
    # another delivery's token and a token in capitals are stale while `one` is leased
    acked = await core.ack("q", [other, upper, "junk", "", one.receipt, two.receipt,
                                 one.receipt])
    assert acked.acked == [one.receipt, two.receipt]
    assert acked.stale == [other, upper, "junk", "", one.receipt]


@pytest_twisted.ensureDeferred
async def test_a_receipt_of_another_queue_is_stale(core, redis):
    await core.add("q", "a")
    await core.add("other", "b")
    r = (await core.claim("q")).messages[0].receipt
    await core.claim("other")
    assert (await core.ack("other", [r])).stale == [r]
    assert redis("ZRANGE", "q:inflight", 0, -1) == ["q:1"]


@pytest_twisted.ensureDeferred
async def test_settle_calls_refuse_no_receipt_or_more_than_100(core, redis):
    await core.add("q", "a")
    for call in (lambda rs: core.ack("q", rs), lambda rs: core.extend("q", rs, 5),
                 lambda rs: core.release("q", rs)):
        for receipts in ([], ["1.1.0123456789abcdef"] * 101):
            with pytest.raises(InvalidArgument) as raised:
                call(receipts)
            assert raised.value.reason == "invalid argument: receipt"
    with pytest.raises(InvalidArgument):
        core.extend("q", ["x"], 0)
    with pytest.raises(InvalidArgument):
        core.release("q", ["x"], delay=2592001)


@pytest_twisted.ensureDeferred
async def test_extend_moves_the_deadline_either_way(core, redis):
    await core.add("q", "a")
    r = (await core.claim("q", lease=100)).messages[0].receipt
    now = redis_ms(redis)
    extended = await core.extend("q", [r, "junk"], 5)
    (ext,) = extended.extended
    assert extended.as_json() == {"queue": "q", "extended": [
        {"receipt": r, "lease_until": ext.lease_until}], "stale": ["junk"]}
    assert now + 5_000 <= ext.lease_until * 1000 <= redis_ms(redis) + 5_000
    assert int(redis("ZSCORE", "q:inflight", "q:1")) == int(ext.lease_until * 1000)
    assert int(redis("ZSCORE", "DUESET", "q")) <= int(ext.lease_until * 1000)
    longer = (await core.extend("q", [r], 1000)).extended[0].lease_until
    assert int(redis("ZSCORE", "q:inflight", "q:1")) == int(longer * 1000)
    # the receipt stays the same: the same delivery
    assert redis("HGET", "q:deliveries", "q:1") == "1." + r.split(".")[2]


@pytest_twisted.ensureDeferred
async def test_release_puts_the_message_next_in_line_with_its_count(core, redis, subscribe):
    for value in ("a", "b"):
        await core.add("q", value)
    sub = subscribe("q:PUBSUB")
    r = (await core.claim("q")).messages[0].receipt
    released = await core.release("q", [r])
    assert released.as_json() == {"queue": "q", "released": [r], "dead_lettered": [],
                                  "stale": []}
    assert sub.next_json() == {"type": "wake", "db": 0}
    assert leased_state(redis, "q") == (["q:2", "q:1"], [], ["q:1", "1"])
    again = (await core.claim("q")).messages[0]
    assert (again.key, again.deliveries) == ("q:1", 2)
    assert again.receipt.startswith("1.2.")
    assert (await core.ack("q", [r])).stale == [r]


@pytest_twisted.ensureDeferred
async def test_release_with_delay_waits_in_the_delayed_set(core, redis):
    await core.add("q", "a")
    r = (await core.claim("q")).messages[0].receipt
    now = redis_ms(redis)
    assert (await core.release("q", [r], delay=1)).released == [r]
    assert redis("LLEN", "q:queue") == 0
    due = int(redis("ZSCORE", "q:delayed", "q:1"))
    assert now + 1000 <= due <= redis_ms(redis) + 1000
    assert int(redis("ZSCORE", "DUESET", "q")) <= due
    with pytest.raises(Exception):
        await core.hard_get("q")  # not pending yet
    await until_redis_passes(redis, due)
    ticked = await core.tick("q")
    assert ticked.promoted == 1
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:1"]
    assert redis("EXISTS", "q:delayed") == 0
    assert (await core.claim("q")).messages[0].deliveries == 2


# -- lease expiry and stale receipts --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_expired_lease_comes_back_next_in_line_on_the_tick(core, redis, subscribe):
    for value in ("a", "b", "c"):
        await core.add("q", value)
    first = await core.claim("q", lease=1)
    second = await core.claim("q", lease=2)
    assert [m.key for m in first.messages + second.messages] == ["q:1", "q:2"]
    # a late ack still beats the tick: the receipt stays current until the tick reaps it
    await until_redis_passes(redis, int(first.messages[0].lease_until * 1000))
    assert redis("ZRANGE", "q:inflight", 0, -1) == ["q:1", "q:2"]
    sub = subscribe("q:PUBSUB")
    await expire_and_tick(core, redis, "q", second)
    assert sub.next_json() == {"type": "wake", "db": 0}
    # the one whose lease ended first is consumed first
    assert leased_state(redis, "q") == (["q:3", "q:2", "q:1"], [],
                                        ["q:1", "1", "q:2", "1"])
    again = await core.claim("q", limit=3)
    assert [(m.key, m.deliveries) for m in again.messages] == \
        [("q:1", 2), ("q:2", 2), ("q:3", 1)]
    stale = [m.receipt for m in first.messages + second.messages]
    assert (await core.ack("q", stale)).stale == stale  # expired and reclaimed
    assert (await core.extend("q", stale, 10)).stale == stale
    assert (await core.release("q", stale)).stale == stale
    assert (await core.ack("q", [m.receipt for m in again.messages])).stale == []


@pytest_twisted.ensureDeferred
async def test_an_expired_lease_is_requeued_once_however_often_the_tick_runs(core, redis):
    await core.add("q", "a")
    claimed = await core.claim("q", lease=1)
    await until_redis_passes(redis, int(claimed.messages[0].lease_until * 1000))
    results = [await core.tick("q") for _ in range(3)]
    assert [t.requeued for t in results] == [1, 0, 0]
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:1"]


@pytest_twisted.ensureDeferred
async def test_a_lease_whose_value_expired_is_forgotten(core, redis):
    await core.add("q", "a")
    claimed = await core.claim("q", lease=1)
    redis("DEL", "q:1")
    await expire_and_tick(core, redis, "q", claimed)
    assert leased_state(redis, "q") == ([], [], [])
    assert redis("ZSCORE", "DUESET", "q") is None  # nothing left to visit


# -- dead letters -------------------------------------------------------------------------------


async def configured(core, **attributes) -> None:
    await core.config_set("q", {k: str(v) for k, v in attributes.items()})


def origin(redis, dead: str, key: str) -> dict:
    return json.loads(redis("HGET", f"{dead}:origin", key))


@pytest_twisted.ensureDeferred
async def test_release_dead_letters_at_max_attempts(core, redis, subscribe):
    await configured(core, max_attempts=2, dead_letter="q.dead")
    await core.add("q", "a", 600)
    first = (await core.claim("q")).messages[0].receipt
    assert (await core.release("q", [first])).released == [first]
    second = (await core.claim("q")).messages[0].receipt
    sub = subscribe("q.dead:PUBSUB")
    now = redis_ms(redis)
    released = await core.release("q", [second])
    assert (released.released, released.dead_lettered) == ([], [second])
    assert sub.next_json() == {"type": "wake", "db": 0}
    # gone from q, with every trace
    assert leased_state(redis, "q") == ([], [], [])
    assert redis("EXISTS", "q:1", "q:1:refcount") == 0
    # a new message of q.dead, with its remaining ttl and its origin
    assert redis("LRANGE", "q.dead:queue", 0, -1) == ["q.dead:1"]
    assert redis("GET", "q.dead:1") == "a"
    assert 590 <= redis("TTL", "q.dead:1") <= 600
    record = origin(redis, "q.dead", "q.dead:1")
    assert {k: record[k] for k in ("queue", "key", "deliveries", "reason")} == \
        {"queue": "q", "key": "q:1", "deliveries": 2, "reason": "released"}
    assert now <= record["at"] <= redis_ms(redis)
    assert redis("SISMEMBER", "QUEUESET", "q.dead") == 1
    assert redis("GET", "queuestat::q.dead") == "1"
    # an ordinary queue: the legacy get reads it, and forgets the origin
    assert (await core.hard_get("q.dead")).value == "a"
    assert redis("EXISTS", "q.dead:origin") == 0


@pytest_twisted.ensureDeferred
async def test_lease_expiry_dead_letters_at_max_attempts(core, redis):
    await configured(core, max_attempts=1, dead_letter="q.dead")
    await core.add("q", "a")
    claimed = await core.claim("q", lease=1)
    await expire_and_tick(core, redis, "q", claimed)
    assert leased_state(redis, "q") == ([], [], [])
    assert origin(redis, "q.dead", "q.dead:1")["reason"] == "lease_expired"
    assert redis("TTL", "q.dead:1") == -1


@pytest_twisted.ensureDeferred
async def test_dead_letter_takes_the_dead_letter_queues_ttl(core, redis):
    await configured(core, max_attempts=1, dead_letter="q.dead")
    await core.config_set("q.dead", {"ttl": "50"})
    await core.add("q", "a")
    r = (await core.claim("q")).messages[0].receipt
    assert (await core.release("q", [r])).dead_lettered == [r]
    assert 45 <= redis("TTL", "q.dead:1") <= 50


@pytest_twisted.ensureDeferred
async def test_claim_dead_letters_what_a_lowered_max_attempts_exhausted(core, redis):
    await configured(core, max_attempts=5, dead_letter="q.dead")
    await core.add("q", "a")
    await core.add("q", "b")
    for _ in range(3):
        r = (await core.claim("q")).messages[0].receipt
        await core.release("q", [r])
    await configured(core, max_attempts=2)
    claimed = await core.claim("q")
    assert [m.key for m in claimed.messages] == ["q:2"]
    assert origin(redis, "q.dead", "q.dead:1")["reason"] == "max_attempts"
    assert origin(redis, "q.dead", "q.dead:1")["deliveries"] == 3


@pytest_twisted.ensureDeferred
async def test_a_changed_dead_letter_queue_is_followed_by_every_process(core, service, redis):
    other = Core(service, consumed_ttl=RETENTION)  # another process's beliefs
    await configured(core, max_attempts=1, dead_letter="d1")
    await core.add("q", "a")
    await core.add("q", "b")
    r = (await other.claim("q")).messages[0].receipt
    assert (await other.release("q", [r])).dead_lettered == [r]
    await configured(core, dead_letter="d2")
    r = (await other.claim("q")).messages[0].receipt
    assert (await other.release("q", [r])).dead_lettered == [r]
    assert redis("LRANGE", "d1:queue", 0, -1) == ["d1:1"]
    assert redis("LRANGE", "d2:queue", 0, -1) == ["d2:1"]


# -- redrive ----------------------------------------------------------------------------------


async def dead_letters(core, queue: str, *values: str) -> None:
    await core.config_set(queue, {"max_attempts": "1", "dead_letter": "dlq"})
    for value in values:
        await core.add(queue, value)
    receipts = [m.receipt for m in (await core.claim(queue, limit=len(values))).messages]
    assert (await core.release(queue, receipts)).dead_lettered == receipts


@pytest_twisted.ensureDeferred
async def test_redrive_restores_the_original_keys(core, redis, subscribe):
    await dead_letters(core, "q", "a", "b")
    sub = subscribe("q:PUBSUB")
    redriven = await core.redrive("dlq")
    assert redriven.as_json() == {"queue": "dlq", "moved": [
        {"from": "dlq:1", "to": "q:1"}, {"from": "dlq:2", "to": "q:2"}], "remaining": 0,
        "stopped": None}
    assert sub.next_json() == {"type": "wake", "db": 0}
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:2", "q:1"]
    assert [redis("GET", k) for k in ("q:1", "q:2")] == ["a", "b"]
    assert redis("EXISTS", "dlq:1", "dlq:2", "dlq:origin", "dlq:queue", "q:deliveries") == 0
    # redriven messages start again at count 0
    assert [m.deliveries for m in (await core.claim("q", limit=2)).messages] == [1, 1]


@pytest_twisted.ensureDeferred
async def test_redrive_uses_a_new_key_when_the_original_is_taken(core, redis):
    await dead_letters(core, "q", "a")
    redis("SET", "q:1", "someone else's")
    moved = (await core.redrive("dlq")).moved
    assert [(m.from_key, m.to_key) for m in moved] == [("dlq:1", "q:2")]
    assert redis("GET", "q:1") == "someone else's"


@pytest_twisted.ensureDeferred
async def test_redrive_follows_each_origin_and_honours_limit(core, redis):
    await dead_letters(core, "q1", "a", "b")
    await dead_letters(core, "q2", "c")
    await dead_letters(core, "q1", "d")
    redriven = await core.redrive("dlq", limit=3)
    assert [(m.from_key, m.to_key) for m in redriven.moved] == [
        ("dlq:1", "q1:1"), ("dlq:2", "q1:2"), ("dlq:3", "q2:1")]
    assert (redriven.remaining, redriven.stopped) == (1, None)
    assert redis("LRANGE", "dlq:queue", 0, -1) == ["dlq:4"]
    rest = await core.redrive("dlq")
    assert [(m.from_key, m.to_key) for m in rest.moved] == [("dlq:4", "q1:3")]


@pytest_twisted.ensureDeferred
async def test_redrive_to_a_given_queue(core, redis):
    await dead_letters(core, "q", "a")
    moved = (await core.redrive("dlq", to="elsewhere")).moved
    assert [(m.from_key, m.to_key) for m in moved] == [("dlq:1", "elsewhere:1")]
    assert redis("SISMEMBER", "QUEUESET", "elsewhere") == 1
    with pytest.raises(InvalidArgument) as raised:
        core.redrive("dlq", to="dlq")
    assert raised.value.reason == "invalid argument: to"
    for limit in (0, 1001):
        with pytest.raises(InvalidArgument):
            core.redrive("dlq", limit=limit)


@pytest_twisted.ensureDeferred
async def test_redrive_stops_at_a_message_without_origin(core, redis):
    await dead_letters(core, "q", "a")
    await core.add("dlq", "added by hand")  # no origin
    await dead_letters(core, "q", "b")
    redriven = await core.redrive("dlq")
    assert [(m.from_key, m.to_key) for m in redriven.moved] == [("dlq:1", "q:1")]
    assert (redriven.remaining, redriven.stopped) == (2, "no origin")
    assert redis("LRANGE", "dlq:queue", 0, -1) == ["dlq:3", "dlq:2"]
    moved = (await core.redrive("dlq", to="q")).moved
    assert [m.to_key for m in moved] == ["q:3", "q:2"]
