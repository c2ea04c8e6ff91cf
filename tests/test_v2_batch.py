"""`POST /batch/<q>` over real HTTP (docs/http-api.md#batch): a JSON array of messages added
all or nothing with consecutive keys; every error row (malformed JSON, `messages`, each item's
field with its index, `too many messages` under `--max-batch`, 413, 422) leaves Redis as it
was; idempotency keys from the query string or the header, kept apart from single adds."""
from __future__ import annotations

import json

import pytest

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import get, post, request
from tests.util import command_calls, redis_ms, snapshot, v2_json, wait_until


def batch(H, body, path: str = "/batch/jobs", headers: dict | None = None):
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    return request(H, "POST", path, body=body, headers=headers)


def keys_of(reply, queue: str = "jobs") -> list[str]:
    body = v2_json(reply)
    assert set(body) == {"queue", "keys"} and body["queue"] == queue
    return body["keys"]


def pending_keys(redis, queue: str = "jobs") -> list[str]:
    """In consumption order: priority levels first, then the pending list oldest first."""
    return redis("ZRANGE", f"{queue}:priority", 0, -1) + \
        redis("LRANGE", f"{queue}:queue", 0, -1)[::-1]


@pytest.fixture
def busy(H, redis):
    """Queue `jobs` with pending, priority, delayed messages and the batch key `k1`, and a
    configuration: what a wrongly applied write would change."""
    v2_json(post(H, "/config/jobs", {"max_message": "10"}))
    keys_of(batch(H, ["a", {"value": "b", "priority": 3}, {"value": "c", "delay": 600}]))
    keys_of(batch(H, ["d"], "/batch/jobs?dedup=k1"))
    return snapshot(redis)


def test_a_batch_adds_every_message_in_order_with_consecutive_keys(H, redis):
    assert post(H, "/q/jobs", {"value": "zero"}).status == 200
    before = redis_ms(redis)
    keys = keys_of(batch(H, ["a", {"value": "b", "ttl": 60}, {"value": "c", "priority": 2},
                             {"value": "d", "delay": 600, "ignored": "yes"},
                             {"value": "e", "eta": 1, "ttl": None, "priority": 0}, "",
                             {"value": "ü<&>"}]))
    assert keys == [f"jobs:{n}" for n in range(2, 9)]
    assert redis("GET", "jobs:3") == "b" and 59 <= redis("TTL", "jobs:3") <= 60
    assert redis("TTL", "jobs:2") == -1
    assert redis("HGETALL", "jobs:prio") == ["jobs:4", "2"]
    assert before + 600_000 <= int(redis("ZSCORE", "jobs:delayed", "jobs:5")) <= \
        redis_ms(redis) + 600_000
    assert redis("GET", "jobs:8") == "ü<&>" and redis("GET", "jobs:7") == ""
    assert pending_keys(redis) == ["jobs:4", "jobs:1", "jobs:2", "jobs:3", "jobs:6", "jobs:7",
                                   "jobs:8"]
    assert [get(H, "/q/jobs").json["value"] for _ in range(3)] == ["c", "zero", "a"]


def test_one_batch_wakes_a_live_consumer_once_with_every_message(H, redis):
    from tests.comet import CometClient
    client = CometClient(H, "jobs")
    try:
        wait_until(lambda: redis("PUBSUB", "NUMSUB", "jobs:PUBSUB")[1] == 1,
                   what="the consumer registered")
        keys = keys_of(batch(H, [str(n) for n in range(50)]))
        got = client.messages(50)
        assert [m["key"] for m in got] == keys
    finally:
        client.close()


def test_a_batch_costs_redis_one_command_per_message_and_a_few_more(H, redis):
    """Per message the script writes the value (SET); it checks that all the keys are free
    with one EXISTS and pushes them onto the pending list with one LPUSH, in order: an EXISTS
    and an LPUSH per message were two thirds of Redis's commands for a batch."""
    redis("CONFIG", "RESETSTAT")
    keys = keys_of(batch(H, [str(n) for n in range(100)]))
    calls = command_calls(redis)
    assert calls["set"] == 100
    assert calls["exists"] == 1 and calls["lpush"] == 1
    assert redis("LRANGE", "jobs:queue", 0, -1) == keys[::-1]


def test_a_delayed_batch_item_becomes_pending_when_due(H, redis):
    keys = keys_of(batch(H, [{"value": "later", "delay": 1}, "now"]))
    assert pending_keys(redis) == [keys[1]]
    wait_until(lambda: redis("LLEN", "jobs:queue") == 2, 10, "the delay to pass")
    assert pending_keys(redis) == [keys[1], keys[0]]


