"""`GET /info/<q>` counts the live consumers and long-poll waiters of the queue held by the
process that answers (`consumers`), and how many pub/sub connections listen to the queue's
channel on Redis (`subscribers`: one per RestMQ process holding any of them)."""
from __future__ import annotations

import base64
import os
import socket
from urllib.parse import urlsplit

import pytest

from tests.comet import CometClient
from tests.conftest import ServerProcess
from tests.http_client import get, read_head
from tests.util import numsub, wait_until

NONE = {"comet": 0, "websocket": 0, "sse": 0, "waiter": 0}


def connect(base: str) -> socket.socket:
    parts = urlsplit(base)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def raw_request(base: str, head: str, body: bytes = b"") -> socket.socket:
    """A request sent on a socket of its own, its reply left unread unless the caller reads
    it: the connection stays open as the client's presence."""
    sock = connect(base)
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def websocket(base: str, queue: str) -> socket.socket:
    key = base64.b64encode(os.urandom(16)).decode()
    sock = raw_request(base, f"GET /ws/{queue} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                             f"Sec-WebSocket-Version: 13\r\n")
    status, _, _ = read_head(sock)
    assert status == 101
    return sock


def sse(base: str, queue: str) -> socket.socket:
    sock = raw_request(base, f"GET /sse/{queue} HTTP/1.1\r\nHost: test\r\n")
    assert sock.recv(12).startswith(b"HTTP/1.1 200")
    return sock


def long_poll(base: str, queue: str) -> socket.socket:
    body = b"wait=20"
    return raw_request(base, f"POST /claim/{queue} HTTP/1.1\r\nHost: test\r\nContent-Type: "
                             f"application/x-www-form-urlencoded\r\nContent-Length: "
                             f"{len(body)}\r\n", body)


def info(base: str, queue: str) -> dict:
    reply = get(base, f"/info/{queue}")
    assert reply.status == 200, reply.body
    return reply.json


def test_info_counts_each_kind_then_none_after_they_leave(H, redis):
    assert info(H, "watched")["consumers"] == NONE
    comet = CometClient(H, "watched")
    clients = [websocket(H, "watched"), sse(H, "watched"), long_poll(H, "watched")]
    try:
        every = {"comet": 1, "websocket": 1, "sse": 1, "waiter": 1}
        wait_until(lambda: info(H, "watched")["consumers"] == every, what="all four counted",
                   details=lambda: repr(info(H, "watched")))
        assert info(H, "watched")["subscribers"] == 1  # this process's one connection
        assert info(H, "other")["consumers"] == NONE  # counted per queue
    finally:
        comet.close()
        for sock in clients:
            sock.close()
    # The process unsubscribes once its last consumer or waiter of the queue has gone.
    wait_until(lambda: numsub(redis, "watched") == 0, what="the process to let go")
    reply = info(H, "watched")
    assert reply["consumers"] == NONE and reply["subscribers"] == 0


@pytest.fixture
def second(redis_proc):
    proc = ServerProcess(redis_proc.port).start()
    yield proc.url
    proc.stop()


def test_consumers_are_the_answering_process_s_subscribers_every_process(H, redis, second):
    """A comet on another process: this one counts no consumer, but one subscriber."""
    comet = CometClient(second, "shared")
    try:
        wait_until(lambda: info(second, "shared")["consumers"]["comet"] == 1,
                   what="the other process to count its comet")
        wait_until(lambda: numsub(redis, "shared") == 1, what="its subscription")
        here = info(H, "shared")
        assert here["consumers"] == NONE and here["subscribers"] == 1
        local = CometClient(H, "shared")
        try:
            wait_until(lambda: info(H, "shared")["consumers"]["comet"] == 1,
                       what="this process to count its own comet")
            assert info(H, "shared")["subscribers"] == 2
        finally:
            local.close()
    finally:
        comet.close()
