"""Adds with a schedule, a priority or an idempotency key over real HTTP
(docs/http-api.md#add, #delays-and-etas, #priorities, #idempotent-adds): `delay`, `eta`,
`priority`, `dedup` and the header `Idempotency-Key` on `POST /` and `POST /q/<q>`. Every error
row with its status and reason, leaving Redis as it was; delays and etas on Redis's clock with
short times and a bounded poll; the replay of a repeat, JSONP per the repeat, across two server
processes, and the window after which a key is forgotten."""
from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import ServerProcess
from tests.http_client import get, post, request
from tests.util import command_calls, redis_ms, snapshot, v2_json, wait_until


def add(H, form: dict, path: str = "/q/jobs", headers: dict | None = None):
    return request(H, "POST", path, form=form, headers=headers)


def key_of(reply) -> str:
    assert reply.status == 200, (reply.status, reply.body)
    assert reply.header("Content-Type") == "text/html; charset=UTF-8"
    assert reply.body.endswith(b"\r\n")
    return reply.body[:-2].decode()


def pending_keys(redis, queue: str = "jobs") -> list[str]:
    """In consumption order: priority levels first, then the pending list oldest first."""
    return redis("ZRANGE", f"{queue}:priority", 0, -1) + \
        redis("LRANGE", f"{queue}:queue", 0, -1)[::-1]


@pytest.fixture
def busy(H, redis):
    """Queue `jobs` with a pending message, one of priority 3, one delayed for 10 minutes and
    one added under the idempotency key `k1`: what a wrongly applied write would change."""
    key_of(add(H, {"value": "a"}))
    key_of(add(H, {"value": "b", "priority": "3"}))
    key_of(add(H, {"value": "c", "delay": "600"}))
    key_of(add(H, {"value": "d", "dedup": "k1"}))
    return snapshot(redis)


LONG_KEY = "k" * 256
ERRORS = [
    # (path, form, headers, status, reason)
    ("/q/jobs", {"value": "x", "delay": "2592001"}, None, 400, "invalid argument: delay"),
    ("/q/jobs", {"value": "x", "delay": "-1"}, None, 400, "invalid argument: delay"),
    ("/q/jobs", {"value": "x", "delay": "1.5"}, None, 400, "invalid argument: delay"),
    ("/q/jobs", {"value": "x", "delay": "1" * 5000}, None, 400, "invalid argument: delay"),
    ("/q/jobs", {"value": "x", "eta": "1.2345"}, None, 400, "invalid argument: eta"),
    ("/q/jobs", {"value": "x", "eta": "-5"}, None, 400, "invalid argument: eta"),
    ("/q/jobs", {"value": "x", "eta": "1e9"}, None, 400, "invalid argument: eta"),
    ("/q/jobs", {"value": "x", "eta": "99999999999"}, None, 400, "invalid argument: eta"),
    ("/q/jobs", {"value": "x", "eta": "1", "delay": "1"}, None, 400, "invalid argument: eta"),
    ("/q/jobs", {"value": "x", "priority": "10"}, None, 400, "invalid argument: priority"),
    ("/q/jobs", {"value": "x", "priority": "-1"}, None, 400, "invalid argument: priority"),
    ("/q/jobs", {"value": "x", "priority": "high"}, None, 400, "invalid argument: priority"),
    ("/q/jobs", {"value": "x", "dedup": LONG_KEY}, None, 400, "invalid argument: dedup"),
    ("/q/jobs", {"value": "x", "dedup": "a b"}, None, 400, "invalid argument: dedup"),
    ("/q/jobs", {"value": "x", "dedup": "clé"}, None, 400, "invalid argument: dedup"),
    ("/q/jobs", {"value": "x"}, {"Idempotency-Key": "a\tb"}, 400, "invalid argument: dedup"),
    ("/q/jobs", {"value": "x"}, {"Idempotency-Key": '""'}, 400, "invalid argument: dedup"),
    # The header wins: a good dedup argument does not save a bad header.
    ("/q/jobs", {"value": "x", "dedup": "ok"}, {"Idempotency-Key": "a b"}, 400,
     "invalid argument: dedup"),
    # In the order value, ttl, delay, eta, priority, dedup.
    ("/q/jobs", {"delay": "x", "dedup": "a b"}, None, 400, "missing argument: value"),
    ("/q/jobs", {"value": "x", "ttl": "0", "delay": "x"}, None, 400, "invalid argument: ttl"),
    ("/q/jobs", {"value": "x", "delay": "x", "eta": "x"}, None, 400, "invalid argument: delay"),
    ("/q/jobs", {"value": "x", "eta": "x", "priority": "x"}, None, 400,
     "invalid argument: eta"),
    ("/q/jobs", {"value": "x", "priority": "x", "dedup": "a b"}, None, 400,
     "invalid argument: priority"),
    ("/q/", {"value": "x", "priority": "x"}, None, 400, "invalid queue name"),
    ("/", {"queue": "jobs", "value": "x", "eta": "x"}, None, 400, "invalid argument: eta"),
    ("/", {"value": "x", "priority": "3"}, None, 400, "missing argument: queue"),
    # Checked inside the add, against Redis's state, before its first write:
    ("/q/jobs", {"value": "e", "dedup": "k1"}, None, 422, "idempotency key reused"),
    ("/q/jobs", {"value": "x", "eta": "4102444800"}, None, 400, "invalid argument: eta"),
]


