"""`GET /metrics` against real servers, parsed with prometheus_client's own parser: names,
types, labels and values against Redis's state, hostile queue names, truncation, Redis gone,
the ACL and auth keys, with and without --counters."""
from __future__ import annotations

import base64
import json
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import get, post

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def scrape(url: str, headers: dict | None = None) -> dict:
    """{family name: (type, {(sample name, sorted labels): value})}."""
    reply = get(url, "/metrics", headers=headers)
    assert reply.status == 200, reply.body
    assert reply.header("Content-Type") == CONTENT_TYPE
    families = {}
    for family in text_string_to_metric_families(reply.body.decode("utf-8")):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        families[family.name] = (family.type, samples)
    return families


def value(families: dict, sample: str, **labels) -> float | None:
    family = sample
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample.endswith(suffix) and sample[:-len(suffix)] in families:
            family = sample[:-len(suffix)]
    _, samples = families[family]
    return samples.get((sample, tuple(sorted(labels.items()))))


def queue_values(families: dict, family: str) -> dict:
    _, samples = families[family]
    return {dict(labels)["queue"]: v for (_, labels), v in samples.items()}


@pytest.fixture(scope="module")
def servers():
    """A Redis of its own with two servers on it, one counting, one not (their tick and
    counts must not mix with the session's servers)."""
    redis = RedisProcess().start()
    plain = ServerProcess(redis.port).start()
    counting = ServerProcess(redis.port, "--counters").start()
    yield redis, plain, counting
    for proc in (counting, plain):
        proc.stop()
        assert "Traceback" not in proc.log()
    redis.stop()


@pytest.fixture
def state(servers):
    redis, plain, counting = servers
    client = redis.client()
    client("FLUSHALL")
    yield client, plain.url, counting.url
    client.close()


def test_queue_series_match_redis(state):
    redis, url, _ = state
    for v in "abcd":
        assert post(url, "/q/jobs", {"value": v}).status == 200
    assert post(url, "/q/jobs", {"value": "p", "priority": "5"}).status == 200
    assert post(url, "/q/jobs", {"value": "later", "delay": "600"}).status == 200
    assert post(url, "/claim/jobs", {"limit": "2", "lease": "600"}).status == 200
    assert post(url, "/config/jobs", {"max_attempts": "3", "dead_letter": "jobs.dead"}).status \
        == 200
    assert post(url, "/q/other", {"value": "x"}).status == 200
    assert post(url, "/control/other", {"status": "stop"}).status == 200
    redis("SADD", "QUEUESET", "jobs.dead")  # a dead-letter queue with nothing in it yet
    families = scrape(url)
    assert families["restmq_queue_messages"][0] == "gauge"
    assert queue_values(families, "restmq_queue_messages") == {"jobs": 3, "other": 1,
                                                                "jobs.dead": 0}
    assert redis("LLEN", "jobs:queue") + redis("ZCARD", "jobs:priority") == 3
    assert queue_values(families, "restmq_queue_inflight_messages")["jobs"] == 2
    assert queue_values(families, "restmq_queue_delayed_messages")["jobs"] == 1
    assert queue_values(families, "restmq_queue_dead_letter_messages") == {"jobs": 0}
    assert queue_values(families, "restmq_queue_started") == {"jobs": 1, "other": 0,
                                                               "jobs.dead": 0}
    assert families["restmq_messages_added"][0] == "counter"
    assert value(families, "restmq_messages_added_total", queue="jobs") == \
        int(redis("GET", "jobs:UUID")) == 6
    assert value(families, "restmq_metrics_truncated") == 0
    # Counters need --counters (D4): not exported by this server.
    assert "restmq_messages_acked" not in families
    assert "restmq_messages_read" not in families


