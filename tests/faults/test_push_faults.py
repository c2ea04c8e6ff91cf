"""Push dispatch under faults: a dispatcher killed mid-request (the lease hands the message
to the other process, attempt 2), Redis paused while a request is open (the attempt settles
once it is back), the target down for a while then back (backoff, then the queue drains), and
SIGTERM while a request is open (the process lets it finish and acks it)."""
from __future__ import annotations

import signal
import time

from tests.push_target import HANG, Target
from tests.test_push import add, configure
from tests.util import wait_until


def settled(client, queue: str = "jobs") -> bool:
    return (client("LLEN", f"{queue}:queue") == 0 and client("ZCARD", f"{queue}:inflight") == 0
            and client("ZCARD", f"{queue}:delayed") == 0)


def test_a_dispatcher_killed_mid_request_lets_the_other_process_try_again(procs):
    redis = procs.redis()
    client = redis.client()
    first = procs.server(redis.port, "--push-private")
    target = Target().start()
    try:
        target.behave = lambda r: HANG if r.headers["restmq-attempt"] == "1" else (200, {}, b"")
        configure(first.url, push_url=target.url(), push_timeout=1)
        add(first.url, "v")
        wait_until(lambda: target.requests, what="the first attempt")
        procs.kill9_server(first)
        second = procs.server(redis.port, "--push-private")
        # The lease is push_timeout + 5 s: the second attempt comes after it, from `second`.
        [_, again] = wait_until(lambda: len(target.requests) == 2 and target.requests,
                                timeout=15, what="the attempt after the lease")
        assert again.headers["restmq-attempt"] == "2"
        assert again.at - target.requests[0].at >= 5
        wait_until(lambda: settled(client), what="the ack")
        assert second.proc.poll() is None
    finally:
        target.stop()


def test_redis_paused_while_a_request_is_open(procs):
    redis = procs.redis()
    client = redis.client()
    server = procs.server(redis.port, "--push-private", "--redis-timeout", "2")
    target = Target().start()
    try:
        target.behave = lambda r: (time.sleep(0.5), (200, {}, b""))[1]
        configure(server.url, push_url=target.url(), push_timeout=5)
        for i in range(5):
            add(server.url, f"m{i}")
        wait_until(lambda: target.requests, what="the first attempt")
        redis.pause()
        time.sleep(3)  # past the Redis timeout: acks and claims fail meanwhile
        redis.resume()
        wait_until(lambda: settled(client), timeout=30, what="every message settled")
        assert {r.body for r in target.requests} == {f"m{i}".encode() for i in range(5)}
        assert server.proc.poll() is None
    finally:
        target.stop()


def test_a_target_down_then_back_gets_the_queue_after_backoff(procs):
    redis = procs.redis()
    client = redis.client()
    server = procs.server(redis.port, "--push-private")
    target = Target().start()
    port = target.port
    target.stop()  # nothing listens: connection refused
    configure(server.url, push_url=f"http://127.0.0.1:{port}/work", backoff_min=0.2,
              backoff_max=0.5)
    for i in range(20):
        add(server.url, f"m{i}")
    wait_until(lambda: "connect_error" in server.log(), what="failed attempts")
    wait_until(lambda: client("ZCARD", "jobs:delayed") > 0, what="messages backing off")
    time.sleep(2)
    back = Target().start(port)
    try:
        wait_until(lambda: settled(client), timeout=30, what="the queue drained")
        assert sorted(r.body for r in back.requests) == sorted(f"m{i}".encode()
                                                              for i in range(20))
    finally:
        back.stop()


def test_sigterm_lets_a_running_attempt_finish(procs):
    redis = procs.redis()
    client = redis.client()
    server = procs.server(redis.port, "--push-private")
    target = Target().start()
    try:
        target.behave = lambda r: (time.sleep(1.5), (200, {}, b""))[1]
        configure(server.url, push_url=target.url(), push_timeout=10)
        add(server.url, "v")
        wait_until(lambda: target.requests, what="the attempt")
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(15)
        assert settled(client) and client("HLEN", "jobs:deliveries") == 0
    finally:
        target.stop()
