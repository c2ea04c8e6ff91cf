"""The worked example of docs/http-api.md#worked-example, steps 1-11 and 13-21, and the walks
through README.rst's "Reliable workers" and its producer features (delays to peek), driven
with curl against a real server and Redis."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.util import wait_until


def curl(*args: str) -> str:
    out = subprocess.run(["curl", "-s", *args], capture_output=True, check=True, timeout=30)
    return out.stdout.decode("utf-8")


def curl_i(*args: str) -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-case names) and body of `curl -si`."""
    raw = curl("-i", *args)
    head, _, body = raw.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def test_worked_example(H, redis):
    redis_text = f"<Redis Connection: 127.0.0.1:{redis.sock.getpeername()[1]} - 10 connection(s)>"
    assert curl("-d", "queue=test&value=foobar", f"{H}/") == "test:1\r\n"
    step2 = curl("-d", 'body={"cmd":"get","queue":"test"}', f"{H}/queue")
    assert not step2.endswith("\r\n")
    assert json.loads(step2) == {"queue": "test", "value": "foobar", "key": "test:1", "count": 1}
    assert curl("-d", "value=foobar", f"{H}/q/test") == "test:2\r\n"
    step4 = curl(f"{H}/q/test")
    assert step4.endswith("\r\n")
    assert json.loads(step4) == {"key": "test:1", "value": "foobar", "count": 0}
    step5 = curl(f"{H}/control/test")
    assert step5.endswith("\r\n")
    assert json.loads(step5) == {"redis": redis_text, "queue": "test",
                                 "status": {"queue": "test", "status": 1}}
    assert json.loads(curl("-d", "status=stop", f"{H}/control/test")) == {
        "stat": {"queue": "test", "status": 0}}
    assert json.loads(curl(f"{H}/control/test"))["status"]["status"] == 0
    step7 = curl("-d", "status=start", f"{H}/control/test")
    assert step7.endswith("\r\n")
    assert json.loads(step7) == {"stat": {"queue": "test", "status": 1}}
    assert json.loads(curl(f"{H}/control/test"))["status"]["status"] == 1
    step8 = curl("-X", "DELETE", f"{H}/q/test")
    assert step8.endswith("\r\n")
    assert json.loads(step8) == {"queue": "test", "status": 1}
    assert json.loads(curl(f"{H}/p/test")) == {"queue": "test", "value": "broadcast"}
    assert curl("-d", "policy=roundrobin", f"{H}/p/test") == "OK\r\n"
    assert json.loads(curl(f"{H}/p/test")) == {"queue": "test", "value": "roundrobin"}
    assert curl("-d", "policy=broadcast", f"{H}/p/test") == "OK\r\n"
    assert json.loads(curl(f"{H}/p/test")) == {"queue": "test", "value": "broadcast"}

    # Redis after step 11.
    assert redis("GET", "test:UUID") == "2"
    assert redis("GET", "test:1") == "foobar"
    assert redis("GET", "test:1:refcount") == "1"
    assert 0 < redis("TTL", "test:1") <= 3600
    assert 0 < redis("TTL", "test:1:refcount") <= 3600
    assert redis("GET", "test:2") == "foobar"
    assert 0 < redis("TTL", "test:2") <= 3600
    assert redis("SMEMBERS", "QUEUESET") == ["test"]
    assert redis("GET", "queuestat::test") == "1"
    assert redis("GET", "test:queuepolicy") == "1"
    assert redis("EXISTS", "test:queue") == 0

    # Step 12 is the live-delivery issue's; its add would take key 3.
    redis("SET", "test:UUID", "3")

    status, _, body = curl_i("-d", "value=x&ttl=abc", f"{H}/q/test")
    assert (status, json.loads(body)) == (400, {"error": "invalid argument: ttl"})
    assert redis("GET", "test:UUID") == "3"
    status, _, body = curl_i(f"{H}/q/test")
    assert (status, body) == (204, "")
    assert json.loads(curl("-d", 'body={"cmd":"take","queue":"test"}', f"{H}/queue")) == {
        "error": "empty queue"}
    assert json.loads(curl("-d", 'body={"cmd":"foo"}', f"{H}/queue")) == {
        "error": "null resultset"}
    assert curl("-d", "value=123", f"{H}/q/test") == "test:4\r\n"
    assert curl(f"{H}/q/test?callback=cb") == \
        'cb({"key": "test:4", "value": "123", "count": 0});\r\n'
    assert curl("-d", "value=v", f"{H}/q/test?callback=cb") == 'cb("test:5");\r\n'
    step19 = curl(f"{H}/stats/")
    assert not step19.endswith("\r\n")
    assert json.loads(step19) == {
        "queues": {"test": {"name": "test", "len": 1, "status": 1, "policy": 1,
                            "policy_name": "broadcast"}},
        "redis": redis_text, "count": 1}
    status, headers, body = curl_i(f"{H}/stats")
    assert (status, json.loads(body)) == (404, {"error": "not found"})
    assert headers["content-type"] == "application/json"
    status, headers, body = curl_i(f"{H}/")
    assert (status, headers["location"], body) == (302, "/static/index.html", "")


