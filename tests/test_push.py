"""Push queues over real processes: `twistd restmq --push-private` servers on a Redis of this
module's own (a server of another module on the shared Redis would push too), and a target
server in the test process (tests/push_target.py). Each test reads what the target received,
what the server logged for each attempt, and where Redis holds the message afterwards."""
from __future__ import annotations

import bisect
import json
import socket
import time
from urllib.parse import quote

import pytest

from tests.conftest import ServerProcess
from tests.http_client import post, request
from tests.push_target import BIG, BIG_SIZE, HANG, RESET, redis_proc, target  # noqa: F401 (fixtures)
from tests.util import redis_ms, v2_json, wait_until


@pytest.fixture(scope="module")
def servers(redis_proc):
    """Two push-enabled processes on the module's Redis."""
    procs = [ServerProcess(redis_proc.port, "--push-private").start() for _ in range(2)]
    yield procs
    for proc in procs:
        proc.stop()


def configure(H, queue="jobs", **attributes) -> dict:
    return v2_json(post(H, f"/config/{quote(queue)}",
                        {k: str(v) for k, v in attributes.items()}))


def add(H, value, queue="jobs") -> str:
    reply = post(H, f"/q/{quote(queue)}", {"value": value})
    assert reply.status == 200, reply.body
    return reply.body.decode().strip()


def logged(servers, text: str) -> bool:
    return any(text in s.log() for s in servers)


def due_in(redis, queue: str, key: str) -> int | None:
    """Milliseconds until `key` is due again (its score in the delayed set), None when it is
    not delayed."""
    score = redis("ZSCORE", f"{queue}:delayed", key)
    return None if score is None else int(float(score)) - redis_ms(redis)


def test_a_2xx_acks_with_the_documented_request(servers, target, redis):
    H = servers[0].url
    configure(H, "jobs/é", push_url=target.url("/work?x=1"), push_auth="Bearer s3cret",
              push_type="application/json")
    key = add(H, '{"job": "é"}', queue="jobs/é")
    [got] = wait_until(lambda: target.paths("/work?x=1"), what="the push")
    assert got.body == '{"job": "é"}'.encode()
    headers = got.headers
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["restmq-queue"] == "jobs/%C3%A9"
    assert headers["restmq-key"] == "jobs/%C3%A9:1" and key == "jobs/é:1"
    assert headers["restmq-attempt"] == "1"
    assert headers["user-agent"].startswith("RestMQ/")
    assert headers["host"] == f"127.0.0.1:{target.port}"
    wait_until(lambda: redis("ZCARD", "jobs/é:inflight") == 0, what="the ack")
    assert redis("LLEN", "jobs/é:queue") == 0 and redis("HLEN", "jobs/é:deliveries") == 0


@pytest.mark.parametrize("answer,outcome,retry_after,pause", [
    ((500, {}, b"no"), "http_error", None, None),
    ((429, {}, b""), "http_error", None, 1),
    ((429, {"Retry-After": "20"}, b""), "http_error", 20, 20),
    ((503, {"Retry-After": "99999"}, b""), "http_error", 3600, 300),
    ((302, {"Location": "/elsewhere"}, b""), "http_error", None, None),
    (RESET, "connect_error", None, None),
])
def test_a_failed_attempt_is_released_with_jittered_backoff(servers, target, redis, answer,
                                                            outcome, retry_after, pause):
    """backoff_min 10 s: the first retry is due 5 to 10 s later (the jitter), or at the
    Retry-After; a 429 or 503 also sets the bucket to -push_rate * pause tokens."""
    H = servers[0].url
    target.behave = lambda r: answer
    configure(H, push_url=target.url(), backoff_min=10, push_rate=2)
    key = add(H, "v")
    wait_until(lambda: target.paths("/work"), what="the attempt")
    left = wait_until(lambda: due_in(redis, "jobs", key), what="the release")
    low, high = (5000, 10000) if retry_after is None else (retry_after * 1000, retry_after * 1000)
    assert low - 1500 <= left <= high, left
    wait_until(lambda: logged(servers, f"push of {key}: {outcome}"), what="the outcome logged")
    assert redis("HGET", "jobs:deliveries", key) == "1"
    tokens = redis("HGET", "jobs:bucket", "tokens")
    if pause is None:
        assert float(tokens) >= 0
    else:
        assert float(tokens) == pytest.approx(-2 * pause, abs=0.01)
    assert not target.paths("/elsewhere")  # the redirect is not followed
    assert len(target.requests) == 1


