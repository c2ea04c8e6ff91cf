"""Priorities honoured by every consumer kind, through the public interface
(docs/http-api.md#priorities): after 1,000 messages of priority 0, a message of priority 9 is
the next one out of a hard get (`/q/<q>` and `/?queue=`), the JSON protocol's `take` and `get`,
XML-RPC `get` and `take`, comet, WebSocket, SSE, `/claim/` and `/pop/` (with and without
`wait`); then priority 7, the two of priority 3 in the order they were added, and only then
the oldest of priority 0. A message keeps its level through a release, a lapsed lease and a
delay, on Redis's clock with short times and a bounded poll."""
from __future__ import annotations

import json
import socket
import time
import xmlrpc.client
from urllib.parse import urlsplit

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from tests.comet import CometClient
from tests.http_client import get, post, request
from tests.util import numsub, v2_json, wait_until

BACKLOG = 1000
# What consumers must get first, in this order, from the queue `backlog` builds.
FIRST = ["urgent", "seven", "three-a", "three-b", "p0-0000", "p0-0001"]


def backlog(H, queue: str) -> None:
    """1,000 messages of priority 0 (in batches), then one of priority 9, one of 7 and two of
    3: the levels arrive last, and must come out first."""
    for start in range(0, BACKLOG, 100):
        items = [f"p0-{n:04d}" for n in range(start, start + 100)]
        assert request(H, "POST", f"/batch/{queue}", body=json.dumps(items)).status == 200
    for value, priority in (("urgent", 9), ("seven", 7), ("three-a", 3), ("three-b", 3)):
        reply = post(H, f"/q/{queue}", {"value": value, "priority": str(priority)})
        assert reply.status == 200, reply.body
    assert get(H, f"/stats/{queue}").json["len"] == BACKLOG + 4


# -- pull consumers ----------------------------------------------------------------------------


def hard_get(H, queue):
    return get(H, f"/q/{queue}").json["value"]


def root_get(H, queue):
    return get(H, f"/?queue={queue}").json["value"]


def json_command(H, cmd: str, queue: str) -> dict:
    reply = post(H, "/queue", {"body": json.dumps({"cmd": cmd, "queue": queue})})
    assert reply.status == 200, reply.body
    return reply.json


def json_take(H, queue):
    return json_command(H, "take", queue)["value"]


def xmlrpc_get(H, queue):
    return xmlrpc.client.ServerProxy(f"{H}/xmlrpc").get(queue)


def xmlrpc_take(H, queue):
    return xmlrpc.client.ServerProxy(f"{H}/xmlrpc").take(queue)


def claim_one(H, queue):
    body = v2_json(post(H, f"/claim/{queue}", {"lease": "600"}))
    assert len(body["messages"]) == 1
    return body["messages"][0]["value"]


def pop_one(H, queue, form=None):
    body = v2_json(post(H, f"/pop/{queue}", form))
    assert len(body["messages"]) == 1
    return body["messages"][0]["value"]


def long_poll_one(H, queue):
    return pop_one(H, queue, {"wait": "1"})


PULL = {"hard get": hard_get, "GET /?queue=": root_get, "JSON take": json_take,
        "XML-RPC get": xmlrpc_get, "XML-RPC take": xmlrpc_take, "claim": claim_one,
        "pop": pop_one, "long-poll pop": long_poll_one}


@pytest.mark.parametrize("kind", list(PULL))
def test_a_pull_consumer_takes_the_levels_first(H, redis, kind):
    backlog(H, "prio")
    assert [PULL[kind](H, "prio") for _ in FIRST] == FIRST


def test_a_claim_of_many_lists_them_in_consumption_order(H, redis):
    backlog(H, "prio")
    body = v2_json(post(H, "/claim/prio", {"limit": "100"}))
    values = [m["value"] for m in body["messages"]]
    assert values == FIRST[:4] + [f"p0-{n:04d}" for n in range(96)]


