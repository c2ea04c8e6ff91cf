"""Per-queue configuration and state over real HTTP (docs/http-api.md#queue-configuration):
`/config/<q>` read, set, unset and clear with the record each leaves in Redis, and `/info/<q>`
on a queue never used and on one with messages pending, in flight, delayed and dead."""
from __future__ import annotations

import pytest

from tests.http_client import delete, get, post
from tests.util import redis_ms, snapshot, v2_json

DEFAULTS = {"ttl": None, "delay": 0, "max_message": None, "lease": 30, "max_attempts": 0,
            "dead_letter": None, "dedup_window": 300, "push_url": None, "push_auth": None,
            "push_type": "text/plain; charset=utf-8", "push_timeout": 30, "push_rate": 10,
            "push_burst": 10, "push_concurrency": 10, "backoff_min": 1, "backoff_max": 300,
            "pre_hook": None, "post_hook": None}


def test_config_of_an_unconfigured_queue_is_every_default_and_writes_nothing(H, redis):
    body = v2_json(get(H, "/config/jobs"))
    assert body == {"queue": "jobs", "config": DEFAULTS, "set": []}
    assert redis("KEYS", "*") == []


def test_config_set_stores_the_attributes_as_integers(H, redis):
    body = v2_json(post(H, "/config/jobs", {
        "ttl": "0060", "delay": "0", "max_message": "1048576", "lease": "43200",
        "max_attempts": "1000", "dead_letter": "jobs.dead", "dedup_window": "604800",
        "callback": "cb", "other": "ignored"}))
    config = {"ttl": 60, "delay": 0, "max_message": 1048576, "lease": 43200,
              "max_attempts": 1000, "dead_letter": "jobs.dead", "dedup_window": 604800}
    assert body == {"queue": "jobs", "config": {**DEFAULTS, **config}, "set": sorted(config)}
    flat = redis("HGETALL", "jobs:config")
    assert dict(zip(flat[::2], flat[1::2])) == {k: str(v) for k, v in config.items()}
    assert v2_json(get(H, "/config/jobs")) == body
    # Configuring registers nothing: the queue has no message and no other key.
    assert sorted(redis("KEYS", "*")) == ["jobs:config"]


def test_config_merges_unsets_and_ignores_empty_values(H, redis):
    v2_json(post(H, "/config/jobs", {"lease": "5", "ttl": "9"}))
    body = v2_json(post(H, "/config/jobs", {"delay": "3", "ttl": "", "unset": "lease,lease"}))
    assert body == {"queue": "jobs", "config": {**DEFAULTS, "ttl": 9, "delay": 3},
                    "set": ["delay", "ttl"]}
    body = v2_json(post(H, "/config/jobs", {"unset": "ttl,max_attempts"}))
    assert body == {"queue": "jobs", "config": {**DEFAULTS, "delay": 3}, "set": ["delay"]}
    before = snapshot(redis)
    assert v2_json(post(H, "/config/jobs")) == body  # nothing given: a read
    assert snapshot(redis) == before


def test_config_delete_removes_the_record(H, redis):
    v2_json(post(H, "/config/jobs", {"max_attempts": "2", "dead_letter": "d"}))
    assert v2_json(delete(H, "/config/jobs")) == {"queue": "jobs", "deleted": True}
    assert redis("EXISTS", "jobs:config") == 0
    assert v2_json(delete(H, "/config/jobs")) == {"queue": "jobs", "deleted": False}
    assert v2_json(get(H, "/config/jobs")) == {"queue": "jobs", "config": DEFAULTS, "set": []}
    assert redis("KEYS", "*") == []


def test_max_attempts_needs_a_dead_letter_queue(H, redis):
    """Checked against the stored record in the script, before anything is written."""
    v2_json(post(H, "/config/jobs", {"lease": "5"}))
    before = snapshot(redis)
    for form in ({"max_attempts": "3"}, {"max_attempts": "3", "lease": "9"}):
        reply = post(H, "/config/jobs", form)
        assert (reply.status, reply.json) == (400, {"error": "invalid argument: max_attempts"})
    v2_json(post(H, "/config/jobs", {"max_attempts": "3", "dead_letter": "d"}))
    reply = post(H, "/config/jobs", {"unset": "dead_letter"})
    assert (reply.status, reply.json) == (400, {"error": "invalid argument: max_attempts"})
    v2_json(post(H, "/config/jobs", {"max_attempts": "0", "unset": "dead_letter"}))
    v2_json(post(H, "/config/jobs", {"unset": "max_attempts"}))
    assert snapshot(redis) == before


