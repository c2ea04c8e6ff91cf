"""Numbers a client controls are parsed without Python's own limits showing through: a number
of thousands of digits is a 400 like any other bad value, never a 500 or a dropped connection,
and a number with a leading run of zeros keeps its value."""
from __future__ import annotations

import json
import socket
import xmlrpc.client

import pytest

from tests.http_client import post, request
from tests.resp import snapshot, seed_queue

HUGE = "9" * 5000  # past CPython's 4,300-digit limit for int(str)


def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data


def status_and_body(reply: bytes) -> tuple[int, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("ttl", [HUGE, "1" + "0" * 5000, "-" + HUGE])
def test_a_ttl_of_thousands_of_digits_is_invalid(H, redis, ttl):
    seed_queue(redis, "test")
    before = snapshot(redis)
    reply = post(H, "/q/test", form={"value": "x", "ttl": ttl})
    assert (reply.status, reply.json) == (400, {"error": "invalid argument: ttl"})
    reply = post(H, "/", form={"queue": "test", "value": "x", "ttl": ttl})
    assert (reply.status, reply.json) == (400, {"error": "invalid argument: ttl"})
    assert snapshot(redis) == before


def test_a_ttl_with_thousands_of_leading_zeros_keeps_its_value(H, redis):
    reply = post(H, "/q/t", form={"value": "x", "ttl": "0" * 5000 + "30"})
    assert (reply.status, reply.body) == (200, b"t:1\r\n")
    assert 25 <= redis("TTL", "t:1") <= 30


def test_a_content_length_of_thousands_of_digits_is_malformed(server, redis):
    reply = exchange(server.port, b"POST /q/n HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: " + HUGE.encode() + b"\r\n\r\nvalue=x")
    status, body = status_and_body(reply)
    assert (status, json.loads(body)) == (400, {"error": "malformed Content-Length"})
    assert b"Connection: close" in reply
    assert redis("DBSIZE") == 0


def test_a_content_length_with_thousands_of_leading_zeros_keeps_its_value(server, redis):
    reply = exchange(server.port, b"POST /q/n HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: " + b"0" * 5000 + b"7\r\n\r\nvalue=x")
    assert status_and_body(reply) == (200, b"n:1\r\n")


@pytest.mark.parametrize("size", [b"1_0", b"1 0", b"\xd9\xa7"])
def test_a_chunk_size_must_be_plain_hex_digits(server, redis, size):
    # int(b"1_0", 16) is 16: a front proxy that reads the size strictly would see another
    # body than ours.
    reply = exchange(server.port, b"POST /q/n HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\nvalue=x123456789\r\n"
                     b"0\r\n\r\n")
    status, body = status_and_body(reply)
    assert (status, json.loads(body)) == (400, {"error": "malformed chunked body"})
    assert redis("DBSIZE") == 0


def test_a_chunk_size_with_many_leading_zeros_keeps_its_value(server, redis):
    reply = exchange(server.port, b"POST /q/n HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 900 + b"7\r\nvalue=x\r\n"
                     b"0\r\n\r\n")
    assert status_and_body(reply) == (200, b"n:1\r\n")


def test_json_commands_with_huge_numbers_are_answered(H, redis):
    seed_queue(redis, "test")
    before = snapshot(redis)
    reply = post(H, "/queue", form={"body": '{"cmd": "add", "queue": "test", "value": %s}'
                                    % HUGE})
    assert reply.status == 400  # json.loads refuses the number: "malformed JSON"
    key = "test:" + HUGE  # only matched against a pattern, never converted
    reply = post(H, "/queue", form={"body": json.dumps({"cmd": "del", "queue": "test",
                                                        "key": key})})
    assert (reply.status, reply.json) == (200, {"queue": "test", "deleted": False, "key": key})
    assert snapshot(redis) == before


def test_an_xmlrpc_call_with_a_huge_int_is_a_400(H, redis):
    body = xmlrpc.client.dumps(("test", 1), "set").replace("<int>1</int>", f"<int>{HUGE}</int>")
    reply = request(H, "POST", "/xmlrpc", body=body, headers={"Content-Type": "text/xml"})
    assert (reply.status, reply.json) == (400, {"error": "malformed XML-RPC request"})
    assert redis("DBSIZE") == 0


def test_a_syslog_octet_count_of_thousands_of_digits_is_an_ordinary_line():
    from restmq.frontends.syslogd import Framer
    messages, discarded = [], []
    framer = Framer(16384, messages.append, discarded.append)
    framer.feed(HUGE.encode() + b" <13>hello\n12 <13>counted\n")
    assert messages == [HUGE.encode() + b" <13>hello", b"<13>counted\n"]
    assert discarded == []
