"""The refusals of the lease and configuration routes over real HTTP (docs/http-api.md#errors,
#processing-order): every error row with its status and reason, in the order the checks run,
404 for the bare prefixes, 405 with `Allow`, 413, 503 without Redis; and a refused request
leaves Redis exactly as it was."""
from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlsplit

import pytest

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import post, request
from tests.util import snapshot, v2_json, wait_until

RECEIPT = "1.1.0123456789abcdef"
MANY = ",".join([RECEIPT] * 101)
HUNDRED = ",".join([RECEIPT] * 100)


@pytest.fixture
def busy(H, redis):
    """Queue `jobs` configured with a dead-letter queue, one message in flight (long lease),
    one pending and one dead letter: state that a wrongly applied write would change."""
    v2_json(post(H, "/config/jobs", {"max_attempts": "1", "dead_letter": "jobs.dead"}))
    for value in ("a", "b", "c"):
        assert post(H, "/q/jobs", {"value": value}).status == 200
    claimed = v2_json(post(H, "/claim/jobs", {"limit": "2", "lease": "600"}))
    v2_json(post(H, "/release/jobs", {"receipt": claimed["messages"][0]["receipt"]}))
    return snapshot(redis)


ERRORS = [
    # (method, path, form, status, reason)
    ("POST", "/claim/jobs", {"limit": "0"}, 400, "invalid argument: limit"),
    ("POST", "/claim/jobs", {"limit": "101"}, 400, "invalid argument: limit"),
    ("POST", "/claim/jobs", {"limit": "1.0"}, 400, "invalid argument: limit"),
    ("POST", "/claim/jobs", {"limit": "-1"}, 400, "invalid argument: limit"),
    ("POST", "/claim/jobs", {"limit": "1" * 5000}, 400, "invalid argument: limit"),
    ("POST", "/claim/jobs", {"lease": "0"}, 400, "invalid argument: lease"),
    ("POST", "/claim/jobs", {"lease": "43201"}, 400, "invalid argument: lease"),
    ("POST", "/claim/jobs", {"wait": "21"}, 400, "invalid argument: wait"),
    ("POST", "/claim/jobs", {"wait": "x"}, 400, "invalid argument: wait"),
    ("POST", "/claim/jobs?limit=%FF", None, 400, "invalid argument: limit"),
    ("POST", "/claim/jobs", {"limit": "0", "lease": "0", "wait": "99"}, 400,
     "invalid argument: limit"),
    ("POST", "/claim/jobs", {"lease": "0", "wait": "99"}, 400, "invalid argument: lease"),
    ("POST", "/claim/", {"limit": "0"}, 400, "invalid queue name"),
    ("POST", "/claim/a%20b", None, 400, "invalid queue name"),
    ("POST", "/claim/QUEUESET", None, 400, "invalid queue name"),
    ("POST", "/claim/x:queue", None, 400, "invalid queue name"),
    ("POST", "/claim/%FF", None, 400, "invalid queue name"),
    ("POST", "/ack/jobs", None, 400, "missing argument: receipt"),
    ("POST", "/ack/jobs", {"receipt": ""}, 400, "missing argument: receipt"),
    ("POST", "/ack/jobs", {"receipt": MANY}, 400, "invalid argument: receipt"),
    ("POST", "/ack/jobs?receipt=%FF", None, 400, "invalid argument: receipt"),
    ("POST", "/ack/", {"receipt": RECEIPT}, 400, "invalid queue name"),
    ("POST", "/extend/jobs", None, 400, "missing argument: receipt"),
    ("POST", "/extend/jobs", {"lease": "0"}, 400, "missing argument: receipt"),
    ("POST", "/extend/jobs", {"receipt": RECEIPT}, 400, "missing argument: lease"),
    ("POST", "/extend/jobs", {"receipt": RECEIPT, "lease": "0"}, 400, "invalid argument: lease"),
    ("POST", "/extend/jobs", {"receipt": RECEIPT, "lease": "43201"}, 400,
     "invalid argument: lease"),
    ("POST", "/extend/jobs", {"receipt": MANY, "lease": "x"}, 400, "invalid argument: receipt"),
    ("POST", "/extend/", {"receipt": RECEIPT, "lease": "5"}, 400, "invalid queue name"),
    ("POST", "/release/jobs", {"delay": "5"}, 400, "missing argument: receipt"),
    ("POST", "/release/jobs", {"receipt": RECEIPT, "delay": "2592001"}, 400,
     "invalid argument: delay"),
    ("POST", "/release/jobs", {"receipt": RECEIPT, "delay": "-1"}, 400,
     "invalid argument: delay"),
    ("POST", "/release/jobs", {"receipt": MANY, "delay": "x"}, 400, "invalid argument: receipt"),
    ("POST", "/release/", {"receipt": RECEIPT}, 400, "invalid queue name"),
    ("POST", "/redrive/jobs.dead", {"to": "jobs.dead"}, 400, "invalid argument: to"),
    ("POST", "/redrive/jobs.dead", {"to": "a b"}, 400, "invalid argument: to"),
    ("POST", "/redrive/jobs.dead", {"to": "AUTHKEY:x"}, 400, "invalid argument: to"),
    ("POST", "/redrive/jobs.dead", {"limit": "0"}, 400, "invalid argument: limit"),
    ("POST", "/redrive/jobs.dead", {"limit": "1001"}, 400, "invalid argument: limit"),
    ("POST", "/redrive/jobs.dead", {"to": "jobs.dead", "limit": "0"}, 400,
     "invalid argument: to"),
    ("POST", "/redrive/", None, 400, "invalid queue name"),
    ("POST", "/config/jobs", {"lease": "0"}, 400, "invalid argument: lease"),
    ("POST", "/config/jobs", {"unset": "nope"}, 400, "invalid argument: unset"),
    ("POST", "/config/jobs", {"unset": "lease,"}, 400, "invalid argument: unset"),
    ("POST", "/config/jobs", {"unset": "lease", "lease": "5"}, 400, "invalid argument: unset"),
    ("POST", "/config/jobs", {"ttl": "0", "unset": "nope"}, 400, "invalid argument: ttl"),
    ("POST", "/config/jobs", {"dedup_window": "0", "ttl": "0"}, 400, "invalid argument: ttl"),
    ("POST", "/config/jobs", {"unset": "dead_letter"}, 400, "invalid argument: max_attempts"),
    ("POST", "/config/jobs", {"dead_letter": "jobs"}, 400, "invalid argument: dead_letter"),
    ("POST", "/config/jobs", {"max_message": "1048577"}, 400,
     "invalid argument: max_message"),
    ("GET", "/config/", None, 400, "invalid queue name"),
    ("POST", "/config/", {"lease": "0"}, 400, "invalid queue name"),
    ("DELETE", "/config/", None, 400, "invalid queue name"),
    ("GET", "/info/", None, 400, "invalid queue name"),
    ("GET", "/info/a%09b", None, 400, "invalid queue name"),
]