def test_process_series_carry_the_process_label(state):
    _, url, _ = state
    families = scrape(url)
    [(_, labels)] = list(families["restmq_redis_up"][1])
    process = dict(labels)["process"]
    host, pid = process.rsplit(":", 1)
    assert host == socket.gethostname() and pid.isdigit()
    assert value(families, "restmq_redis_up", process=process) == 1
    assert value(families, "restmq_build_info", process=process, version=_version(),
                 protocol="2") == 1
    assert value(families, "restmq_redis_persistence", process=process, mode="none") == 1
    assert value(families, "restmq_redis_persistence", process=process, mode="rdb") == 0
    assert families["restmq_redis_command_duration_seconds"][0] == "histogram"
    buckets = {dict(labels)["le"] for (name, labels) in
               families["restmq_redis_command_duration_seconds"][1]
               if name.endswith("_bucket")}
    assert buckets == {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
                       "0.25", "0.5", "1.0", "2.5", "5.0", "+Inf"}
    assert value(families, "restmq_redis_command_duration_seconds_count", process=process) > 0
    for kind in ("unavailable", "timeout", "error"):
        assert value(families, "restmq_redis_errors_total", process=process, kind=kind) == 0


def _version() -> str:
    from restmq import __version__
    return __version__


def test_live_consumers_and_waiters_are_counted_by_kind(state):
    from tests.comet import CometClient
    _, url, _ = state
    comet = CometClient(url, "live")
    try:
        deadline = time.monotonic() + 5
        while True:
            families = scrape(url)
            samples = families["restmq_live_consumers"][1]
            found = {(dict(l)["queue"], dict(l)["kind"]): v for (_, l), v in samples.items()}
            if found.get(("live", "comet")) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert found[("live", "comet")] == 1 and found[("live", "waiter")] == 0
    finally:
        comet.close()


def test_counter_series_with_counters(state):
    redis, _, url = state
    for v in "abc":
        assert post(url, "/q/jobs", {"value": v}).status == 200
    assert get(url, "/q/jobs").status == 200
    claimed = post(url, "/claim/jobs", {"lease": "600"}).json["messages"]
    assert post(url, "/ack/jobs", {"receipt": claimed[0]["receipt"]}).status == 200
    redis("HINCRBY", "jobs:counters", "push_timeout", 2)  # as a dispatcher would count it
    families = scrape(url)
    assert families["restmq_messages_acked"][0] == "counter"
    assert value(families, "restmq_messages_acked_total", queue="jobs") == 1
    assert value(families, "restmq_messages_redelivered_total", queue="jobs") == 0
    assert value(families, "restmq_messages_read_total", queue="jobs", op="get") == 1
    assert value(families, "restmq_messages_read_total", queue="jobs", op="pop") == 0
    assert value(families, "restmq_messages_delivered_total", queue="jobs", via="claim") == 1
    assert value(families, "restmq_push_attempts_total", queue="jobs", outcome="timeout") == 2
    assert value(families, "restmq_messages_added_total", queue="jobs") == 3


HOSTILE = ['say"hi"', 'back\\slash', 'quote\\"mix', "ünïcode·名前", "semi;colon{brace}=x,y"]


def test_hostile_queue_names_are_escaped_and_read_back_exactly(state):
    redis, url, _ = state
    for name in HOSTILE:
        reply = post(url, "/", {"queue": name, "value": "v"})
        assert reply.status == 200, (name, reply.body)
    # Names only the original RestMQ accepted (a newline, a space), registered by hand.
    for name in ("line\nbreak", 'a "quoted" name'):
        redis("SADD", "QUEUESET", name)
        redis("RPUSH", f"{name}:queue", f"{name}:1")
    body = get(url, "/metrics").body.decode("utf-8")
    assert 'queue="line\\nbreak"' in body and 'queue="say\\"hi\\""' in body
    families = scrape(url)
    assert queue_values(families, "restmq_queue_messages") == {
        **{name: 1 for name in HOSTILE}, "line\nbreak": 1, 'a "quoted" name': 1}


def test_beyond_metrics_queues_the_first_in_byte_order_are_exported(state, servers):
    redis, _, _ = state
    names = [f"q{i:02d}" for i in range(12)] + ["Z", "a"]
    for name in names:
        redis("SADD", "QUEUESET", name)
    server = ServerProcess(servers[0].port, "--metrics-queues", "5").start()
    try:
        families = scrape(server.url)
        assert value(families, "restmq_metrics_truncated") == 1
        exported = set(queue_values(families, "restmq_queue_messages"))
        assert exported == set(sorted(names)[:5]) == {"Z", "a", "q00", "q01", "q02"}
        assert set(queue_values(scrape(server.url), "restmq_queue_messages")) == exported
        redis("SREM", "QUEUESET", *sorted(names)[5:])
        assert value(scrape(server.url), "restmq_metrics_truncated") == 0
    finally:
        server.stop()