@pytest.mark.parametrize("path", ["/q/test", "/stats/", "/p/test", "/control/test"])
def test_api_replies_carry_no_store_and_csp(H, path):
    _, headers, _ = curl_i(f"{H}{path}")
    assert headers["cache-control"] == "no-store"
    assert headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert "etag" not in headers


def test_reliable_workers_walk_through(H, redis):
    """README.rst, "Reliable workers": steps 1 to 9 with curl. The lease is 1 s instead of 5,
    and instead of `sleep 6` the test waits until the server handed the lapsed lease back."""
    step1 = curl("-d", "lease=1&max_attempts=2&dead_letter=jobs.dead", f"{H}/config/jobs")
    assert not step1.endswith("\r\n")
    assert json.loads(step1) == {
        "queue": "jobs", "config": {"ttl": None, "delay": 0, "max_message": None, "lease": 1,
                                    "max_attempts": 2, "dead_letter": "jobs.dead",
                                    "dedup_window": 300, "push_url": None, "push_auth": None,
                                    "push_type": "text/plain; charset=utf-8",
                                    "push_timeout": 30, "push_rate": 10, "push_burst": 10,
                                    "push_concurrency": 10, "backoff_min": 1,
                                    "backoff_max": 300, "pre_hook": None, "post_hook": None},
        "set": ["dead_letter", "lease", "max_attempts"]}
    assert curl("-d", "value=a", f"{H}/q/jobs") == "jobs:1\r\n"
    step3 = json.loads(curl("-X", "POST", f"{H}/claim/jobs"))
    [leased] = step3["messages"]
    assert (step3["queue"], leased["key"], leased["value"], leased["deliveries"]) == \
        ("jobs", "jobs:1", "a", 1)
    first = leased["receipt"]
    assert first.startswith("1.1.")
    status, _, body = curl_i(f"{H}/q/jobs")
    assert (status, body) == (204, "")
    wait_until(lambda: redis("ZCARD", "jobs:inflight") == 0
               and redis("LRANGE", "jobs:queue", 0, -1) == ["jobs:1"], 10, "the lease to lapse")
    assert json.loads(curl("-d", f"receipt={first}", f"{H}/ack/jobs")) == {
        "queue": "jobs", "acked": [], "stale": [first]}
    [again] = json.loads(curl("-X", "POST", f"{H}/claim/jobs"))["messages"]
    assert (again["key"], again["deliveries"]) == ("jobs:1", 2)
    second = again["receipt"]
    assert second.startswith("1.2.")
    assert json.loads(curl("-d", f"receipt={second}", f"{H}/release/jobs")) == {
        "queue": "jobs", "released": [], "dead_lettered": [second], "stale": []}
    info = json.loads(curl(f"{H}/info/jobs"))
    assert {k: info[k] for k in ("pending", "inflight", "delayed", "dead_letter")} == {
        "pending": 0, "inflight": 0, "delayed": 0,
        "dead_letter": {"queue": "jobs.dead", "pending": 1}}
    step9 = curl("-X", "POST", f"{H}/redrive/jobs.dead")
    assert not step9.endswith("\r\n")
    assert json.loads(step9) == {"queue": "jobs.dead",
                                 "moved": [{"from": "jobs.dead:1", "to": "jobs:1"}],
                                 "remaining": 0, "stopped": None}

    # Redis after step 9: jobs:1 pending again under its own key, no lease or origin left.
    assert redis("LRANGE", "jobs:queue", 0, -1) == ["jobs:1"]
    assert redis("GET", "jobs:1") == "a"
    assert redis("GET", "jobs.dead:UUID") == "1"
    assert sorted(redis("SMEMBERS", "QUEUESET")) == ["jobs", "jobs.dead"]
    for key in ("jobs:inflight", "jobs:deliveries", "jobs.dead:origin", "jobs.dead:queue",
                "jobs.dead:1"):
        assert redis("EXISTS", key) == 0, key