def test_the_json_soft_get_shows_the_levels_first_without_consuming(H, redis):
    backlog(H, "prio")
    for value in FIRST:
        shown = json_command(H, "get", "prio")
        assert (shown["value"], shown["count"]) == (value, 1)
        again = json_command(H, "get", "prio")
        assert (again["key"], again["count"]) == (shown["key"], 2)
        assert json_command(H, "take", "prio")["key"] == shown["key"]


# -- live consumers ----------------------------------------------------------------------------


class Stream:
    """A raw HTTP/1.1 stream (comet or SSE), its chunked body decoded as it arrives."""

    def __init__(self, H: str, path: str):
        parts = urlsplit(H)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        self.raw, self.body = b"", b""
        while b"\r\n\r\n" not in self.raw:
            self._recv()
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the stream closed"
        self.raw += data

    def _decode(self) -> None:
        while b"\r\n" in self.raw:
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self.raw = rest[size + 2:]

    def read_until(self, enough, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not enough(self.body):
            assert time.monotonic() < deadline, f"only {self.body[:300]!r}"
            self._recv()
            self._decode()

    def close(self) -> None:
        self.sock.close()


def comet_values(H, queue: str, count: int) -> list[str]:
    client = CometClient(H, queue)
    try:
        return [m["value"] for m in client.messages(count, timeout=20)]
    finally:
        client.close()


def sse_values(H, queue: str, count: int) -> list[str]:
    stream = Stream(H, f"/sse/{queue}")
    try:
        stream.read_until(lambda body: body.count(b"\n\n") >= count, 20)
        events = stream.body.decode().split("\n\n")[:count]
        values = []
        for event in events:
            data = [line[len("data: "):] for line in event.split("\n")
                    if line.startswith("data: ")]
            values.append(json.loads(data[0])["value"])
        return values
    finally:
        stream.close()


def ws_values(H, queue: str, count: int) -> list[str]:
    parts = urlsplit(H)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="t", target=f"/ws/{queue}")))
    values: list[str] = []
    text = ""
    deadline = time.monotonic() + 20
    try:
        while len(values) < count:
            assert time.monotonic() < deadline, values
            data = sock.recv(65536)
            assert data, "the WebSocket closed"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    continue
                assert isinstance(event, TextMessage), event
                text += event.data
                if event.message_finished:
                    values.append(json.loads(text)["value"])
                    text = ""
        return values[:count]
    finally:
        sock.close()


LIVE = {"comet": comet_values, "WebSocket": ws_values, "SSE": sse_values}


@pytest.mark.parametrize("policy", ["broadcast", "roundrobin"])
@pytest.mark.parametrize("kind", list(LIVE))
def test_a_live_consumer_gets_the_levels_first(H, redis, kind, policy):
    assert post(H, "/p/prio", {"policy": policy}).status == 200
    backlog(H, "prio")
    values = LIVE[kind](H, "prio", BACKLOG + 4)
    assert values == FIRST[:4] + [f"p0-{n:04d}" for n in range(BACKLOG)]
    wait_until(lambda: numsub(redis, "prio") == 0, what="the consumer gone")


# -- a message keeps its level -----------------------------------------------------------------


def small_backlog(H, queue: str = "keep") -> None:
    for value in ("p0-a", "p0-b", "p0-c"):
        assert post(H, f"/q/{queue}", {"value": value}).status == 200
    assert post(H, f"/q/{queue}", {"value": "urgent", "priority": "9"}).status == 200


def claimed(H, queue: str = "keep", **form) -> dict:
    body = v2_json(post(H, f"/claim/{queue}", {k: str(v) for k, v in form.items()}))
    return body["messages"][0]


def test_a_released_message_keeps_its_level(H, redis):
    small_backlog(H)
    message = claimed(H, lease=600)
    assert message["value"] == "urgent"
    assert post(H, "/q/keep", {"value": "five", "priority": "5"}).status == 200
    released = v2_json(post(H, "/release/keep", {"receipt": message["receipt"]}))
    assert released["released"] == [message["receipt"]]
    values = [m["value"] for m in v2_json(post(H, "/claim/keep", {"limit": "5"}))["messages"]]
    assert values == ["urgent", "five", "p0-a", "p0-b", "p0-c"]


