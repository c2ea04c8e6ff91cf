"""The connection's timers on task.Clock: the head timeout (slowloris, keep-alive idle), the
body timeout, the grace given to a refused body, and streams, which never time out this way."""
from __future__ import annotations

import pytest

from restmq.http.reading import BODY_TIMEOUT, DISCARD_GRACE, HEAD_TIMEOUT
from tests.unit.fakes import Connection, status

TIMEOUT_REPLY = (b'HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n'
                 b'Content-Length: 28\r\nConnection: close\r\n\r\n{"error": "request timeout"}')
POST = b"POST /q/slow HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"


def test_a_head_not_complete_within_the_head_timeout_gets_408_and_is_closed():
    c = Connection()
    c.send(b"GET /stats/ HTTP/1.1\r\nX-Slow: ")
    c.clock.advance(HEAD_TIMEOUT - 0.25)
    assert c.take() == b"" and not c.closed
    c.clock.advance(0.25)
    assert c.take() == TIMEOUT_REPLY
    assert c.closed


def test_the_head_timeout_counts_from_the_connection_not_from_the_last_byte():
    c = Connection()
    head = b"GET /stats/ HTTP/1.1\r\nX-Slow: " + b"x" * 40
    for i in range(int(HEAD_TIMEOUT) - 1):  # a byte a second: slowloris
        c.send(head[i:i + 1])
        c.clock.advance(1)
    assert not c.closed
    c.send(head[19:20])
    c.clock.advance(1)
    assert status(c.take()) == 408 and c.closed


def test_a_silent_connection_is_cut_after_the_head_timeout():
    c = Connection()
    c.clock.advance(HEAD_TIMEOUT)
    assert c.take() == TIMEOUT_REPLY and c.closed


def test_a_keep_alive_connection_is_idle_for_the_head_timeout_after_each_reply():
    c = Connection()
    c.clock.advance(HEAD_TIMEOUT - 1)
    c.send(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status(c.take()) == 404 and not c.closed
    c.clock.advance(HEAD_TIMEOUT - 0.25)  # counted again from the reply
    assert c.take() == b"" and not c.closed
    c.clock.advance(0.25)
    assert c.take() == TIMEOUT_REPLY and c.closed


def test_a_head_timeout_made_small_through_the_settings():
    c = Connection(head_timeout=0.5)
    c.send(b"GET /")
    c.clock.advance(0.5)
    assert c.take() == TIMEOUT_REPLY


@pytest.mark.parametrize("framing, start", [
    (b"Content-Length: 10\r\n\r\n", b"value"),
    (b"Transfer-Encoding: chunked\r\n\r\n", b"5\r\nvalue\r\n"),
], ids=["length", "chunked"])
def test_a_body_not_complete_within_the_body_timeout_gets_408(framing, start):
    c = Connection()
    c.clock.advance(HEAD_TIMEOUT - 1)
    c.send(POST + framing + start)
    c.clock.advance(BODY_TIMEOUT - 0.25)  # the head timeout no longer applies
    assert c.take() == b"" and not c.closed
    c.clock.advance(0.25)
    assert c.take() == TIMEOUT_REPLY and c.closed


def test_a_body_timeout_made_small_through_the_settings():
    c = Connection(body_timeout=2)
    c.send(POST + b"Content-Length: 10\r\n\r\nval")
    c.clock.advance(2)
    assert c.take() == TIMEOUT_REPLY


def test_a_refused_body_may_keep_coming_for_the_grace_then_the_connection_is_cut():
    c = Connection(max_body=10)
    c.send(POST + b"Content-Length: 11\r\n\r\nvalue=")
    assert status(c.take()) == 413
    assert c.transport.write_closed and not c.closed
    c.send(b"x" * 1000)  # discarded
    c.clock.advance(DISCARD_GRACE - 0.25)
    assert not c.closed
    c.clock.advance(0.25)
    assert c.closed and c.take() == b""


def test_a_live_stream_past_its_head_never_times_out():
    c = Connection()
    c.send(b"GET /c/q HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status(c.take()) == 200 and c.delivery.consumers
    c.clock.advance(HEAD_TIMEOUT + BODY_TIMEOUT + 3600)
    assert c.take() == b"" and not c.closed
    assert c.delivery.consumers


def test_no_timer_is_left_behind_by_a_connection_that_closed():
    c = Connection()
    c.send(b"GET /st")
    c.lose()
    assert c.clock.getDelayedCalls() == []
