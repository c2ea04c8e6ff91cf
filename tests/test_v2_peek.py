"""`GET /peek/<q>` over real HTTP (docs/http-api.md#peek): pending messages in the order
consumers would get them (priority levels first, then oldest first), pages by `limit` and
`after` with `next`, dead entries skipped and never removed, in-flight and delayed messages
left out, `--max-body` obeyed by showing fewer; every error row; and no write at all."""
from __future__ import annotations

import json

import pytest

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import get, post, request
from tests.util import snapshot, v2_json, wait_until


def add(H, value: str, queue: str = "jobs", **form) -> str:
    reply = post(H, f"/q/{queue}", {"value": value, **{k: str(v) for k, v in form.items()}})
    assert reply.status == 200, reply.body
    return reply.body.decode().strip()


def peek(H, queue: str = "jobs", **args) -> dict:
    query = "&".join(f"{k}={v}" for k, v in args.items())
    return v2_json(get(H, f"/peek/{queue}" + (f"?{query}" if query else "")))


def entries(body: dict) -> list[tuple[str, str, int]]:
    assert set(body) == {"queue", "messages", "next"}
    for message in body["messages"]:
        assert set(message) == {"key", "value", "priority"}
    return [(m["key"], m["value"], m["priority"]) for m in body["messages"]]


@pytest.fixture
def mixed(H, redis):
    """jobs:1 (0), jobs:2 (3), jobs:3 (9), jobs:4 (3), jobs:5 (0), jobs:6 (0)."""
    for value, priority in (("a", 0), ("b", 3), ("c", 9), ("d", 3), ("e", 0), ("f", 0)):
        add(H, value, priority=priority)


ORDER = [("jobs:3", "c", 9), ("jobs:2", "b", 3), ("jobs:4", "d", 3), ("jobs:1", "a", 0),
         ("jobs:5", "e", 0), ("jobs:6", "f", 0)]


def test_an_empty_or_unknown_queue_shows_nothing_and_writes_nothing(H, redis):
    assert peek(H) == {"queue": "jobs", "messages": [], "next": None}
    assert redis("KEYS", "*") == []


def test_peek_shows_what_consumers_would_get_in_their_order(H, redis, mixed):
    state = snapshot(redis)
    body = peek(H)
    assert body["queue"] == "jobs" and body["next"] is None
    assert entries(body) == ORDER
    assert snapshot(redis) == state  # no read counted, nothing moved
    assert [get(H, "/q/jobs").json["key"] for _ in range(6)] == [k for k, _, _ in ORDER]


def test_pages_follow_next_through_levels_and_the_list(H, redis, mixed):
    pages, after = [], None
    while True:
        body = peek(H, limit=2, **({"after": after} if after else {}))
        pages.append(entries(body))
        after = body["next"]
        if after is None:
            break
        assert after == body["messages"][-1]["key"]
    assert pages == [ORDER[0:2], ORDER[2:4], ORDER[4:6]]
    # a page that ends exactly at the last message says so: no `next`
    assert peek(H, limit=6)["next"] is None
    assert peek(H, limit=5)["next"] == "jobs:5"
    assert peek(H, after="jobs:6") == {"queue": "jobs", "messages": [], "next": None}


def test_the_default_limit_is_10_and_100_is_allowed(H, redis):
    keys = []
    for start in (0, 60):
        body = json.dumps([str(n) for n in range(start, start + 60)])
        keys += v2_json(request(H, "POST", "/batch/jobs", body=body))["keys"]
    body = peek(H)
    assert [m["key"] for m in body["messages"]] == keys[:10]
    assert body["next"] == keys[9]
    body = peek(H, limit=100)
    assert len(body["messages"]) == 100 and body["next"] == keys[99]
    body = peek(H, limit=100, after=keys[99])
    assert [m["key"] for m in body["messages"]] == keys[100:]
    assert body["next"] is None


def test_paging_goes_on_while_messages_are_added_and_taken(H, redis, mixed):
    body = peek(H, limit=4)
    assert body["next"] == "jobs:1"
    add(H, "g")  # at the head: after the page
    assert get(H, "/q/jobs").json["key"] == "jobs:3"  # before the page: already shown
    assert entries(peek(H, after=body["next"])) == ORDER[4:] + [("jobs:7", "g", 0)]


def test_dead_entries_are_skipped_and_never_removed(H, redis, mixed):
    redis("DEL", "jobs:2", "jobs:5")  # as if their ttl had run out
    state = snapshot(redis)
    assert entries(peek(H)) == [ORDER[0], ORDER[2], ORDER[3], ORDER[5]]
    assert entries(peek(H, limit=2)) == [ORDER[0], ORDER[2]]
    assert peek(H, after="jobs:2", limit=1)["messages"][0]["key"] == "jobs:4"
    assert snapshot(redis) == state
    assert redis("ZRANGE", "jobs:priority", 0, -1) == ["jobs:3", "jobs:2", "jobs:4"]


def test_thousands_of_dead_entries_are_stepped_over_without_removing_one(H, redis):
    live = add(H, "first")
    dead = [f"jobs:{n}" for n in range(2, 3502)]
    for start in range(0, len(dead), 500):
        redis("LPUSH", "jobs:queue", *dead[start:start + 500])
    redis("SET", "jobs:UUID", "3501")
    last = add(H, "last")
    body = peek(H, after=live)
    assert entries(body) == [(last, "last", 0)] and body["next"] is None
    body = peek(H, limit=1)
    assert entries(body) == [(live, "first", 0)] and body["next"] == live
    assert redis("LLEN", "jobs:queue") == 3502


