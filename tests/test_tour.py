"""The worked example of docs/http-api.md#worked-example, steps 1-11 and 13-21, driven with
curl against a real server and Redis."""
from __future__ import annotations

import json
import subprocess

import pytest


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
