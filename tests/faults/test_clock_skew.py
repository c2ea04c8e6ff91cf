"""The server's clock and Redis's clock disagree by 10 s either way (the server runs under
libfaketime; Debian's redis-server cannot start under it): writes still succeed, and a write
answered 503 while Redis was paused is still not applied when Redis resumes. The server's wall
clock steps back or forward while it runs (an NTP step, a restored VM): no timer of ours moves."""
from __future__ import annotations

import glob
import socket
import tempfile
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.comet import CometClient
from tests.conftest import SHORT_TIMEOUT, ServerProcess
from tests.faults.load import pending_values, probe, redis_client, wait_for
from tests.http_client import request

QUEUE = "skewq"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is missing: run the suite with `make test`, which installs it")
    return found[0]


def skewed_server(procs, redis_port: int, skew: int) -> ServerProcess:
    """A server whose wall clock runs `skew` seconds off the host's (and Redis's), with a
    command timeout (2 s) far shorter than the skew."""
    server = ServerProcess(redis_port, *SHORT_TIMEOUT)
    server.argv = ["env", f"LD_PRELOAD={libfaketime()}", f"FAKETIME={skew:+d}s",
                   "FAKETIME_DONT_FAKE_MONOTONIC=1", *server.argv]
    procs.servers.append(server)
    return server.start()


def add(url: str, value: str):
    return request(url, "POST", f"/q/{QUEUE}", f"value={value}", headers=FORM, timeout=30)


@pytest.mark.parametrize("skew", [10, -10], ids=["server-ahead", "redis-ahead"])
def test_writes_work_and_a_503_changes_nothing_whatever_the_clock_skew(procs, skew):
    redis = procs.redis()
    server = skewed_server(procs, redis.port, skew)

    # The skew is real: our Date header against Redis's TIME.
    reply = request(server.url, "GET", "/stats/")
    ours = parsedate_to_datetime(reply.header("Date")).timestamp()
    admin = redis_client(redis.port)
    theirs = int(admin("TIME")[0])
    admin.close()
    assert abs(ours - theirs - skew) < 3, (ours, theirs, skew)

    # Writes and reads work.
    reply = add(server.url, "first")
    assert reply.status == 200, reply.body
    reply = request(server.url, "GET", f"/q/{QUEUE}")
    assert reply.status == 200 and reply.json["value"] == "first", reply.body

    # An add answered 503 while Redis is paused is not applied once Redis resumes.
    redis.pause()
    try:
        started = time.monotonic()
        reply = add(server.url, "late")
        waited = time.monotonic() - started
    finally:
        redis.resume()
    assert reply.status == 503, (reply.status, reply.body, waited)
    wait_for(lambda: probe(server.url) == 200, 15, interval=0.2, message="service back")
    assert pending_values(redis.port, QUEUE) == []
    # and the next add works again
    assert add(server.url, "again").status == 200
    assert pending_values(redis.port, QUEUE) == ["again"]


# -- steps of the wall clock -------------------------------------------------------------------

class SteppedServer(ServerProcess):
    """A server whose wall clock the test steps by writing an offset to a file, which
    libfaketime reads again at every clock read; the monotonic clock runs true, as an NTP step
    or a restored VM leaves it."""

    def __init__(self, redis_port: int):
        super().__init__(redis_port, *SHORT_TIMEOUT)
        self.offset_file = Path(tempfile.mkdtemp(prefix="restmq-faketime-")) / "offset"
        self.offset_file.write_text("+0s\n")
        self.argv = ["env", f"LD_PRELOAD={libfaketime()}",
                     f"FAKETIME_TIMESTAMP_FILE={self.offset_file}", "FAKETIME_NO_CACHE=1",
                     "FAKETIME_DONT_FAKE_MONOTONIC=1", *self.argv]

    def server_offset(self) -> float:
        """How far the server's wall clock is from ours, read from its Date header."""
        reply = request(self.url, "GET", "/stats/")
        return parsedate_to_datetime(reply.header("Date")).timestamp() - time.time()

    def step(self, seconds: int) -> None:
        """Step the server's wall clock and wait until it shows in a reply."""
        self.offset_file.write_text(f"{seconds:+d}s\n")
        wait_for(lambda: abs(self.server_offset() - seconds) < 3, 10, interval=0.1,
                 message=f"the server's clock stepped by {seconds} s")


def stepped_server(procs, redis_port: int) -> SteppedServer:
    server = SteppedServer(redis_port)
    procs.servers.append(server)
    server.start()
    assert abs(server.server_offset()) < 3
    return server


def test_a_backward_step_of_the_wall_clock_does_not_delay_the_503_of_a_paused_redis(procs):
    redis = procs.redis()
    server = stepped_server(procs, redis.port)
    assert add(server.url, "before").status == 200
    server.step(-60)
    redis.pause()
    try:
        started = time.monotonic()
        try:
            # Within the command timeout (2 s) and some slack, well before the step's 60 s.
            reply = request(server.url, "GET", f"/q/{QUEUE}", timeout=15)
        except socket.timeout:
            pytest.fail("no reply within 15 s while Redis was paused: a timer waited for "
                        "the wall clock")
        waited = time.monotonic() - started
    finally:
        redis.resume()
    assert reply.status == 503, (reply.status, reply.body, waited)
    print(f"503 after {waited:.1f} s")
    wait_for(lambda: probe(server.url) == 200, 15, interval=0.2, message="service back")
    assert pending_values(redis.port, QUEUE) == ["before"]


def test_a_forward_step_of_the_wall_clock_fires_no_timeout_early(procs):
    redis = procs.redis()
    server = stepped_server(procs, redis.port)
    consumer = CometClient(server.url, QUEUE)
    assert add(server.url, "first").status == 200
    assert consumer.messages(1)[0]["value"] == "first"
    # A client halfway through its request head: 20 s to finish it.
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        slow.sendall(b"GET /stats/ HTTP/1.1\r\nHost: t\r\n")
        server.step(+60)  # the step is seen by a reply from the server: the marker
        slow.sendall(b"\r\n")
        reply = slow.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    finally:
        slow.close()
    # The live consumer was not cut: it still gets what is added after the step.
    assert add(server.url, "second").status == 200
    assert [m["value"] for m in consumer.messages(2)] == ["first", "second"]
    consumer.close()
    assert "Rejected" not in server.log() and "disconnected" not in server.log()
