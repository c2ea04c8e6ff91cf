"""`POST /pop/<q>` over real HTTP (docs/http-api.md#pop): the reply bytes, the error rows, the
safety lease (`--pop-lease`) that holds the messages until the reply has gone out, the ack
once it has, and the release when the connection is lost first: a client that resets while a
large reply is still being written gets nothing, and nothing is lost."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import termios
from urllib.parse import urlsplit

import pytest

from tests.conftest import SHORT_TIMEOUT, RedisProcess, ServerProcess
from tests.http_client import post, read_head, request
from tests.util import command_calls, redis_ms, snapshot, v2_json, wait_until

BIG = 900_000  # bytes of one value: ten of them are more than both ends' socket buffers


def add(H, queue: str, *values: str) -> None:
    for value in values:
        assert post(H, f"/q/{queue}", {"value": value}).status == 200


def popped(redis, queue: str, keys: list[str]) -> None:
    """Wait until the pop's ack has run: `keys` out of flight, their counts gone, their values
    kept for --consumed-ttl as after a hard get."""
    wait_until(lambda: redis("ZCARD", f"{queue}:inflight") == 0, 10, "the pop's ack")
    assert redis("EXISTS", f"{queue}:deliveries") == 0
    for key in keys:
        assert 0 < redis("TTL", key) <= 3600, key


def unread(sock) -> int:
    """Bytes waiting in this socket's receive queue."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def small_window_connection(url: str) -> socket.socket:
    """A connection whose receive buffer is tiny: a large reply cannot all go out to it."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    return sock


def start_big_pop(url: str, redis, queue: str, count: int, route: str = "pop",
                  query: str = "") -> socket.socket:
    """`count` messages of BIG bytes popped (or claimed) by a client that reads nothing:
    returns once the reply has begun (its first bytes are here) and all of them are leased."""
    sock = small_window_connection(url)
    sock.sendall(f"POST /{route}/{queue}?limit={count}{query} HTTP/1.1\r\nHost: x\r\n"
                 "Content-Length: 0\r\n\r\n".encode())
    wait_until(lambda: unread(sock) > 0 and redis("ZCARD", f"{queue}:inflight") == count, 10,
               "the reply to begin")
    return sock


# -- replies ----------------------------------------------------------------------------------


def test_pop_answers_the_oldest_messages_and_acks_them_once_the_reply_went_out(H, redis):
    add(H, "jobs", "a", "b", "ç")
    reply = post(H, "/pop/jobs", {"limit": "2"})
    assert v2_json(reply) == {"queue": "jobs", "messages": [{"key": "jobs:1", "value": "a"},
                                                            {"key": "jobs:2", "value": "b"}]}
    assert reply.body == (b'{"queue": "jobs", "messages": [{"key": "jobs:1", "value": "a"}, '
                          b'{"key": "jobs:2", "value": "b"}]}')
    assert reply.header("Content-Length") == str(len(reply.body))
    popped(redis, "jobs", ["jobs:1", "jobs:2"])
    assert redis("LRANGE", "jobs:queue", 0, -1) == ["jobs:3"]
    reply = post(H, "/pop/jobs", {"limit": "100"})  # never waits to fill `limit`
    assert reply.body == b'{"queue": "jobs", "messages": [{"key": "jobs:3", "value": "\\u00e7"}]}'
    popped(redis, "jobs", ["jobs:3"])
    assert redis("EXISTS", "jobs:queue") == 0


def test_a_pop_of_100_does_once_what_is_the_same_for_every_message(H, redis):
    """A pop takes its messages from the list, reads their values and delivery counts and
    writes the counts a batch at a time (RPOP with a count, MGET, HMGET, HSET); acked, their
    receipts are checked by one HMGET and their read counts looked at by one EXISTS; their
    records leave the deliveries hash by one HDEL, and the priority and origin hashes, which
    do not exist here, only by a look each (EXISTS). What is left per message is retiring its
    value: one EXPIRE ... LT from Redis 7, TTL and EXPIRE before. Eight commands per message
    were once run for each of these."""
    request(H, "POST", "/batch/jobs", body=json.dumps([str(n) for n in range(100)]))
    redis("CONFIG", "RESETSTAT")
    body = v2_json(post(H, "/pop/jobs", {"limit": "100"}))
    assert [m["value"] for m in body["messages"]] == [str(n) for n in range(100)]
    wait_until(lambda: redis("ZCARD", "jobs:inflight") == 0, 10, "the pop's ack")
    calls = command_calls(redis)
    per_message = 1 if int(redis("INFO", "server").split("redis_version:")[1][0]) >= 7 else 2
    batched = {name: calls.get(name, 0) for name in
               ("rpop", "mget", "hmget", "hset", "hget", "get", "exists", "zpopmin", "zadd",
                "zrem", "hdel")}
    assert batched == {"rpop": 1, "mget": 1, "hmget": 3, "hset": 1, "hget": 0, "get": 0,
                       "exists": 4, "zpopmin": 0, "zadd": 2, "zrem": 1, "hdel": 1}, batched
    inside = sum(n for name, n in calls.items() if name not in ("evalsha", "config", "info"))
    assert inside <= 100 * per_message + 30, calls
    popped(redis, "jobs", [m["key"] for m in body["messages"]])


def test_pop_of_an_empty_queue_is_204_and_writes_nothing(H, redis):
    for form in (None, {"limit": "5"}, {"wait": "0"}):
        reply = post(H, "/pop/jobs", form)
        assert (reply.status, reply.body) == (204, b"")
        assert reply.header("Content-Type") is None and reply.header("Content-Length") is None
        assert reply.header("Cache-Control") == "no-store"
    assert redis("KEYS", "*") == []


def test_pop_ignores_lease_and_callback(H, redis):
    add(H, "jobs", "a", "b")
    body = v2_json(post(H, "/pop/jobs?callback=cb&lease=x", None))
    assert body == {"queue": "jobs", "messages": [{"key": "jobs:1", "value": "a"}]}
    body = v2_json(post(H, "/pop/jobs", {"callback": "1x", "lease": "0"}))
    assert body["messages"] == [{"key": "jobs:2", "value": "b"}]


def test_pop_takes_what_a_claim_left_and_a_claim_what_a_pop_left(H, redis):
    add(H, "jobs", "a", "b")
    claimed = v2_json(post(H, "/claim/jobs"))["messages"]
    assert [m["key"] for m in claimed] == ["jobs:1"]
    assert v2_json(post(H, "/pop/jobs", {"limit": "5"}))["messages"] == [
        {"key": "jobs:2", "value": "b"}]  # jobs:1 is in flight: not for a pop
    assert post(H, "/pop/jobs").status == 204


ERRORS = [
    ({"limit": "0"}, "invalid argument: limit"),
    ({"limit": "101"}, "invalid argument: limit"),
    ({"limit": "x"}, "invalid argument: limit"),
    ({"wait": "21"}, "invalid argument: wait"),
    ({"wait": "-1"}, "invalid argument: wait"),
    ({"wait": "1.5"}, "invalid argument: wait"),
    ({"limit": "0", "wait": "99"}, "invalid argument: limit"),  # limit is checked first
]


@pytest.mark.parametrize("form,reason", ERRORS, ids=[r + str(f) for f, r in ERRORS])
def test_bad_arguments_are_400_and_pop_nothing(H, redis, form, reason):
    add(H, "jobs", "a")
    before = snapshot(redis)
    reply = post(H, "/pop/jobs", form)
    assert (reply.status, reply.json) == (400, {"error": reason})
    assert reply.header("Content-Type") == "application/json"
    assert snapshot(redis) == before


@pytest.mark.parametrize("path", ["/pop/", "/pop/a%20b", "/pop/QUEUESET", "/pop/x:queue"])
def test_bad_names_are_400(H, redis, path):
    reply = post(H, path, {"limit": "0"})  # the name is checked before the arguments
    assert (reply.status, reply.json) == (400, {"error": "invalid queue name"})
    assert redis("KEYS", "*") == []


def test_only_post_pops(H, redis):
    add(H, "jobs", "a")
    before = snapshot(redis)
    for method in ("GET", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"):
        reply = request(H, method, "/pop/jobs")
        assert reply.status == 405, method
        assert reply.header("Allow") == "POST"
        if method != "HEAD":
            assert reply.json == {"error": "method not allowed"}
    for path in ("/pop", "/popjobs"):
        assert (request(H, "POST", path).status, snapshot(redis)) == (404, before)


# -- the safety lease, the ack, the release ----------------------------------------------------


def test_messages_whose_reply_has_not_gone_out_are_held_under_the_pop_lease(redis_proc, redis):
    server = ServerProcess(redis_proc.port, "--pop-lease", "7").start()
    try:
        add(server.url, "big", *["x" * BIG] * 4)
        before = redis_ms(redis)
        sock = start_big_pop(server.url, redis, "big", 4)
        after = redis_ms(redis)
        for n in range(1, 5):
            deadline = int(redis("ZSCORE", "big:inflight", f"big:{n}"))
            assert before + 7000 <= deadline <= after + 7000
        # Still unsent after the pop's own round trips: not acked (a positive marker first:
        # another request on the server was answered meanwhile).
        assert post(server.url, "/q/other", {"value": "v"}).status == 200
        assert redis("ZCARD", "big:inflight") == 4
        sock.settimeout(10)
        status, headers, body = read_head(sock)
        sock.close()
        assert status == 200
        assert [m["key"] for m in json.loads(body)["messages"]] == [f"big:{n}" for n in
                                                                    range(1, 5)]
        popped(redis, "big", [f"big:{n}" for n in range(1, 5)])
    finally:
        server.stop()
    assert "Traceback" not in server.final_log


@pytest.mark.parametrize("route,query", [("pop", ""), ("claim", "&lease=3600")])
def test_a_client_that_resets_mid_reply_gets_its_messages_released_in_order(server, H, redis,
                                                                            route, query):
    """A claim's lease would bring them back an hour later: they come back at once too."""
    add(H, "big", *[f"{n}" * BIG for n in range(10)])
    sock = start_big_pop(H, redis, "big", 10, route, query)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset, with megabytes of the reply still unsent
    wait_until(lambda: redis("ZCARD", "big:inflight") == 0, 10, "the release")
    # Back at the consuming end in their order, each delivery counted, nothing retired.
    assert redis("LRANGE", "big:queue", 0, -1) == [f"big:{n}" for n in range(10, 0, -1)]
    assert sorted(redis("HVALS", "big:deliveries")) == ["1"] * 10
    assert all(redis("TTL", f"big:{n}") == -1 for n in range(1, 11))
    reply = post(H, "/pop/big", {"limit": "2"})
    assert [m["value"][:1] for m in v2_json(reply)["messages"]] == ["0", "1"]
    wait_until(lambda: "the client left before the reply went out; released" in server.log(),
               10, "the log line of the release")