def test_redis_down_gives_200_with_redis_up_0_and_the_process_series():
    redis = RedisProcess().start()
    server = ServerProcess(redis.port).start()
    try:
        assert post(server.url, "/q/jobs", {"value": "v"}).status == 200
        assert value(scrape(server.url), "restmq_redis_up",
                     process=_process(scrape(server.url))) == 1
        redis.stop()
        started = time.monotonic()
        families = scrape(server.url)
        assert time.monotonic() - started < 3
        process = _process(families)
        assert value(families, "restmq_redis_up", process=process) == 0
        assert "restmq_build_info" in families and "restmq_redis_command_duration_seconds" \
            in families
        assert queue_values(families, "restmq_queue_messages") == {}
        assert value(families, "restmq_redis_errors_total", process=process,
                     kind="unavailable") >= 1
        # The last persistence mode read stays exported.
        assert value(families, "restmq_redis_persistence", process=process, mode="none") == 1
    finally:
        server.stop()
        redis.stop()


def _process(families: dict) -> str:
    [(_, labels)] = list(families["restmq_redis_up"][1])
    return dict(labels)["process"]


ACL = """\
[rest:consumer]
username = watcher
password = secret
[rest:producer]
hosts_deny = all
"""


def test_acl_section_rest_consumer_and_auth_keys_need_create(state, servers, tmp_path):
    redis, _, _ = state
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL)
    server = ServerProcess(servers[0].port, "--acl", str(acl)).start()
    try:
        assert get(server.url, "/metrics").status == 401
        basic = {"Authorization": "Basic " + base64.b64encode(b"watcher:secret").decode()}
        assert "restmq_redis_up" in scrape(server.url, basic)
        redis("SET", "AUTHKEY:one", json.dumps({"queues": ["jobs"], "privs": ["get"]}))
        redis("SET", "AUTHKEY:all", json.dumps({"privs": ["create"]}))
        assert get(server.url, "/metrics", headers={"X-Auth-Key": "one"}).status == 401
        assert get(server.url, "/metrics", headers={"X-Auth-Key": "nope"}).status == 401
        assert "restmq_redis_up" in scrape(server.url, {"X-Auth-Key": "all"})
    finally:
        server.stop()


def test_other_methods_are_405(state):
    _, url, _ = state
    for method in ("POST", "DELETE", "PUT"):
        from tests.http_client import request
        reply = request(url, method, "/metrics")
        assert reply.status == 405 and reply.header("Allow") == "GET"
    assert get(url, "/metrics/").status == 404


# Registers queues q0000 ... with one message each (q0000 is the first in byte order).
_MANY_QUEUES = """
for i = 0, tonumber(ARGV[1]) - 1 do
  local q = string.format('q%04d', i)
  redis.call('SADD', 'QUEUESET', q)
  redis.call('SET', q .. ':UUID', i)
  redis.call('RPUSH', q .. ':queue', q .. ':' .. i)
end
"""


class Monitor:
    """Redis's MONITOR from a socket of its own: the commands other clients send, until a
    marker (an ECHO from the test's own client) shows that everything before it was seen."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")
        self.sock.sendall(b"MONITOR\r\n")
        assert self.reader.readline() == b"+OK\r\n"

    def until(self, redis, marker: str) -> list[bytes]:
        redis("ECHO", marker)
        lines = []
        while True:
            line = self.reader.readline()
            assert line, "MONITOR closed"
            if marker.encode() in line:
                return lines
            lines.append(line)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _queue_reads(lines: list[bytes]) -> int:
    """Scripts that read the queues for a scrape: the one whose keys start at q0000's."""
    return sum(1 for line in lines if b" lua]" not in line and b'"q0000:queue"' in line
               and line.split(b"] ", 1)[1].startswith((b'"EVALSHA"', b'"EVAL"')))


