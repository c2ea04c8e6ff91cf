"""Target safety at dispatch: without `--push-private`, a push_url whose host is a name (so
`/config/` accepts it) that resolves to a loopback address is refused when the dispatcher
checks the DNS answer, before any connection: outcome `forbidden_target`, logged, and the
message released with its backoff like any failed attempt."""
from __future__ import annotations

import ipaddress
import socket

import pytest

from tests.conftest import ServerProcess
from tests.push_target import Target, redis_proc  # noqa: F401 (fixtures)
from tests.test_push import add, configure, due_in
from tests.util import wait_until


@pytest.fixture(scope="module")
def server(redis_proc):
    proc = ServerProcess(redis_proc.port).start()
    yield proc
    proc.stop()


def loopback_name() -> str:
    """A name that is no literal address nor `localhost` but resolves to loopback through
    the system's resolver: this machine's own name, on most systems (Debian maps it to
    127.0.1.1 in /etc/hosts)."""
    for name in (socket.gethostname(), socket.getfqdn()):
        try:
            answers = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except OSError:
            continue
        if name.lower() != "localhost" and answers and all(
                ipaddress.ip_address(a[4][0]).is_loopback for a in answers):
            return name
    raise AssertionError("this machine's name does not resolve to a loopback address")


def test_a_name_resolving_to_loopback_is_refused_at_dispatch(server, redis):
    target = Target().start()
    try:
        name = loopback_name()
        configure(server.url, push_url=target.url(host=name), backoff_min=30)
        key = add(server.url, "v")
        left = wait_until(lambda: due_in(redis, "jobs", key), what="the refused attempt")
        assert 14000 <= left <= 30000  # released with its backoff, 30 s * [0.5, 1]
        wait_until(lambda: f"push of {key}: target refused" in server.log(),
                   what="the refusal logged")
        assert target.requests == []
        assert redis("HGET", "jobs:deliveries", key) == "1"
    finally:
        target.stop()
