"""`GET /info/<q>` counts the live consumers and long-poll waiters of the queue held by the
process that answers (`consumers`), and how many pub/sub connections listen to the queue's
channel on Redis (`subscribers`: one per RestMQ process holding any of them)."""
from __future__ import annotations

import pytest

from tests.conftest import ServerProcess
from tests.http_client import get, hold_open
from tests.util import numsub, wait_until

KINDS = ("comet", "websocket", "sse", "waiter")
NONE = dict.fromkeys(KINDS, 0)


def info(base: str, queue: str) -> dict:
    reply = get(base, f"/info/{queue}")
    assert reply.status == 200, reply.body
    return reply.json


def test_info_counts_each_kind_then_none_after_they_leave(H, redis):
    assert info(H, "watched")["consumers"] == NONE
    clients = [hold_open(H, kind, "watched") for kind in KINDS]
    try:
        every = dict.fromkeys(KINDS, 1)
        wait_until(lambda: info(H, "watched")["consumers"] == every, what="all four counted",
                   details=lambda: repr(info(H, "watched")))
        # this process's one connection (subscribing may take a moment longer)
        wait_until(lambda: info(H, "watched")["subscribers"] == 1, what="one subscriber")
        assert info(H, "other")["consumers"] == NONE  # counted per queue
    finally:
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
    """A comet on another process: this one counts no consumer of its own, but one
    subscriber; with a comet here too, two."""
    there = hold_open(second, "comet", "shared")
    try:
        wait_until(lambda: info(second, "shared")["consumers"]["comet"] == 1,
                   what="the other process to count its comet")
        wait_until(lambda: numsub(redis, "shared") == 1, what="its subscription")
        here = info(H, "shared")
        assert here["consumers"] == NONE and here["subscribers"] == 1
        local = hold_open(H, "comet", "shared")
        try:
            wait_until(lambda: info(H, "shared")["consumers"]["comet"] == 1,
                       what="this process to count its own comet")
            wait_until(lambda: info(H, "shared")["subscribers"] == 2, what="two subscribers")
        finally:
            local.close()
    finally:
        there.close()
