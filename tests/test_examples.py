"""Every program in examples/ run as a user would run it, as a subprocess against a live
server and Redis, its real output checked: the curl tour (test_rest.sh), the comet consumer
and the producer, the XML-RPC walk, the collectd watcher and the map/reduce pairs."""
from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, free_port
from tests.http_client import delete, post, request
from tests.test_websocket import numsub, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 20.0


class Program:
    """An example program as a subprocess (python scripts run with this interpreter), killed
    by its PID if it outlives the test."""

    def __init__(self, script: Path, *args: str, env: dict | None = None, cwd: Path = ROOT):
        interpreter = "bash" if script.suffix == ".sh" else sys.executable
        argv = [interpreter, str(script), *args]
        # the examples import restmq.client: this tree's, whatever is installed
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, str, str]:
        """Waits for the exit; returns (status, stdout, stderr)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"{self.proc.args} did not exit:\n{out}\n{err}") from None
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream and not stream.closed:
                stream.close()


def run(script: Path, *args: str, **kw) -> tuple[int, str, str]:
    with Program(script, *args, **kw) as program:
        return program.finish()


def consumers(redis, queue: str, count: int = 1) -> None:
    """Waits until `count` live consumers of `queue` are registered (its pub/sub channel)."""
    wait_until(lambda: numsub(redis, queue) >= count, TIMEOUT, f"a consumer of {queue}")


# -- test_rest.sh: docs/http-api.md#worked-example with curl ----------------------------------


def rest_tour(url: str) -> tuple[int, str, str]:
    return run(EXAMPLES / "test_rest.sh", env={**os.environ, "RESTMQ_URL": url})


def test_rest_tour_passes_on_a_busy_redis(H, redis):
    # other queues, and a tour queue of an earlier run, do not disturb the walk
    for queue in ("test", "tour", "jobs"):
        assert post(H, f"/q/{queue}", {"value": "already here"}).status == 200
    assert post(H, "/control/jobs", {"status": "stop"}).status == 200
    status, out, err = rest_tour(H)
    assert status == 0, out + err
    steps = re.findall(r"^ok (\S+)", out, re.M)
    assert steps == ["1", "2", "3", "4", "5", "6", "6b", "7", "7b", "8", "9", "10", "10b", "11",
                     "11b", "12", "12b", "13", "14", "15", "16", "17", "17b", "18", "19", "20",
                     "21"]
    assert out.rstrip().endswith("all steps passed")
    queue = re.search(r"queue (tour-\d+-\d+)", out).group(1)
    # the tour's queue was purged at the end; the others are untouched
    assert redis("LLEN", f"{queue}:queue") == 0
    assert redis("GET", f"{queue}:UUID") == "5"
    assert [redis("LLEN", f"{q}:queue") for q in ("test", "tour", "jobs")] == [1, 1, 1]


def test_rest_tour_names_the_step_that_differs(redis_proc, tmp_path):
    # consumers denied: the producer steps 1-3 pass, the hard get of step 4 answers 401
    acl = tmp_path / "acl.conf"
    acl.write_text("[rest:consumer]\nhosts_allow = 10.9.9.9\nhosts_deny = all\n")
    server = ServerProcess(redis_proc.port, "--acl", str(acl)).start()
    try:
        status, out, err = rest_tour(server.url)
    finally:
        server.stop()
    assert status == 1, out + err
    assert re.findall(r"^ok (\S+)", out, re.M) == ["1", "2", "3"]
    assert "all steps passed" not in out
    lines = err.splitlines()
    assert lines[0] == "FAIL step 4"
    assert lines[1] == "  expected: status 200"
    assert lines[2] == '  got:      status 401, body {"error": "unauthorized"}'


def test_rest_tour_without_a_server_fails_at_step_1():
    status, out, err = rest_tour(f"http://127.0.0.1:{free_port()}")
    assert status == 1
    assert err.splitlines()[0] == "FAIL step 1"
    assert "no reply" in err


# -- test_comet.py and test_request.py ------------------------------------------------------


def test_comet_consumer_prints_what_the_producer_sends(H, redis):
    with Program(EXAMPLES / "test_comet.py", "--url", H, "--queue", "jobs",
                 "--count", "3") as consumer:
        consumers(redis, "jobs")
        status, out, err = run(EXAMPLES / "test_request.py", "--url", H, "--queue", "jobs",
                               "--count", "3", "--value", "job {n} <&> \u00e9")
        assert (status, err) == (0, "")
        sent = [f"jobs:{n}: job {n} <&> \u00e9" for n in (1, 2, 3)]
        assert out.splitlines() == sent
        status, out, err = consumer.finish()
    assert (status, err) == (0, "")
    assert out.splitlines() == [f"consuming {H}/c/jobs", *sent, "received 3 messages"]
    assert redis("LLEN", "jobs:queue") == 0


def test_producer_without_a_server_says_so_after_its_retries():
    status, out, err = run(EXAMPLES / "test_request.py", "--url",
                           f"http://127.0.0.1:{free_port()}", "--count", "2")
    assert (status, out) == (1, "")
    assert err.startswith("error: cannot reach http://127.0.0.1:"), err


def test_comet_consumer_exits_when_the_queue_is_purged(H, redis):
    with Program(EXAMPLES / "test_comet.py", "--url", H, "--queue", "a/b") as consumer:
        consumers(redis, "a/b")
        assert post(H, "/q/a%2Fb", {"value": "only one"}).status == 200
        wait_until(lambda: redis("GET", "a/b:UUID") == "1" and redis("LLEN", "a/b:queue") == 0,
                   TIMEOUT, "the delivery")
        assert delete(H, "/q/a%2Fb").status == 200
        status, out, err = consumer.finish()
    assert (status, err) == (0, "")
    assert out.splitlines()[1:] == ["a/b:1: only one", "queue purged after 1 messages"]


def test_comet_consumer_joins_split_lines_and_splits_joined_ones():
    """A server that cuts the stream badly: a line in three reads, the cut inside a UTF-8
    character, then two lines and a half in one read."""
    lines = [json.dumps({"key": f"q:{n}", "value": v}, ensure_ascii=False).encode() + b"\r\n"
             for n, v in enumerate(["caf\u00e9 \u2603", "two", "three"], 1)] + [b"null\r\n"]
    stream = b"".join(lines)
    cut = stream.index("\u2603".encode()) + 1
    pieces = [stream[:5], stream[5:cut], stream[cut:len(lines[0]) + len(lines[1]) + 4],
              stream[len(lines[0]) + len(lines[1]) + 4:]]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    request_line = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            request_line.append(head.split(b"\r\n")[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for piece in pieces:
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(0.2)   # separate reads on the client's side
            conn.sendall(b"0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        status, out, err = run(EXAMPLES / "test_comet.py", "--url", f"http://127.0.0.1:{port}",
                               "--queue", "q")
    finally:
        listener.close()
        thread.join(5)
    assert request_line == [b"GET /c/q HTTP/1.1"]
    assert (status, err) == (0, "")
    assert out.splitlines()[1:] == ["q:1: caf\u00e9 \u2603", "q:2: two", "q:3: three",
                                    "queue purged after 3 messages"]


# -- test_xmlrpc.py ---------------------------------------------------------------------------


def test_xmlrpc_walk_calls_every_method(H, redis):
    status, out, err = run(EXAMPLES / "test_xmlrpc.py", "--url", H, "--queue", "rpc")
    assert (status, err) == (0, "")
    calls = [tuple(part.strip() for part in line.split(" -> ", 1)) for line in out.splitlines()
             if " -> " in line]
    assert calls == [
        ("set('rpc', 'first')", "'rpc:1'"),
        ("set('rpc', 'second')", "'rpc:2'"),
        ("len('rpc')", "2"),
        ("get('rpc')", "'first'"),
        ("take('rpc')", "'second'"),
        ("len('rpc')", "0"),
        ("get('rpc')", "fault 404: empty queue"),
        ("policy_get('rpc')", "'broadcast'"),
        ("policy_set('rpc', 'roundrobin')", "'OK'"),
        ("policy_get('rpc')", "'roundrobin'"),
        ("policy_set('rpc', 'broadcast')", "'OK'"),
        ("status_get('rpc')", "'start'"),
        ("status_set('rpc', 'stop')", "'stop'"),
        ("status_get('rpc')", "'stop'"),
        ("status_set('rpc', 'start')", "'start'"),
        ("queues()", "['rpc']"),
        ("no_such_method('rpc')", "fault 501: method not found: no_such_method"),
    ]
    assert "'rpc' is in queues()" in out.splitlines()
    assert redis("GET", "queuestat::rpc") == "1"
    assert redis("GET", "rpc:queuepolicy") == "1"


# -- test_collectd.py -------------------------------------------------------------------------


PUTVAL = "PUTVAL srv1/df/df-boot interval=10 1288548767:116497408.000000:391246848.000000\n"
COLLECTD_JSON = json.dumps([{
    "values": [1901474177, 12.5], "dstypes": ["counter", "gauge"], "dsnames": ["rx", "tx"],
    "time": 1280959128, "interval": 10, "host": "leeloo", "plugin": "interface",
    "plugin_instance": "eth0", "type": "if_octets", "type_instance": ""}])
NOTIFICATION = ("Severity: WARNING\nTime: 1288548767\nHost: srv1\nPlugin: df\nType: df\n\n"
                "Host srv1, plugin df: free space is low\n")


@pytest.fixture(scope="module")
def collectd_server(redis_proc):
    server = ServerProcess(redis_proc.port, plugin="collectd").start()
    yield server
    server.stop()


def test_collectd_watcher_prints_data_and_events(collectd_server, redis):
    C = collectd_server.url
    with Program(EXAMPLES / "test_collectd.py", "--url", C, "--count", "3") as watcher:
        consumers(redis, "collectd_data")
        consumers(redis, "collectd_event")
        for path, body, ctype in [("/collectd/data", PUTVAL, "text/plain"),
                                  ("/collectd/data", COLLECTD_JSON, "application/json"),
                                  ("/collectd/event", NOTIFICATION, "text/plain")]:
            reply = request(C, "POST", path, body=body, headers={"Content-Type": ctype})
            assert reply.status == 200, reply.body
        status, out, err = watcher.finish()
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"consuming {C}/c/collectd_data and {C}/c/collectd_event"
    # the two streams are read in two threads: each keeps its order, not the other's
    assert [line for line in lines if line.startswith("data")] == [
        "data   host=srv1 plugin=df type=df-boot "
        "value=1288548767:116497408.000000:391246848.000000",
        "data   host=leeloo plugin=interface-eth0 type=if_octets value=1901474177:12.5"]
    assert [line for line in lines if line.startswith("event")] == [
        "event  host=srv1 plugin=df type=df severity=WARNING: "
        "Host srv1, plugin df: free space is low"]
    assert len(lines) == 4


# -- mapreduce --------------------------------------------------------------------------------


# word -> how often it appears in the text (distinct counts: the top 10 has no ties)
FREQUENCIES = {w: 40 - 3 * i for i, w in enumerate(
    ["queue", "message", "redis", "consumer", "producer", "stream", "broadcast", "comet",
     "twisted", "cyclone", "socket", "reactor", "deferred"])}
FREQUENCIES.update({f"rare{i}": 1 + i % 3 for i in range(40)})


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    """A text with known word frequencies, mixed case and punctuation, split by `split -l`
    into files of 10 lines as in examples/mapreduce/README.rst."""
    words = [w for w, n in FREQUENCIES.items() for _ in range(n)]
    rng = random.Random(7)
    rng.shuffle(words)
    styled = [rng.choice(["{}", "{},", "{}.", "{};", "{}!", "({})", "{}"]).format(
        w.capitalize() if rng.random() < 0.2 else w) for w in words]
    lines = [" ".join(styled[i:i + 9]) for i in range(0, len(styled), 9)]
    folder = tmp_path_factory.mktemp("book")
    (folder / "book.txt").write_text("\n".join(lines) + "\n")
    subprocess.run(["split", "-l", "10", "book.txt", "part-"], cwd=folder, check=True)
    return folder


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("part-*"))


def test_mapreduce_total_is_the_word_count(H, redis, book):
    files = parts(book)
    assert len(files) >= 5
    wc = subprocess.run(["wc", "-w", "book.txt"], cwd=book, capture_output=True, text=True,
                        check=True)
    words = int(wc.stdout.split()[0])
    assert words == sum(FREQUENCIES.values())
    with Program(EXAMPLES / "mapreduce" / "reduce.py", "--url", H, "--messages",
                 str(len(files))) as reducer:
        consumers(redis, "reducer")
        status, out, err = run(EXAMPLES / "mapreduce" / "map.py", "--url", H, *files, cwd=book)
        assert (status, err) == (0, "")
        assert out.splitlines() == [f"{name}: reducer:{n}" for n, name in enumerate(files, 1)]
        status, out, err = reducer.finish()
    assert (status, err) == (0, "")
    totals = [int(line.split()[1]) for line in out.splitlines() if line.startswith("total:")]
    per_file = [int(subprocess.run(["wc", "-w", name], cwd=book, capture_output=True,
                                   text=True, check=True).stdout.split()[0]) for name in files]
    assert totals == [sum(per_file[:n]) for n in range(1, len(files) + 1)]
    assert totals[-1] == words


def test_mapreduce_keyfreq_prints_the_top_ten(H, redis, book):
    files = parts(book)
    with Program(EXAMPLES / "mapreduce" / "reduce_keyfreq.py", "--url", H, "--messages",
                 str(len(files))) as reducer:
        consumers(redis, "reducer_keyfreq")
        status, out, err = run(EXAMPLES / "mapreduce" / "map_keyfreq.py", "--url", H, *files,
                               cwd=book)
        assert (status, err) == (0, "")
        assert len(out.splitlines()) == len(files)
        status, out, err = reducer.finish()
    assert (status, err) == (0, "")
    lines = out.splitlines()
    top = lines[lines.index("top 10:") + 1:]
    expected = sorted(FREQUENCIES.items(), key=lambda item: -item[1])[:10]
    assert [line.split() for line in top] == [[str(n), w] for w, n in expected]
    assert lines[len(files) - 1].endswith(f"{len(FREQUENCIES)} so far")