def test_a_target_that_hangs_past_push_timeout_is_a_timeout(servers, target, redis):
    H = servers[0].url
    target.behave = lambda r: HANG
    configure(H, push_url=target.url(), push_timeout=1, backoff_min=10)
    key = add(H, "v")
    wait_until(lambda: target.paths("/work"), what="the attempt")
    wait_until(lambda: due_in(redis, "jobs", key), timeout=5, what="the release after 1 s")
    wait_until(lambda: logged(servers, f"push of {key}: timeout"), what="the outcome logged")
    target.release()


def test_a_10_mib_reply_is_not_read_to_its_end(servers, target, redis):
    H = servers[0].url
    target.behave = lambda r: BIG
    configure(H, push_url=target.url())
    add(H, "v")
    wait_until(lambda: target.big_sent, what="the reply cut short")
    assert target.big_sent[0] < BIG_SIZE
    wait_until(lambda: redis("ZCARD", "jobs:inflight") == 0 and
               redis("EXISTS", "jobs:delayed") == 0, what="the ack")


def test_max_attempts_dead_letters_after_the_last_failure(servers, target, redis):
    H = servers[0].url
    target.behave = lambda r: (500, {}, b"")
    configure(H, push_url=target.url(), max_attempts=3, dead_letter="jobs.dead",
              backoff_min=0.2, backoff_max=0.4)
    key = add(H, "v")
    wait_until(lambda: redis("LLEN", "jobs.dead:queue") == 1, what="the dead letter")
    attempts = [r.headers["restmq-attempt"] for r in target.paths("/work")]
    assert attempts == ["1", "2", "3"]
    gaps = [b.at - a.at for a, b in zip(target.requests, target.requests[1:])]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # 0.2 * [0.5, 1], then 0.4 * [0.5, 1]
    origin = json.loads(redis("HGET", "jobs.dead:origin", "jobs.dead:1"))
    # The origin record says why it died: the pushes failed (a worker's release says
    # `released`, test_leases.py).
    assert (origin["key"], origin["deliveries"], origin["reason"]) == (key, 3, "push_failed")
    assert redis("EXISTS", key) == 0
    # The record still leads a redrive back to the push queue, which pushes it again.
    target.behave = lambda r: (204, {}, b"")
    redriven = v2_json(post(H, "/redrive/jobs.dead", {}))
    assert redriven["moved"] == [{"from": "jobs.dead:1", "to": key}]
    wait_until(lambda: len(target.paths("/work")) == 4, what="the push after the redrive")
    assert target.paths("/work")[-1].headers["restmq-attempt"] == "1"


def test_rate_and_burst_hold_across_two_processes(servers, target, redis):
    """1,000 messages at push_rate 50, push_burst 10: in every window of t >= 1 s the target
    sees at most (10 + 50 t) * 1.1 requests."""
    H = servers[0].url
    configure(H, push_url=target.url(), push_rate=50, push_burst=10, push_concurrency=100)
    values = [f"m{i}" for i in range(1000)]
    for i in range(0, 1000, 100):
        reply = request(H, "POST", "/batch/jobs", body=json.dumps(values[i:i + 100]))
        assert reply.status == 200, reply.body
    wait_until(lambda: len(target.requests) >= 1000, timeout=60, what="1,000 pushes")
    times = sorted(r.at for r in target.requests)
    for i, start in enumerate(times):
        for window in (1, 2, 5, 10):
            n = bisect.bisect_right(times, start + window) - i
            assert n <= (10 + 50 * window) * 1.1, (window, n)
    assert sorted(r.body.decode() for r in target.requests) == sorted(values)