@pytest.mark.parametrize("method,path,form,status,reason", ERRORS,
                         ids=[f"{e[0]} {e[1][:30]} {e[4]}" for e in ERRORS])
def test_error_rows_write_nothing(H, redis, busy, method, path, form, status, reason):
    reply = request(H, method, path, form=form)
    assert (reply.status, reply.body) == (status, json.dumps({"error": reason}).encode())
    assert reply.header("Content-Type") == "application/json"
    assert snapshot(redis) == busy


def test_the_bounds_themselves_are_accepted(H, redis, busy):
    v2_json(post(H, "/claim/jobs", {"limit": "100", "lease": "43200", "wait": "20"}))
    v2_json(post(H, "/ack/jobs", {"receipt": HUNDRED}))
    v2_json(post(H, "/extend/jobs", {"receipt": HUNDRED, "lease": "1"}))
    v2_json(post(H, "/release/jobs", {"receipt": HUNDRED, "delay": "2592000"}))
    v2_json(post(H, "/redrive/jobs.dead", {"limit": "1000", "to": "elsewhere"}))


ROUTES = {"/claim/": "POST", "/ack/": "POST", "/extend/": "POST", "/release/": "POST",
          "/redrive/": "POST", "/config/": "GET, POST, DELETE", "/info/": "GET"}
METHODS = ("GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS")


@pytest.mark.parametrize("prefix", list(ROUTES))
def test_other_methods_are_405_with_allow(H, redis, prefix):
    allowed = ROUTES[prefix]
    for method in METHODS:
        if method in allowed.split(", "):
            continue
        reply = request(H, method, prefix + "jobs?limit=0")
        assert reply.status == 405, method
        assert reply.header("Allow") == allowed
        if method != "HEAD":
            assert json.loads(reply.body) == {"error": "method not allowed"}
    assert redis("KEYS", "*") == []


@pytest.mark.parametrize("prefix", list(ROUTES))
def test_there_are_no_slash_redirects(H, redis, prefix):
    for method in ("GET", "POST"):
        reply = request(H, method, prefix.rstrip("/"))
        assert (reply.status, reply.json) == (404, {"error": "not found"})
    reply = request(H, "POST", prefix.rstrip("/") + "jobs")  # /claimjobs
    assert reply.status == 404


def test_a_body_over_max_body_is_413_before_anything(H, redis, busy):
    parts = urlsplit(H)
    for path in ("/claim/jobs", "/config/jobs", "/ack/"):
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n"
                         "Content-Type: application/x-www-form-urlencoded\r\n"
                         "Content-Length: 1048577\r\n\r\n".encode())
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert (response.status, json.loads(response.read())) == \
                (413, {"error": "request body too large"}), path
    assert snapshot(redis) == busy


def test_without_redis_every_route_answers_503():
    redis = RedisProcess().start()
    server = ServerProcess(redis.port)
    try:
        server.start()
        assert v2_json(request(server.url, "GET", "/info/jobs"))["pending"] == 0
        redis.stop()
        calls = [("POST", "/claim/jobs", None), ("POST", "/ack/jobs", {"receipt": RECEIPT}),
                 ("POST", "/extend/jobs", {"receipt": RECEIPT, "lease": "5"}),
                 ("POST", "/release/jobs", {"receipt": RECEIPT}),
                 ("POST", "/redrive/jobs.dead", None), ("GET", "/config/jobs", None),
                 ("POST", "/config/jobs", {"lease": "5"}), ("DELETE", "/config/jobs", None),
                 ("GET", "/info/jobs", None)]

        def unavailable():
            return request(server.url, "POST", "/claim/jobs", timeout=20).status == 503

        wait_until(unavailable, 20, "a 503 once Redis is gone", interval=0.1)
        for method, path, form in calls:
            reply = request(server.url, method, path, form=form, timeout=20)
            assert (reply.status, reply.json) == (503, {"error": "redis unavailable"}), path
            assert reply.header("Content-Type") == "application/json"
        # Arguments are still checked first: a bad request is 400 whatever Redis does.
        reply = request(server.url, "POST", "/claim/jobs", form={"limit": "0"})
        assert (reply.status, reply.json) == (400, {"error": "invalid argument: limit"})
    finally:
        server.stop()
        redis.stop()
    assert "Traceback" not in server.final_log, server.final_log
