"""The timers of live streams on task.Clock: the SSE keepalive (its exact bytes on the wire),
the stall watch that cuts a consumer who stopped reading, the WebSocket close wait and the
WebSocket pings."""
from __future__ import annotations

from restmq.http.live import SSE_KEEPALIVE
from twisted.internet import task

from restmq.http.websocket import CLOSE_WAIT, OP_TEXT, WebSocketConnection, accept
from tests.unit.fakes import Connection, Transport, status

KEEPALIVE = b"d\r\n: keepalive\n\n\r\n"  # one SSE comment line in one chunk


def stream(path: str, **settings) -> Connection:
    c = Connection(**settings)
    c.send(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    head = c.take()
    assert status(head) == 200 and head.endswith(b"Transfer-Encoding: chunked\r\n\r\n"), head
    assert len(c.delivery.consumers) == 1
    return c


def test_sse_sends_a_keepalive_comment_every_15_seconds_and_nothing_in_between():
    c = stream("/sse/ka")
    c.clock.advance(SSE_KEEPALIVE - 0.25)
    assert c.take() == b""
    c.clock.advance(0.25)
    assert c.take() == KEEPALIVE
    c.clock.advance(SSE_KEEPALIVE - 0.25)
    assert c.take() == b""
    c.clock.advance(0.25)
    assert c.take() == KEEPALIVE


def test_sse_still_delivers_after_a_keepalive():
    c = stream("/sse/ka")
    c.clock.advance(SSE_KEEPALIVE)
    assert c.take() == KEEPALIVE
    consumer = c.delivery.consumers[0]
    assert consumer.send([("ka:1", '{"key": "ka:1", "value": "after"}')])
    event = b'id: ka:1\ndata: {"key": "ka:1", "value": "after"}\n\n'
    assert c.take() == b"%x\r\n%s\r\n" % (len(event), event)


def test_sse_keepalive_interval_made_small_through_the_settings():
    c = stream("/sse/ka", sse_keepalive=0.5)
    c.clock.advance(0.5)
    assert c.take() == KEEPALIVE


def test_sse_keepalive_stops_when_the_consumer_leaves():
    c = stream("/sse/ka")
    c.lose()
    assert c.delivery.consumers == []
    assert c.clock.getDelayedCalls() == []
    c.clock.advance(SSE_KEEPALIVE * 4)
    assert c.take() == b""


def test_comet_sends_no_keepalive():
    c = stream("/c/quiet")
    c.clock.advance(SSE_KEEPALIVE * 4)
    assert c.take() == b"" and not c.closed


def test_a_consumer_who_reads_nothing_for_the_stall_timeout_is_cut():
    c = stream("/c/stuck")
    consumer = c.delivery.consumers[0]
    c.transport.producer.pauseProducing()  # as Twisted does when its buffer is full
    assert consumer.send([("stuck:1", '{"key": "stuck:1", "value": "v"}')])
    c.clock.advance(c.delivery.stall_timeout - 0.25)
    assert not c.closed and c.delivery.consumers == [consumer]
    c.clock.advance(0.25)
    assert c.closed and c.delivery.consumers == []


def test_a_consumer_who_reads_everything_is_never_cut():
    c = stream("/sse/fine")
    for _ in range(10):
        c.clock.advance(SSE_KEEPALIVE)  # each keepalive is written and taken at once
    assert c.take() == KEEPALIVE * 10 and not c.closed


class Wire:
    """Both ends of a codec: what it wrote, and whether it dropped the connection."""

    def __init__(self):
        self.out, self.lost = b"", False

    def write(self, data):
        self.out += data

    def lose(self):
        self.lost = True


def websocket(clock):
    wire, closed = Wire(), []
    ws = WebSocketConnection(accept("t", "dGhlIHNhbXBsZSBub25jZQ==", "/ws/q"), wire.write,
                             wire.lose, 1024, on_message=lambda *a: None,
                             on_close=lambda: closed.append(clock.seconds()), clock=clock)
    return ws, wire, closed


def test_websocket_close_waits_for_the_peer_then_closes_by_itself():
    clock = task.Clock()
    ws, wire, closed = websocket(clock)
    ws.send(OP_TEXT, "null")
    ws.close(1000)
    assert wire.out == b"\x81\x04null" + b"\x88\x02\x03\xe8"
    clock.advance(CLOSE_WAIT - 0.25)
    assert closed == [] and not wire.lost
    clock.advance(0.25)
    assert closed == [CLOSE_WAIT] and wire.lost


def test_websocket_close_answered_by_the_peer_ends_at_once():
    clock = task.Clock()
    ws, wire, closed = websocket(clock)
    ws.close(1000)
    ws.data_received(b"\x88\x82abcd" + bytes(a ^ b for a, b in zip(b"\x03\xe8", b"ab")))
    assert closed == [0] and wire.lost
    clock.advance(CLOSE_WAIT)
    assert closed == [0]  # the wait's end finds it already finished
    assert clock.getDelayedCalls() == []
