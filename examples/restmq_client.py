"""The two calls the examples share, standard library only: add a message (`POST /q/<q>`) and
read a queue's comet stream (`GET /c/<q>`). Copy this file next to your own scripts."""
from __future__ import annotations

import http.client
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterator

DEFAULT_URL = "http://127.0.0.1:8888"


class RestMQError(Exception):
    """The server answered with an error status (the message holds status and body)."""


def queue_path(prefix: str, queue: str) -> str:
    """`/q/` + the percent-encoded name: `a/b` and `a b` travel as one path segment."""
    return prefix + urllib.parse.quote(queue, safe="")


def add(url: str, queue: str, value: str, timeout: float = 10.0) -> str:
    """POST /q/<queue> value=<value>; returns the new key (`jobs:7`)."""
    data = urllib.parse.urlencode({"value": value}).encode("utf-8")
    try:
        with urllib.request.urlopen(url.rstrip("/") + queue_path("/q/", queue), data=data,
                                    timeout=timeout) as reply:
            return reply.read().decode("utf-8").strip()
    except urllib.error.HTTPError as e:
        raise RestMQError(f"{e.code} {e.read().decode('utf-8', 'replace').strip()}") from None


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


def consume(url: str, queue: str, handle: Callable[[dict], None], count: int = 0) -> int:
    """Calls handle(message) for each message of the comet stream of `queue`, until `count`
    messages (0: no limit) or the purge. Returns an exit status for the calling program: 0,
    1 after an error (said on stderr), 130 on Ctrl-C."""
    received = 0
    try:
        for message in comet(url, queue):
            handle(message)
            received += 1
            if received == count:
                break
    except (RestMQError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
