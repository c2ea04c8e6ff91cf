"""Long polls whose clients leave at random times while messages arrive from another process:
nothing is lost, nothing is delivered twice, and nothing stays in flight for a client that
left (docs/live-delivery.md#waiters). Pops ack only what went out; claims hold only what went
out; whatever was taken for a client that left is released at once."""
from __future__ import annotations

import json
import random
import socket
import threading
from urllib.parse import urlsplit

from tests.faults.history import History
from tests.faults.load import Load, Target, ident_of, pending_values, redis_client
from tests.http_client import post
from tests.util import wait_until

QUEUE = "wq"
PRODUCERS, PER_PRODUCER = 2, 200
POLLERS = 12
LEAVING = 0.6  # the share of long polls whose client leaves before its answer may come
LEASE = 3600  # a message left in flight for a client that left would outlast the test


def parse(raw: bytes) -> tuple[int, bytes] | None:
    """Status and body of a complete reply, else None (nothing, or cut short)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if len(body) < length:
        return None
    return int(lines[0].split()[1]), body[:length]


class Poller(threading.Thread):
    """Long polls, by pop or by claim (acked when received), one after the other. The client
    of most of them leaves after a random moment: it closes its sending side (the server takes
    that as leaving, like any end of the connection) and then reads what it is sent until
    the server closes too, so that whatever the server handed over before noticing is read
    and recorded, and nothing else."""

    def __init__(self, url: str, history: History, stop: threading.Event, seed: int):
        super().__init__(name=f"poller-{seed}", daemon=True)
        self.url, self.history, self.stop_event = url, history, stop
        self.rng = random.Random(seed)
        parts = urlsplit(url)
        self.address = (parts.hostname, parts.port)
        self.left = self.answered_after_leaving = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.poll()
        except BaseException as e:  # reported by the test
            self.failure = e

    def poll(self) -> None:
        route = self.rng.choice(("pop", "claim"))
        path = f"/{route}/{QUEUE}?wait=2&limit={self.rng.randint(1, 3)}&lease={LEASE}"
        leave = self.rng.random() < LEAVING
        with socket.create_connection(self.address, timeout=30) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                         .encode())
            if leave:
                self.stop_event.wait(self.rng.uniform(0, 0.05))
                sock.shutdown(socket.SHUT_WR)
                self.left += 1
            raw = b""
            while parse(raw) is None or leave:
                data = sock.recv(65536)
                if not data:
                    break
                raw += data
        reply = parse(raw)
        if reply is None or reply[0] != 200:
            assert reply is None or reply[0] == 204, reply
            return
        self.answered_after_leaving += leave
        messages = json.loads(reply[1])["messages"]
        if route == "pop":
            for message in messages:
                self.history.consumed(ident_of(message["value"]), "pop")
            return
        receipts = {m["receipt"]: m for m in messages}
        acked = post(self.url, f"/ack/{QUEUE}", {"receipt": ",".join(receipts)})
        assert acked.status == 200, acked
        for receipt in acked.json["acked"]:
            self.history.consumed(ident_of(receipts[receipt]["value"]), "claim")


def test_waiters_that_leave_at_random_times_lose_nothing(procs):
    redis = procs.redis()
    consumers = procs.server(redis.port)
    producers = procs.server(redis.port)
    history = History()
    stop = threading.Event()
    pollers = [Poller(consumers.url, history, stop, seed) for seed in range(POLLERS)]
    load = Load(Target(producers.url), QUEUE, history, producers=PRODUCERS, consumers=0,
                interval=0.005, limit=PER_PRODUCER)
    client = redis_client(redis.port)
    try:
        for poller in pollers:
            poller.start()
        with load:
            wait_until(lambda: sum(p.sent for p in load.producers) == PRODUCERS * PER_PRODUCER,
                       60, "every add sent")
            load.stop()
        # The pollers drain the queue; nothing may be left in flight: with leases of an hour,
        # only a release brings back what was taken for a client that left.
        wait_until(lambda: client("LLEN", f"{QUEUE}:queue") == 0
                   and client("ZCARD", f"{QUEUE}:inflight") == 0, 60,
                   "the queue drained and nothing in flight",
                   details=lambda: f"pending {client('LLEN', f'{QUEUE}:queue')}, in flight "
                                   f"{client('ZRANGE', f'{QUEUE}:inflight', 0, -1)}")
    finally:
        stop.set()
        for poller in pollers:
            poller.join(30)
        client.close()
    assert not [p.name for p in pollers if p.is_alive()]
    failures = [(p.name, p.failure) for p in pollers if p.failure]
    assert not failures, failures
    report = history.check(pending_values(redis.port, QUEUE))
    left = sum(p.left for p in pollers)
    summary = (f"{report.figures()} left={left} "
               f"answered_after_leaving={sum(p.answered_after_leaving for p in pollers)} "
               f"released={consumers.log().count('released')}")
    assert report.ok, f"{summary}\n{report.details()}"
    assert report.acked == PRODUCERS * PER_PRODUCER and report.received == report.acked, summary
    assert left > POLLERS, summary
