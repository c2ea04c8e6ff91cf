"""A comet reader with nothing but the standard library, for test_collectd.py, which shows the
wire: `GET /c/<q>` read line by line as the server sends it. The other examples use
restmq.client, which does the same (`Client.stream`) with reconnects and typed errors."""
from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Iterator

DEFAULT_URL = "http://127.0.0.1:8888"


class RestMQError(Exception):
    """The server answered with an error status (the message holds status and body)."""


def queue_path(prefix: str, queue: str) -> str:
    """`/q/` + the percent-encoded name: `a/b` and `a b` travel as one path segment."""
    return prefix + urllib.parse.quote(queue, safe="")


def comet(url: str, queue: str, timeout: float | None = None) -> Iterator[dict]:
    """Yields each message of `GET /c/<queue>` as a dict {"key": K, "value": V}, oldest first.

    A line may arrive in pieces, and one read may hold several lines: bytes are buffered and
    split on CRLF. The iteration ends when the queue is purged (the server sends `null`).
    Raises RestMQError on an error status and ConnectionError if the stream breaks off."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path.rstrip("/") + queue_path("/c/", queue))
        reply = conn.getresponse()
        if reply.status != 200:
            raise RestMQError(f"{reply.status} {reply.read().decode('utf-8', 'replace').strip()}")
        pending = b""
        while True:
            data = reply.read1(65536)   # whatever arrived: part of a line, or several lines
            if not data:
                raise ConnectionError("the comet stream ended without a purge")
            pending += data
            while b"\r\n" in pending:
                line, pending = pending.split(b"\r\n", 1)
                message = json.loads(line)
                if message is None:
                    return
                yield message
    finally:
        conn.close()