def test_producer_features_walk_through(H, redis):
    """README.rst, "Delayed and scheduled messages" to "Peek": every curl example, in order,
    from an empty Redis (the eta is an hour ahead on Redis's clock instead of tomorrow)."""
    assert curl("-d", "value=send the reminder&delay=600", f"{H}/q/jobs") == "jobs:1\r\n"
    eta = int(redis("TIME")[0]) + 3600
    assert curl("-d", f"value=nightly report&eta={eta}", f"{H}/q/jobs") == "jobs:2\r\n"
    assert curl("-d", "value=routine", f"{H}/q/jobs") == "jobs:3\r\n"
    assert curl("-d", "value=urgent&priority=9", f"{H}/q/jobs") == "jobs:4\r\n"
    assert json.loads(curl(f"{H}/q/jobs")) == {"key": "jobs:4", "value": "urgent", "count": 0}
    key = ("-H", "Idempotency-Key: order-17")
    assert curl(*key, "-d", "value=ship order 17", f"{H}/q/jobs") == "jobs:5\r\n"
    status, headers, body = curl_i(*key, "-d", "value=ship order 17", f"{H}/q/jobs")
    assert (status, headers["idempotent-replayed"], body) == (200, "true", "jobs:5\r\n")
    assert json.loads(curl(*key, "-d", "value=ship order 18", f"{H}/q/jobs")) == {
        "error": "idempotency key reused"}
    batch = '["a", {"value": "b", "ttl": 60}, {"value": "c", "priority": 5}]'
    assert json.loads(curl("--data-binary", batch, f"{H}/batch/jobs")) == {
        "queue": "jobs", "keys": ["jobs:6", "jobs:7", "jobs:8"]}
    refused = '["d", {"value": "e", "delay": -1}]'
    assert json.loads(curl("--data-binary", refused, f"{H}/batch/jobs")) == {
        "error": "invalid argument: messages[1].delay"}
    assert json.loads(curl(f"{H}/peek/jobs?limit=2")) == {
        "queue": "jobs", "messages": [{"key": "jobs:8", "value": "c", "priority": 5},
                                      {"key": "jobs:3", "value": "routine", "priority": 0}],
        "next": "jobs:3"}
    assert json.loads(curl(f"{H}/peek/jobs?limit=2&after=jobs:3")) == {
        "queue": "jobs", "messages": [{"key": "jobs:5", "value": "ship order 17", "priority": 0},
                                      {"key": "jobs:6", "value": "a", "priority": 0}],
        "next": "jobs:6"}
    assert redis("ZRANGE", "jobs:delayed", 0, -1) == ["jobs:1", "jobs:2"]
