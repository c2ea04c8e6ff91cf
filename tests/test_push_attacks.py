"""Push queues against hostile or unlucky targets, over real processes: a `twistd restmq
--push-private` server on a Redis of this module's own, and targets in the test process (the
recording server of tests/push_target.py, or a raw socket server where the target must
misbehave below HTTP). Each test names what a target could do to the server or to a
message, and checks the server's answer from outside: the target's sockets, Redis, the log."""
from __future__ import annotations

import select
import socket
import ssl
import subprocess
import threading
import time

import pytest

from tests.conftest import ServerProcess
from tests.push_target import HANG, redis_proc, target  # noqa: F401 (fixtures)
from tests.test_push import add, configure, due_in
from tests.http_client import post
from tests.util import numsub, wait_until


@pytest.fixture(scope="module")
def server(redis_proc):
    proc = ServerProcess(redis_proc.port, "--push-private").start()
    yield proc
    proc.stop()


class Trickler:
    """A raw target that reads a request, sends a 200 head promising a body of `size` bytes,
    then sends one byte of it every `every` seconds for `lasting` seconds, and records when the
    client hung up (None while it has not)."""

    def __init__(self, size: int = 10000, every: float = 0.2, lasting: float = 30):
        self.size, self.every, self.lasting = size, every, lasting
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[float] = []
        self.closed: list[float] = []  # time.monotonic() when the client hung up
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/work"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            self.accepted.append(time.monotonic())
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
            end = time.monotonic() + self.lasting
            while time.monotonic() < end:
                readable, _, _ = select.select([conn], [], [], self.every)
                try:
                    if readable and not conn.recv(65536):
                        break  # the client closed its end
                    conn.send(b"x")
                except OSError:  # reset by the client
                    break
            else:
                return
            self.closed.append(time.monotonic())

    def stop(self) -> None:
        self.listener.close()


def test_a_target_trickling_its_body_past_push_timeout_loses_the_connection(server, redis):
    """A target that sends its head at once and then a byte of body now and then must not
    hold a connection (a file descriptor of the server) beyond push_timeout: the attempt is
    a timeout, and the connection is dropped with it."""
    trickler = Trickler()
    try:
        configure(server.url, push_url=trickler.url(), push_timeout=1, backoff_min=30)
        key = add(server.url, "v")
        wait_until(lambda: trickler.accepted, what="the attempt")
        wait_until(lambda: due_in(redis, "jobs", key), timeout=5, what="the release")
        wait_until(lambda: f"push of {key}: timeout" in server.log(), what="the timeout logged")
        wait_until(lambda: trickler.closed, timeout=5, what="the connection dropped")
        assert trickler.closed[0] - trickler.accepted[0] < 5
    finally:
        trickler.stop()


def test_a_slow_pre_hook_and_a_slow_target_within_their_timeouts_deliver_once(server, redis,
                                                                                target):
    """The pre hook and the target each have push_timeout, one after the other: an attempt
    whose hook and target both answer in time is acked, and its message is not handed to
    another attempt meanwhile (the lease covers the whole attempt)."""
    def behave(r):
        first = b'"attempt": 1}' in r.body or r.headers.get("restmq-attempt") == "1"
        if first:
            time.sleep(8)  # each 2 s within push_timeout, together 1 s past the 15 s lease
        return 200, {}, b""

    target.behave = behave
    configure(server.url, push_url=target.url(), pre_hook=target.url("/pre"), push_timeout=10,
              backoff_min=30)
    key = add(server.url, "v")
    wait_until(lambda: target.paths("/pre"), what="the pre hook")
    wait_until(lambda: redis("ZCARD", "jobs:inflight") == 0 and
               redis("HLEN", "jobs:deliveries") == 0, timeout=30, what="the ack")
    assert [r.headers["restmq-attempt"] for r in target.paths("/work")] == ["1"]
    assert [r.headers["restmq-key"] for r in target.paths("/work")] == [key]


