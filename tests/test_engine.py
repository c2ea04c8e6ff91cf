"""`restmq-engine` (docs/frontends.md#restmq-engine): every flag, the fixed order, exit codes, and
that its adds wake live consumers of a running server."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.comet import CometClient

ENGINE = str(Path(sys.executable).with_name("restmq-engine"))


def engine(redis, *args):
    port = redis.sock.getpeername()[1]
    out = subprocess.run([ENGINE, "--redis-port", str(port), *args], capture_output=True,
                         text=True, timeout=30)
    return out.returncode, out.stdout.splitlines(), out.stderr


def test_producer_and_consumers(redis):
    assert engine(redis, "-p", "--value", "007") == (0, ["key: test:1"], "")
    assert engine(redis, "-p", "--value", "second")[1] == ["key: test:2"]
    assert engine(redis, "-g")[1] == ["key: test:1", "value: 007", "count: 1",
                                       "policy: broadcast"]
    assert engine(redis, "-g")[1][2] == "count: 2"
    assert engine(redis, "-c", "--consumed-ttl", "60")[1] == ["key: test:1", "value: 007",
                                                               "policy: broadcast"]
    assert 0 < redis("TTL", "test:1") <= 60
    assert engine(redis, "-k")[1] == ["key: test:2", "value: second", "policy: broadcast"]
    assert redis("EXISTS", "test:2") == 0
    for flag in ("-c", "-g", "-k"):
        assert engine(redis, flag)[1] == ["empty queue"]


def test_policy_stats_and_listings(redis):
    assert engine(redis, "-q")[1] == ["policy: broadcast"]
    assert engine(redis, "-j")[1] == ["resp: OK"]  # --policy defaults to roundrobin
    assert redis("GET", "test:queuepolicy") == "2"
    # -q runs before -j, whatever the command line order.
    assert engine(redis, "-j", "-q", "--policy", "broadcast")[1] == ["policy: roundrobin",
                                                                     "resp: OK"]
    assert engine(redis, "-q")[1] == ["policy: broadcast"]
    for i in range(12):
        engine(redis, "-p", "--queue", "many", "--value", f"v{i}")
    redis("DEL", "many:3")  # a dead entry
    redis("SET", "queuestat::many", "0")
    redis("SET", "other:UUID", "1")
    redis("SET", "queuestat::other", "1")
    redis("SADD", "QUEUESET", "other")
    assert engine(redis, "-s")[1] == ["many len=12 status=0 policy=broadcast",
                                      "other len=0 status=1 policy=broadcast", "count: 2"]
    tail = engine(redis, "-t", "--queue", "many")[1]
    assert tail == [f"many:{n}: v{n - 1}" for n in range(1, 11) if n != 3]
    assert engine(redis, "-i", "--queue", "many")[1] == [f"many:{n}" for n in range(12, 2, -1)]
    # many:UUID, many:queue and 11 live values
    assert engine(redis, "-u", "--queue", "many")[1] == ["objects: 13"]


def test_stats_of_a_queue_whose_name_is_not_utf8(redis):
    redis("SADD", "QUEUESET", b"bad\xff")  # registered by other software
    redis("LPUSH", b"bad\xff:queue", "x", "y")
    redis("SET", b"queuestat::bad\xff", "0")
    redis("SET", b"bad\xff:queuepolicy", "2")
    assert engine(redis, "-s")[1] == ["bad\ufffd len=2 status=0 policy=roundrobin", "count: 1"]


def test_auth_records(redis):
    assert engine(redis, "-a")[1] == ["denied"]
    assert engine(redis, "-r", "--authkey", "k1", "--queue", "q1", "--privs", "read,write")[1] \
        == ["OK"]
    assert json.loads(redis("GET", "AUTHKEY:k1")) == {"queues": ["q1"], "privs": ["read", "write"]}
    assert engine(redis, "-a", "--authkey", "k1", "--queue", "q1")[1] == ["authorized"]
    assert engine(redis, "-a", "--authkey", "k1", "--queue", "q2")[1] == ["denied"]
    # Actions run in the table's order whatever the command line says: -a before -r.
    assert engine(redis, "-r", "-a", "--authkey", "k2")[1] == ["denied", "OK"]
    assert engine(redis, "-a", "--authkey", "k2")[1] == ["authorized"]
    redis("SET", "AUTHKEY:bad", "{not json")
    assert engine(redis, "-a", "--authkey", "bad")[1] == ["invalid record"]


@pytest.mark.parametrize("args", [[], ["-p", "extra"], ["-p", "--queue", "a b"],
                                  ["-j", "--policy", "fifo"], ["-p", "--queue", "QUEUESET"],
                                  ["--bogus", "-p"]])
def test_usage_errors_exit_2_and_do_nothing(redis, args):
    code, out, err = engine(redis, *args)
    assert code == 2 and out == [] and "usage:" in err
    assert redis("DBSIZE") == 0


def test_redis_errors_exit_1_and_skip_later_actions(redis):
    redis("SET", "test:queuepolicy", "1")
    redis("SET", "test:UUID", "not a number")
    code, out, err = engine(redis, "-p", "-q")
    assert code == 1 and out == [] and "restmq-engine:" in err
    code, out, err = subprocess.run([ENGINE, "--redis-port", "1", "-q"], capture_output=True,
                                    text=True).returncode, None, None
    assert code == 1


def test_help():
    out = subprocess.run([ENGINE, "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--producer", "--consumer", "--stats", "--non-consumer", "--get_policy",
                 "--set_policy", "--get_delete", "--tail_multiget", "--count_objects",
                 "--list_last_items", "--authorize", "--create_auth"):
        assert flag in out.stdout


def test_producer_wakes_live_consumers(H, redis):
    client = CometClient(H, "woken")
    try:
        deadline = __import__("time").monotonic() + 10
        while redis("PUBSUB", "NUMSUB", "woken:PUBSUB")[1] < 1:
            assert __import__("time").monotonic() < deadline
        assert engine(redis, "-p", "--queue", "woken", "--value", "hi")[0] == 0
        assert client.messages(1, timeout=5) == [{"key": "woken:1", "value": "hi"}]
    finally:
        client.close()
