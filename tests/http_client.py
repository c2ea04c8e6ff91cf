"""A blocking HTTP helper for tests: the raw status, headers and body bytes of one request."""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(url: str, method: str = "GET", path: str = "/", body: bytes | str | None = None,
            headers: dict[str, str] | None = None, form: dict | None = None,
            timeout: float = 15.0) -> Reply:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = dict(headers or {})
    if form is not None:
        from urllib.parse import urlencode
        body = urlencode(form)
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def get(url, path, **kw):
    return request(url, "GET", path, **kw)


def post(url, path, form=None, **kw):
    return request(url, "POST", path, form=form, **kw)


def delete(url, path, **kw):
    return request(url, "DELETE", path, **kw)


def read_head(sock) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of a reply read from a raw socket; the body
    by Content-Length, none for a 101 (what follows belongs to the upgraded protocol)."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        data = sock.recv(65536)
        if not data:
            break
        raw += data
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if status != 101:
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                break
            rest += data
    return status, headers, rest


def hold_open(url: str, kind: str, queue: str) -> socket.socket:
    """A connection that stays open as one of `queue`'s consumers of `kind` ("comet",
    "websocket", "sse", or "waiter": a claim long-polling for 20 s on a queue with nothing
    pending). Streams are returned once their reply has started; what they deliver is left
    unread. Close the socket to make it leave."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    head, extra = {
        "comet": (f"GET /c/{queue}", ""),
        "sse": (f"GET /sse/{queue}", ""),
        "websocket": (f"GET /ws/{queue}", "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                          f"Sec-WebSocket-Key: {key}\r\n"
                                          "Sec-WebSocket-Version: 13\r\n"),
        "waiter": (f"POST /claim/{queue}", "Content-Type: application/x-www-form-urlencoded"
                                           "\r\nContent-Length: 7\r\n"),
    }[kind]
    sock.sendall(f"{head} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()
                 + (b"wait=20" if kind == "waiter" else b""))
    if kind != "waiter":
        status = sock.recv(12)
        assert status in (b"HTTP/1.1 200", b"HTTP/1.1 101"), status
    return sock
