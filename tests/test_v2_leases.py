"""Leases over real HTTP (docs/http-api.md#leases): `/claim/`, `/ack/`, `/extend/`, `/release/`
and `/redrive/` against a real server and Redis, every reply pinned with the Redis state it
leaves; receipts that are stale (acked, expired and reclaimed, of another delivery) are refused
one by one. Time passes on Redis's clock: leases of 1 s and a bounded poll of Redis, no sleeps."""
from __future__ import annotations

import json
import re

from tests.http_client import post, request
from tests.util import redis_ms, snapshot, v2_json, wait_until

RECEIPT = re.compile(r"(\d+)\.(\d+)\.([0-9a-f]{16})\Z")


def add(H, queue: str, *values: str) -> None:
    for value in values:
        assert post(H, f"/q/{queue}", {"value": value}).status == 200


def claim(H, queue: str, **form) -> dict:
    return v2_json(post(H, f"/claim/{queue}", {k: str(v) for k, v in form.items()} or None))


def receipts(claimed: dict) -> list[str]:
    return [m["receipt"] for m in claimed["messages"]]


def settle(H, route: str, queue: str, receipt_list, **form) -> dict:
    form = {"receipt": ",".join(receipt_list), **{k: str(v) for k, v in form.items()}}
    return v2_json(post(H, f"/{route}/{queue}", form))


def configure(H, queue: str, **attributes) -> None:
    v2_json(post(H, f"/config/{queue}", {k: str(v) for k, v in attributes.items()}))


def requeued(redis, queue: str, pending: int = 1):
    """Wait until the ticks of the server gave every lapsed lease of `queue` back: nothing in
    flight and `pending` messages waiting."""
    wait_until(lambda: redis("ZCARD", f"{queue}:inflight") == 0
               and redis("LLEN", f"{queue}:queue") == pending, 10, f"the leases of {queue} lapse")


# -- claim -------------------------------------------------------------------------------------


def test_claim_leases_the_oldest_messages_under_one_token(H, redis):
    add(H, "jobs", "a", "b", "c")
    before = redis_ms(redis)
    body = claim(H, "jobs", limit=2)
    after = redis_ms(redis)
    assert set(body) == {"queue", "messages"} and body["queue"] == "jobs"
    messages = body["messages"]
    assert [(m["key"], m["value"], m["deliveries"]) for m in messages] == [
        ("jobs:1", "a", 1), ("jobs:2", "b", 1)]
    tokens = set()
    for number, message in enumerate(messages, 1):
        assert set(message) == {"key", "value", "receipt", "deliveries", "lease_until"}
        n, c, token = RECEIPT.match(message["receipt"]).groups()
        assert (int(n), int(c)) == (number, 1)
        tokens.add(token)
        # The default lease is 30 s, on Redis's clock, in seconds with milliseconds.
        until_ms = round(message["lease_until"] * 1000)
        assert before + 30000 <= until_ms <= after + 30000
        assert int(redis("ZSCORE", "jobs:inflight", message["key"])) == until_ms
        assert redis("HGET", "jobs:deliveries", message["key"]) == f"1.{token}"
        assert redis("GET", message["key"]) == message["value"]  # held, not removed
    assert len(tokens) == 1  # one token per request
    assert redis("LRANGE", "jobs:queue", 0, -1) == ["jobs:3"]
    assert int(float(redis("ZSCORE", "DUESET", "jobs"))) <= after + 30000


def test_claim_answers_what_is_there_without_filling_limit(H, redis):
    add(H, "jobs", "a", "b")
    body = claim(H, "jobs", limit=100)
    assert [m["key"] for m in body["messages"]] == ["jobs:1", "jobs:2"]


def test_claim_of_an_empty_queue_is_204_and_writes_nothing(H, redis):
    # With wait > 0 the claim waits first (tests/test_waiters.py); then the same 204.
    for form in (None, {"wait": "0"}, {"wait": "0", "limit": "5"}, {"wait": "1"}):
        reply = post(H, "/claim/jobs", form)
        assert (reply.status, reply.body) == (204, b"")
        assert reply.header("Content-Type") is None and reply.header("Content-Length") is None
    assert redis("KEYS", "*") == []


def test_claim_lease_from_the_argument_then_the_configuration(H, redis):
    configure(H, "jobs", lease=12)
    add(H, "jobs", "a", "b")
    for form, seconds in (({}, 12), ({"lease": 7}, 7)):
        before = redis_ms(redis)
        [message] = claim(H, "jobs", **form)["messages"]
        after = redis_ms(redis)
        assert before + seconds * 1000 <= round(message["lease_until"] * 1000) \
            <= after + seconds * 1000, form