def test_an_ack_that_meets_a_redis_stall_is_tried_again_rather_than_left_to_the_lease():
    """The reply went out: given up on, the ack would leave the messages to their lease, which
    hands them out a second time (the pop lease is 30 s here, Redis stalls for 3)."""
    redis_proc = RedisProcess().start()
    server = ServerProcess(redis_proc.port, *SHORT_TIMEOUT).start()
    redis = redis_proc.client()
    try:
        add(server.url, "big", *["x" * BIG] * 4)
        sock = start_big_pop(server.url, redis, "big", 4)
        os.kill(redis_proc.pid, signal.SIGSTOP)  # the ack will find Redis silent
        try:
            sock.settimeout(10)
            status, _, body = read_head(sock)  # the reply goes out: the ack is sent now
            assert status == 200 and len(json.loads(body)["messages"]) == 4
            wait_until(lambda: "ack failed (redis unavailable)" in server.log(), 15,
                       "the ack to fail on the stall", details=server.log)
        finally:
            os.kill(redis_proc.pid, signal.SIGCONT)
        sock.close()
        popped(redis, "big", [f"big:{n}" for n in range(1, 5)])
        assert redis("LLEN", "big:queue") == 0
    finally:
        server.stop()
        redis.close()
        redis_proc.stop()
    assert "Traceback" not in server.final_log


