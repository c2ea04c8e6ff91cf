"""`--counters` against a tally: random operations on a real server (adds, idempotent adds,
hard gets, claims, acks, releases, pops, lease expiry, dead-lettering, redrive), each counted
here as it happened, then every queue's `<q>:counters` compared with the tally, and its
`added` with the queue's key counter `<q>:UUID` (both count every message numbered in it)."""
from __future__ import annotations

import random
import time

import pytest

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import get, post, request

MAX_ATTEMPTS = 3


@pytest.fixture
def counting():
    redis = RedisProcess().start()
    server = ServerProcess(redis.port, "--counters").start()
    yield redis.client(), server.url
    server.stop()
    assert "Traceback" not in server.log()
    redis.stop()


class Tally:
    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}

    def __call__(self, queue: str, counter: str, n: int = 1) -> None:
        if n:
            row = self.counts.setdefault(queue, {})
            row[counter] = row.get(counter, 0) + n


def counters(url: str, queue: str) -> dict:
    reply = get(url, f"/info/{queue}")
    assert reply.status == 200, reply.body
    return reply.json["counters"]


def messages_of(reply) -> list:
    """The messages of a claim or pop: 204 when there was none."""
    assert reply.status in (200, 204), reply.body
    return reply.json["messages"] if reply.status == 200 else []


def settle_on(url: str, queue: str, want: dict, seconds: float = 15) -> dict:
    """The queue's counters once they equal `want` (a pop's ack follows its reply; an
    expired lease waits for the tick), or as they are after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        found = counters(url, queue)
        if found == want or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counters_equal_a_tally_of_random_operations(counting, seed):
    redis, url = counting
    rng = random.Random(seed)
    tally = Tally()
    q, dead, other = "t", "t.dead", "t.other"
    assert post(url, f"/config/{q}", {"max_attempts": str(MAX_ATTEMPTS),
                                      "dead_letter": dead}).status == 200
    held: dict[str, int] = {}  # receipt -> deliveries, of the leases we hold
    used_keys: set[str] = set()

    def dead_lettered(n: int = 1):
        tally(q, "dead_lettered", n)
        tally(dead, "added", n)

    for step in range(150):
        op = rng.choice(["add", "add", "add", "dedup", "get", "claim", "ack", "release",
                         "pop"])
        if op == "add":
            assert post(url, f"/q/{q}", {"value": f"v{step}"}).status == 200
            tally(q, "added")
        elif op == "dedup":
            key = f"k{rng.randrange(5)}"
            reply = request(url, "POST", f"/q/{q}", form={"value": key},
                            headers={"Idempotency-Key": key})
            assert reply.status == 200, reply.body
            tally(q, "deduplicated" if key in used_keys else "added")
            used_keys.add(key)
        elif op == "get":
            reply = get(url, f"/q/{q}")
            if reply.status == 200:
                tally(q, "read_get")
        elif op == "claim":
            reply = post(url, f"/claim/{q}", {"limit": str(rng.randint(1, 3)), "lease": "600"})
            for message in messages_of(reply):
                held[message["receipt"]] = message["deliveries"]
                tally(q, "delivered_claim")
        elif op in ("ack", "release") and held:
            receipt = rng.choice(sorted(held))
            c = held.pop(receipt)
            reply = post(url, f"/{op}/{q}", {"receipt": receipt})
            assert reply.status == 200, reply.body
            if op == "ack":
                tally(q, "acked")
            elif c >= MAX_ATTEMPTS:
                dead_lettered()
        elif op == "pop":
            n = len(messages_of(post(url, f"/pop/{q}", {"limit": str(rng.randint(1, 3))})))
            tally(q, "read_pop", n)
            tally(q, "acked", n)
    # What we hold goes back; then the rest is claimed on a one-second lease left to expire.
    for receipt, c in held.items():
        assert post(url, f"/release/{q}", {"receipt": receipt}).status == 200
        if c >= MAX_ATTEMPTS:
            dead_lettered()
    while True:
        messages = messages_of(post(url, f"/claim/{q}", {"limit": "100", "lease": "1"}))
        if not messages:
            break
        tally(q, "delivered_claim", len(messages))
        for message in messages:
            if message["deliveries"] >= MAX_ATTEMPTS:
                dead_lettered()
            else:
                tally(q, "redelivered")
        deadline = time.monotonic() + 15
        while get(url, f"/info/{q}").json["inflight"]:
            assert time.monotonic() < deadline, "the leases never expired"
            time.sleep(0.1)
    # The dead letters go to another queue, each under a new key there.
    moved = post(url, f"/redrive/{dead}", {"to": other, "limit": "1000"})
    assert moved.status == 200, moved.body
    tally(other, "added", len(moved.json["moved"]))

    for queue in (q, dead, other):
        want = tally.counts.get(queue, {})
        assert settle_on(url, queue, want) == want, queue
        assert int(redis("GET", f"{queue}:UUID") or 0) == want.get("added", 0), queue
