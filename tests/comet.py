"""A raw-socket comet client for tests: reads `GET /c/<q>` chunk by chunk and splits lines."""
from __future__ import annotations

import json
import socket
import time


class CometClient:
    def __init__(self, url: str, queue: str, callback: str | None = None):
        host, port = url.split("//", 1)[1].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        path = f"/c/{queue}" + (f"?callback={callback}" if callback else "")
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        self.raw = b""
        self.body = b""
        self.ended = False
        self.status, self.headers = self._read_head()

    def _read_head(self):
        while b"\r\n\r\n" not in self.raw:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before headers")
            self.raw += data
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def _decode_chunks(self) -> None:
        while True:
            end = self.raw.find(b"\r\n")
            if end < 0:
                return
            size = int(self.raw[:end], 16)
            if len(self.raw) < end + 2 + size + 2:
                return
            if size == 0:
                self.ended = True
                self.raw = b""
                return
            self.body += self.raw[end + 2:end + 2 + size]
            self.raw = self.raw[end + 2 + size + 2:]

    def lines(self, count: int, timeout: float = 10.0) -> list[str]:
        """Wait until `count` complete lines arrived; returns them without CRLF."""
        deadline = time.monotonic() + timeout
        while self.body.count(b"\r\n") < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended:
                raise AssertionError(f"got {self.body!r}, wanted {count} lines")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                self.ended = True
                continue
            self.raw += data
            self._decode_chunks()
        return self.body.decode().split("\r\n")[:count]

    def messages(self, count: int, timeout: float = 10.0) -> list:
        return [json.loads(line) for line in self.lines(count, timeout)]

    def wait_end(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ended and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            self.raw += data
            self._decode_chunks()
        assert self.ended, "the stream did not end"

    def close(self) -> None:
        self.sock.close()
