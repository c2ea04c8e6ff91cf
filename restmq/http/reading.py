"""Reading HTTP/1.x requests: the limits a request must keep, the llhttp callbacks (`Reader`)
that record a request as the parser splits it, and the refusals (`Reject`) the connection
answers itself. restmq/http/connection.py explains how these are used: the callbacks only
record and check, never run cyclone's code, and halt the parser for good by raising `Stop`.
"""
from __future__ import annotations

import re
from collections import deque

import httptools

REQUEST_LINE_MAX = 8192  # longer: 414
HEADER_LINE_MAX = 16384  # one header line; longer: 431
HEADER_BYTES_MAX = 65536  # the whole header block; more: 431
HEADER_COUNT_MAX = 100  # more header fields: 431
LENGTH_DIGITS_MAX = 18  # a Content-Length with more significant digits: 400
HEAD_TIMEOUT = 20.0  # from connect (or the end of the previous reply) to a complete head
BODY_TIMEOUT = 60.0  # from the end of the head to the end of the body
DISCARD_GRACE = 5.0  # how long a connection whose request body was refused may keep sending
READ_AHEAD_REQUESTS = 32  # complete requests waiting behind the one served, past which ...
READ_AHEAD_BYTES = 1024 * 1024  # ... or past these many bytes of them, reading pauses
UPGRADE_HOLD = 64 * 1024  # bytes after an Upgrade request kept until its handler decides
# Bytes the parser may take without finishing a head, or without a body byte (chunk-size
# lines, extensions, trailers): counted per read, so a read's worth comes on top.
HEAD_RAW_MAX = REQUEST_LINE_MAX + HEADER_BYTES_MAX
BODY_IDLE_MAX = HEADER_BYTES_MAX

PHRASES = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 505: "HTTP Version Not Supported"}

# Methods llhttp accepts on an HTTP/1.x request line; any other is its "invalid method".
KNOWN_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY PRI".split())
REQUEST_LINE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\s]+) HTTP/(\d\.\d)\r\n", re.M)


SPECIAL_LENGTHS = frozenset((6, 14, 17))  # of Expect, Content-Length, Transfer-Encoding
VERSIONS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}


class Stop(Exception):
    """Raised inside a parser callback to halt the parser for good: the connection closes."""


class Reject:
    """A request the connection answers itself, in its turn, before it closes."""

    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str):
        self.status, self.reason = status, reason


# llhttp's error texts, in the order they are matched, as our statuses and reasons.
PARSE_ERRORS = (
    ("can't be present with", Reject(400, "Content-Length with Transfer-Encoding")),
    ("Content-Length", Reject(400, "malformed Content-Length")),
    ("Transfer-Encoding", Reject(501, "unsupported transfer coding")),
    ("hunk", Reject(400, "malformed chunked body")),
    ("after version", Reject(400, "malformed request line")),
    ("major version", Reject(400, "malformed request line")),
    ("version", Reject(505, "unsupported HTTP version")),
    ("Expected dot", Reject(505, "unsupported HTTP version")),
    ("header", Reject(400, "malformed header field")),
    ("start line", Reject(400, "malformed header field")),
)


class Message:
    """One request as the parser saw it."""

    __slots__ = ("method", "url", "version", "headers", "body", "size", "keep_alive", "upgrade",
                 "too_large", "length", "codings", "expect", "continued")

    def __init__(self):
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0  # body bytes (and trailer bytes) so far
        self.keep_alive = False
        self.upgrade = False
        self.too_large = False
        self.length = 0
        self.codings: list[bytes] | None = None  # Transfer-Encoding values
        self.expect = False  # Expect: 100-continue
        self.continued = False  # 100 Continue sent


class Reader:
    """The parser and its callbacks. They record, check our limits and nothing else; what
    they complete goes to `done` (messages and failures, in request order)."""

    def __init__(self, max_body: int):
        self.parser = httptools.HttpRequestParser(self)
        self.max_body = max_body
        self.done: deque = deque()
        self.done_bytes = 0  # body bytes of the messages in `done`
        self.message: Message | None = None  # the one being read
        self.in_head = False
        self.head_bytes = 0
        self.failure: Reject | None = None  # why a callback stopped the parser

    def _stop(self, status: int, reason: str):
        self.failure = Reject(status, reason)
        raise Stop()

    def _refuse(self, message: Message):
        # Dispatched at once, unread: routing and the method check still answer first.
        message.too_large = True
        message.body = []
        self.message = None
        self.done.append(message)
        raise Stop()

    def on_url(self, url: bytes):
        # Also where a message begins: one callback fewer per request than on_message_begin.
        message = self.message
        if message is None:
            message = self.message = Message()
            self.in_head = True
            self.head_bytes = 0
        message.url += url
        if len(message.url) > REQUEST_LINE_MAX - 20 and \
                len(message.url) + len(self.parser.get_method()) + 10 > REQUEST_LINE_MAX:
            self._stop(414, "request line too long")

    def on_header(self, name: bytes, value: bytes):
        message = self.message
        size = len(name) + len(value) + 4
        if not self.in_head:  # a trailer of a chunked body: read as body, never kept
            message.size += size
            if message.size > self.max_body:
                self._refuse(message)
            return
        headers = message.headers
        headers.append((name, value))
        self.head_bytes += size
        if self.head_bytes > HEADER_BYTES_MAX or size > HEADER_LINE_MAX + 2 or \
                len(headers) > HEADER_COUNT_MAX:
            self._too_large_head(size, len(headers))
        if len(name) in SPECIAL_LENGTHS:
            self._special(message, name.lower(), value)

    def _too_large_head(self, size: int, count: int):
        if count > HEADER_COUNT_MAX:
            self._stop(431, "too many header fields")
        self._stop(431, "request header fields too large")

    def _special(self, message: Message, name: bytes, value: bytes):
        if name == b"content-length":
            # llhttp has checked the digits; no body is longer than 18 of them.
            digits = value.strip(b" \t").lstrip(b"0")
            if len(digits) > LENGTH_DIGITS_MAX:
                self._stop(400, "malformed Content-Length")
            message.length = int(digits or b"0")
        elif name == b"transfer-encoding":
            message.codings = (message.codings or []) + [value]
        elif name == b"expect":
            message.expect = value.strip(b" \t").lower() == b"100-continue"

    def on_headers_complete(self):
        self.in_head = False
        message, parser = self.message, self.parser
        message.method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        message.keep_alive = parser.should_keep_alive()
        message.upgrade = parser.should_upgrade()
        message.version = VERSIONS.get(version)
        if message.version is None:
            if version == "0.9":  # also what llhttp reports for a line without one
                self._stop(400, "malformed request line")
            self._stop(505, "unsupported HTTP version")
        if message.codings is not None and b",".join(message.codings).replace(
                b" ", b"").replace(b"\t", b"").lower() != b"chunked":
            self._stop(501, "unsupported transfer coding")
        if message.upgrade and (message.length or message.codings) and \
                message.method != "CONNECT":
            # llhttp would take the body for the upgraded protocol's bytes.
            self._stop(400, "upgrade with a request body")
        if message.length > self.max_body:
            self._refuse(message)

    def on_body(self, body: bytes):
        message = self.message
        message.size += len(body)
        if message.size > self.max_body:
            self._refuse(message)
        message.body.append(body)

    def on_message_complete(self):
        message, self.message = self.message, None
        self.done.append(message)
        self.done_bytes += message.size
