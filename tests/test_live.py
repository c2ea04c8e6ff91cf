"""Live delivery semantics (docs/live-delivery.md) over real sockets: policies, flow control,
purge, the safety sweep, slow consumers and several server processes on one Redis."""
from __future__ import annotations

import json
import socket

import pytest

from tests.comet import CometClient
from tests.conftest import ServerProcess
from tests.http_client import delete, get, post
from tests.util import SweepWatch, wait_until


def subscribed(redis, queue, processes=1):
    """True once `processes` servers are subscribed to the queue's channel."""
    return lambda: redis("PUBSUB", "NUMSUB", f"{queue}:PUBSUB")[1] >= processes


def add(url, queue, value):
    reply = post(url, f"/q/{queue}", {"value": value})
    assert reply.status == 200, reply.body
    return reply.body.decode().strip()


@pytest.fixture
def clients():
    opened = []

    def connect(url, queue, **kw):
        client = CometClient(url, queue, **kw)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


def test_comet_headers_arrive_at_once_and_pending_messages_are_delivered(H, redis, clients):
    keys = [add(H, "q", f"m{i}") for i in range(3)]
    c = clients(H, "q")
    assert c.status == 200
    assert c.headers["content-type"] == "text/plain"
    assert c.headers["transfer-encoding"] == "chunked"
    assert [m["key"] for m in c.messages(3)] == keys
    # Delivered messages are deleted from Redis, value and refcount.
    wait_until(lambda: redis("EXISTS", *keys) == 0, what="deleted values")
    assert redis("LLEN", "q:queue") == 0


def test_broadcast_reaches_every_consumer_in_the_same_order(H, redis, clients):
    consumers = [clients(H, "b") for _ in range(3)]
    wait_until(subscribed(redis, "b"))
    keys = [add(H, "b", f"v{i}") for i in range(25)]
    for c in consumers:
        assert [(m["key"], m["value"]) for m in c.messages(25)] == \
            [(k, f"v{i}") for i, k in enumerate(keys)]


def test_roundrobin_rotates_consumers_one_message_each(H, redis, clients):
    assert post(H, "/p/rr", {"policy": "roundrobin"}).status == 200
    consumers = [clients(H, "rr") for _ in range(3)]
    wait_until(subscribed(redis, "rr"))
    keys = [add(H, "rr", f"v{i}") for i in range(9)]
    got = [[m["key"] for m in c.messages(3)] for c in consumers]
    # Message i goes to consumers[i mod 3], in order.
    assert got == [keys[0::3], keys[1::3], keys[2::3]]


def test_stop_pauses_live_delivery_and_start_drains_the_backlog(H, redis, clients):
    assert post(H, "/control/s", {"status": "stop"}).status == 200
    c = clients(H, "s")
    wait_until(subscribed(redis, "s"))
    with SweepWatch(H, redis) as sweep:
        keys = [add(H, "s", f"v{i}") for i in range(30)]
        sweep.passed()  # neither the adds' wakes nor a sweep deliver from a stopped queue
    assert redis("LLEN", "s:queue") == 30
    # Pull routes keep working while stopped.
    assert get(H, "/q/s").json["key"] == keys[0]
    assert post(H, "/control/s", {"status": "start"}).status == 200
    assert [m["key"] for m in c.messages(29)] == keys[1:]


def test_purge_ends_every_consumer_with_null(H, redis, clients):
    plain, wrapped = clients(H, "p"), clients(H, "p", callback="cb")
    wait_until(subscribed(redis, "p"))
    reply = delete(H, "/q/p")
    assert reply.json == {"queue": "p", "status": 0}
    assert plain.lines(1) == ["null"]
    assert wrapped.lines(1) == ["cb(null);"]
    plain.wait_end()
    wrapped.wait_end()
    wait_until(lambda: redis("PUBSUB", "NUMSUB", "p:PUBSUB")[1] == 0, what="unsubscribe")


def test_comet_jsonp_lines(H, redis, clients):
    c = clients(H, "j", callback="cb")
    wait_until(subscribed(redis, "j"))
    key = add(H, "j", "<x>")
    assert c.lines(1) == [f'cb({{"key": "{key}", "value": "\\u003cx\\u003e"}});']


def test_safety_sweep_delivers_without_a_notification(H, redis, clients):
    c = clients(H, "sweep")
    wait_until(subscribed(redis, "sweep"))
    # Once an add has woken the consumer, the server's subscription is confirmed: nothing but
    # a sweep dispatches the queue again until the next wake.
    assert add(H, "sweep", "woken") == "sweep:1"
    assert c.messages(1) == [{"key": "sweep:1", "value": "woken"}]
    # Written by a program that publishes no wake: only the 1 s sweep finds it.
    redis("SET", "sweep:2", "quiet")
    redis("LPUSH", "sweep:queue", "sweep:2")
    assert c.messages(2, timeout=5)[1] == {"key": "sweep:2", "value": "quiet"}


def test_backlog_drains_in_batches(H, redis, clients):
    values = [f"m{i}" for i in range(500)]
    for i, value in enumerate(values, 1):
        redis("SET", f"big:{i}", value)
        redis("LPUSH", "big:queue", f"big:{i}")
    redis("SET", "queuestat::big", "1")
    c = clients(H, "big")
    assert [m["value"] for m in c.messages(500, timeout=30)] == values


