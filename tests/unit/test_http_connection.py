"""The connection's order and flow control on task.Clock, with handlers held on Deferreds we
fire by hand: one request at a time, a bounded read-ahead, 100 Continue for the request at the
head of the line only, timeouts that count only the client's time, the 16 MiB cap of a live
stream and the WebSocket pings."""
from __future__ import annotations

from twisted.internet import defer

from restmq.core import Added
from restmq.core.messages import Message
from restmq.http.reading import HEAD_TIMEOUT, READ_AHEAD_REQUESTS
from restmq.http.live import MAX_UNSENT
from restmq.http.websocket import PING_INTERVAL
from tests.unit.fakes import Connection, FakeCore, status

ADD = b"POST /q/slow HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n" \
      b"Content-Type: application/x-www-form-urlencoded\r\n\r\nvalue=%d"


class SlowCore(FakeCore):
    """Adds and hard gets wait until the test fires them."""

    def __init__(self):
        self.calls: list[tuple[str, defer.Deferred]] = []

    def add_items(self, queue, items, idempotency=None):
        """Fired by the test with the key, as an add of one message answers."""
        d = defer.Deferred()
        self.calls.append((items[0].value, d))
        return d.addCallback(lambda key: Added([key]))

    def hard_get(self, queue):
        d = defer.Deferred()
        self.calls.append(("get", d))
        return d


def slow_connection(**settings) -> tuple[Connection, SlowCore]:
    core = SlowCore()
    return Connection(core=core, **settings), core


def replies(data: bytes) -> list[bytes]:
    return [b"HTTP/1.1 " + part for part in data.split(b"HTTP/1.1 ")[1:]]


def test_the_next_request_waits_until_the_reply_before_it_is_finished():
    c, core = slow_connection()
    c.send(ADD % 1 + ADD % 2)
    assert [value for value, _ in core.calls] == ["1"]  # the second one is not started
    core.calls[0][1].callback("slow:1")
    c.clock.advance(0)
    assert [value for value, _ in core.calls] == ["1", "2"]
    core.calls[1][1].callback("slow:2")
    c.clock.advance(0)
    first, second = replies(c.take())
    assert first.endswith(b"slow:1\r\n") and second.endswith(b"slow:2\r\n")


def test_reading_pauses_while_too_many_requests_wait_and_resumes_as_they_are_served():
    c, core = slow_connection()
    c.send(b"".join(ADD % (i % 10) for i in range(READ_AHEAD_REQUESTS + 2)))
    assert c.transport.producerState == "paused"
    served = 0
    while c.transport.producerState == "paused":
        core.calls[served][1].callback("slow:x")
        c.clock.advance(0)
        served += 1
    assert 0 < served <= 3
    assert len(replies(c.take())) == served


def test_reading_pauses_while_our_replies_wait_unsent():
    c = Connection()
    assert c.transport.producer is c.protocol  # the connection produces its replies
    c.transport.producer.pauseProducing()  # Twisted: its buffer is over bufferSize
    assert c.transport.producerState == "paused"
    c.transport.producer.resumeProducing()
    assert c.transport.producerState == "producing"


def test_100_continue_goes_only_to_the_request_at_the_head_of_the_line():
    c, core = slow_connection()
    expecting = b"POST /q/slow HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n" \
                b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\n"
    c.send(ADD % 1 + expecting)
    assert c.take() == b""  # the first reply is not out yet: no 100 in front of it
    core.calls[0][1].callback("slow:1")
    c.clock.advance(0)
    out = c.take()
    assert out.endswith(b"slow:1\r\nHTTP/1.1 100 Continue\r\n\r\n"), out
    c.send(b"value=2")
    core.calls[1][1].callback("slow:2")
    assert c.take().endswith(b"slow:2\r\n")


def test_time_spent_on_a_slow_reply_does_not_count_against_the_client():
    c, core = slow_connection()
    c.send(b"GET /q/slow HTTP/1.1\r\nHost: t\r\n\r\n")
    c.clock.advance(HEAD_TIMEOUT * 3)  # Redis takes its time
    assert c.take() == b"" and not c.closed
    core.calls[0][1].callback(Message("slow:1", "v"))
    assert status(c.take()) == 200
    c.clock.advance(HEAD_TIMEOUT - 0.25)
    assert not c.closed
    c.clock.advance(0.25)
    assert status(c.take()) == 408 and c.closed