def test_claimed_messages_are_not_pending_and_a_stopped_queue_still_claims(H, redis):
    add(H, "jobs", "a")
    assert post(H, "/control/jobs", {"status": "stop"}).status == 200
    [message] = claim(H, "jobs")["messages"]
    assert message["key"] == "jobs:1"
    assert request(H, "GET", "/q/jobs").status == 204  # in flight: no legacy get sees it
    assert v2_json(request(H, "GET", "/info/jobs"))["inflight"] == 1


def test_claim_ignores_callback(H, redis):
    add(H, "jobs", "a")
    body = v2_json(post(H, "/claim/jobs?callback=cb", None))
    assert body["messages"][0]["key"] == "jobs:1"
    add(H, "jobs", "b")
    body = v2_json(post(H, "/claim/jobs?callback=1x", None))  # no JSONP: not even checked
    assert body["messages"][0]["key"] == "jobs:2"


# -- ack ---------------------------------------------------------------------------------------


def test_ack_retires_the_message(H, redis):
    add(H, "jobs", "a", "b")
    [r1, r2] = receipts(claim(H, "jobs", limit=2))
    body = settle(H, "ack", "jobs", [r1])
    assert body == {"queue": "jobs", "acked": [r1], "stale": []}
    assert redis("ZRANGE", "jobs:inflight", 0, -1) == ["jobs:2"]
    assert redis("HGET", "jobs:deliveries", "jobs:1") is None
    # Like a hard get, the value stays readable by key for the retention period.
    assert redis("GET", "jobs:1") == "a"
    assert 0 < redis("TTL", "jobs:1") <= 3600
    assert settle(H, "ack", "jobs", [r2]) == {"queue": "jobs", "acked": [r2], "stale": []}
    for key in ("jobs:inflight", "jobs:deliveries", "jobs:queue"):
        assert redis("EXISTS", key) == 0, key


def test_ack_of_an_acked_receipt_is_stale_and_changes_nothing(H, redis):
    add(H, "jobs", "a")
    [r1] = receipts(claim(H, "jobs"))
    settle(H, "ack", "jobs", [r1])
    before = snapshot(redis)
    assert settle(H, "ack", "jobs", [r1]) == {"queue": "jobs", "acked": [], "stale": [r1]}
    assert settle(H, "ack", "jobs", [r1, r1]) == {"queue": "jobs", "acked": [],
                                                   "stale": [r1, r1]}
    assert snapshot(redis) == before


def test_a_current_receipt_given_twice_in_one_ack_is_acked_once(H, redis):
    add(H, "jobs", "a", "b")
    [r1, r2] = receipts(claim(H, "jobs", limit=2))
    assert settle(H, "ack", "jobs", [r1, r2, r1]) == {"queue": "jobs", "acked": [r1, r2],
                                                       "stale": [r1]}
    for key in ("jobs:inflight", "jobs:deliveries", "jobs:queue"):
        assert redis("EXISTS", key) == 0, key


def stale_receipts(current: str) -> list[str]:
    """Receipts that name no current lease, given a current one: another delivery of the
    same message (other token, other count), a message this claim did not take, and texts
    that do not parse."""
    n, c, token = RECEIPT.match(current).groups()
    other = "0123456789abcdef" if token != "0123456789abcdef" else "fedcba9876543210"
    return [f"{n}.{c}.{other}", f"{n}.{int(c) + 1}.{token}", f"{n}.{int(c) - 1}.{token}",
            f"{int(n) + 10}.{c}.{token}", f"{n}.{c}", "x", f"{n}.{c}.{token.upper()}",
            f" {current}", f"{current} "]


def test_every_settle_route_judges_each_receipt_on_its_own(H, redis):
    add(H, "jobs", "a", "b", "c")
    [r1, r2, r3] = receipts(claim(H, "jobs", limit=3))
    bad = stale_receipts(r1)
    before = snapshot(redis)
    # Only stale receipts: every route answers them so and writes nothing.
    assert settle(H, "ack", "jobs", bad) == {"queue": "jobs", "acked": [], "stale": bad}
    assert settle(H, "extend", "jobs", bad, lease=60) == {"queue": "jobs", "extended": [],
                                                          "stale": bad}
    assert settle(H, "release", "jobs", bad) == {"queue": "jobs", "released": [],
                                                 "dead_lettered": [], "stale": bad}
    assert snapshot(redis) == before
    # Mixed with current ones: each gets its own answer, in the order given.
    body = settle(H, "extend", "jobs", [bad[0], r2, bad[1]], lease=60)
    assert [e["receipt"] for e in body["extended"]] == [r2]
    assert body["stale"] == [bad[0], bad[1]]
    body = settle(H, "release", "jobs", [r3, bad[2]])
    assert (body["released"], body["stale"]) == ([r3], [bad[2]])
    body = settle(H, "ack", "jobs", [bad[3], r1, r2, "", r3])
    assert body == {"queue": "jobs", "acked": [r1, r2], "stale": [bad[3], "", r3]}