@pytest.mark.parametrize("path,form,headers,status,reason", ERRORS,
                         ids=[f"{e[0]} {sorted(e[1])} {e[4]}" for e in ERRORS])
def test_error_rows_write_nothing(H, redis, busy, path, form, headers, status, reason):
    reply = add(H, form, path, headers)
    assert (reply.status, reply.body) == (status, json.dumps({"error": reason}).encode())
    assert reply.header("Content-Type") == "application/json"
    assert reply.header("Idempotent-Replayed") is None
    assert snapshot(redis) == busy


def test_an_eta_just_within_30_days_is_accepted_and_one_beyond_refused(H, redis, busy):
    now = redis_ms(redis) / 1000
    reply = add(H, {"value": "x", "eta": f"{now + 2592000 + 5:.3f}"})
    assert (reply.status, reply.json) == (400, {"error": "invalid argument: eta"})
    assert snapshot(redis) == busy
    key = key_of(add(H, {"value": "x", "eta": f"{now + 2592000 - 5:.3f}"}))
    assert redis("ZSCORE", "jobs:delayed", key) is not None


def test_the_bounds_themselves_are_accepted(H, redis):
    for form in ({"delay": "0"}, {"delay": "2592000"}, {"delay": "0002"}, {"eta": "0"},
                 {"eta": "1.5"}, {"priority": "0"}, {"priority": "9"}, {"priority": "09"},
                 {"dedup": "!" + "~" * 254}, {"dedup": "a"}):
        key_of(add(H, {"value": "x", **form}))


# -- delays and etas ---------------------------------------------------------------------------


def test_a_delayed_add_answers_its_key_and_is_pending_once_due(H, redis):
    key_of(add(H, {"value": "first"}))
    before = redis_ms(redis)
    key = key_of(add(H, {"value": "later", "delay": "1", "ttl": "60"}))
    assert key == "jobs:2"
    due = int(redis("ZSCORE", "jobs:delayed", key))
    assert before + 1000 <= due <= redis_ms(redis) + 1000
    assert 60_000 < redis("PTTL", key) <= 61_000  # the ttl counts from the due time
    assert v2_json(get(H, "/info/jobs"))["delayed"] == 1
    assert get(H, "/q/jobs").json["key"] == "jobs:1"
    assert get(H, "/q/jobs").status == 204  # not before it is due
    wait_until(lambda: redis("LLEN", "jobs:queue") == 1, 10, "the delayed message to be due")
    assert redis_ms(redis) >= due
    assert get(H, "/q/jobs").json == {"key": key, "value": "later", "count": 0}


