"""The server's clock and Redis's clock disagree by 10 s either way (the server runs under
libfaketime; Debian's redis-server cannot start under it): writes still succeed, and a write
answered 503 while Redis was paused is still not applied when Redis resumes."""
from __future__ import annotations

import glob
import time
from email.utils import parsedate_to_datetime

import pytest

from tests.conftest import ServerProcess
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
    """A server whose wall clock runs `skew` seconds off the host's (and Redis's)."""
    server = ServerProcess(redis_port)
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
