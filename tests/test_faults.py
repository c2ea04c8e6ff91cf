"""Redis trouble seen through HTTP: a stopped, restarted or paused Redis gives a prompt 503
on every route, never a hang or a 500, and the server serves again once Redis is back."""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import request
from tests.util import wait_until

ROUTES = [
    ("GET", "/q/faulty", None),
    ("POST", "/q/faulty", "value=x"),
    ("DELETE", "/q/faulty", None),
    ("GET", "/?queue=faulty", None),
    ("POST", "/", "queue=faulty&value=x"),
    ("GET", "/q/", None),
    ("GET", "/p/faulty", None),
    ("POST", "/p/faulty", "policy=roundrobin"),
    ("GET", "/control/faulty", None),
    ("GET", "/control/", None),
    ("POST", "/control/faulty", "status=stop"),
    ("GET", "/stats/", None),
    ("GET", "/stats/faulty", None),
    ("GET", "/j/faulty", None),
    ("GET", "/c/faulty", None),
    ("GET", "/sse/faulty", None),
    ("POST", "/queue", 'body={"cmd": "add", "queue": "faulty", "value": "x"}'),
    ("POST", "/queue", 'body={"cmd": "get", "queue": "faulty"}'),
]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TIMEOUT = 5.0  # a Redis command not answered within it fails with 503
WATCHDOG = 1.0  # how often the server looks for commands past that timeout
SCHEDULING = 0.5  # allowance for a loaded machine between the server's answer and ours


@pytest.fixture
def pair():
    redis = RedisProcess().start()
    server = ServerProcess(redis.port).start()
    yield redis, server
    server.stop()
    redis.stop()
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


def call(url, method, path, body):
    return request(url, method, path, body=body, headers=FORM if body else None, timeout=20)


def assert_unavailable(reply):
    assert reply.status == 503
    assert reply.header("Content-Type") == "application/json"
    assert reply.json == {"error": "redis unavailable"}


def wait_until_served(url, timeout=15.0):
    wait_until(lambda: call(url, "GET", "/stats/", None).status == 200, timeout,
               "the server to serve again after Redis came back", interval=0.2)


def wait_until_refused(url):
    """Redis is gone and the server knows: a request is answered 503 (the first one may be
    the request that finds out)."""
    wait_until(lambda: call(url, "GET", "/stats/", None).status == 503, 15,
               "a 503 once Redis is gone", interval=0.2)


def test_stopped_redis_gives_503_on_every_route_then_recovers(pair):
    redis, server = pair
    assert call(server.url, "POST", "/q/faulty", "value=before").status == 200
    port = redis.port
    redis.stop()
    wait_until_refused(server.url)
    for method, path, body in ROUTES:
        started = time.monotonic()
        reply = call(server.url, method, path, body)
        assert_unavailable(reply)
        # "fails at once": no connection is usable, so nothing waits for the 5 s timeout
        assert time.monotonic() - started < 2.0, (method, path)

    restarted = RedisProcess(port=port).start()
    try:
        wait_until_served(server.url)
        assert call(server.url, "POST", "/q/faulty", "value=after").body == b"faulty:1\r\n"
        assert call(server.url, "GET", "/q/faulty", None).json["value"] == "after"
    finally:
        restarted.stop()


def test_paused_redis_gives_503_within_about_five_seconds(pair):
    redis, server = pair
    assert call(server.url, "POST", "/q/faulty", "value=before").status == 200
    paused = time.monotonic()
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = call(server.url, "GET", "/q/faulty", None)
        answered = time.monotonic()
        assert_unavailable(reply)
        # Not before the timeout: Redis answered everything sent before the pause, so no
        # connection has been waiting for longer than since then ...
        assert answered - paused >= TIMEOUT
        # ... and no later than the watchdog's first look past the timeout.
        assert answered - started <= TIMEOUT + WATCHDOG + SCHEDULING, answered - started
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    wait_until_served(server.url)
    # The message added before the pause is still there: the 503 changed nothing.
    assert call(server.url, "GET", "/q/faulty", None).json["value"] == "before"


def test_server_starts_without_redis_and_serves_once_it_appears():
    port = RedisProcess().port
    server = ServerProcess(port).start()
    try:
        # The first request waits for the first connection attempt, refused: then a 503.
        assert_unavailable(call(server.url, "GET", "/stats/", None))
        started = time.monotonic()
        assert_unavailable(call(server.url, "GET", "/stats/", None))
        assert time.monotonic() - started < 2.0
        redis = RedisProcess(port=port).start()
        try:
            wait_until_served(server.url)
        finally:
            redis.stop()
    finally:
        server.stop()


def test_websocket_handshake_gets_503_while_redis_is_down(pair):
    redis, server = pair
    redis.stop()
    wait_until_refused(server.url)
    reply = request(server.url, "GET", "/ws/faulty", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert_unavailable(reply)


def test_live_consumer_survives_a_redis_restart(pair):
    from tests.comet import CometClient
    redis, server = pair
    port = redis.port
    client = CometClient(server.url, "phoenix")
    try:
        assert call(server.url, "POST", "/q/phoenix", "value=before").status == 200
        assert client.messages(1)[0]["value"] == "before"
        redis.stop()
        restarted = RedisProcess(port=port).start()
        try:
            wait_until_served(server.url)
            # The pub/sub connection comes back and resubscribes: delivery resumes.
            assert call(server.url, "POST", "/q/phoenix", "value=after").status == 200
            assert client.messages(2, timeout=15)[1]["value"] == "after"
        finally:
            restarted.stop()
    finally:
        client.close()
