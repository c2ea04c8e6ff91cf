"""restmq.client against a real server and redis-server: every call of the blocking Client and
of the TxClient with its typed result, every exception type with the server's reason, live
streams over SSE and comet, the protocol-1 fallback (a stub that answers 404 to /health), and
that the library imports none of the server's dependencies."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytest_twisted

from restmq.client import (Client, Config, Health, IdempotencyConflict, Info, Lease, Message,
                           OutcomeUnknown, ProtocolMismatch, Redrive, RestMQError, Settled,
                           TooLarge, Unauthorized, Unavailable)
from tests.conftest import ROOT, ServerProcess, free_port
from tests.util import numsub


@pytest.fixture
def client(H):
    c = Client(H, timeout=10)
    yield c
    c.close()


def keys(redis, queue):
    return redis("LRANGE", f"{queue}:queue", "0", "-1")


# -- importing ----------------------------------------------------------------------------------

IMPORTS = """
import sys
import restmq.client
from restmq.client import Client, Worker, cli
{more}
server = ("cyclone", "txredisapi", "restmq.http", "restmq.core", "restmq.redis",
          "restmq.tap", "restmq.delivery"{twisted})
loaded = sorted(m for m in sys.modules if m.startswith(server))
print(loaded)
sys.exit(1 if loaded else 0)
"""


@pytest.mark.parametrize("more,twisted", [("", ', "twisted"'),
                                          ("from restmq.client import TxClient, TxWorker", "")])
def test_import_pulls_in_no_server_dependency(more, twisted):
    # the blocking client and the CLI need only the standard library; the Twisted client
    # needs Twisted but neither cyclone, txredisapi nor any server module
    code = IMPORTS.format(more=more, twisted=twisted)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


# -- producing and consuming -----------------------------------------------------------------


def test_add_batch_peek_get_pop(client, redis):
    assert client.server_protocol() == 2
    assert client.add("jobs", "a") == "jobs:1"
    assert client.add("jobs", "urgent", priority=9, ttl=60) == "jobs:2"
    assert client.add_batch("jobs", ["b", {"value": "c", "ttl": 60}]) == ["jobs:3", "jobs:4"]
    assert client.add("jobs", "later", delay=300) == "jobs:5"
    messages, after = client.peek("jobs", limit=2)
    assert messages == [Message("jobs", "jobs:2", "urgent", 9), Message("jobs", "jobs:1", "a", 0)]
    assert after == "jobs:1"
    assert [m.key for m in client.peek("jobs", after=after)[0]] == ["jobs:3", "jobs:4"]
    assert client.get("jobs") == Message("jobs", "jobs:2", "urgent")
    assert client.pop("jobs", limit=5) == [Message("jobs", "jobs:1", "a"),
                                           Message("jobs", "jobs:3", "b"),
                                           Message("jobs", "jobs:4", "c")]
    assert client.get("jobs") is None and client.pop("jobs") == []
    assert redis("ZCARD", "jobs:delayed") == 1  # the delayed one waits
    # every add carried an idempotency key the client made up: an explicit one replays
    assert client.add("jobs", "x", idempotency_key="k1") == "jobs:6"
    assert client.add("jobs", "x", idempotency_key="k1") == "jobs:6"
    assert keys(redis, "jobs") == ["jobs:6"]


def test_a_long_poll_waits_for_an_add(client, H):
    other = Client(H)
    threading.Timer(0.5, other.add, ("waited", "v")).start()
    started = time.monotonic()
    assert [m.value for m in client.pop("waited", wait=10)] == ["v"]
    assert time.monotonic() - started < 9
    assert client.claim("waited", wait=1) == []


def test_claim_extend_ack_release_dead_letter_redrive(client, redis):
    cfg = client.set_config("jobs", lease=5, max_attempts=2, dead_letter="jobs.dead")
    assert cfg == Config("jobs", {**cfg.config, "lease": 5, "max_attempts": 2,
                                  "dead_letter": "jobs.dead"},
                         ["dead_letter", "lease", "max_attempts"])
    assert client.config("jobs") == cfg
    client.add_batch("jobs", ["a", "b"])
    first, second = client.claim("jobs", limit=2)
    assert isinstance(first, Lease) and (first.key, first.value, first.deliveries) == \
        ("jobs:1", "a", 1)
    assert first.lease_until > time.time()
    extended = first.extend(60)
    assert extended.ok == [first.receipt] and extended.lease_until[first.receipt] > \
        first.lease_until
    assert first.ack() == Settled("jobs", [first.receipt], [], [])
    assert first.ack() == Settled("jobs", [], [first.receipt], [])  # already done: stale
    released = second.release()
    assert released == Settled("jobs", [second.receipt], [], [])
    again = client.claim("jobs")[0]
    assert again.deliveries == 2
    assert client.release("jobs", [again.receipt]).dead == [again.receipt]  # the last attempt
    info = client.info("jobs")
    assert isinstance(info, Info)
    assert (info.pending, info.inflight, info.delayed) == (0, 0, 0)
    assert info.dead_letter == {"queue": "jobs.dead", "pending": 1}
    assert client.redrive("jobs.dead") == Redrive("jobs.dead", [("jobs.dead:1", "jobs:2")],
                                                  0, None)
    assert client.set_config("jobs", unset=["max_attempts", "dead_letter"]).set == ["lease"]
    assert client.clear_config("jobs") is True
    assert client.clear_config("jobs") is False
    assert client.config("jobs").set == []


def test_health(client):
    health = client.health()
    assert isinstance(health, Health)
    assert health.status == "ok" and health.protocol == 2


# -- errors ---------------------------------------------------------------------------------


def test_each_error_status_has_its_exception_and_the_servers_reason(client, redis, H):
    with pytest.raises(RestMQError) as bad:
        client.add("jobs", "v", ttl="abc")
    assert type(bad.value) is RestMQError
    assert (bad.value.status, bad.value.reason) == (400, "invalid argument: ttl")
    with pytest.raises(Unauthorized) as denied:
        Client(H, auth_key="no-such-key").add("jobs", "v")
    assert (denied.value.status, denied.value.reason) == (401, "unauthorized")
    client.set_config("small", max_message=3)
    with pytest.raises(TooLarge) as large:
        client.add("small", "four")
    assert (large.value.status, large.value.reason) == (413, "message too large")
    client.add("jobs", "one", idempotency_key="same")
    with pytest.raises(IdempotencyConflict) as reused:
        client.add("jobs", "two", idempotency_key="same")
    assert (reused.value.status, reused.value.reason) == (422, "idempotency key reused")
    assert keys(redis, "jobs") == ["jobs:1"]


def test_unavailable_redis_gives_503_after_the_retries(redis_proc):
    # a server whose Redis does not answer: 503 `redis unavailable`, tried 1 + retries times
    server = ServerProcess(free_port(), "--redis-timeout", "2").start()
    try:
        c = Client(server.url, retries=1, protocol=2)
        with pytest.raises(Unavailable) as down:
            c.info("jobs")
        assert down.value.status == 503
        assert down.value.reason == "redis unavailable"
    finally:
        server.stop()


def test_nothing_listening_is_unavailable_without_a_status():
    c = Client(f"http://127.0.0.1:{free_port()}", retries=1, timeout=2)
    with pytest.raises(Unavailable) as gone:
        c.add("jobs", "v")
    assert gone.value.status is None and "cannot reach" in gone.value.reason


# -- live streams ---------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["sse", "comet"])
def test_stream_yields_messages_until_the_purge(client, redis, via):
    got: list[Message] = []
    reader = threading.Thread(target=lambda: got.extend(client.stream("live", via=via)))
    reader.start()
    deadline = time.monotonic() + 10
    while numsub(redis, "live") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    client.add("live", "1")
    client.add("live", "2")
    while len(keys(redis, "live")) and time.monotonic() < deadline:
        time.sleep(0.02)
    from tests.http_client import delete
    assert delete(client.url, "/q/live").status == 200
    reader.join(10)
    assert not reader.is_alive()
    assert got == [Message("live", "live:1", "1"), Message("live", "live:2", "2")]


def test_stream_reconnects_when_the_server_restarts(redis_proc, redis):
    server = ServerProcess(redis_proc.port).start()
    got: list[str] = []
    c = Client(server.url, timeout=5)
    reader = threading.Thread(target=lambda: got.extend(m.value for m in c.stream("re")))
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while numsub(redis, "re") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.stop()
        server = ServerProcess(redis_proc.port, port=server.port).start()
        deadline = time.monotonic() + 20
        while numsub(redis, "re") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the reader is back
        c.add("re", "after the restart")
        while redis("LLEN", "re:queue") and time.monotonic() < deadline:
            time.sleep(0.02)  # delivered
        from tests.http_client import delete
        delete(server.url, "/q/re")
        reader.join(10)
        assert got == ["after the restart"]
    finally:
        c.close()
        server.stop()


# -- protocol 1 -----------------------------------------------------------------------------


class OldServer(BaseHTTPRequestHandler):
    """A protocol-1 server as the client sees it: /health is 404; an add is received and its
    connection dropped before any reply (so the outcome is unknown); a hard get answers."""
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def do_GET(self):
        self.seen.append(f"GET {self.path}")
        body = b'{"key": "q:1", "value": "v", "count": 0}\r\n'
        if self.path == "/health":
            body = b'{"error": "not found"}'
            self.send_response(404)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(f"POST {self.path} key={self.headers.get('Idempotency-Key')}")
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                   b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def old_server():
    OldServer.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), OldServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_protocol_1_server_disables_v2_calls_and_never_resends_a_post(old_server):
    c = Client(old_server, retries=5, timeout=5)
    assert c.server_protocol() == 1
    for call in (lambda: c.claim("q"), lambda: c.add_batch("q", ["v"]),
                 lambda: c.add("q", "v", delay=5), lambda: c.add("q", "v", priority=1),
                 lambda: c.info("q"), lambda: c.peek("q"), lambda: c.health()):
        with pytest.raises(ProtocolMismatch) as refused:
            call()
        assert refused.value.status == 404 and "protocol" in str(refused.value)
    assert OldServer.seen == ["GET /health", "GET /health"]  # health() asked; nothing else
    assert c.get("q") == Message("q", "q:1", "v")
    with pytest.raises(OutcomeUnknown):
        c.add("q", "v")
    # sent once, without the idempotency key an old server would ignore
    assert OldServer.seen[-1] == "POST /q/q key=None"
    assert sum(s.startswith("POST") for s in OldServer.seen) == 1


# -- Twisted --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tx_client_calls(H, redis):
    from twisted.internet import reactor, task

    from restmq.client import TxClient
    c = TxClient(H, timeout=10)
    try:
        assert await c.add("tx", "a") == "tx:1"
        assert await c.add_batch("tx", ["b", {"value": "c", "priority": 5}]) == ["tx:2", "tx:3"]
        assert [m.key for m in (await c.peek("tx"))[0]] == ["tx:3", "tx:1", "tx:2"]
        lease = (await c.claim("tx", lease=10))[0]
        assert (lease.key, lease.deliveries) == ("tx:3", 1)
        assert (await lease.extend(20)).ok == [lease.receipt]
        assert (await lease.ack()).ok == [lease.receipt]
        assert await c.get("tx") == Message("tx", "tx:1", "a")
        assert await c.pop("tx") == [Message("tx", "tx:2", "b")]
        assert await c.pop("tx", wait=1) == []
        assert (await c.info("tx")).inflight == 0
        assert (await c.set_config("tx", lease=7)).config["lease"] == 7
        assert await c.clear_config("tx") is True
        assert (await c.health()).protocol == 2
        with pytest.raises(TooLarge):
            await c.set_config("tx", max_message=1)
            await c.add("tx", "too long")
        got = []
        streamed = c.stream("txlive", lambda m: got.append(m.value))
        while numsub(redis, "txlive") == 0:
            await task.deferLater(reactor, 0.02, lambda: None)
        await c.add("txlive", "1")
        while redis("LLEN", "txlive:queue"):
            await task.deferLater(reactor, 0.02, lambda: None)
        from twisted.web.client import Agent
        await Agent(reactor).request(b"DELETE", (H + "/q/txlive").encode())
        await streamed
        assert got == ["1"]
    finally:
        await c.close()
