"""Live consumers that go away at awkward moments must not cost anybody a message: a client that
leaves while its handler waits for Redis, a consumer that reconnects while a batch is in
flight, an HTTP/1.0 stream asking for keep-alive, a second stream request pipelined on the same
connection."""
from __future__ import annotations

import base64
import json
import os
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.comet import CometClient
from tests.http_client import delete, post


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def numsub(redis, queue: str) -> int:
    return redis("PUBSUB", "NUMSUB", f"{queue}:PUBSUB")[1]


def add(url: str, queue: str, value: str) -> str:
    reply = post(url, f"/q/{queue}", {"value": value})
    assert reply.status == 200, reply.body
    return reply.body.decode().strip()


def request_bytes(kind: str, queue: str) -> bytes:
    if kind == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        return (f"GET /ws/{queue} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
    return f"GET /{kind}/{queue} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


@pytest.fixture
def closing():
    """Registers things with a close() method, closed after the test."""
    opened = []
    yield lambda thing: opened.append(thing) or thing
    for thing in reversed(opened):
        thing.close()


# -- 1. a client that leaves while its handler still waits for Redis --------------------------

@pytest.mark.parametrize("policy", ["broadcast", "roundrobin"])
@pytest.mark.parametrize("kind", ["c", "sse", "ws"])
def test_a_consumer_that_leaves_before_registering_takes_no_message(H, redis, kind, policy):
    queue = f"early-{kind}-{policy}"
    assert post(H, f"/p/{queue}", {"policy": policy}).status == 200
    redis("CLIENT", "PAUSE", "800", "ALL")  # the handler's Redis round trip now takes 0.8 s
    parts = urlsplit(H)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as early:
        early.sendall(request_bytes(kind, queue))
        time.sleep(0.1)
    time.sleep(1.5)  # the pause is over: the handler has heard from Redis and gone on
    keys = [add(H, queue, f"m{i}") for i in range(3)]
    # A consumer connecting now finds all three pending: nobody took them meanwhile ...
    late = CometClient(H, queue)
    try:
        assert [m["key"] for m in late.messages(3, timeout=5)] == keys
    finally:
        late.close()
    # ... and once it has left, no consumer of the queue is left in the server.
    wait_for(lambda: numsub(redis, queue) == 0, 5, what="no consumer left registered")


# -- 3. a consumer that reconnects while a roundrobin batch is being popped ----------------------

def test_a_batch_popped_while_consumers_change_goes_to_the_new_consumer(H, redis, server,
                                                                       closing):
    queue = "swap"
    assert post(H, f"/p/{queue}", {"policy": "roundrobin"}).status == 200
    keys = [f"{queue}:{i}" for i in range(1, 4)]
    for key in keys:  # pending without a wake: only a pop finds them
        redis("SET", key, f"value of {key}")
        redis("LPUSH", f"{queue}:queue", key)
    redis("SET", f"queuestat::{queue}", "1")
    log_before = len(server.log())
    # Scripts wait for 1.5 s; PING and SUBSCRIBE do not, so consumers still connect.
    redis("CLIENT", "PAUSE", "1500", "WRITE")
    first = CometClient(H, queue)
    wait_for(lambda: numsub(redis, queue) == 1, what="the first consumer registered")
    time.sleep(0.2)  # its registration has sent the pop, which Redis holds
    first.close()
    wait_for(lambda: numsub(redis, queue) == 0, what="the first consumer gone")
    second = closing(CometClient(H, queue))
    wait_for(lambda: numsub(redis, queue) == 1, what="the second consumer registered")
    assert [m["key"] for m in second.messages(3, timeout=5)] == keys
    assert "dropped" not in server.log()[log_before:]


# -- nearby: HTTP/1.0 streams -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["c", "sse"])
def test_http10_keep_alive_stream_still_ends_by_close(H, redis, kind):
    queue = f"old-{kind}"
    parts = urlsplit(H)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(f"GET /{kind}/{queue} HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n".encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(65536)
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        assert b"keep-alive" not in head, head  # the body has no length: close ends it
        wait_for(lambda: numsub(redis, queue) == 1, what="the consumer registered")
        assert delete(H, f"/q/{queue}").status == 200
        while True:  # the socket timeout fails the test if the server keeps it open
            data = sock.recv(65536)
            if not data:
                break
            raw += data
    assert raw.endswith(b"null\r\n" if kind == "c" else b"data: null\n\n"), raw


# -- nearby: a second stream request pipelined on the same connection ----------------------------

def test_a_stream_pipelined_behind_another_is_left_unanswered(H, redis, server):
    queue = "piped"
    parts = urlsplit(H)
    log_before = len(server.log())
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        request = f"GET /c/{queue} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        sock.sendall(request + request)
        wait_for(lambda: numsub(redis, queue) == 1, what="a consumer registered")
        time.sleep(0.3)  # the second request has heard from Redis too
        keys = [add(H, queue, f"m{i}") for i in range(2)]
        raw = b""
        while raw.count(b"}\r\n") < 2:
            raw += sock.recv(65536)
    # One response, each message once: not two streams interleaved on one connection.
    assert raw.count(b"HTTP/1.1 200") == 1, raw
    assert [json.loads(line)["key"] for line in raw.split(b"\r\n") if line.startswith(b"{")] \
        == keys
    assert "pipelined behind a live stream" in server.log()[log_before:]