def test_a_message_whose_lease_lapsed_keeps_its_level(H, redis):
    small_backlog(H)
    message = claimed(H, lease=1)
    assert message["value"] == "urgent"
    assert post(H, "/q/keep", {"value": "five", "priority": "5"}).status == 200
    wait_until(lambda: redis("ZCARD", "keep:inflight") == 0, 10, "the lease to lapse")
    again = claimed(H, lease=600)
    assert (again["value"], again["deliveries"]) == ("urgent", 2)
    assert [hard_get(H, "keep") for _ in range(4)] == ["five", "p0-a", "p0-b", "p0-c"]


def test_a_message_released_with_a_delay_keeps_its_level(H, redis):
    small_backlog(H)
    message = claimed(H, lease=600)
    v2_json(post(H, "/release/keep", {"receipt": message["receipt"], "delay": "1"}))
    assert post(H, "/q/keep", {"value": "five", "priority": "5"}).status == 200
    assert hard_get(H, "keep") == "five"  # not due yet
    wait_until(lambda: redis("ZCARD", "keep:delayed") == 0, 10, "the delay to pass")
    assert [hard_get(H, "keep") for _ in range(4)] == ["urgent", "p0-a", "p0-b", "p0-c"]


def test_a_message_released_with_a_delay_joins_its_level_behind_what_was_pending(H, redis):
    # Due again, it is pending as if added then, as at level 0: behind the newer "nine".
    small_backlog(H)
    message = claimed(H, lease=600)
    v2_json(post(H, "/release/keep", {"receipt": message["receipt"], "delay": "1"}))
    assert post(H, "/q/keep", {"value": "nine", "priority": "9"}).status == 200
    wait_until(lambda: redis("ZCARD", "keep:delayed") == 0, 10, "the delay to pass")
    assert [hard_get(H, "keep") for _ in range(3)] == ["nine", "urgent", "p0-a"]


def test_a_released_or_lapsed_message_goes_back_ahead_of_its_level(H, redis):
    # Next in line, as a released message of level 0 is: ahead of the newer "nine".
    small_backlog(H)
    for lease, release in ((600, True), (1, False)):
        message = claimed(H, lease=lease)
        assert message["value"] == "urgent"
        assert post(H, "/q/keep", {"value": "nine", "priority": "9"}).status == 200
        if release:
            v2_json(post(H, "/release/keep", {"receipt": message["receipt"]}))
        else:
            wait_until(lambda: redis("ZCARD", "keep:inflight") == 0, 10, "the lease to lapse")
        assert [hard_get(H, "keep") for _ in range(2)] == ["urgent", "nine"]
        assert post(H, "/q/keep", {"value": "urgent", "priority": "9"}).status == 200


def test_a_delayed_add_keeps_its_level(H, redis):
    small_backlog(H)
    assert hard_get(H, "keep") == "urgent"
    reply = post(H, "/q/keep", {"value": "late", "priority": "9", "delay": "1"})
    assert reply.status == 200
    assert post(H, "/q/keep", {"value": "five", "priority": "5"}).status == 200
    wait_until(lambda: redis("ZCARD", "keep:delayed") == 0, 10, "the delay to pass")
    assert [hard_get(H, "keep") for _ in range(3)] == ["late", "five", "p0-a"]


def test_a_lapsed_priority_0_lease_goes_back_behind_the_levels(H, redis):
    for value in ("first", "second"):
        assert post(H, "/q/keep", {"value": value}).status == 200
    message = claimed(H, lease=1)
    assert message["value"] == "first"
    assert post(H, "/q/keep", {"value": "three", "priority": "3"}).status == 200
    wait_until(lambda: redis("ZCARD", "keep:inflight") == 0, 10, "the lease to lapse")
    assert [hard_get(H, "keep") for _ in range(3)] == ["three", "first", "second"]