def test_scrapes_that_come_together_share_one_read_of_redis(state, servers):
    redis, url, _ = state
    redis("EVAL", _MANY_QUEUES, 0, 3000)
    scrape(url)  # the script is loaded, the code warm
    monitor = Monitor(servers[0].port)
    try:
        socks = [socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
                 for _ in range(3)]
        for sock in socks:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        bodies = [_read_all(sock) for sock in socks]
        lines = monitor.until(redis, "scrapes-done")
    finally:
        monitor.close()
    assert all(b" 200 OK" in body.split(b"\r\n", 1)[0] for body in bodies)
    assert len({body.split(b"\r\n\r\n", 1)[1] for body in bodies}) == 1
    assert _queue_reads(lines) == 1, [line[:120] for line in lines]
    # A scrape after them reads Redis again, and sees what changed.
    redis("RPUSH", "q0001:queue", "q0001:x")
    monitor = Monitor(servers[0].port)
    try:
        families = scrape(url)
        assert _queue_reads(monitor.until(redis, "later-done")) == 1
    finally:
        monitor.close()
    assert value(families, "restmq_queue_messages", queue="q0001") == 2


def _read_all(sock) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    sock.close()
    return b"".join(chunks)


def test_many_queues_render_as_one_valid_exposition_and_follow_changes(state, servers):
    """Thousands of queues (rendered in many steps, lines kept from the last scrape): one HELP
    and TYPE per family, every value right, also after values change; promtool accepts it."""
    redis, _, url = state
    redis("EVAL", _MANY_QUEUES, 0, 3000)
    for name in HOSTILE:
        redis("SADD", "QUEUESET", name)
        redis("RPUSH", f"{name}:queue", f"{name}:1")
    redis("HSET", "q0005:counters", "acked", 4, "read_pop", 2, "push_ok", 1)
    redis("HSET", "q0003:config", "dead_letter", "zdead")  # outside the exported queues
    first = get(url, "/metrics").body
    _check_exposition(first)
    families = scrape(url)
    assert queue_values(families, "restmq_queue_messages") == {
        **{f"q{i:04d}": 1 for i in range(3000)}, **{name: 1 for name in HOSTILE}}
    assert value(families, "restmq_messages_added_total", queue="q2999") == 2999
    # Change some values: the kept lines of the unchanged ones, new lines for the others.
    redis("RPUSH", "q0002:queue", "q0002:x", "q0002:y")
    redis("SET", "q2500:UUID", 7)
    redis("SET", "queuestat::q1000", 1)
    redis("HINCRBY", "q0005:counters", "acked", 1)
    redis("DEL", f"{HOSTILE[0]}:queue")
    redis("RPUSH", "zdead:queue", "zdead:1")  # q0003's own keys unchanged
    second = get(url, "/metrics").body
    _check_exposition(second)
    families = scrape(url)
    depths = queue_values(families, "restmq_queue_messages")
    assert depths["q0002"] == 3 and depths["q0003"] == 1 and depths[HOSTILE[0]] == 0
    assert value(families, "restmq_messages_added_total", queue="q2500") == 7
    assert queue_values(families, "restmq_queue_started")["q1000"] == 1
    assert value(families, "restmq_messages_acked_total", queue="q0005") == 5
    assert value(families, "restmq_messages_read_total", queue="q0005", op="pop") == 2
    assert value(families, "restmq_push_attempts_total", queue="q0005", outcome="ok") == 1
    assert queue_values(families, "restmq_queue_dead_letter_messages") == {"q0003": 1}


def _check_exposition(body: bytes) -> None:
    import shutil
    import subprocess
    lines = body.decode("utf-8").split("\n")
    helps = [line.split(" ")[2] for line in lines if line.startswith("# HELP ")]
    types = [line.split(" ")[2] for line in lines if line.startswith("# TYPE ")]
    assert len(helps) == len(set(helps)) and helps == types
    # Every sample line right after its family's header or another of its samples.
    family = None
    for line in lines:
        if line.startswith("# TYPE "):
            family = line.split(" ")[2]
        elif line and not line.startswith("#"):
            assert line.startswith(family), (family, line[:80])
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing (Debian package prometheus): `make test` installs it")
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert checked.returncode == 0, checked.stderr[-2000:]
