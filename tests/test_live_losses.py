"""Live consumers that go away at awkward moments must not cost anybody a message: a client that
leaves while its handler waits for Redis, a consumer that stops reading (cut after
--live-stall-timeout, its roundrobin share going to the others), a consumer that reconnects
while a batch is in flight, and an HTTP/1.0 stream asking for keep-alive."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit

import pytest

from tests.comet import CometClient
from tests.conftest import ServerProcess
from tests.http_client import delete, get, post
from tests.util import numsub, peer_has_read, wait_until

STALL = 1  # --live-stall-timeout of the `stall_server` fixture, in seconds
CUT_LINE = "read nothing for"  # the server's log line when it cuts a stalled consumer


def add(url: str, queue: str, value: str) -> str:
    reply = post(url, f"/q/{queue}", {"value": value})
    assert reply.status == 200, reply.body
    return reply.body.decode().strip()


def number(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


def request_bytes(kind: str, queue: str) -> bytes:
    if kind == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        return (f"GET /ws/{queue} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
    return f"GET /{kind}/{queue} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


class Silent:
    """A live consumer that reads its response head and then never reads again: its receive
    buffer is made small before connecting, so the server's output backs up at once."""

    def __init__(self, url: str, kind: str, queue: str):
        parts = urlsplit(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect((parts.hostname, parts.port))
        self.sock.sendall(request_bytes(kind, queue))
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(1)  # byte by byte: leave every delivery unread
            assert data, "closed before the head"
            head += data
        assert head.split(b" ", 2)[1] in (b"200", b"101"), head

    def close(self) -> None:
        self.sock.close()


class Reader(threading.Thread):
    """A comet consumer read by a thread, optionally slowly (`pause` seconds between reads of
    `chunk` bytes); `keys` lists what arrived, in order."""

    def __init__(self, url: str, queue: str, chunk: int = 65536, pause: float = 0.0):
        super().__init__(daemon=True)
        self.client = CometClient(url, queue)
        self.chunk, self.pause = chunk, pause
        self.keys: list[str] = []
        self.ended = False
        self.start()

    def run(self) -> None:
        c = self.client
        c.sock.settimeout(0.2)
        while not c.ended:
            try:
                data = c.sock.recv(self.chunk)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            c.raw += data
            c._decode_chunks()
            *lines, c.body = c.body.split(b"\r\n")
            self.keys += [json.loads(line)["key"] for line in lines if line != b"null"]
            if self.pause:
                time.sleep(self.pause)
        self.ended = True

    def close(self) -> None:
        self.client.close()
        self.join(5)


@pytest.fixture(scope="module")
def stall_server(redis_proc):
    server = ServerProcess(redis_proc.port, "--live-stall-timeout", str(STALL)).start()
    yield server
    server.stop()
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


@pytest.fixture
def closing():
    """Registers things with a close() method, closed after the test."""
    opened = []
    yield lambda thing: opened.append(thing) or thing
    for thing in reversed(opened):
        thing.close()


def buffered_bound(size: int) -> int:
    """How many messages of `size` bytes a consumer that stopped reading can have been handed
    before its output counts as backed up: the kernel's unsent queue (kept to 64 KiB),
    Twisted's 256 KiB, the peer's small receive buffer, and the message that overflowed them."""
    return (256 + 64 + 64) * 1024 // size + 2


# -- 1. a client that leaves while its handler still waits for Redis --------------------------

@pytest.mark.parametrize("policy", ["broadcast", "roundrobin"])
@pytest.mark.parametrize("kind", ["c", "sse", "ws"])
def test_a_consumer_that_leaves_before_registering_takes_no_message(H, redis, kind, policy):
    queue = f"early-{kind}-{policy}"
    assert post(H, f"/p/{queue}", {"policy": policy}).status == 200
    redis("CLIENT", "PAUSE", "800", "ALL")  # the handler's Redis round trip now takes 0.8 s
    parts = urlsplit(H)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as early:
        early.sendall(request_bytes(kind, queue))
        # Read by the server: its handler has sent its Redis round trip, which Redis holds.
        wait_until(lambda: peer_has_read(early), what="the server to read the request")
    # A request sent after it needs Redis too: once it is answered, after the pause, the
    # handler of the early consumer has had its answer and gone on.
    assert get(H, f"/stats/{queue}").status == 200
    keys = [add(H, queue, f"m{i}") for i in range(3)]
    # A consumer connecting now finds all three pending: nobody took them meanwhile ...
    late = CometClient(H, queue)
    try:
        assert [m["key"] for m in late.messages(3, timeout=5)] == keys
    finally:
        late.close()
    # ... and once it has left, no consumer of the queue is left in the server.
    wait_until(lambda: numsub(redis, queue) == 0, 5, what="no consumer left registered")


# -- 3. a consumer that reconnects while a roundrobin batch is being popped ----------------------

def test_a_batch_popped_while_consumers_change_goes_to_the_new_consumer(H, redis, server,
                                                                       closing):
    queue = "swap"
    assert post(H, f"/p/{queue}", {"policy": "roundrobin"}).status == 200
    keys = [f"{queue}:{i}" for i in range(1, 4)]
    for key in keys:  # pending without a wake: only a pop finds them
        redis("SET", key, f"value of {key}")
        redis("LPUSH", f"{queue}:queue", key)
    redis("SET", f"queuestat::{queue}", "1")
    log_before = len(server.log())
    # Scripts wait for 1.5 s; PING and SUBSCRIBE do not, so consumers still connect.
    redis("CLIENT", "PAUSE", "1500", "WRITE")
    first = CometClient(H, queue)
    wait_until(lambda: numsub(redis, queue) == 1, what="the first consumer registered")
    wait_until(lambda: "blocked_clients:1" in redis("INFO", "clients"),
               what="the pop of its registration, held by Redis")
    first.close()
    wait_until(lambda: numsub(redis, queue) == 0, what="the first consumer gone")
    second = closing(CometClient(H, queue))
    wait_until(lambda: numsub(redis, queue) == 1, what="the second consumer registered")
    assert [m["key"] for m in second.messages(3, timeout=5)] == keys
    assert "dropped" not in server.log()[log_before:]


# -- 2. consumers that stop reading -----------------------------------------------------------

def test_roundrobin_skips_a_stalled_consumer_and_cuts_it(stall_server, redis, closing):
    url, queue, size, count = stall_server.url, "rrstall", 200_000, 100
    assert post(url, f"/p/{queue}", {"policy": "roundrobin"}).status == 200
    log_before = len(stall_server.log())
    closing(Silent(url, "c", queue))
    reader = closing(Reader(url, queue))
    keys = [add(url, queue, f"{i:06d}" + "x" * (size - 6)) for i in range(count)]
    wait_until(lambda: CUT_LINE in stall_server.log()[log_before:], 15,
             what="the stalled consumer to be cut")
    wait_until(lambda: redis("LLEN", f"{queue}:queue") == 0, what="the queue drained")
    # A last message, after all the others, for the reader alone: once it is there, the
    # reader has everything it will ever get.
    keys.append(add(url, queue, "marker"))
    wait_until(lambda: reader.keys and reader.keys[-1] == keys[-1], what="the marker")
    reader.keys.pop()
    keys.pop()
    # The reader got every message the stalled one was not handed before its output backed
    # up, in order; the stalled consumer lost only what sat in its buffers when cut.
    assert reader.keys == sorted(reader.keys, key=number)
    lost = set(keys) - set(reader.keys)
    assert len(lost) <= buffered_bound(size), (len(lost), len(keys))


def test_roundrobin_with_only_a_stalled_consumer_keeps_the_rest_pending_in_order(
        stall_server, redis, closing):
    url, queue, size, count = stall_server.url, "rralone", 200_000, 100
    assert post(url, f"/p/{queue}", {"policy": "roundrobin"}).status == 200
    log_before = len(stall_server.log())
    closing(Silent(url, "c", queue))
    keys = [add(url, queue, "x" * size) for _ in range(count)]
    wait_until(lambda: CUT_LINE in stall_server.log()[log_before:], 15,
             what="the stalled consumer to be cut")
    wait_until(lambda: numsub(redis, queue) == 0, what="the stalled consumer unregistered")
    pending = redis("LLEN", f"{queue}:queue")
    assert count - pending <= buffered_bound(size), (pending, count)
    # What it was not handed is still there, oldest next: a new consumer gets it in order.
    later = closing(Reader(url, queue))
    wait_until(lambda: len(later.keys) == pending, what="the pending messages")
    assert later.keys == keys[count - pending:]


def test_roundrobin_puts_back_on_a_queue_the_original_registered(H, redis, server, closing):
    """Delivery knows a queue again by its pub/sub channel, as plain text: the put-back must
    accept a registered legacy name as the pop does."""
    name, size, count = "my queue", 200_000, 20
    redis("SADD", "QUEUESET", name)
    redis("SET", f"{name}:queuepolicy", "2")
    redis("SET", f"queuestat::{name}", "0")  # the backlog is popped in one batch of 1 MiB
    keys = [add(H, "my%20queue", f"{i:06d}" + "x" * (size - 6)) for i in range(count)]
    log_before = len(server.log())
    closing(Silent(H, "c", "my%20queue"))
    wait_until(lambda: numsub(redis, name) == 1, what="the consumer registered")
    assert post(H, "/control/my%20queue", {"status": "start"}).status == 200
    # Popped: five messages; written: what filled the silent consumer's output; put back: the
    # rest, oldest next, while nothing more is popped for a consumer that is behind.
    wait_until(lambda: count - buffered_bound(size) <= redis("LLEN", f"{name}:queue") < count
             or "could not be put back" in server.log()[log_before:], what="the put-back")
    assert "could not be put back" not in server.log()[log_before:]
    pending = redis("LRANGE", f"{name}:queue", 0, -1)
    assert pending[::-1] == keys[count - len(pending):]


def test_a_put_back_priority_message_keeps_its_level(H, redis, server, closing):
    """What a roundrobin pop could not hand out goes back to its priority level: a message of
    priority 9 put back is still taken before one of priority 5 added later."""
    queue, size, count = "rrprio", 200_000, 20
    assert post(H, f"/p/{queue}", {"policy": "roundrobin"}).status == 200
    assert post(H, f"/control/{queue}", {"status": "stop"}).status == 200
    keys = []
    for i in range(count):
        reply = post(H, f"/q/{queue}", {"value": f"{i:06d}" + "x" * (size - 6),
                                        "priority": "9"})
        assert reply.status == 200, reply.body
        keys.append(reply.body.decode().strip())
    silent = closing(Silent(H, "c", queue))
    wait_until(lambda: numsub(redis, queue) == 1, what="the consumer registered")
    assert post(H, f"/control/{queue}", {"status": "start"}).status == 200
    # Popped: six messages; written: what filled the silent consumer's output; put back: the
    # rest. Until the put-back, more than buffered_bound messages are missing from Redis.
    wait_until(lambda: redis("LLEN", f"{queue}:queue") or
               count - buffered_bound(size) <= redis("ZCARD", f"{queue}:priority") < count,
               what="the put-back")
    assert redis("LLEN", f"{queue}:queue") == 0  # none fell to priority 0
    left = redis("ZRANGE", f"{queue}:priority", 0, -1)
    assert left == keys[count - len(left):]
    assert post(H, f"/q/{queue}", {"value": "later", "priority": "5"}).status == 200
    silent.close()
    wait_until(lambda: numsub(redis, queue) == 0, what="the consumer gone")
    assert get(H, f"/q/{queue}").json["key"] == left[0]


def test_broadcast_still_writes_to_a_stalled_consumer_but_cuts_it(stall_server, redis, closing):
    url, queue, size, count = stall_server.url, "bstall", 100_000, 30
    log_before = len(stall_server.log())
    reader = closing(Reader(url, queue))
    for kind in ("c", "sse", "ws"):
        closing(Silent(url, kind, queue))
    keys = [add(url, queue, "x" * size) for _ in range(count)]
    wait_until(lambda: stall_server.log()[log_before:].count(CUT_LINE) == 3, 15,
             what="the three stalled consumers to be cut")
    wait_until(lambda: len(reader.keys) == count, what="the reader to get everything")
    assert reader.keys == keys
    assert numsub(redis, queue) == 1  # the reader is still there


def test_a_slow_but_reading_consumer_is_not_cut(stall_server, redis, closing):
    url, queue, size, count = stall_server.url, "slowok", 100_000, 40
    log_before = len(stall_server.log())
    slow = closing(Reader(url, queue, chunk=32768, pause=0.05))
    keys = [add(url, queue, "x" * size) for _ in range(count)]
    wait_until(lambda: len(slow.keys) == count, 30, what="the slow reader to get everything")
    assert slow.keys == keys
    assert CUT_LINE not in stall_server.log()[log_before:]


def test_stream_sockets_probe_an_idle_peer(stall_server, redis, closing):
    """TCP keepalive on stream connections: the kernel finds a peer that vanished while
    nothing was being sent."""
    closing(Silent(stall_server.url, "c", "idle"))
    port = urlsplit(stall_server.url).port
    listing = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, check=True).stdout
    assert "keepalive" in listing, listing