def test_a_parser_error_behind_a_slow_reply_is_answered_after_it():
    c, core = slow_connection()
    c.send(ADD % 1 + b"POST /q/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0_7\r\n" + ADD % 2)
    core.calls[0][1].callback("slow:1")
    c.clock.advance(0)
    first, second = replies(c.take())
    assert first.endswith(b"slow:1\r\n")
    assert status(second) == 400 and second.endswith(b'{"error": "malformed chunked body"}')
    assert c.closed and len(core.calls) == 1


# -- live streams -------------------------------------------------------------------------------

def comet() -> tuple[Connection, object]:
    c = Connection()
    c.send(b"GET /c/q HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status(c.take()) == 200
    return c, c.delivery.consumers[0]


def test_a_consumer_more_than_16_mib_behind_is_cut():
    c, consumer = comet()
    c.transport.producer.pauseProducing()  # the peer stopped reading; Twisted's buffer is full
    value = "x" * (1024 * 1024)
    sent = 0
    while sent <= MAX_UNSENT:
        assert consumer.send([("q:1", value)]) and not c.closed
        sent += len(value) + 10
    assert not consumer.send([("q:2", value)])
    assert c.closed and c.transport.disconnected and c.delivery.consumers == []
    assert c.take() == b""  # none of it went out: Twisted had said stop


def test_what_a_stream_held_goes_out_in_order_when_twisted_resumes_it():
    c, consumer = comet()
    c.transport.producer.pauseProducing()
    assert consumer.send([("q:1", "one")]) and consumer.send([("q:2", "two")])
    assert c.take() == b"" and not consumer.ready
    c.transport.producer.resumeProducing()
    assert c.take() == b"5\r\none\r\n\r\n5\r\ntwo\r\n\r\n" and consumer.ready


def websocket(**settings) -> tuple[Connection, object]:
    c = Connection(**settings)
    c.send(b"GET /ws/q HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert status(c.take()) == 101
    return c, c.delivery.consumers[0]


def masked(opcode: int, payload: bytes) -> bytes:
    key = b"abcd"
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + \
        bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_a_websocket_consumer_is_pinged_every_30_seconds():
    c, _ = websocket()
    c.clock.advance(PING_INTERVAL - 0.25)
    assert c.take() == b""
    c.clock.advance(0.25)
    assert c.take() == b"\x89\x06restmq"
    c.send(masked(0xA, b"restmq"))
    c.clock.advance(PING_INTERVAL)
    assert c.take() == b"\x89\x06restmq" and not c.closed


def test_a_websocket_consumer_that_answers_no_ping_is_cut():
    c, consumer = websocket()
    c.clock.advance(PING_INTERVAL)
    assert c.take() == b"\x89\x06restmq"
    c.clock.advance(c.delivery.stall_timeout - 0.25)
    assert not c.closed and c.delivery.consumers == [consumer]
    c.clock.advance(0.25)
    assert c.closed and c.delivery.consumers == []
    assert c.clock.getDelayedCalls() == []


def test_a_websocket_pong_with_another_payload_does_not_count():
    c, _ = websocket()
    c.clock.advance(PING_INTERVAL)
    c.send(masked(0xA, b"other"))  # unsolicited pongs are allowed, and prove nothing
    c.clock.advance(c.delivery.stall_timeout)
    assert c.closed


def test_no_websocket_timer_outlives_its_connection():
    c, _ = websocket()
    c.clock.advance(PING_INTERVAL)
    c.lose()
    assert c.clock.getDelayedCalls() == []


def test_a_missing_private_member_of_cyclone_stops_the_start_with_its_name():
    import pytest

    from restmq.http.compat import require_private

    class Handler:
        def method(self):
            self._assigned = 1

    require_private(Handler, ("method", "_assigned"))  # a method, an attribute it sets
    with pytest.raises(ImportError, match="_gone of .*Handler"):
        require_private(Handler, ("_assigned", "_gone"))