def test_a_registered_legacy_name_can_be_a_push_queue(server, redis, target):
    """A queue the original RestMQ created under a name new queues may not have (`my queue`)
    is admitted by every route, `/config/` included: made a push queue, it is pushed."""
    redis("SADD", "QUEUESET", "my queue")
    configure(server.url, "my queue", push_url=target.url())
    key = add(server.url, "v", queue="my queue")
    [got] = wait_until(lambda: target.paths("/work"), what="the push")
    assert got.headers["restmq-queue"] == "my%20queue" and key == "my queue:1"
    wait_until(lambda: redis("ZCARD", "my queue:inflight") == 0 and
               redis("HLEN", "my queue:deliveries") == 0, what="the ack")


def test_a_hanging_post_hook_does_not_open_a_request_per_message(server, redis, target):
    """The post hook is called after the message is settled, so it is no longer in flight:
    a post hook that never answers must still not let a process open more than
    push_concurrency requests of a queue at once (each is a connection, a file
    descriptor), whatever push_rate allows."""
    target.behave = lambda r: HANG if r.path == "/post" else (204, {}, b"")
    configure(server.url, push_url=target.url(), post_hook=target.url("/post"),
              push_concurrency=2, push_rate=100, push_burst=100, push_timeout=20)
    for i in range(12):
        add(server.url, f"m{i}")
    wait_until(lambda: len(target.paths("/post")) >= 2, what="two post hooks")
    marker = add(server.url, "marker", queue="other")  # a positive marker: a sweep later
    configure(server.url, "other", push_url=target.url("/other"))
    wait_until(lambda: target.paths("/other"), what="the marker's push")
    time.sleep(1.1)  # and one more sweep of jobs
    assert target.max_open <= 2 + 1, (target.max_open, len(target.paths("/work")))
    assert len(target.paths("/work")) <= 2 and marker == "other:1"
    target.release()


def test_an_https_target_with_a_self_signed_certificate_gets_no_request(server, redis, target,
                                                                        tmp_path):
    """https targets are verified against the system's trust store and the URL's host: a
    self-signed certificate (valid for 127.0.0.1 otherwise) fails the attempt as a
    connect_error, and no request (no value, no Authorization) is sent over it."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    target.server.socket = context.wrap_socket(target.server.socket, server_side=True)
    configure(server.url, push_url=f"https://127.0.0.1:{target.port}/work",
              push_auth="Bearer s3cret", backoff_min=30)
    key_ = add(server.url, "secret value")
    wait_until(lambda: due_in(redis, "jobs", key_), what="the failed attempt")
    wait_until(lambda: f"push of {key_}: connect_error" in server.log(), what="the outcome")
    assert target.requests == []
    # The same target, trusted, takes a request: the refusal was the certificate's.
    trusting = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", target.port)) as raw, \
            trusting.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"POST /check HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")
    assert [r.path for r in target.requests] == ["/check"]


@pytest.mark.parametrize("value,seconds", [("000000000020", 20), ("-5", None), ("1.5", None),
                                           ("99999999999999999999", 3600)])
def test_retry_after_values_a_target_may_send(server, redis, target, value, seconds):
    """Delta seconds are read whole (leading zeros included) and capped at 3600; a negative,
    fractional or garbled value is ignored (the backoff applies: 10 s here, jittered)."""
    target.behave = lambda r: (500, {"Retry-After": value}, b"")
    configure(server.url, push_url=target.url(), backoff_min=10)
    key = add(server.url, "v")
    left = wait_until(lambda: due_in(redis, "jobs", key), what="the release")
    low, high = (5000, 10000) if seconds is None else (seconds * 1000, seconds * 1000)
    assert low - 1500 <= left <= high, left


def test_a_queue_that_stops_being_a_push_queue_releases_its_channel(server, redis, target):
    """Thousands of queues may be made push queues and back: the dispatcher of one that left
    PUSHSET stops, and its pub/sub subscription goes with it (after its attempts end)."""
    target.behave = lambda r: HANG
    configure(server.url, push_url=target.url(), push_timeout=2, backoff_min=30)
    wait_until(lambda: numsub(redis, "jobs") == 1, what="the dispatcher's subscription")
    add(server.url, "v")
    wait_until(lambda: target.requests, what="an attempt under way")
    post(server.url, "/config/jobs", {"unset": "push_url"})
    wait_until(lambda: redis("ZCARD", "jobs:delayed") == 1, what="the attempt's timeout")
    wait_until(lambda: numsub(redis, "jobs") == 0, timeout=5, what="the channel released")
    target.release()