def test_a_receipt_of_an_earlier_delivery_is_stale_after_the_lease_lapsed(H, redis):
    """Expired and reclaimed: the late worker's receipt no longer acks the message another
    worker now holds."""
    add(H, "jobs", "a")
    [first] = claim(H, "jobs", lease=1)["messages"]
    requeued(redis, "jobs")
    [second] = claim(H, "jobs")["messages"]
    assert (second["key"], second["deliveries"]) == ("jobs:1", 2)
    assert RECEIPT.match(second["receipt"]).group(2) == "2"
    before = snapshot(redis)
    for route, extra in (("ack", {}), ("extend", {"lease": 60}), ("release", {})):
        body = settle(H, route, "jobs", [first["receipt"]], **extra)
        assert body["stale"] == [first["receipt"]], route
    assert snapshot(redis) == before
    assert settle(H, "ack", "jobs", [second["receipt"]])["acked"] == [second["receipt"]]


def test_a_lapsed_lease_comes_back_next_in_line_with_its_count(H, redis):
    add(H, "jobs", "a", "b")
    [first] = claim(H, "jobs", lease=1)["messages"]
    requeued(redis, "jobs", pending=2)
    assert redis("HGET", "jobs:deliveries", "jobs:1") == "1"  # the count stays, the lease goes
    [again] = claim(H, "jobs")["messages"]
    assert (again["key"], again["value"], again["deliveries"]) == ("jobs:1", "a", 2)
    assert again["receipt"] != first["receipt"]


# -- extend ------------------------------------------------------------------------------------


def test_extend_moves_the_deadline_either_way(H, redis):
    add(H, "jobs", "a")
    [r1] = receipts(claim(H, "jobs"))
    before = redis_ms(redis)
    body = settle(H, "extend", "jobs", [r1], lease=3600)
    after = redis_ms(redis)
    assert set(body) == {"queue", "extended", "stale"} and body["stale"] == []
    [extension] = body["extended"]
    assert set(extension) == {"receipt", "lease_until"} and extension["receipt"] == r1
    until_ms = round(extension["lease_until"] * 1000)
    assert before + 3600000 <= until_ms <= after + 3600000
    assert int(redis("ZSCORE", "jobs:inflight", "jobs:1")) == until_ms
    # Shorter than before is allowed: the lease then lapses after 1 s.
    settle(H, "extend", "jobs", [r1], lease=1)
    requeued(redis, "jobs")
    assert settle(H, "ack", "jobs", [r1])["stale"] == [r1]


# -- release -----------------------------------------------------------------------------------


def test_release_puts_the_message_next_in_line(H, redis):
    add(H, "jobs", "a", "b")
    configure(H, "jobs", delay=100)  # a configured delay is for adds only
    [r1] = receipts(claim(H, "jobs"))
    body = settle(H, "release", "jobs", [r1])
    assert body == {"queue": "jobs", "released": [r1], "dead_lettered": [], "stale": []}
    assert redis("EXISTS", "jobs:inflight") == 0
    assert redis("HGET", "jobs:deliveries", "jobs:1") == "1"
    assert redis("LRANGE", "jobs:queue", 0, -1) == ["jobs:2", "jobs:1"]  # consumed from the right
    [again] = claim(H, "jobs")["messages"]
    assert (again["key"], again["deliveries"]) == ("jobs:1", 2)


def test_messages_released_together_come_back_in_their_order(H, redis):
    # A worker that gives back its whole claim expects the queue as it was: the oldest next.
    add(H, "jobs", "a", "b", "c", "d")
    claimed = claim(H, "jobs", limit=3)
    assert [m["key"] for m in claimed["messages"]] == ["jobs:1", "jobs:2", "jobs:3"]
    assert settle(H, "release", "jobs", receipts(claimed))["released"] == receipts(claimed)
    again = claim(H, "jobs", limit=4)["messages"]
    assert [(m["key"], m["deliveries"]) for m in again] == \
        [("jobs:1", 2), ("jobs:2", 2), ("jobs:3", 2), ("jobs:4", 1)]