def test_disconnected_consumer_is_forgotten(H, redis, clients):
    c = clients(H, "gone")
    wait_until(subscribed(redis, "gone"))
    c.close()
    wait_until(lambda: redis("PUBSUB", "NUMSUB", "gone:PUBSUB")[1] == 0, what="unsubscribe")
    with SweepWatch(H, redis) as sweep:
        add(H, "gone", "kept")
        sweep.passed()
    assert redis("LLEN", "gone:queue") == 1


def test_foreign_notes_on_the_channel_change_nothing(H, redis, clients):
    # Anyone with Redis access can publish on a queue's channel: notes that are not ours (not
    # JSON, not an object, another db, nested past the decoder's recursion limit) are ignored,
    # and the next real add still reaches the consumer (the fixture then checks the log).
    c = clients(H, "foreign")
    wait_until(subscribed(redis, "foreign"))
    for note in ("not json", "[1]", '{"type": "wake", "db": 99}', "[" * 100000 + "]" * 100000):
        redis("PUBLISH", "foreign:PUBSUB", note)
    key = add(H, "foreign", "after")
    assert [(m["key"], m["value"]) for m in c.messages(1)] == [(key, "after")]


def test_slow_consumer_is_disconnected_past_16_mib(H, redis):
    c = CometClient(H, "slow")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        wait_until(subscribed(redis, "slow"))
        value = "x" * 900_000
        for _ in range(40):  # 36 MB, never read by the client
            add(H, "slow", value)
        wait_until(lambda: redis("PUBSUB", "NUMSUB", "slow:PUBSUB")[1] == 0, timeout=20,
                 what="the slow consumer to be dropped")
    finally:
        c.close()


@pytest.fixture
def second_server(redis_proc):
    server = ServerProcess(redis_proc.port).start()
    yield server
    server.stop()
    assert "Traceback" not in server.log()


def test_two_processes_broadcast_in_the_same_order(H, redis, second_server, clients):
    a = [clients(H, "multi") for _ in range(2)]
    b = [clients(second_server.url, "multi") for _ in range(2)]
    wait_until(subscribed(redis, "multi", processes=2))
    keys = []
    for i in range(40):  # adds through both processes, interleaved
        keys.append(add(H if i % 2 else second_server.url, "multi", f"v{i}"))
    orders = [[m["key"] for m in c.messages(40)] for c in a + b]
    assert all(order == orders[0] for order in orders)
    assert sorted(orders[0], key=lambda k: int(k.split(":")[1])) == keys


def test_two_processes_roundrobin_deliver_each_message_exactly_once(H, redis, second_server,
                                                                    clients):
    assert post(H, "/p/once", {"policy": "roundrobin"}).status == 200
    consumers = [clients(H, "once"), clients(H, "once"), clients(second_server.url, "once")]
    wait_until(subscribed(redis, "once", processes=2))
    keys = {add(H if i % 2 else second_server.url, "once", f"v{i}") for i in range(60)}
    wait_until(lambda: redis("LLEN", "once:queue") == 0, what="all delivered")

    def lines():
        for c in consumers:
            read_available(c)
        return [[json.loads(line) for line in c.body.decode().split("\r\n") if line]
                for c in consumers]

    wait_until(lambda: sum(map(len, lines())) >= 60, what="60 messages received")
    # A marker for every consumer, added after: what a consumer got before its marker is
    # everything it was ever handed of the 60 (one stream is in order).
    markers = 0
    while not all(any(m["value"] == "marker" for m in got) for got in lines()):
        assert markers < 50, "some consumer never got a marker"
        add(H if markers % 2 else second_server.url, "once", "marker")
        markers += 1
        wait_until(lambda: sum(m["value"] == "marker" for got in lines() for m in got)
                   == markers, what="the marker")
    got = []
    for messages in lines():
        first = next(i for i, m in enumerate(messages) if m["value"] == "marker")
        got += [m["key"] for m in messages[:first]]
        assert all(m["value"] == "marker" for m in messages[first:])
    assert sorted(got) == sorted(keys)
    assert len(got) == len(set(got))


def read_available(c: CometClient) -> None:
    """Whatever the comet stream has received by now, decoded (no wait)."""
    c.sock.settimeout(0.01)
    try:
        data = c.sock.recv(65536)
    except socket.timeout:
        return
    c.raw += data
    c._decode_chunks()


def test_live_routes_check_their_acl_category_before_the_stream(redis_proc, tmp_path):
    from tests.http_client import request
    acl = tmp_path / "acl.conf"
    acl.write_text("[comet:consumer]\nhosts_deny = all\n"
                   "[sse:consumer]\nusername = u\npassword = p\n"
                   "[websocket:consumer]\nhosts_allow = 10.\n")
    server = ServerProcess(redis_proc.port, "--acl", str(acl)).start()
    try:
        denied = get(server.url, "/c/q")
        assert (denied.status, denied.json) == (401, {"error": "unauthorized"})
        assert denied.header("WWW-Authenticate") is None
        challenged = get(server.url, "/sse/q")
        assert challenged.status == 401
        assert challenged.header("WWW-Authenticate") == 'Basic realm="RestMQ Restricted Access"'
        ws = request(server.url, "GET", "/ws/q", headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert (ws.status, ws.json) == (401, {"error": "unauthorized"})
        # The SSE stream starts with the credentials as a cookie (browsers' EventSource).
        import socket
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /sse/q HTTP/1.1\r\nHost: t\r\nCookie: auth=u:p\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        server.stop()