@pytest.mark.parametrize("route,query", [("pop", ""), ("claim", "&lease=3600")])
def test_a_release_that_meets_a_redis_stall_is_tried_again_rather_than_left_to_the_lease(
        route, query):
    """The client reset mid-reply while Redis stalled: given up on, the release would leave
    the messages in flight until their lease ends, an hour for this claim."""
    redis_proc = RedisProcess().start()
    server = ServerProcess(redis_proc.port, *SHORT_TIMEOUT).start()
    redis = redis_proc.client()
    try:
        add(server.url, "big", *["x" * BIG] * 10)
        sock = start_big_pop(server.url, redis, "big", 10, route, query)
        os.kill(redis_proc.pid, signal.SIGSTOP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, with megabytes of the reply still unsent
            wait_until(lambda: "release failed (redis unavailable)" in server.log(), 15,
                       "the release to fail on the stall", details=server.log)
        finally:
            os.kill(redis_proc.pid, signal.SIGCONT)
        wait_until(lambda: redis("ZCARD", "big:inflight") == 0, 10, "the release")
        assert redis("LRANGE", "big:queue", 0, -1) == [f"big:{n}" for n in range(10, 0, -1)]
    finally:
        server.stop()
        redis.close()
        redis_proc.stop()
    assert "Traceback" not in server.final_log


@pytest.mark.parametrize("version,headers", [("1.1", "Connection: close\r\n"), ("1.0", "")])
def test_a_pop_whose_connection_closes_after_the_reply_is_acked(H, redis, version, headers):
    add(H, "jobs", "a")
    parts = urlsplit(H)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"POST /pop/jobs HTTP/{version}\r\nHost: x\r\n{headers}"
                     "Content-Length: 0\r\n\r\n".encode())
        raw = b""
        while data := sock.recv(65536):  # the server closes after the reply
            raw += data
    assert raw.endswith(b'{"queue": "jobs", "messages": [{"key": "jobs:1", "value": "a"}]}')
    popped(redis, "jobs", ["jobs:1"])