def test_info_of_a_queue_never_used(H, redis):
    body = v2_json(get(H, "/info/jobs"))
    assert body == {"queue": "jobs", "pending": 0, "inflight": 0, "delayed": 0, "status": "",
                    "policy": "broadcast", "dead_letter": None, "next_due": None,
                    "counters": None, "priority": {}, "added": 0, "subscribers": 0,
                    "consumers": {"comet": 0, "websocket": 0, "sse": 0, "waiter": 0}}
    assert redis("KEYS", "*") == []


def test_info_counts_every_state(H, redis):
    for value in "abcd":
        assert post(H, "/q/jobs", {"value": value}).status == 200
    assert post(H, "/p/jobs", {"policy": "roundrobin"}).status == 200
    assert post(H, "/control/jobs", {"status": "stop"}).status == 200
    claimed = v2_json(post(H, "/claim/jobs", {"limit": "3", "lease": "600"}))["messages"]
    r1, r2, _ = (m["receipt"] for m in claimed)
    v2_json(post(H, "/release/jobs", {"receipt": r2, "delay": "100"}))  # delayed
    v2_json(post(H, "/config/jobs", {"max_attempts": "1", "dead_letter": "jobs.dead"}))
    v2_json(post(H, "/release/jobs", {"receipt": r1}))  # its last attempt: dead-lettered
    lease_until = claimed[2]["lease_until"]
    body = v2_json(get(H, "/info/jobs"))
    assert body == {"queue": "jobs", "pending": 1, "inflight": 1, "delayed": 1, "status": 0,
                    "policy": "roundrobin", "dead_letter": {"queue": "jobs.dead", "pending": 1},
                    "next_due": body["next_due"], "counters": None, "priority": {},
                    "added": 4, "subscribers": 0,
                    "consumers": {"comet": 0, "websocket": 0, "sse": 0, "waiter": 0}}
    # The next due time is a lower bound: the lease of jobs:3 at the latest.
    assert redis_ms(redis) / 1000 - 1 < body["next_due"] <= lease_until


def test_info_counts_pending_messages_per_priority_level_and_every_add(H, redis):
    """Levels without a pending message are left out; `added` is the queue's key counter, so
    it keeps counting what consumers took."""
    for value, priority in (("a", "0"), ("b", "5"), ("c", "5"), ("d", "9"), ("e", "2")):
        assert post(H, "/q/jobs", {"value": value, "priority": priority}).status == 200
    assert get(H, "/q/jobs").status == 200  # takes d, the only one of priority 9
    body = v2_json(get(H, "/info/jobs"))
    assert (body["pending"], body["priority"], body["added"]) == (4, {"5": 2, "2": 1}, 5)
    assert int(redis("GET", "jobs:UUID")) == 5
    assert redis("ZCARD", "jobs:priority") == 3 and redis("LLEN", "jobs:queue") == 1


@pytest.mark.parametrize("name,bad,good", [
    ("ttl", ["0", "2147483648", "-1", "1.5", "x"], ["1", "2147483647"]),
    ("delay", ["2592001", "-0", " 1"], ["0", "2592000"]),
    ("max_message", ["0", "1048577"], ["1", "1048576"]),
    ("lease", ["0", "43201", "1e3"], ["1", "43200"]),
    ("max_attempts", ["1001", "٣"], ["0"]),
    ("dead_letter", ["jobs", "a b", "QUEUESET", "x:queue", "a" * 257], ["jobs.dead", "a" * 256]),
    ("dedup_window", ["0", "604801"], ["1", "604800"]),
])
def test_each_attribute_has_its_bounds(H, redis, name, bad, good):
    for value in bad:
        reply = post(H, "/config/jobs", {name: value})
        assert (reply.status, reply.json) == (400, {"error": f"invalid argument: {name}"}), value
        assert reply.header("Content-Type") == "application/json"
    assert redis("KEYS", "*") == []
    for value in good:
        body = v2_json(post(H, "/config/jobs", {name: value}))
        assert body["config"][name] == (value if name == "dead_letter" else int(value))
