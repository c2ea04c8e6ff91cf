"""`--counters`: the per-queue counters the scripts keep in `<q>:counters`, shown by `/info/`,
and the keyspace of a server run without them (the original one, nothing added)."""
from __future__ import annotations

import json
import time

import pytest
import pytest_twisted

from tests.comet import CometClient
from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import get, post, request
from tests.resp import snapshot


@pytest.fixture(scope="module")
def counting_redis():
    """A Redis of its own for the counting server: the session's server counts nothing, and
    its tick would requeue expired leases uncounted."""
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def counting(counting_redis):
    """A server run with --counters."""
    proc = ServerProcess(counting_redis.port, "--counters").start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log()


@pytest.fixture
def credis(counting_redis):
    client = counting_redis.client()
    client("FLUSHALL")
    yield client
    client.close()


def legacy_operations(url: str) -> None:
    """Every kind of original request that writes: adds, the three gets, delete, purge,
    policy, status, XML-RPC, the JSON protocol and a live consumer."""
    for value in ("a", "b", "c", "d", "e"):
        assert post(url, "/q/jobs", {"value": value}).status == 200
    assert get(url, "/q/jobs").json["value"] == "a"  # hard get
    soft = post(url, "/queue", {"body": json.dumps({"cmd": "get", "queue": "jobs"})})
    assert json.loads(soft.body)["value"] == "b"
    take = post(url, "/queue", {"body": json.dumps({"cmd": "take", "queue": "jobs"})})
    assert json.loads(take.body)["value"] == "b"
    deleted = post(url, "/queue", {"body": json.dumps({"cmd": "del", "queue": "jobs",
                                                        "key": "jobs:4"})})
    assert deleted.status == 200 and b"error" not in deleted.body
    assert post(url, "/p/jobs", {"policy": "roundrobin"}).status == 200
    assert post(url, "/control/other", {"status": "stop"}).status == 200
    assert post(url, "/", {"queue": "other", "value": "x"}).status == 200
    assert request(url, "DELETE", "/q/other").status == 200  # purge
    xml = ("<?xml version='1.0'?><methodCall><methodName>set</methodName><params>"
           "<param><value><string>rpc</string></value></param>"
           "<param><value><string>v</string></value></param></params></methodCall>")
    rpc = request(url, "POST", "/xmlrpc", body=xml)
    assert rpc.status == 200 and b"rpc:1" in rpc.body, rpc.body
    comet = CometClient(url, "live")
    try:
        assert post(url, "/q/live", {"value": "pushed"}).status == 200
        assert json.loads(comet.lines(1)[0])["value"] == "pushed"
    finally:
        comet.close()


def test_without_counters_the_original_keyspace_is_kept_exactly(H, redis, counting, credis):
    legacy_operations(H)
    time.sleep(0.2)  # let the live consumer's last pop settle (it is answered already)
    without = snapshot(redis)
    assert not [key for key in without if key.endswith(":counters")]
    legacy_operations(counting.url)
    time.sleep(0.2)
    with_counters = snapshot(credis)
    counted = {key for key in with_counters if key.endswith(":counters")}
    assert counted == {"jobs:counters", "live:counters", "other:counters", "rpc:counters"}
    # The counters are the only difference the flag makes.
    assert {k: v for k, v in with_counters.items() if k not in counted} == without


def info_counters(url: str, queue: str) -> dict | None:
    reply = get(url, f"/info/{queue}")
    assert reply.status == 200, reply.body
    return reply.json["counters"]


def test_info_shows_null_counters_without_the_flag(H, redis):
    assert post(H, "/q/jobs", {"value": "a"}).status == 200
    assert info_counters(H, "jobs") is None
    assert redis("EXISTS", "jobs:counters") == 0


def test_each_operation_counts_under_its_name(counting, credis):
    url = counting.url
    for value in "abcdefgh":
        assert post(url, "/q/jobs", {"value": value}).status == 200
    assert info_counters(url, "jobs") == {"added": 8}
    assert get(url, "/q/jobs").status == 200
    post(url, "/queue", {"body": json.dumps({"cmd": "get", "queue": "jobs"})})
    post(url, "/queue", {"body": json.dumps({"cmd": "take", "queue": "jobs"})})
    popped = post(url, "/pop/jobs", {"limit": "2"})
    assert len(popped.json["messages"]) == 2
    claimed = post(url, "/claim/jobs", {"limit": "2", "lease": "600"}).json["messages"]
    assert post(url, "/ack/jobs", {"receipt": claimed[0]["receipt"]}).status == 200
    repeat = {"Idempotency-Key": "k1"}
    for _ in range(3):
        assert request(url, "POST", "/q/jobs", form={"value": "once"}, headers=repeat).status == 200
    deadline = time.monotonic() + 5
    while info_counters(url, "jobs").get("acked") != 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # the pop's ack follows its reply
    assert info_counters(url, "jobs") == {
        "added": 9, "read_get": 1, "read_soft_get": 1, "read_take": 1, "read_pop": 2,
        "delivered_claim": 2, "acked": 3, "deduplicated": 2}


def test_lease_expiry_dead_letters_and_drops_are_counted(counting, credis):
    url = counting.url
    assert post(url, "/config/jobs", {"max_attempts": "2", "dead_letter": "jobs.dead"}).status \
        == 200
    assert post(url, "/q/jobs", {"value": "a"}).status == 200
    assert post(url, "/claim/jobs", {"lease": "1"}).status == 200
    deadline = time.monotonic() + 10
    while info_counters(url, "jobs").get("redelivered") != 1:
        assert time.monotonic() < deadline, info_counters(url, "jobs")
        time.sleep(0.05)
    receipt = post(url, "/claim/jobs", {"lease": "600"}).json["messages"][0]["receipt"]
    assert post(url, "/release/jobs", {"receipt": receipt}).json["dead_lettered"] == [receipt]
    assert info_counters(url, "jobs") == {"added": 1, "delivered_claim": 2, "redelivered": 1,
                                          "dead_lettered": 1}
    assert info_counters(url, "jobs.dead") == {"added": 1}
    # A record written by hand without a dead-letter queue drops an exhausted message.
    credis("HSET", "solo:config", "max_attempts", "1")
    assert post(url, "/q/solo", {"value": "x"}).status == 200
    receipt = post(url, "/claim/solo", {"lease": "600"}).json["messages"][0]["receipt"]
    assert post(url, "/release/solo", {"receipt": receipt}).status == 200
    assert info_counters(url, "solo")["dropped"] == 1


def test_live_deliveries_are_counted(counting, credis):
    comet = CometClient(counting.url, "live")
    try:
        assert post(counting.url, "/q/live", {"value": "v"}).status == 200
        comet.lines(1)
    finally:
        comet.close()
    assert info_counters(counting.url, "live") == {"added": 1, "delivered_live": 1}


@pytest_twisted.ensureDeferred
async def test_python_side_count_for_push_outcomes_writes_only_with_counters(service, redis):
    from restmq.core import Core
    await Core(service).count("hooks", "push_timeout")
    assert redis("EXISTS", "hooks:counters") == 0
    counting_core = Core(service, counters=True)
    await counting_core.count("hooks", "push_timeout")
    await counting_core.count("hooks", "push_ok", 2)
    assert redis("HGETALL", "hooks:counters") == ["push_timeout", "1", "push_ok", "2"]