def test_concurrency_holds_across_two_processes(servers, target, redis):
    H = servers[0].url
    target.behave = lambda r: (time.sleep(0.2), (200, {}, b""))[1]
    configure(H, push_url=target.url(), push_rate=1000, push_burst=100, push_concurrency=3)
    for i in range(40):
        add(servers[i % 2].url, f"m{i}")
    wait_until(lambda: len(target.requests) >= 40, timeout=30, what="40 pushes")
    assert target.max_open <= 3
    assert target.max_open >= 2  # the limit was reached, not merely respected


def test_pre_hook_vetoes_and_post_hook_records(servers, target, redis):
    H = servers[0].url
    vetoed = set()

    def behave(r):
        if r.path == "/pre":
            note = json.loads(r.body)
            return (403, {}, b"") if note["key"] in vetoed else (204, {}, b"")
        return (200, {}, b"")

    target.behave = behave
    configure(H, push_url=target.url(), pre_hook=target.url("/pre"),
              post_hook=target.url("/post"), backoff_min=30)
    vetoed.add("jobs:1")
    add(H, "first")
    wait_until(lambda: due_in(redis, "jobs", "jobs:1"), what="the veto's release")
    assert logged(servers, "push of jobs:1: pre_hook")
    [pre] = target.paths("/pre")
    assert json.loads(pre.body) == {"queue": "jobs", "key": "jobs:1", "attempt": 1}
    add(H, "second")
    wait_until(lambda: len(target.paths("/post")) == 2, what="two post hooks")
    assert [r.body for r in target.paths("/work")] == [b"second"]
    notes = sorted((json.loads(r.body) for r in target.paths("/post")), key=lambda n: n["key"])
    assert notes == [
        {"queue": "jobs", "key": "jobs:1", "attempt": 1, "outcome": "retry", "status": None},
        {"queue": "jobs", "key": "jobs:2", "attempt": 1, "outcome": "done", "status": 200}]


def test_hook_failures(servers, target, redis):
    """A pre hook that cannot be reached fails the attempt; a post hook that fails changes
    nothing (the message was acked)."""
    H = servers[0].url
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once it is closed
    target.behave = lambda r: (500, {}, b"") if r.path == "/post" else (200, {}, b"")
    configure(H, push_url=target.url(), pre_hook=f"http://127.0.0.1:{closed}/pre",
              backoff_min=30)
    add(H, "a")
    wait_until(lambda: due_in(redis, "jobs", "jobs:1"), what="the failed pre hook's release")
    assert logged(servers, "push of jobs:1: pre_hook") and not target.paths("/work")
    configure(H, unset="pre_hook", post_hook=target.url("/post"))
    add(H, "b")
    wait_until(lambda: target.paths("/post"), what="the post hook")
    wait_until(lambda: redis("ZCARD", "jobs:inflight") == 0, what="the ack")
    assert [r.body for r in target.paths("/work")] == [b"b"]


def test_control_stop_pauses_dispatch_and_start_resumes_it(servers, target, redis):
    H = servers[0].url
    configure(H, push_url=target.url("/a"))
    configure(H, "other", push_url=target.url("/b"))
    post(H, "/control/jobs", {"status": "stop"})
    add(H, "held")
    time.sleep(1.2)  # a sweep of each process passes
    add(H, "marker", queue="other")
    wait_until(lambda: target.paths("/b"), what="the marker's push")
    assert not target.paths("/a")
    post(H, "/control/jobs", {"status": "start"})
    wait_until(lambda: target.paths("/a"), timeout=0.9, what="the push at start (wake)")
