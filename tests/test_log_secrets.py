"""Credentials never reach the server's log: an `authkey=` argument is written as
`authkey=[redacted]` in the access log and in the warnings that print a request's URI, and the
`X-Auth-Key` header, HTTP Basic credentials and the `auth` cookie are not logged at all."""
from __future__ import annotations

import base64

import pytest

from tests.conftest import ServerProcess, free_port
from tests.http_client import get
from tests.util import wait_until

SECRETS = [f"s3cret-{i}-do-not-log" for i in range(7)]


@pytest.fixture
def logged_server(redis_proc):
    proc = ServerProcess(redis_proc.port).start()
    yield proc
    proc.stop()


@pytest.fixture
def redisless_server():
    proc = ServerProcess(free_port()).start()  # nothing listens there: every request is a 503
    yield proc
    proc.stop()


def wait_for_log(server: ServerProcess, marker: str) -> str:
    """The log once `marker` is in it (the access log is written about once a second)."""
    return wait_until(lambda: marker in server.log() and server.log(), 15,
                      f"{marker!r} in the log", details=server.log)


def test_the_access_log_redacts_auth_keys_and_logs_no_credentials(logged_server, redis):
    url = logged_server.url
    assert get(url, f"/q/a?authkey={SECRETS[0]}").status == 401
    assert get(url, f"/q/a?x=1&%61uth%6Bey={SECRETS[1]}&callback=cb").status == 401
    assert get(url, f"/q/a?authkey={SECRETS[2]}&authkey=").status == 204  # the last one wins
    assert get(url, "/q/a", headers={"X-Auth-Key": SECRETS[3]}).status == 401
    basic = base64.b64encode(f"user:{SECRETS[4]}".encode()).decode()
    assert get(url, "/q/a", headers={"Authorization": f"Basic {basic}"}).status == 204
    assert get(url, "/q/a", headers={"Cookie": f"auth=user:{SECRETS[5]}"}).status == 204
    get(url, "/q/end-of-test-marker")
    log = wait_for_log(logged_server, "end-of-test-marker")
    for secret in SECRETS:
        assert secret not in log
    assert '"GET /q/a?authkey=[redacted] HTTP/1.1" 401' in log
    assert '"GET /q/a?x=1&%61uth%6Bey=[redacted]&callback=cb HTTP/1.1" 401' in log
    assert '"GET /q/a?authkey=[redacted]&authkey=[redacted] HTTP/1.1" 204' in log


def test_warnings_that_print_the_uri_redact_auth_keys(redisless_server):
    url = redisless_server.url
    reply = get(url, f"/q/a?authkey={SECRETS[6]}")
    assert (reply.status, reply.json) == (503, {"error": "redis unavailable"})
    get(url, "/q/end-of-test-marker")
    log = wait_for_log(redisless_server, "end-of-test-marker")
    assert SECRETS[6] not in log
    assert "redis unavailable" in log and "in GET /q/a?authkey=[redacted]" in log