# -- nearby: HTTP/1.0 streams -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["c", "sse"])
def test_http10_keep_alive_stream_still_ends_by_close(H, redis, kind):
    queue = f"old-{kind}"
    parts = urlsplit(H)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(f"GET /{kind}/{queue} HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n".encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(65536)
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        assert b"keep-alive" not in head, head  # the body has no length: close ends it
        wait_until(lambda: numsub(redis, queue) == 1, what="the consumer registered")
        assert delete(H, f"/q/{queue}").status == 200
        while True:  # the socket timeout fails the test if the server keeps it open
            data = sock.recv(65536)
            if not data:
                break
            raw += data
    assert raw.endswith(b"null\r\n" if kind == "c" else b"data: null\n\n"), raw


# -- nearby: a second stream request pipelined on the same connection ----------------------------

def test_a_stream_pipelined_behind_another_is_left_unanswered(H, redis, server):
    queue = "piped"
    parts = urlsplit(H)
    log_before = len(server.log())
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        request = f"GET /c/{queue} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        sock.sendall(request + request)
        wait_until(lambda: numsub(redis, queue) == 1, what="a consumer registered")
        wait_until(lambda: "pipelined behind a live stream" in server.log()[log_before:],
                   what="the second request to hear from Redis and be left unanswered")
        keys = [add(H, queue, f"m{i}") for i in range(2)]
        raw = b""
        while raw.count(b"}\r\n") < 2:
            raw += sock.recv(65536)
    # One response, each message once: not two streams interleaved on one connection.
    assert raw.count(b"HTTP/1.1 200") == 1, raw
    assert [json.loads(line)["key"] for line in raw.split(b"\r\n") if line.startswith(b"{")] \
        == keys
    assert "pipelined behind a live stream" in server.log()[log_before:]


# -- nearby: a WebSocket client that sends but never reads --------------------------------------

def test_a_websocket_client_that_does_not_read_its_echoes_is_not_read_either(H, redis, closing):
    peer = closing(Silent(H, "ws", "echoes"))
    frame = bytes((0x82, 0xFF)) + (512 * 1024).to_bytes(8, "big") + b"\0\0\0\0" \
        + b"e" * (512 * 1024)  # binary, masked with a zero key
    peer.sock.settimeout(3)
    sent = 0
    with pytest.raises(socket.timeout):
        while sent < 64 * 1024 * 1024:  # far more than every buffer on the way
            peer.sock.sendall(frame)
            sent += len(frame)
    # The server stopped reading once the echoes backed up: it does not buffer them all.
    assert sent < 64 * 1024 * 1024


# -- the 16 MiB cap, on its own --------------------------------------------------------------------

@pytest.fixture(scope="module")
def patient_server(redis_proc):
    """A server whose stall watch waits an hour: only the 16 MiB cap can cut a consumer."""
    server = ServerProcess(redis_proc.port, "--live-stall-timeout", "3600").start()
    yield server
    server.stop()
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


@pytest.mark.parametrize("kind", ["c", "sse", "ws"])
def test_a_consumer_more_than_16_mib_behind_is_cut(patient_server, redis, closing, kind):
    """The cap used to read Twisted's private buffer fields with a default of 0: had they
    changed, it would have stopped cutting anybody. Now it counts what the stream holds."""
    url, queue = patient_server.url, f"far-{kind}"
    log_before = len(patient_server.log())
    closing(Silent(url, kind, queue))
    wait_until(lambda: numsub(redis, queue) == 1, what="the consumer to register")
    value = "x" * 900_000
    for _ in range(24):  # 21 MB: more than the cap and every buffer on the way
        add(url, queue, value)
    wait_until(lambda: "is more than 16 MiB behind" in patient_server.log()[log_before:], 20,
               what="the consumer to be cut by the cap")
    wait_until(lambda: numsub(redis, queue) == 0, what="the consumer to leave")
