"""HTTP/1.1 pipelining on a real server: requests written together on one connection are
answered one after another, in request order (RFC 9112 §9.3.2), and a live stream ends its
connection's pipeline (docs/http-api.md#connection-level-rules).

Replies are read with h11, a strict HTTP/1.1 parser independent of the server's, which
refuses any reply that is not framed exactly (a reply written inside another one, say)."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import time
from urllib.parse import urlencode, urlsplit

import h11
import pytest

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import delete, post
from tests.util import numsub, peer_has_read, wait_until


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(method: str, path: str, form: dict | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\n"
    if form is None:
        return (head + "\r\n").encode()
    body = urlencode(form).encode()
    return (head + "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Replies:
    """Reads the replies to requests sent on `sock`, in order, through an h11 client."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT)

    def _event(self):
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = self.sock.recv(65536)
            self.h11.receive_data(data)  # b"": the server closed; h11 says what that means

    def head(self, method: str) -> tuple[int, dict[str, str]]:
        """The status and headers of the reply to the next request (made with `method`)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        self.h11.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
        self.h11.send(h11.EndOfMessage())
        event = self._event()
        assert isinstance(event, h11.Response), event
        return event.status_code, {k.decode().lower(): v.decode() for k, v in event.headers}

    def body(self) -> bytes:
        data = b""
        while True:
            event = self._event()
            if isinstance(event, h11.EndOfMessage):
                return data
            assert isinstance(event, h11.Data), event
            data += event.data

    def reply(self, method: str) -> tuple[int, bytes]:
        status, _ = self.head(method)
        return status, self.body()

    def stream_data(self) -> bytes:
        """What the body of a never-ending reply brings next."""
        event = self._event()
        assert isinstance(event, h11.Data), event
        return event.data


def mixed(count: int, queue: str) -> tuple[list[bytes], list[str], list, int]:
    """`count` requests cycling through add, hard get and purge of another queue, with the
    replies a FIFO queue gives them and how many messages stay pending."""
    requests, methods, expected, pending, added = [], [], [], [], 0
    for i in range(count):
        kind = i % 3
        if kind == 0:
            added += 1
            pending.append((f"{queue}:{added}", f"v{i}"))
            requests.append(request("POST", f"/q/{queue}", {"value": f"v{i}"}))
            methods.append("POST")
            expected.append((200, f"{queue}:{added}\r\n".encode()))
        elif kind == 1:
            requests.append(request("GET", f"/q/{queue}"))
            methods.append("GET")
            if pending:
                key, value = pending.pop(0)
                expected.append((200, {"key": key, "value": value, "count": 0}))
            else:
                expected.append((204, b""))
        else:
            requests.append(request("DELETE", f"/q/other{i}"))
            methods.append("DELETE")
            expected.append((200, {"queue": f"other{i}", "status": 0}))
    return requests, methods, expected, len(pending)


def check(replies: Replies, methods: list[str], expected: list) -> None:
    for n, (method, (status, body)) in enumerate(zip(methods, expected)):
        got_status, got = replies.reply(method)
        if isinstance(body, dict):
            got = json.loads(got)
        assert (got_status, got) == (status, body), f"reply {n} to {method}"


def test_a_hard_get_and_a_file_pipelined_are_answered_in_order(H, redis, server):
    """The review's recipe: the hard-got message came back second (or never) and the log
    showed `AssertionError: Request closed`."""
    post(H, "/q/pipe", form={"value": "first"})
    log_before = len(server.log())
    with connect(H) as sock:
        sock.sendall(request("GET", "/q/pipe") + request("GET", "/robots.txt"))
        replies = Replies(sock)
        status, body = replies.reply("GET")
        assert (status, json.loads(body)) == (200, {"key": "pipe:1", "value": "first", "count": 0})
        status, body = replies.reply("GET")
        assert status == 200 and b"User-agent" in body, body
    assert redis("LLEN", "pipe:queue") == 0 and redis("GET", "pipe:1") == "first"
    assert "Request closed" not in server.log()[log_before:]


@pytest.mark.parametrize("count", [2, 10, 100])
def test_pipelined_requests_in_one_write_are_answered_in_order(H, redis, count):
    requests, methods, expected, left = mixed(count, "mix")
    with connect(H) as sock:
        sock.sendall(b"".join(requests))
        check(Replies(sock), methods, expected)
    assert redis("LLEN", "mix:queue") == left


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_pipeline_split_at_random_points_is_answered_the_same(H, redis, seed):
    requests, methods, expected, _ = mixed(30, "split")
    data = b"".join(requests)
    rng = random.Random(seed)
    with connect(H) as sock:
        at = 0
        while at < len(data):
            size = rng.choice([1, 2, 3, 7, 50, 200, 1000])
            sock.sendall(data[at:at + size])
            at += size
            if rng.random() < 0.2:
                time.sleep(0.002)  # let the server read a part on its own
        check(Replies(sock), methods, expected)


def test_a_stream_pipelined_last_starts_after_the_replies_before_it(H, redis):
    requests, methods, expected, _ = mixed(9, "last")
    with connect(H) as sock:
        sock.sendall(b"".join(requests) + request("GET", "/c/last"))
        replies = Replies(sock)
        check(replies, methods, expected)
        status, headers = replies.head("GET")
        assert status == 200 and headers["content-type"] == "text/plain", headers
        wait_until(lambda: numsub(redis, "last") == 1, what="the stream to register")
        key = post(H, "/q/last", form={"value": "live"}).body.decode().strip()
        assert json.loads(replies.stream_data()) == {"key": key, "value": "live"}


def test_a_request_pipelined_behind_a_stream_is_never_run(H, redis, server):
    """The review's recipe: an add behind a comet request had its reply written inside the
    chunked comet body. Now it is not run at all; the stream goes on undisturbed."""
    log_before = len(server.log())
    with connect(H) as sock:
        sock.sendall(request("GET", "/c/behind") + request("POST", "/q/behind", {"value": "x"}))
        replies = Replies(sock)
        assert replies.head("GET")[0] == 200
        wait_until(lambda: "pipelined behind a live stream" in server.log()[log_before:],
                   what="the pipelined add to be dropped")
        wait_until(lambda: numsub(redis, "behind") == 1, what="the stream to register")
        assert redis("EXISTS", "behind:UUID") == 0  # the add never ran
        key = post(H, "/q/behind", form={"value": "after"}).body.decode().strip()
        assert key == "behind:1"
        assert json.loads(replies.stream_data()) == {"key": key, "value": "after"}


def test_a_hard_get_pipelined_before_a_stream_is_answered_before_it(H, redis):
    """The review's recipe: the stream's headers went out first and the get's reply landed
    inside the stream, so the hard-got message was unreadable."""
    post(H, "/q/first", form={"value": "got"})
    with connect(H) as sock:
        sock.sendall(request("GET", "/q/first") + request("GET", "/c/first"))
        replies = Replies(sock)
        status, body = replies.reply("GET")
        assert (status, json.loads(body)) == (200, {"key": "first:1", "value": "got", "count": 0})
        status, headers = replies.head("GET")
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        wait_until(lambda: numsub(redis, "first") == 1, what="the stream to register")
        key = post(H, "/q/first", form={"value": "live"}).body.decode().strip()
        assert json.loads(replies.stream_data()) == {"key": key, "value": "live"}


def test_a_client_that_pipelines_much_and_reads_late_gets_every_reply(H, redis):
    """Reading pauses while requests or unsent replies pile up, and resumes: nothing is lost
    or reordered, and the connection does not stall."""
    count = 3000
    with connect(H) as sock:
        sock.sendall(b"".join(request("GET", f"/nowhere/{i}") for i in range(count)))
        replies = Replies(sock)
        for i in range(count):
            status, body = replies.reply("GET")
            assert (status, json.loads(body)) == (404, {"error": "not found"}), i


def test_a_stream_ended_by_purge_keeps_its_connection_unless_bytes_came_behind_it(H, redis):
    with connect(H) as quiet, connect(H) as talker:
        for sock in (quiet, talker):
            sock.sendall(request("GET", "/c/ends"))
        replies = {sock: Replies(sock) for sock in (quiet, talker)}
        for sock in (quiet, talker):
            assert replies[sock].head("GET")[0] == 200
        talker.sendall(request("GET", "/stats/ends"))  # behind the stream: never answered
        wait_until(lambda: peer_has_read(talker), what="the server to read the request")
        assert delete(H, "/q/ends").status == 200
        for sock in (quiet, talker):
            assert replies[sock].body() == b"null\r\n"
        assert talker.recv(65536) == b""  # closed when the stream ended
        # the quiet one is kept alive, and serves its next request
        quiet.sendall(request("GET", "/q/ends"))
        assert replies[quiet].reply("GET") == (204, b"")


# -- bytes that arrive while a watched reply is written ---------------------------------------

def receive_queues(port: int) -> dict[tuple[int, int], int]:
    """Bytes waiting unread in the receive queue of each local TCP socket with `port` at one
    end, by (local port, remote port) (Linux, /proc/net/tcp and tcp6)."""
    queues = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                ends = tuple(int(end.rsplit(":", 1)[1], 16) for end in fields[1:3])
                if port in ends:
                    queues[ends] = int(fields[4].split(":")[1], 16)
    return queues


def stop(pid: int) -> None:
    """SIGSTOP, and wait until the process is stopped (the signal takes effect a little
    later when the process runs on another CPU)."""
    os.kill(pid, signal.SIGSTOP)

    def stopped():
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "T"
    wait_until(stopped, what=f"process {pid} to stop")


def claim_with_a_request_behind_its_redis_reply(redis_proc, server, sock) -> None:
    """On `sock`, a fresh connection to `server`: a claim, whose Redis reply and the next
    request then wait together for the server (both processes are stopped meanwhile), so
    that the server writes the claim's reply in the reactor turn in which the request is
    readable. Both must be answered."""
    port = redis_proc.port
    replies = Replies(sock)
    sock.sendall(request("POST", "/q/turn", {"value": "claimed"}))
    assert replies.reply("POST") == (200, b"turn:1\r\n")
    # Loads the claim script, so that the claim below is one round trip to Redis.
    sock.sendall(request("POST", "/claim/empty", {"limit": 1}))
    assert replies.reply("POST")[0] == 204
    stop(redis_proc.pid)
    try:
        before = receive_queues(port)
        sock.sendall(request("POST", "/claim/turn", {"limit": 1, "lease": 60}))
        wait_until(lambda: peer_has_read(sock), what="the server to read the claim")
        # Redis's end of the connection that carries the claim's script call
        ends = wait_until(lambda: [ends for ends, size in receive_queues(port).items()
                                   if ends[0] == port and size > before.get(ends, 0)],
                          what="the claim's script call to reach Redis")
        stop(server.proc.pid)
    finally:
        os.kill(redis_proc.pid, signal.SIGCONT)
    try:
        wait_until(lambda: all(receive_queues(port).get((theirs, ours)) for ours, theirs in ends),
                   what="Redis's reply to wait for the server")
        sock.sendall(request("GET", "/stats/turn"))
        wait_until(lambda: not peer_has_read(sock), what="the request to arrive")
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    status, body = replies.reply("POST")  # before the fix: h11 saw the connection close
    assert status == 200
    assert [m["key"] for m in json.loads(body)["messages"]] == ["turn:1"]
    status, body = replies.reply("GET")
    assert status == 200 and json.loads(body)["queue"] == "turn"
    assert "the client left before the reply went out" not in server.log()


def test_a_request_that_arrives_with_the_redis_reply_of_a_claim_does_not_end_the_connection():
    """The adversarial tier's intermittent `no reply`: a claim's reply was written with
    Twisted's bufferSize at 0 (so that its going out could be noticed), and Twisted also
    reads at most bufferSize bytes at a time. When the next pipelined request was readable in
    the same reactor turn as the claim's Redis reply, its read got 0 bytes, which Twisted
    takes for the peer closing: the connection was dropped with the claim's reply unsent,
    and the claimed messages were released."""
    redis_proc = RedisProcess().start()
    server = ServerProcess(redis_proc.port).start()
    try:
        with connect(server.url) as sock:
            claim_with_a_request_behind_its_redis_reply(redis_proc, server, sock)
    finally:
        server.stop()
        redis_proc.stop()
