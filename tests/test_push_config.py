"""The push attributes of `/config/<q>` over real HTTP: stored and read back (push_auth as
"***"), PUSHSET kept by set, unset and DELETE, the backoff cross rule, and every form of a
target on this host or a private network refused without `--push-private` (and allowed with
it), before anything is written."""
from __future__ import annotations

import json

import pytest

from tests.conftest import ServerProcess
from tests.http_client import delete, get, post
from tests.util import snapshot, v2_json

PUSH = {"push_url": "https://example.com/work?x=1", "push_auth": "Bearer s3cret",
        "push_type": "application/json", "push_timeout": "0010", "push_rate": "2.5",
        "push_burst": "20", "push_concurrency": "3", "backoff_min": "0.5",
        "backoff_max": "60", "pre_hook": "http://93.184.216.34:8080/pre",
        "post_hook": "http://example.org/post"}

def refusal(reply) -> str:
    assert reply.status == 400, (reply.status, reply.body)
    return json.loads(reply.body)["error"]


# Targets that name this host or a private network without DNS, in the forms a resolver
# or an HTTP client accepts.
REFUSED = [
    "http://127.0.0.1/", "http://127.0.0.1:8080/x", "http://127.1/", "http://127.0.1/",
    "http://2130706433/", "http://0x7f000001/", "http://0x7f.1/", "http://0177.0.0.1/",
    "http://017700000001/", "http://127.0.0.1./", "http://localhost/", "http://LOCALHOST:80/",
    "http://localhost./", "http://a.b.localhost/", "http://[::1]/", "http://[::1]:8080/",
    "http://[0:0:0:0:0:0:0:1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/",
    "http://[::ffff:10.0.0.1]/", "http://[::127.0.0.1]/", "http://[2002:7f00:1::]/",
    "http://[64:ff9b::a00:1]/", "http://10.0.0.1/", "http://10.255.255.255/",
    "http://172.16.0.1/", "http://172.31.1.1/", "http://192.168.1.1/", "http://0xc0a80101/",
    "http://[fc00::1]/", "http://[fd12:3456::1]/", "http://169.254.169.254/latest/",
    "http://[fe80::1]/", "http://100.64.0.1/", "http://100.127.255.254/", "http://0.0.0.0/",
    "http://0/", "http://[::]/", "http://08.1.1.1/",
]
# Not URLs a queue may push to, whatever the flag.
MALFORMED = [
    "", "example.com/x", "ftp://example.com/", "http://user:pw@example.com/",
    "http://@example.com/", "http:///x", "http://example.com:0/", "http://example.com:99999/",
    "http://exa mple.com/", "http://ex%61mple.com/", "http://[::1/", "http://é.com/",
    "https://example.com/" + "a" * 2048,
]


def test_push_attributes_are_stored_and_read_back_with_the_secret_hidden(H, redis):
    body = v2_json(post(H, "/config/jobs", PUSH))
    shown = body["config"]
    assert shown["push_auth"] == "***"
    assert (shown["push_timeout"], shown["push_rate"], shown["push_burst"],
            shown["push_concurrency"], shown["backoff_min"], shown["backoff_max"]) == \
        (10, 2.5, 20, 3, 0.5, 60)
    assert (shown["push_url"], shown["push_type"], shown["pre_hook"], shown["post_hook"]) == \
        (PUSH["push_url"], "application/json", PUSH["pre_hook"], PUSH["post_hook"])
    assert body["set"] == sorted(PUSH)
    assert v2_json(get(H, "/config/jobs")) == body
    stored = dict(zip(*[iter(redis("HGETALL", "jobs:config"))] * 2))
    assert stored["push_auth"] == "Bearer s3cret" and stored["push_timeout"] == "10"
    assert redis("SMEMBERS", "PUSHSET") == ["jobs"]


def test_pushset_follows_push_url_through_unset_and_delete(H, redis):
    v2_json(post(H, "/config/a", {"push_url": "http://example.com/"}))
    v2_json(post(H, "/config/b", {"push_url": "http://example.com/", "lease": "5"}))
    assert sorted(redis("SMEMBERS", "PUSHSET")) == ["a", "b"]
    v2_json(post(H, "/config/a", {"unset": "push_url"}))
    assert redis("SMEMBERS", "PUSHSET") == ["b"]
    assert v2_json(delete(H, "/config/b")) == {"queue": "b", "deleted": True}
    assert redis("EXISTS", "PUSHSET") == 0
    v2_json(post(H, "/config/c", {"lease": "5"}))  # no push_url: not a push queue
    assert redis("EXISTS", "PUSHSET") == 0


def test_backoff_min_may_not_exceed_backoff_max(H, redis):
    v2_json(post(H, "/config/jobs", {"backoff_max": "10"}))
    before = snapshot(redis)
    for args, fault in (({"backoff_min": "10.5"}, "backoff_min"),
                        ({"backoff_min": "20", "backoff_max": "15"}, "backoff_min"),
                        ({"unset": "backoff_max", "backoff_min": "301"}, "backoff_min")):
        assert refusal(post(H, "/config/jobs", args)) == f"invalid argument: {fault}", args
    v2_json(post(H, "/config/other", {"backoff_min": "5"}))
    assert refusal(post(H, "/config/other", {"backoff_max": "4"})) == \
        "invalid argument: backoff_max"
    redis("DEL", "other:config")
    assert snapshot(redis) == before
    v2_json(post(H, "/config/jobs", {"backoff_min": "10"}))  # equal is fine


@pytest.mark.parametrize("name,value", [
    ("push_auth", "a" * 1025), ("push_auth", "tab\there"), ("push_auth", "é"),
    ("push_type", "text"), ("push_type", "a/" + "b" * 127), ("push_type", "t/p; x=\x01"),
    ("push_timeout", "0"), ("push_timeout", "601"), ("push_rate", "0.001"),
    ("push_rate", "1000.5"), ("push_rate", "-1"), ("push_rate", "1e3"), ("push_burst", "0"),
    ("push_burst", "1001"), ("push_concurrency", "0"), ("push_concurrency", "1001"),
    ("backoff_min", "0.05"), ("backoff_max", "86400.5"), ("backoff_min", "nan")])
def test_bad_push_values_are_refused(H, redis, name, value):
    assert refusal(post(H, "/config/jobs", {name: value})) == f"invalid argument: {name}"
    assert redis("KEYS", "*") == []


def test_every_private_or_malformed_target_is_refused_without_push_private(H, redis):
    for name in ("push_url", "pre_hook", "post_hook"):
        for url in REFUSED + MALFORMED:
            if not url:
                continue  # an empty value is ignored, like every attribute's
            assert refusal(post(H, "/config/jobs", {name: url})) == \
                f"invalid argument: {name}", url
    assert redis("KEYS", "*") == []


@pytest.fixture(scope="module")
def private_server(redis_proc):
    proc = ServerProcess(redis_proc.port, "--push-private", "--no-push").start()
    yield proc
    proc.stop()


def test_push_private_allows_local_targets_but_not_malformed_ones(private_server, redis):
    H = private_server.url
    for url in REFUSED:
        body = v2_json(post(H, "/config/jobs", {"push_url": url}))
        assert body["config"]["push_url"] == url
    for url in MALFORMED[1:]:
        assert refusal(post(H, "/config/jobs", {"pre_hook": url})) == \
            "invalid argument: pre_hook", url