def test_in_flight_and_delayed_messages_are_not_listed(H, redis):
    leased, delayed, pending = add(H, "leased"), add(H, "later", delay=600), add(H, "here")
    claimed = v2_json(post(H, "/claim/jobs", {"lease": "600"}))
    assert claimed["messages"][0]["key"] == leased
    assert entries(peek(H)) == [(pending, "here", 0)]
    for key in (leased, delayed):
        reply = get(H, f"/peek/jobs?after={key}")
        assert (reply.status, reply.json) == (400, {"error": "invalid argument: after"})


def test_values_are_shown_whole_and_escaped(H, redis):
    value = "ü <b>&\"\r\n" + "x" * 5000
    key = add(H, value)
    assert entries(peek(H)) == [(key, value, 0)]
    assert b"<b>" not in get(H, "/peek/jobs").body


def test_callback_is_ignored(H, redis):
    add(H, "a")
    reply = get(H, "/peek/jobs?callback=cb")
    assert v2_json(reply)["messages"][0]["value"] == "a"
    assert get(H, "/peek/jobs?callback=1nvalid").status == 200


@pytest.fixture
def busy(H, redis, mixed):
    redis("DEL", "jobs:5")
    v2_json(post(H, "/claim/jobs", {"lease": "600"}))  # jobs:3 in flight
    add(H, "later", delay=600)
    return snapshot(redis)


ERRORS = [
    ("/peek/jobs?limit=0", "invalid argument: limit"),
    ("/peek/jobs?limit=101", "invalid argument: limit"),
    ("/peek/jobs?limit=x", "invalid argument: limit"),
    ("/peek/jobs?limit=%FF", "invalid argument: limit"),
    ("/peek/jobs?after=jobs", "invalid argument: after"),
    ("/peek/jobs?after=jobs:", "invalid argument: after"),
    ("/peek/jobs?after=jobs:x", "invalid argument: after"),
    ("/peek/jobs?after=jobs:-1", "invalid argument: after"),
    ("/peek/jobs?after=other:1", "invalid argument: after"),
    ("/peek/jobs?after=jobs:1234567890123456", "invalid argument: after"),
    ("/peek/jobs?after=jobs:99", "invalid argument: after"),  # never added
    ("/peek/jobs?after=jobs:3", "invalid argument: after"),  # in flight
    ("/peek/jobs?after=jobs:7", "invalid argument: after"),  # delayed
    ("/peek/jobs?limit=0&after=x", "invalid argument: limit"),
    ("/peek/", "invalid queue name"),
    ("/peek/a%20b", "invalid queue name"),
    ("/peek/x:queue", "invalid queue name"),
]


@pytest.mark.parametrize("path,reason", ERRORS, ids=[e[0] for e in ERRORS])
def test_error_rows_write_nothing(H, redis, busy, path, reason):
    reply = get(H, path)
    assert (reply.status, reply.body) == (400, json.dumps({"error": reason}).encode())
    assert reply.header("Content-Type") == "application/json"
    assert snapshot(redis) == busy


def test_after_a_dead_entry_still_in_the_list_is_accepted(H, redis, busy):
    assert entries(peek(H, after="jobs:5")) == [ORDER[5]]
    assert snapshot(redis) == busy


def test_the_other_methods_and_paths(H, redis):
    for method in ("POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"):
        reply = request(H, method, "/peek/jobs")
        assert (reply.status, reply.header("Allow")) == (405, "GET"), method
    assert get(H, "/peek").status == 404
    assert get(H, "/peekjobs").status == 404


@pytest.fixture(scope="module")
def small_replies(redis_proc):
    server = ServerProcess(redis_proc.port, "--max-body", "300").start()
    yield server
    server.stop()


def test_max_body_is_obeyed_by_showing_fewer(small_replies, redis):
    H = small_replies.url
    keys = [add(H, f"{n}" + "v" * 99) for n in range(5)]
    shown, after = [], None
    while True:
        reply = get(H, "/peek/jobs" + (f"?after={after}" if after else ""))
        assert len(reply.body) <= 300, reply.body
        body = v2_json(reply)
        assert 1 <= len(body["messages"]) < 5
        shown += [m["key"] for m in body["messages"]]
        after = body["next"]
        if after is None:
            break
    assert shown == keys


def test_a_message_larger_than_max_body_is_still_shown_alone(small_replies, redis):
    H = small_replies.url
    big = "b" * 250
    redis("SET", "jobs:1", big)  # as an add with a larger --max-body would have stored it
    redis("LPUSH", "jobs:queue", "jobs:1")
    redis("SET", "jobs:UUID", "1")
    small = add(H, "s")
    body = v2_json(get(H, "/peek/jobs"))
    assert entries(body) == [("jobs:1", big, 0)] and body["next"] == "jobs:1"
    assert entries(peek(H, after="jobs:1")) == [(small, "s", 0)]


def test_without_redis_a_peek_is_503_and_a_bad_one_400():
    redis = RedisProcess().start()
    server = ServerProcess(redis.port)
    try:
        server.start()
        assert peek(server.url)["messages"] == []
        redis.stop()
        wait_until(lambda: get(server.url, "/peek/jobs").status == 503, 20,
                   "a 503 once Redis is gone", interval=0.1)
        reply = get(server.url, "/peek/jobs?after=jobs:1")
        assert (reply.status, reply.json) == (503, {"error": "redis unavailable"})
        reply = get(server.url, "/peek/jobs?limit=0")
        assert (reply.status, reply.json) == (400, {"error": "invalid argument: limit"})
    finally:
        server.stop()
        redis.stop()
    assert "Traceback" not in server.final_log, server.final_log
