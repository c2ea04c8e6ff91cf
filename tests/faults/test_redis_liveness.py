"""Connections to Redis that stop answering without closing, and the first connection of a
fresh process: the pub/sub connection is checked with PING and replaced (live delivery resumes),
a refused first connection is a 503 at once, and a 503 changes nothing also for commands that
queued behind a stalled one."""
from __future__ import annotations

import socket
import threading
import time

from tests.comet import CometClient
from tests.faults.load import pending_values, probe, redis_client, wait_for
from tests.http_client import request

QUEUE = "liveq"
CHANNEL = f"{QUEUE}:PUBSUB"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class CuttingProxy:
    """A TCP proxy in front of Redis that can turn the pub/sub connections half-open: their
    Redis side is closed (Redis drops the subscription) while the server's side stays open
    and silent, as when a firewall or NAT forgets a connection. With `blackhole` set, new
    connections are accepted and never answered."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.blackhole = False
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.subscribers: list[tuple[socket.socket, socket.socket]] = []
        self.cut: set[int] = set()  # id() of the server-side sockets that were cut
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(down)
            if self.blackhole:
                threading.Thread(target=self._discard, args=(down,), daemon=True).start()
                continue
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.sockets.append(up)
            threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()

    @staticmethod
    def _discard(sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        down = src if from_server else dst
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_server and b"SUBSCRIBE" in data:
                    with self.lock:
                        self.subscribers.append((src, dst))
                if id(down) in self.cut:
                    continue  # half-open: what the server sends goes nowhere
                dst.sendall(data)
        except OSError:
            pass
        if id(down) not in self.cut:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut_subscribers(self) -> int:
        """Close the Redis side of every pub/sub connection, leaving the server side open."""
        with self.lock:
            victims, self.subscribers = self.subscribers, []
        for down, up in victims:
            self.cut.add(id(down))
            try:
                up.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(victims)

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.close()
                except OSError:
                    pass


def numsub(port: int) -> int:
    client = redis_client(port)
    try:
        return client("PUBSUB", "NUMSUB", CHANNEL)[1]
    finally:
        client.close()


def add(url: str, value: str, timeout: float = 15.0):
    return request(url, "POST", f"/q/{QUEUE}", f"value={value}", headers=FORM, timeout=timeout)


def test_a_half_open_pubsub_connection_is_replaced_and_live_delivery_resumes(procs):
    redis = procs.redis()
    proxy = CuttingProxy(redis.port)
    try:
        server = procs.server(proxy.port, "--pubsub-timeout", "1")
        consumer = CometClient(server.url, QUEUE)
        try:
            wait_for(lambda: numsub(redis.port) == 1, 10, message="subscribed")
            assert add(server.url, "before").status == 200
            assert [m["value"] for m in consumer.messages(1)] == ["before"]

            # New connections now go nowhere, so the replacement cannot confirm either.
            proxy.blackhole = True
            assert proxy.cut_subscribers() == 1
            wait_for(lambda: numsub(redis.port) == 0, 10, message="Redis dropped the subscriber")
            wait_for(lambda: "pub/sub connection did not answer" in server.log(), 10,
                     message="the server noticed the silent pub/sub connection")
            # No confirmed subscription: an add stays pending instead of being popped and
            # published to nobody, while the server goes on trying (two more silent pub/sub
            # connections given up; a sweep runs every second meanwhile).
            tries = server.log().count("pub/sub connection did not answer")
            assert add(server.url, "while down").status == 200
            wait_for(lambda: server.log().count("pub/sub connection did not answer")
                     >= tries + 2, 15, message="two more tries at a pub/sub connection")
            assert pending_values(redis.port, QUEUE) == ["while down"]

            proxy.blackhole = False
            wait_for(lambda: numsub(redis.port) == 1, 15,
                     message="the pub/sub connection was replaced and subscribed again")
            assert add(server.url, "after").status == 200
            assert [m["value"] for m in consumer.messages(3)][1:] == ["while down", "after"]
        finally:
            consumer.close()
    finally:
        proxy.close()


def test_pubsub_connection_killed_by_redis_resubscribes(procs):
    redis = procs.redis()
    server = procs.server(redis.port, "--pubsub-timeout", "1")
    consumer = CometClient(server.url, QUEUE)
    admin = redis_client(redis.port)
    try:
        wait_for(lambda: numsub(redis.port) == 1, 10, message="subscribed")
        assert admin("CLIENT", "KILL", "TYPE", "pubsub") == 1
        wait_for(lambda: numsub(redis.port) == 1, 15, message="subscribed again")
        assert add(server.url, "after kill").status == 200
        assert [m["value"] for m in consumer.messages(1)] == ["after kill"]
    finally:
        admin.close()
        consumer.close()


def test_subscriber_cut_at_its_output_buffer_limit_resubscribes(procs):
    redis = procs.redis()
    server = procs.server(redis.port, "--pubsub-timeout", "1")
    consumer = CometClient(server.url, QUEUE)
    admin = redis_client(redis.port)
    try:
        wait_for(lambda: numsub(redis.port) == 1, 10, message="subscribed")
        admin("CONFIG", "SET", "client-output-buffer-limit", "pubsub 1kb 1kb 1")
        # A broadcast batch far over the limit: Redis closes the subscriber.
        assert add(server.url, "x" * 64 * 1024).status == 200
        wait_for(lambda: "output buffer limits" in (redis_log(redis)), 10,
                 message="Redis cut the subscriber")
        admin("CONFIG", "SET", "client-output-buffer-limit", "pubsub 32mb 8mb 60")
        wait_for(lambda: numsub(redis.port) == 1, 15, message="subscribed again")
        assert add(server.url, "small").status == 200
        assert [m["value"] for m in consumer.messages(1)] == ["small"]
    finally:
        admin.close()
        consumer.close()


def redis_log(redis) -> str:
    try:
        with open(f"{redis.dir}/redis.log") as f:
            return f.read()
    except OSError:
        return ""


def test_client_pause_longer_than_the_ping_timeout_then_delivery_resumes(procs):
    redis = procs.redis()
    server = procs.server(redis.port, "--pubsub-timeout", "1")
    consumer = CometClient(server.url, QUEUE)
    admin = redis_client(redis.port)
    try:
        wait_for(lambda: numsub(redis.port) == 1, 10, message="subscribed")
        admin("CLIENT", "PAUSE", "3000", "ALL")
        wait_for(lambda: "pub/sub connection did not answer" in server.log(), 10,
                 message="the server noticed the paused pub/sub connection")
        wait_for(lambda: numsub(redis.port) == 1, 15, message="subscribed again")
        assert add(server.url, "after pause").status == 200
        assert [m["value"] for m in consumer.messages(1)] == ["after pause"]
    finally:
        admin.close()
        consumer.close()


def test_first_request_without_redis_is_answered_503_at_once_then_service_resumes(procs):
    redis = procs.redis(start=False)
    server = procs.server(redis.port)  # nothing listens on that port yet: refused at once
    started = time.monotonic()
    reply = add(server.url, "no redis")
    elapsed = time.monotonic() - started
    assert reply.status == 503 and reply.json == {"error": "redis unavailable"}, reply
    # The connection was refused at once; the bug waited the whole 5 s timeout.
    assert elapsed < 2.5, elapsed
    redis.start()
    wait_for(lambda: add(server.url, "back", timeout=10).status == 200, 20,
             interval=0.2, message="service back after Redis started")
    assert pending_values(redis.port, QUEUE)[-1:] == ["back"]


def test_commands_queued_behind_a_stalled_one_are_not_run_after_their_503(procs):
    """With one connection, a second add is written behind a first that Redis does not
    answer; both get their 503 when the connection is dropped, the second well before its own
    timeout. Redis, resumed, runs what reached its socket: the second add must do nothing."""
    redis = procs.redis()
    server = procs.server(redis.port, "--redis-pool", "1")
    assert add(server.url, "warm-up").status == 200  # the script is loaded
    admin = redis_client(redis.port)
    admin("DEL", f"{QUEUE}:queue")
    admin.close()
    replies: dict[str, object] = {}

    def send(value: str) -> None:
        replies[value] = add(server.url, value, timeout=30).status

    redis.pause()
    try:
        first = threading.Thread(target=send, args=("first",))
        first.start()
        time.sleep(3.5)
        second = threading.Thread(target=send, args=("second",))
        second.start()
        first.join(30)
        second.join(30)
    finally:
        redis.resume()
    assert replies == {"first": 503, "second": 503}, replies
    # Once the server serves again, Redis has read and run what reached it before.
    wait_for(lambda: probe(server.url) == 200, 15, interval=0.2, message="service back")
    assert pending_values(redis.port, QUEUE) == []