def test_an_eta_in_the_past_is_now_and_one_ahead_waits_for_it(H, redis):
    past = key_of(add(H, {"value": "past", "eta": "1"}))
    assert pending_keys(redis) == [past]
    eta = (redis_ms(redis) + 1500) / 1000
    key = key_of(add(H, {"value": "soon", "eta": f"{eta:.3f}"}))
    assert int(redis("ZSCORE", "jobs:delayed", key)) == round(eta * 1000)
    wait_until(lambda: redis("LLEN", "jobs:queue") == 2, 10, "the eta to pass")
    assert redis_ms(redis) >= round(eta * 1000)
    assert pending_keys(redis) == [past, key]


def test_delayed_messages_become_pending_in_due_order_as_if_added_then(H, redis):
    slow = key_of(add(H, {"value": "slow", "delay": "2"}))
    fast = key_of(add(H, {"value": "fast", "delay": "1"}))
    now = key_of(add(H, {"value": "now"}))
    wait_until(lambda: redis("LLEN", "jobs:queue") == 3, 10, "both delays to pass")
    assert pending_keys(redis) == [now, fast, slow]


def due_together(H, redis, count: int, eta: float | None = None) -> list[str]:
    """The keys of `count` messages added by batches of 100, all due at `eta` (Unix s; by
    default 1.5 s from now)."""
    eta = eta or (redis_ms(redis) + 1500) / 1000
    keys = []
    for n in range(count // 100):
        reply = request(H, "POST", "/batch/jobs", body=json.dumps(
            [{"value": f"{n}.{i}", "eta": eta} for i in range(100)]))
        keys += v2_json(reply)["keys"]
    return keys


def test_messages_due_together_become_pending_at_a_few_commands_per_step(H, redis):
    """1,000 messages due at one instant (two steps of the tick, 500 each) become pending in
    their order with, per step, one removal from the delayed set, one look at the priorities
    and one push: the per-message commands (a ZREM, an HGET and an LPUSH each) made 100,000
    such messages take seconds to become pending."""
    redis("SET", "jobs:UUID", "1000")  # numbers of one length (see the test below)
    keys = due_together(H, redis, 1000)
    redis("CONFIG", "RESETSTAT")
    wait_until(lambda: redis("LLEN", "jobs:queue") == 1000, 10, "the due time")
    calls = command_calls(redis)
    assert redis("LRANGE", "jobs:queue", 0, -1) == keys[::-1]
    assert redis("EXISTS", "jobs:delayed") == 0
    per_message = {name: calls.get(name, 0) for name in ("zrem", "hget", "lpush")}
    assert all(count <= 10 for count in per_message.values()), per_message


def test_up_to_a_step_due_together_become_pending_in_number_order_across_lengths(H, redis):
    """jobs:1 to jobs:300 share a due time: Redis lists them by name (jobs:1, jobs:10,
    jobs:100, jobs:101 ...); they become pending by number."""
    keys = due_together(H, redis, 300)
    wait_until(lambda: redis("LLEN", "jobs:queue") == 300, 10, "the due time")
    assert redis("LRANGE", "jobs:queue", 0, -1) == keys[::-1]


def test_more_than_a_step_due_together_keep_their_order_across_lengths_of_number(H, redis):
    # Redis orders one due time's names as text (jobs:1000 before jobs:2): the step takes the
    # 500 lowest numbers all the same.
    keys = due_together(H, redis, 1000)  # jobs:1 to jobs:1000
    wait_until(lambda: redis("LLEN", "jobs:queue") == 1000, 10, "the due time")
    assert redis("LRANGE", "jobs:queue", 0, -1) == keys[::-1]


def test_more_than_a_tick_reads_of_one_due_time_still_all_become_pending(H, redis):
    # Past the 5,000 entries a step reads of one due time, the steps go on in Redis's order
    # of names (the known exception), numbers of one length in their order.
    redis("SET", "jobs:UUID", "10000")
    keys = due_together(H, redis, 5100)
    wait_until(lambda: redis("LLEN", "jobs:queue") == 5100, 20, "the due time")
    assert redis("LRANGE", "jobs:queue", 0, -1) == keys[::-1]
    assert redis("EXISTS", "jobs:delayed") == 0


def test_a_step_that_ends_inside_a_due_time_leaves_all_of_it_to_the_next(H, redis):
    # 200 due first, then 400 (jobs:900 to jobs:1299) due 1 ms later: the step of 500 would
    # end after jobs:1000 to jobs:1299, the first 300 of the second due time as text.
    redis("SET", "jobs:UUID", "699")
    eta = (redis_ms(redis) + 1500) / 1000
    keys = due_together(H, redis, 200, eta) + due_together(H, redis, 400, round(eta + 0.001, 3))
    assert keys[200] == "jobs:900"
    wait_until(lambda: redis("LLEN", "jobs:queue") == 600, 10, "the due times")
    assert redis("LRANGE", "jobs:queue", 0, -1) == keys[::-1]


def test_a_queues_configured_delay_applies_unless_the_add_gives_one(H, redis):
    v2_json(post(H, "/config/jobs", {"delay": "600"}))
    waiting = key_of(add(H, {"value": "waits"}))
    at_once = key_of(add(H, {"value": "at once", "delay": "0"}))
    assert redis("ZRANGE", "jobs:delayed", 0, -1) == [waiting]
    assert pending_keys(redis) == [at_once]


def test_a_delayed_message_can_be_deleted_by_key_before_it_is_due(H, redis):
    key = key_of(add(H, {"value": "x", "delay": "600"}))
    reply = post(H, "/queue", {"body": json.dumps({"cmd": "del", "queue": "jobs",
                                                   "key": key})})
    assert reply.json == {"queue": "jobs", "deleted": True, "key": key}
    assert redis("EXISTS", "jobs:delayed", key) == 0


# -- priorities --------------------------------------------------------------------------------


def test_priorities_are_consumed_highest_first_fifo_within_a_level(H, redis):
    keys = {}
    for value, priority in (("p0a", None), ("p3a", "3"), ("p9", "9"), ("p3b", "3"),
                            ("p0b", "0"), ("p1", "1")):
        form = {"value": value} if priority is None else {"value": value, "priority": priority}
        keys[value] = key_of(add(H, form))
    assert redis("HGETALL", "jobs:prio") == [keys["p3a"], "3", keys["p9"], "9",
                                             keys["p3b"], "3", keys["p1"], "1"]
    assert get(H, "/stats/jobs").json["len"] == 6
    taken = [get(H, "/q/jobs").json["value"] for _ in range(6)]
    assert taken == ["p9", "p3a", "p3b", "p1", "p0a", "p0b"]
    assert redis("EXISTS", "jobs:priority", "jobs:prio") == 0


def test_a_priority_0_add_keeps_the_original_keyspace(H, redis):
    key_of(add(H, {"value": "x", "priority": "0", "delay": "0"}))
    assert sorted(redis("KEYS", "*")) == ["QUEUESET", "jobs:1", "jobs:UUID", "jobs:queue",
                                          "queuestat::jobs"]


def test_a_delayed_priority_message_keeps_its_level(H, redis):
    key_of(add(H, {"value": "old"}))
    urgent = key_of(add(H, {"value": "urgent", "priority": "7", "delay": "1"}))
    wait_until(lambda: redis("ZCARD", "jobs:priority") == 1, 10, "the delay to pass")
    assert get(H, "/q/jobs").json["key"] == urgent


def test_a_delayed_priority_message_joins_its_level_behind_what_was_pending_before(H, redis):
    later = key_of(add(H, {"value": "due later", "priority": "3", "delay": "1"}))
    first = key_of(add(H, {"value": "pending first", "priority": "3"}))
    wait_until(lambda: redis("ZCARD", "jobs:priority") == 2, 10, "the delay to pass")
    assert pending_keys(redis) == [first, later]
    assert get(H, "/q/jobs").json["key"] == first


# -- idempotent adds ---------------------------------------------------------------------------


def test_a_repeat_is_answered_from_the_stored_key_and_writes_nothing(H, redis):
    first = add(H, {"value": "a", "ttl": "60"}, headers={"Idempotency-Key": "order-1"})
    assert key_of(first) == "jobs:1" and first.header("Idempotent-Replayed") is None
    state = snapshot(redis)
    again = add(H, {"value": "a", "ttl": "60"}, headers={"Idempotency-Key": "order-1"})
    assert (again.status, again.body) == (first.status, first.body)
    assert again.header("Content-Type") == first.header("Content-Type")
    assert again.header("Idempotent-Replayed") == "true"
    assert snapshot(redis) == state
    # the argument, the quoted header and the other add route are the same request
    for path, form, headers in (("/q/jobs", {"dedup": "order-1"}, None),
                                ("/q/jobs", {}, {"Idempotency-Key": '"order-1"'}),
                                ("/", {"queue": "jobs"}, {"Idempotency-Key": "order-1"})):
        reply = add(H, {"value": "a", "ttl": "60", **form}, path, headers)
        assert (reply.body, reply.header("Idempotent-Replayed")) == (b"jobs:1\r\n", "true")
    assert snapshot(redis) == state
    assert redis("HGET", "jobs:dedup", "order-1") == \
        f"{fingerprint('add', [['a', 60, None, None, None]])} jobs:1"


def test_a_repeat_gets_jsonp_per_its_own_callback(H, redis):
    first = add(H, {"value": "a", "dedup": "k"}, "/q/jobs?callback=one")
    assert first.body == b'one("jobs:1");\r\n'
    again = add(H, {"value": "a", "dedup": "k"}, "/q/jobs?callback=two")
    assert (again.body, again.header("Idempotent-Replayed")) == (b'two("jobs:1");\r\n', "true")
    plain = add(H, {"value": "a", "dedup": "k"})
    assert (plain.body, plain.header("Idempotent-Replayed")) == (b"jobs:1\r\n", "true")


def test_a_repeat_after_the_message_was_consumed_is_still_a_replay(H, redis):
    key_of(add(H, {"value": "a", "dedup": "k"}))
    assert get(H, "/q/jobs").json["key"] == "jobs:1"
    again = add(H, {"value": "a", "dedup": "k"})
    assert (key_of(again), again.header("Idempotent-Replayed")) == ("jobs:1", "true")
    assert get(H, "/q/jobs").status == 204


def test_the_header_wins_over_the_argument(H, redis):
    key_of(add(H, {"value": "a", "dedup": "from-argument"},
               headers={"Idempotency-Key": "from-header"}))
    assert redis("HKEYS", "jobs:dedup") == ["from-header"]


@pytest.mark.parametrize("change", [{"value": "b"}, {"ttl": "61"}, {"ttl": None},
                                    {"delay": "0"}, {"eta": "1"}, {"priority": "0"}],
                         ids=lambda c: repr(c))
def test_any_other_request_under_the_same_key_is_422(H, redis, change):
    base = {"value": "a", "ttl": "60", "dedup": "k"}
    key_of(add(H, base))
    state = snapshot(redis)
    form = {k: v for k, v in {**base, **change}.items() if v is not None}
    reply = add(H, form)
    assert (reply.status, reply.json) == (422, {"error": "idempotency key reused"})
    assert snapshot(redis) == state


def test_idempotency_keys_are_per_queue(H, redis):
    assert key_of(add(H, {"value": "a", "dedup": "k"}, "/q/one")) == "one:1"
    reply = add(H, {"value": "b", "dedup": "k"}, "/q/two")
    assert (key_of(reply), reply.header("Idempotent-Replayed")) == ("two:1", None)


@pytest.mark.parametrize("queue", ["a,b", ",", "x,y:2,"])
def test_a_repeat_on_a_queue_whose_name_holds_a_comma_answers_the_same_key(H, redis, queue):
    """The stored record lists keys joined by commas, which a queue's name may hold."""
    first = add(H, {"value": "a", "dedup": "k"}, f"/q/{queue}")
    assert key_of(first) == f"{queue}:1"
    again = add(H, {"value": "a", "dedup": "k"}, f"/q/{queue}")
    assert (again.body, again.header("Idempotent-Replayed")) == (first.body, "true")


def test_a_key_is_forgotten_after_the_queues_dedup_window(H, redis):
    v2_json(post(H, "/config/jobs", {"dedup_window": "1"}))
    before = redis_ms(redis)
    key_of(add(H, {"value": "a", "dedup": "k"}))
    expires = int(redis("ZSCORE", "jobs:dedupexp", "k"))
    assert before + 1000 <= expires <= redis_ms(redis) + 1000
    assert add(H, {"value": "a", "dedup": "k"}).header("Idempotent-Replayed") == "true"
    wait_until(lambda: redis("HLEN", "jobs:dedup") == 0, 10, "the window to pass")
    assert redis_ms(redis) >= expires
    assert redis("EXISTS", "jobs:dedupexp") == 0
    reply = add(H, {"value": "b", "dedup": "k"})  # a new request under the old key
    assert (key_of(reply), reply.header("Idempotent-Replayed")) == ("jobs:2", None)


def test_a_repeat_on_another_server_process_is_a_replay(H, redis, redis_proc):
    other = ServerProcess(redis_proc.port).start()
    try:
        first = add(H, {"value": "a", "priority": "4"}, headers={"Idempotency-Key": "x-1"})
        state = snapshot(redis)
        again = add(other.url, {"value": "a", "priority": "4"},
                    headers={"Idempotency-Key": "x-1"})
        assert (again.status, again.body) == (first.status, first.body) == (200, b"jobs:1\r\n")
        assert again.header("Idempotent-Replayed") == "true"
        refused = add(other.url, {"value": "a", "priority": "5"},
                      headers={"Idempotency-Key": "x-1"})
        assert (refused.status, refused.json) == (422, {"error": "idempotency key reused"})
        assert snapshot(redis) == state
    finally:
        other.stop()
    assert "Traceback" not in other.final_log


def fingerprint(kind: str, items: list) -> str:
    """The documented fingerprint, computed independently of the server's code: SHA-256 of
    the canonical JSON (UTF-8, no whitespace) of [kind, items]."""
    text = json.dumps([kind, items], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_the_fingerprint_is_the_documented_one(H, redis):
    key_of(add(H, {"value": "ü \"1\"", "ttl": "0060", "eta": "1.500", "priority": "2",
                   "dedup": "a"}))
    key_of(add(H, {"value": "x", "delay": "5", "dedup": "b"}))
    key_of(add(H, {"value": "y", "eta": "7.000", "dedup": "c"}))
    stored = dict(zip(*[iter(redis("HGETALL", "jobs:dedup"))] * 2))
    assert stored == {
        "a": fingerprint("add", [["ü \"1\"", 60, None, 1.5, 2]]) + " jobs:1",
        "b": fingerprint("add", [["x", None, 5, None, None]]) + " jobs:2",
        "c": fingerprint("add", [["y", None, None, 7, None]]) + " jobs:3"}
    # an eta written differently is the same request
    again = add(H, {"value": "y", "eta": "7", "dedup": "c"})
    assert again.header("Idempotent-Replayed") == "true"
