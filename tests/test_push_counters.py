"""Push attempts counted with --counters: every outcome of a push attempt lands in the queue's
`<q>:counters` and so in `/metrics` (`restmq_push_attempts_total` by outcome, next to
`restmq_messages_delivered_total{via="push"}`), seen through a real server, a real Redis of
this module's own and a target in the test process (tests/push_target.py)."""
from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import get, post
from tests.push_target import HANG, redis_proc, target  # noqa: F401 (fixtures)
from tests.util import v2_json, wait_until

OUTCOMES = ("ok", "http_error", "timeout", "connect_error", "pre_hook", "forbidden_target")


@pytest.fixture
def rclient(redis_proc):
    client = redis_proc.client()
    client("FLUSHALL")
    yield client
    client.close()


@pytest.fixture(scope="module")
def counting(redis_proc):
    proc = ServerProcess(redis_proc.port, "--counters", "--push-private").start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log()


def push_series(url: str) -> tuple[dict, dict]:
    """({(queue, outcome): attempts}, {queue: messages delivered via push}) from /metrics."""
    reply = get(url, "/metrics")
    assert reply.status == 200, reply.body
    attempts, delivered = {}, {}
    for family in text_string_to_metric_families(reply.body.decode("utf-8")):
        for s in family.samples:
            if s.name == "restmq_push_attempts_total":
                attempts[(s.labels["queue"], s.labels["outcome"])] = s.value
            elif s.name == "restmq_messages_delivered_total" and s.labels["via"] == "push":
                delivered[s.labels["queue"]] = s.value
    return attempts, delivered


def configure(url: str, queue: str, **attributes) -> None:
    v2_json(post(url, f"/config/{queue}", {k: str(v) for k, v in attributes.items()}))


def add(url: str, queue: str, value: str) -> None:
    assert post(url, f"/q/{queue}", {"value": value}).status == 200


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once it is closed


def test_a_200_then_a_500_are_counted_ok_and_http_error(counting, target, rclient):
    url = counting.url
    answers = iter([(200, {}, b""), (500, {}, b"no")])
    target.behave = lambda r: next(answers)
    configure(url, "jobs", push_url=target.url(), backoff_min=60)
    add(url, "jobs", "first")
    wait_until(lambda: push_series(url)[0].get(("jobs", "ok")) == 1, what="the ok counted")
    add(url, "jobs", "second")
    wait_until(lambda: push_series(url)[0].get(("jobs", "http_error")) == 1,
               what="the 500 counted")
    attempts, delivered = push_series(url)
    assert len(target.requests) == 2
    assert attempts == {("jobs", outcome): (1 if outcome in ("ok", "http_error") else 0)
                        for outcome in OUTCOMES}
    assert delivered == {"jobs": 2}
    assert rclient("HGET", "jobs:counters", "push_ok") == "1"
    assert rclient("HGET", "jobs:counters", "push_http_error") == "1"


def test_timeout_connect_error_and_pre_hook_are_counted(counting, target, rclient):
    url = counting.url
    target.behave = lambda r: HANG if r.path == "/hang" else (500, {}, b"")
    configure(url, "slow", push_url=target.url("/hang"), push_timeout=1, backoff_min=60)
    configure(url, "gone", push_url=f"http://127.0.0.1:{closed_port()}/", backoff_min=60)
    configure(url, "vetoed", push_url=target.url("/work"), pre_hook=target.url("/pre"),
              backoff_min=60)
    for queue in ("slow", "gone", "vetoed"):
        add(url, queue, "v")
    wanted = {("slow", "timeout"), ("gone", "connect_error"), ("vetoed", "pre_hook")}
    wait_until(lambda: all(push_series(url)[0].get(k) == 1 for k in wanted),
               what="the three outcomes counted")
    target.release()
    attempts, _ = push_series(url)
    assert {k for k, n in attempts.items() if n} == wanted
    assert not target.paths("/work")  # the veto held the push back


def test_a_refused_target_is_counted_forbidden_target(target):
    """A process without --push-private refuses a loopback target it finds configured (by a
    process that allows it, here written straight into Redis) and counts the refusal. Its own
    Redis: the module's --push-private server would deliver the message."""
    redis = RedisProcess().start()
    server = ServerProcess(redis.port, "--counters").start()
    client = redis.client()
    try:
        client("HSET", "jobs:config", "push_url", target.url(), "backoff_min", "60")
        client("SADD", "PUSHSET", "jobs")
        add(server.url, "jobs", "v")
        wait_until(lambda: push_series(server.url)[0].get(("jobs", "forbidden_target")) == 1,
                   what="the refusal counted")
        assert client("HGET", "jobs:counters", "push_forbidden_target") == "1"
        assert not target.requests
    finally:
        client.close()
        server.stop()
        redis.stop()