NESTED = '[{"value": "a", "x": [1]}]'
ERRORS = [
    # (body, status, reason)
    (b"", 400, "malformed JSON"),
    (b"not json", 400, "malformed JSON"),
    (b'{"value": "a"}', 400, "malformed JSON"),
    (b'"a"', 400, "malformed JSON"),
    (b"[NaN]", 400, "malformed JSON"),
    (b'[{"value": "a", "eta": Infinity}]', 400, "malformed JSON"),
    (b'[{"value": "a", "eta": -Infinity}]', 400, "malformed JSON"),
    (b'[{"value": "a", "eta": 1e400}]', 400, "malformed JSON"),
    (NESTED.encode(), 400, "malformed JSON"),
    (b'[{"value": {"inner": "a"}}]', 400, "malformed JSON"),
    (b'[[["a"]]]', 400, "malformed JSON"),
    (b'["a", {"value": "b", "ttl": 9007199254740993}]', 400, "malformed JSON"),
    (b'["\xff"]', 400, "malformed JSON"),
    (b'\xef\xbb\xbf["a"]', 400, "malformed JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "malformed JSON"),
    (b"[]", 400, "invalid argument: messages"),
    (b"[1]", 400, "invalid argument: messages"),
    (b"[null]", 400, "invalid argument: messages"),
    (b'["a", true]', 400, "invalid argument: messages"),
    (b'[["a"]]', 400, "invalid argument: messages"),
    (json.dumps(["x"] * 101).encode(), 400, "too many messages"),
    (b'[{"ttl": 5}]', 400, "invalid argument: messages[0].value"),
    (b'["ok", {"value": 5}]', 400, "invalid argument: messages[1].value"),
    (b'["ok", {"value": null}]', 400, "invalid argument: messages[1].value"),
    (b'["\\ud800"]', 400, "invalid argument: messages[0].value"),
    (b'["a", "b", "\\udfff"]', 400, "invalid argument: messages[2].value"),  # all strings
    (b'[{"value": "a", "ttl": 0}]', 400, "invalid argument: messages[0].ttl"),
    (b'[{"value": "a", "ttl": 2147483648}]', 400, "invalid argument: messages[0].ttl"),
    (b'[{"value": "a", "ttl": "5"}]', 400, "invalid argument: messages[0].ttl"),
    (b'[{"value": "a", "ttl": 5.0}]', 400, "invalid argument: messages[0].ttl"),
    (b'[{"value": "a", "ttl": true}]', 400, "invalid argument: messages[0].ttl"),
    (b'[{"value": "a", "delay": -1}]', 400, "invalid argument: messages[0].delay"),
    (b'[{"value": "a", "delay": 2592001}]', 400, "invalid argument: messages[0].delay"),
    (b'[{"value": "a", "delay": 1.5}]', 400, "invalid argument: messages[0].delay"),
    (b'[{"value": "a", "eta": -1}]', 400, "invalid argument: messages[0].eta"),
    (b'[{"value": "a", "eta": "1"}]', 400, "invalid argument: messages[0].eta"),
    (b'[{"value": "a", "eta": false}]', 400, "invalid argument: messages[0].eta"),
    (b'[{"value": "a", "eta": 1e300}]', 400, "invalid argument: messages[0].eta"),
    (b'[{"value": "a", "eta": 1, "delay": 1}]', 400, "invalid argument: messages[0].eta"),
    (b'[{"value": "a", "priority": 10}]', 400, "invalid argument: messages[0].priority"),
    (b'[{"value": "a", "priority": -1}]', 400, "invalid argument: messages[0].priority"),
    (b'[{"value": "a", "priority": 1.0}]', 400, "invalid argument: messages[0].priority"),
    # the first bad field of the first bad item, fields in the order value, ttl, delay, eta,
    # priority
    (b'[{"ttl": 0, "priority": 10}]', 400, "invalid argument: messages[0].value"),
    (b'[{"value": "a", "priority": 10, "ttl": 0}]', 400, "invalid argument: messages[0].ttl"),
    (b'[{"value": "a", "priority": 10, "delay": -1}]', 400,
     "invalid argument: messages[0].delay"),
    (b'["a", {"value": "b", "ttl": 0}, {"value": 5}]', 400,
     "invalid argument: messages[1].ttl"),
    # the type of every item comes before the count, the count before the fields
    (json.dumps([{"value": "a", "ttl": 0}] * 101).encode(), 400, "too many messages"),
    (json.dumps(["x"] * 101 + [5]).encode(), 400, "invalid argument: messages"),
    # checked by the add itself, against Redis's state, before its first write
    (b'["ok", "far too long"]', 413, "message too large"),
    (b'["ok", {"value": "x", "eta": 4102444800}]', 400, "invalid argument: messages[1].eta"),
]


@pytest.mark.parametrize("body,status,reason", ERRORS,
                         ids=[f"{e[0][:40]!r} {e[2]}" for e in ERRORS])
def test_error_rows_write_nothing(H, redis, busy, body, status, reason):
    reply = batch(H, body)
    assert (reply.status, reply.body) == (status, json.dumps({"error": reason}).encode())
    assert reply.header("Content-Type") == "application/json"
    assert snapshot(redis) == busy


@pytest.mark.parametrize("path,headers,status,reason", [
    ("/batch/", None, 400, "invalid queue name"),
    ("/batch/a%20b", None, 400, "invalid queue name"),
    ("/batch/QUEUESET", None, 400, "invalid queue name"),
    ("/batch/jobs?dedup=a%20b", None, 400, "invalid argument: dedup"),
    ("/batch/jobs?dedup=ok", {"Idempotency-Key": "a b"}, 400, "invalid argument: dedup"),
    ("/batch/jobs?dedup=k1", None, 422, "idempotency key reused"),
    ("/batch/jobs", {"Idempotency-Key": "k1"}, 422, "idempotency key reused"),
], ids=lambda v: str(v))
def test_name_and_key_errors_write_nothing(H, redis, busy, path, headers, status, reason):
    reply = batch(H, ["other"], path, headers)
    assert (reply.status, reply.json) == (status, {"error": reason})
    assert snapshot(redis) == busy


def test_the_body_is_checked_before_the_idempotency_key(H, redis, busy):
    reply = batch(H, b"[]", "/batch/jobs?dedup=a%20b")
    assert (reply.status, reply.json) == (400, {"error": "invalid argument: messages"})


def test_form_bodies_are_not_arguments(H, redis):
    reply = request(H, "POST", "/batch/jobs", body="dedup=x",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (reply.status, reply.json) == (400, {"error": "malformed JSON"})
    assert redis("KEYS", "*") == []


def test_100_messages_are_accepted_by_default(H, redis):
    keys = keys_of(batch(H, [str(n) for n in range(100)]))
    assert keys == [f"jobs:{n}" for n in range(1, 101)]
    assert redis("LLEN", "jobs:queue") == 100


@pytest.mark.parametrize("queue", ["a,b", "x,y:2,"])
def test_a_repeated_batch_on_a_queue_whose_name_holds_a_comma_answers_the_same_keys(H, redis,
                                                                                   queue):
    first = batch(H, ["a", "b", "c"], f"/batch/{queue}?dedup=k")
    assert keys_of(first, queue) == [f"{queue}:{n}" for n in (1, 2, 3)]
    again = batch(H, ["a", "b", "c"], f"/batch/{queue}?dedup=k")
    assert (again.body, again.header("Idempotent-Replayed")) == (first.body, "true")


def test_a_repeated_batch_is_answered_from_the_stored_keys(H, redis):
    first = batch(H, ["a", {"value": "b", "priority": 1}], "/batch/jobs?dedup=b-1")
    assert keys_of(first) == ["jobs:1", "jobs:2"]
    assert first.header("Idempotent-Replayed") is None
    state = snapshot(redis)
    for path, headers in (("/batch/jobs?dedup=b-1", None),
                          ("/batch/jobs", {"Idempotency-Key": '"b-1"'}),
                          ("/batch/jobs?dedup=other", {"Idempotency-Key": "b-1"})):
        again = batch(H, ["a", {"value": "b", "priority": 1}], path, headers)
        assert (again.status, again.body) == (first.status, first.body)
        assert again.header("Idempotent-Replayed") == "true"
    assert snapshot(redis) == state
    # a single add is another route: the same key and value are another request
    reply = post(H, "/q/jobs", {"value": "a", "dedup": "b-1"})
    assert (reply.status, reply.json) == (422, {"error": "idempotency key reused"})
    # and a batch of one is not the single add it resembles
    assert post(H, "/q/jobs", {"value": "a", "dedup": "single"}).status == 200
    reply = batch(H, ["a"], "/batch/jobs?dedup=single")
    assert (reply.status, reply.json) == (422, {"error": "idempotency key reused"})
    assert snapshot(redis) != state  # the single add, and nothing else
    assert redis("GET", "jobs:UUID") == "3"


@pytest.mark.parametrize("other", [["a"], ["a", "b", "c"], ["b", "a"], ["a", {"value": "c"}],
                                   [{"value": "a", "ttl": 5}, "b"],
                                   ["a", {"value": "b", "priority": 0}]],
                         ids=lambda o: json.dumps(o))
def test_any_other_batch_under_the_same_key_is_422(H, redis, other):
    keys_of(batch(H, ["a", "b"], "/batch/jobs?dedup=k"))
    state = snapshot(redis)
    reply = batch(H, other, "/batch/jobs?dedup=k")
    assert (reply.status, reply.json) == (422, {"error": "idempotency key reused"})
    assert snapshot(redis) == state


def test_a_string_item_and_an_object_with_only_its_value_are_the_same_request(H, redis):
    keys_of(batch(H, ["a", {"value": "b", "ttl": None}], "/batch/jobs?dedup=k"))
    again = batch(H, [{"value": "a", "other": 1}, "b"], "/batch/jobs?dedup=k")
    assert again.header("Idempotent-Replayed") == "true"


def test_the_other_methods_and_paths(H, redis):
    for method in ("GET", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"):
        reply = request(H, method, "/batch/jobs")
        assert (reply.status, reply.header("Allow")) == (405, "POST"), method
    assert request(H, "POST", "/batch", body="[]").status == 404
    assert request(H, "POST", "/batchjobs", body="[]").status == 404
    assert redis("KEYS", "*") == []


@pytest.fixture(scope="module")
def small_batches(redis_proc):
    server = ServerProcess(redis_proc.port, "--max-batch", "3", "--max-body", "200").start()
    yield server
    server.stop()


def test_max_batch_and_max_body_bound_a_batch(small_batches, redis):
    H = small_batches.url
    assert keys_of(batch(H, ["a", "b", "c"])) == ["jobs:1", "jobs:2", "jobs:3"]
    reply = batch(H, ["a", "b", "c", "d"])
    assert (reply.status, reply.json) == (400, {"error": "too many messages"})
    reply = batch(H, ["x" * 200])
    assert (reply.status, reply.json) == (413, {"error": "request body too large"})
    assert redis("GET", "jobs:UUID") == "3"


def test_max_batch_of_1000_accepts_1000(redis_proc, redis):
    server = ServerProcess(redis_proc.port, "--max-batch", "1000").start()
    try:
        keys = keys_of(batch(server.url, [str(n) for n in range(1000)]))
        assert keys[0] == "jobs:1" and keys[-1] == "jobs:1000"
        reply = batch(server.url, [str(n) for n in range(1001)])
        assert (reply.status, reply.json) == (400, {"error": "too many messages"})
    finally:
        server.stop()


def test_the_collectd_plugin_serves_batches_with_its_own_max_batch(redis_proc, redis):
    server = ServerProcess(redis_proc.port, "--max-batch", "2", plugin="collectd").start()
    try:
        assert keys_of(batch(server.url, ["a", "b"])) == ["jobs:1", "jobs:2"]
        reply = batch(server.url, ["a", "b", "c"])
        assert (reply.status, reply.json) == (400, {"error": "too many messages"})
    finally:
        server.stop()


@pytest.mark.parametrize("value", ["0", "1001", "x"])
def test_max_batch_out_of_range_is_a_usage_error(value):
    from twisted.python import usage

    from restmq.tap.restmq import Options
    with pytest.raises(usage.UsageError, match="--max-batch"):
        Options().parseOptions(["--max-batch", value])


def test_without_redis_a_batch_is_503_and_a_bad_one_400():
    redis = RedisProcess().start()
    server = ServerProcess(redis.port)
    try:
        server.start()
        assert keys_of(batch(server.url, ["a"])) == ["jobs:1"]
        redis.stop()
        wait_until(lambda: batch(server.url, ["a"], headers=None).status == 503, 20,
                   "a 503 once Redis is gone", interval=0.1)
        reply = batch(server.url, ["a"], "/batch/jobs?dedup=k")
        assert (reply.status, reply.json) == (503, {"error": "redis unavailable"})
        reply = batch(server.url, b"[]")
        assert (reply.status, reply.json) == (400, {"error": "invalid argument: messages"})
    finally:
        server.stop()
        redis.stop()
    assert "Traceback" not in server.final_log, server.final_log
