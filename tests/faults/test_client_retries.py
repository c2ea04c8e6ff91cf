"""The client's safe retries (restmq.client): adds and batches sent through a proxy that
resets every seventh reply, while Redis is paused past the server's command timeout (503s)
and resumed. Each add carries an idempotency key the client made up and reuses on its own
retries, so the queue holds every acknowledged value exactly once (tests/faults/history.py)."""
from __future__ import annotations

import select
import socket
import struct
import threading
import time

from restmq.client import Client, RestMQError
from tests.conftest import SHORT_TIMEOUT
from tests.faults.history import History
from tests.faults.load import pending_values

QUEUE = "retried"
RESET_EVERY = 7


class ResettingProxy:
    """A TCP proxy in front of the server that forwards requests but, for every
    RESET_EVERY-th chunk of reply, resets the client's connection instead of passing it on:
    the server did the work, the client never hears of it."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.replies = 0
        self.resets = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        """Both directions in one thread, so that a reset closes sockets nobody is reading."""
        try:
            while True:
                readable, _, _ = select.select([client, server], [], [])
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        break
                    server.sendall(data)
                if server in readable:
                    data = server.recv(65536)
                    if not data:
                        break
                    with self.lock:
                        self.replies += 1
                        reset = self.replies % RESET_EVERY == 0
                        self.resets += reset
                    if reset:
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
                        break
                    client.sendall(data)
        except OSError:
            pass
        client.close()
        server.close()

    def close(self) -> None:
        self.listener.close()


def produce(client: Client, history: History, prefix: str, count: int, batch: int) -> None:
    for i in range(count):
        values = [f"{prefix}-{i}-{j}" for j in range(batch)]
        for v in values:
            history.attempt(v)
        try:
            if batch == 1:
                history.acked(values[0], client.add(QUEUE, values[0]))
            else:
                for v, key in zip(values, client.add_batch(QUEUE, values)):
                    history.acked(v, key)
        except RestMQError:
            for v in values:
                history.unknown(v)


def test_adds_through_resets_and_a_paused_redis_are_stored_exactly_once(procs):
    redis = procs.redis()
    server = procs.server(redis.port, *SHORT_TIMEOUT)
    proxy = ResettingProxy(server.port)
    history = History()
    try:
        # retries enough to ride out a pause of 2.5 s (503s after the 2 s command timeout)
        workers = [threading.Thread(target=produce, args=(
            Client(proxy.url, retries=12, timeout=10), history, f"p{n}", 120, 1))
            for n in range(3)]
        workers.append(threading.Thread(target=produce, args=(
            Client(proxy.url, retries=12, timeout=10), history, "b", 20, 10)))
        for w in workers:
            w.start()
        time.sleep(0.5)
        redis.pause()
        time.sleep(2.5)
        redis.resume()
        for w in workers:
            w.join(120)
        assert not any(w.is_alive() for w in workers)
    finally:
        proxy.close()
    report = history.check(pending_values(redis.port, QUEUE))
    assert report.ok, report.figures() + "\n" + report.details()
    assert report.acked == report.produced == 560, report.figures()
    assert proxy.resets >= 20, proxy.resets  # replies really were lost, and retried
    assert '" 503 ' in server.log()  # and Redis's pause was seen as 503s