def test_release_with_a_delay_waits_then_comes_back(H, redis):
    add(H, "jobs", "a", "b")
    [r1, r2] = receipts(claim(H, "jobs", limit=2))
    before = redis_ms(redis)
    assert settle(H, "release", "jobs", [r1], delay=60)["released"] == [r1]
    after = redis_ms(redis)
    assert before + 60000 <= int(redis("ZSCORE", "jobs:delayed", "jobs:1")) <= after + 60000
    info = v2_json(request(H, "GET", "/info/jobs"))
    assert (info["pending"], info["inflight"], info["delayed"]) == (0, 1, 1)
    assert post(H, "/claim/jobs").status == 204
    assert settle(H, "release", "jobs", [r2], delay=1)["released"] == [r2]
    requeued(redis, "jobs")  # the tick makes jobs:2 pending again once its second is up
    [again] = claim(H, "jobs")["messages"]
    assert (again["key"], again["deliveries"]) == ("jobs:2", 2)
    assert redis("ZRANGE", "jobs:delayed", 0, -1) == ["jobs:1"]


def test_release_of_the_last_attempt_dead_letters(H, redis):
    configure(H, "jobs", max_attempts=1, dead_letter="jobs.dead")
    add(H, "jobs", "a")
    [r1] = receipts(claim(H, "jobs"))
    body = settle(H, "release", "jobs", [r1])
    assert body == {"queue": "jobs", "released": [], "dead_lettered": [r1], "stale": []}
    assert redis("EXISTS", "jobs:1") == 0
    assert redis("LRANGE", "jobs.dead:queue", 0, -1) == ["jobs.dead:1"]
    assert redis("GET", "jobs.dead:1") == "a"
    origin = json.loads(redis("HGET", "jobs.dead:origin", "jobs.dead:1"))
    assert {k: origin[k] for k in ("queue", "key", "deliveries", "reason")} == {
        "queue": "jobs", "key": "jobs:1", "deliveries": 1, "reason": "released"}
    assert "jobs.dead" in redis("SMEMBERS", "QUEUESET")


# -- redrive -----------------------------------------------------------------------------------


def dead_letters(H, redis, count: int) -> None:
    """`count` messages of `jobs` dead-lettered into `jobs.dead` after one attempt each."""
    configure(H, "jobs", max_attempts=1, dead_letter="jobs.dead")
    add(H, "jobs", *[f"v{i}" for i in range(1, count + 1)])
    body = settle(H, "release", "jobs", receipts(claim(H, "jobs", limit=count)))
    assert len(body["dead_lettered"]) == count


def test_redrive_restores_the_original_keys(H, redis):
    dead_letters(H, redis, 2)
    body = v2_json(post(H, "/redrive/jobs.dead"))
    assert body == {"queue": "jobs.dead",
                    "moved": [{"from": "jobs.dead:1", "to": "jobs:1"},
                              {"from": "jobs.dead:2", "to": "jobs:2"}],
                    "remaining": 0, "stopped": None}
    assert redis("LRANGE", "jobs:queue", 0, -1) == ["jobs:2", "jobs:1"]
    assert redis("EXISTS", "jobs.dead:origin") == 0
    # Redriven messages start again at count 0.
    [again] = claim(H, "jobs")["messages"]
    assert (again["key"], again["value"], again["deliveries"]) == ("jobs:1", "v1", 1)


def test_redrive_to_another_queue_with_a_limit(H, redis):
    dead_letters(H, redis, 3)
    body = v2_json(post(H, "/redrive/jobs.dead", {"to": "retry", "limit": "2"}))
    assert body == {"queue": "jobs.dead",
                    "moved": [{"from": "jobs.dead:1", "to": "retry:1"},
                              {"from": "jobs.dead:2", "to": "retry:2"}],
                    "remaining": 1, "stopped": None}
    assert redis("LRANGE", "retry:queue", 0, -1) == ["retry:2", "retry:1"]
    assert redis("GET", "retry:1") == "v1"


def test_redrive_stops_at_a_message_without_origin(H, redis):
    add(H, "jobs.dead", "put here by hand")
    body = v2_json(post(H, "/redrive/jobs.dead"))
    assert body == {"queue": "jobs.dead", "moved": [], "remaining": 1, "stopped": "no origin"}
    assert redis("LRANGE", "jobs.dead:queue", 0, -1) == ["jobs.dead:1"]
    body = v2_json(post(H, "/redrive/jobs.dead", {"to": "jobs"}))
    assert body == {"queue": "jobs.dead", "moved": [{"from": "jobs.dead:1", "to": "jobs:1"}],
                    "remaining": 0, "stopped": None}


def test_redrive_of_an_empty_queue_moves_nothing(H, redis):
    body = v2_json(post(H, "/redrive/nothing"))
    assert body == {"queue": "nothing", "moved": [], "remaining": 0, "stopped": None}
    assert redis("KEYS", "*") == []
