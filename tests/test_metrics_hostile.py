"""`GET /metrics` against what other software (or a hand) may have left in Redis: queue names
that are not UTF-8, keys of the wrong type. One strange queue must not change the numbers of
the others, nor make the scrape say that Redis is down; the reply stays a valid exposition
(prometheus_client's parser and `promtool check metrics`)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import get


@pytest.fixture(scope="module")
def servers():
    redis = RedisProcess().start()
    server = ServerProcess(redis.port).start()
    yield redis, server
    server.stop()
    assert "Traceback" not in server.log()
    redis.stop()


@pytest.fixture
def state(servers):
    redis, server = servers
    client = redis.client()
    client("FLUSHALL")
    yield client, server
    client.close()


def exposition(url: str) -> tuple[str, dict]:
    """The text of a scrape and {family: {sorted labels: value}}."""
    reply = get(url, "/metrics")
    assert reply.status == 200, reply.body
    body = reply.body.decode("utf-8")
    families: dict = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            families.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return body, families


def queue_values(families: dict, sample: str) -> dict:
    return {dict(labels)["queue"]: v for labels, v in families.get(sample, {}).items()}


def promtool_accepts(body: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    done = subprocess.run([promtool, "check", "metrics"], input=body.encode("utf-8"),
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def redis_up(families: dict) -> float:
    [value] = families["restmq_redis_up"].values()
    return value


def test_names_that_are_not_utf8_are_read_from_their_own_keys(state):
    """Two QUEUESET members that differ only in bytes that are not UTF-8 are two queues: each
    is read from its own keys (not from the keys of the name with U+FFFD in their place, which
    hold nothing) and exported once, under a label that is valid UTF-8."""
    redis, server = state
    first, second = b"bad\xff\xfename", b"bad\xfe\xffname"
    redis("SADD", "QUEUESET", first, second, "plain")
    redis("RPUSH", first + b":queue", first + b":1", first + b":2")
    redis("SET", first + b":UUID", "2")
    redis("RPUSH", second + b":queue", second + b":1")
    redis("SET", second + b":UUID", "1")
    redis("ZADD", second + b":inflight", "1", second + b":7")
    body, families = exposition(server.url)
    promtool_accepts(body)
    pending = queue_values(families, "restmq_queue_messages")
    # Both, each under a label of its own that says which bytes were not text.
    assert pending == {"bad\\xff\\xfename": 2, "bad\\xfe\\xffname": 1, "plain": 0}
    assert queue_values(families, "restmq_messages_added_total") == {
        "bad\\xff\\xfename": 2, "bad\\xfe\\xffname": 1, "plain": 0}
    assert queue_values(families, "restmq_queue_inflight_messages")["bad\\xfe\\xffname"] == 1
    # A valid name spelt like one of those labels: one series, the first name in byte order's
    # (a backslash sorts before 0xff).
    redis("SADD", "QUEUESET", "bad\\xff\\xfename")
    body, families = exposition(server.url)
    promtool_accepts(body)
    assert body.count('restmq_queue_messages{queue="bad\\\\xff\\\\xfename"}') == 1
    assert queue_values(families, "restmq_queue_messages")["bad\\xff\\xfename"] == 0


def test_a_queue_with_keys_of_the_wrong_type_leaves_the_others_exported(state):
    """A key of the wrong type under one queue's name (written by other software) is that
    queue's problem: the scrape still says Redis is up and exports every other queue, the
    500 read in the same script run included; the broken one is left out and logged."""
    redis, server = state
    names = [f"q{i:03d}" for i in range(600)]  # two script runs of 500
    redis("SADD", "QUEUESET", *names, "q100x", "q550x")
    for name in names:
        redis("RPUSH", f"{name}:queue", f"{name}:1")
    redis("SET", "q100x:queue", "not a list")   # in the first run
    redis("SET", "q550x:inflight", "not a zset")  # in the second
    # Dead-letter queues: one readable, one whose pending list is not a list (not exported,
    # rather than exported as 0).
    redis("HSET", "q001:config", "dead_letter", "q002")
    redis("HSET", "q003:config", "dead_letter", "q100x")
    body, families = exposition(server.url)
    promtool_accepts(body)
    assert redis_up(families) == 1
    assert queue_values(families, "restmq_queue_messages") == {name: 1 for name in names}
    assert queue_values(families, "restmq_queue_dead_letter_messages") == {"q001": 1}
    log = server.log()
    assert "q100x" in log and "q550x" in log
    # Once repaired, it is back.
    redis("DEL", "q100x:queue", "q550x:inflight")
    _, families = exposition(server.url)
    assert queue_values(families, "restmq_queue_messages") == {
        **{name: 1 for name in names}, "q100x": 0, "q550x": 0}
    assert queue_values(families, "restmq_queue_dead_letter_messages") == {"q001": 1, "q003": 0}


def test_a_paused_redis_gives_redis_up_0_within_the_scrape_timeout():
    """Redis stopped (SIGSTOP) answers nothing and closes nothing: the scrape must still
    answer 200 with `restmq_redis_up 0` well within contrib/prometheus's scrape_timeout
    (10 s), whatever --redis-timeout is (up to an hour), or Prometheus records a failed scrape
    instead (RestMQDown, not RestMQRedisDown, and no process series at all). Scrapers that
    come while Redis is paused get the same; once it resumes, the next scrape reads it."""
    redis = RedisProcess().start()
    server = ServerProcess(redis.port, "--redis-timeout", "60").start()
    try:
        redis.client()("RPUSH", "jobs:queue", "jobs:1")
        redis.client()("SADD", "QUEUESET", "jobs")
        _, families = exposition(server.url)
        assert redis_up(families) == 1
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            for _ in range(2):
                started = time.monotonic()
                reply = get(server.url, "/metrics", timeout=30)
                waited = time.monotonic() - started
                assert reply.status == 200
                assert 'restmq_redis_up{process="' in reply.body.decode()
                assert waited < 10, f"{waited:.1f} s: Prometheus would have given up"
                families = {s.name: s.value for f in text_string_to_metric_families(
                    reply.body.decode()) for s in f.samples if s.name == "restmq_redis_up"}
                assert families == {"restmq_redis_up": 0}
                assert 'queue="jobs"' not in reply.body.decode()
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while redis_up(exposition(server.url)[1]) != 1:
            assert time.monotonic() < deadline, "the scrapes never saw Redis again"
            time.sleep(0.2)
        _, families = exposition(server.url)
        assert queue_values(families, "restmq_queue_messages") == {"jobs": 1}
    finally:
        server.stop()
        redis.stop()
