"""The push benchmark's target: a small HTTP/1.1 server of its own process that answers every
POST 204 at once and notes when it arrived (time.monotonic(), which is one clock for every
process of the machine on Linux) with its body. Keep-alive, pipelining-safe, no logging:
it should never be what limits a dispatcher.

    GET /ready           200 (readiness)
    GET /count           the number of POSTs noted since the last /receipts
    GET /receipts        JSON [[monotonic seconds, body], ...] of those POSTs, then forgets them
    POST anything        204, noted

    python bench/push_target.py --port P
"""
from __future__ import annotations

import argparse
import json
import time

from twisted.internet import protocol, reactor

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
HEAD_MAX = 64 * 1024


class Target(protocol.Protocol):
    def connectionMade(self) -> None:  # noqa: N802 (Twisted's names)
        self.buf = b""
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > HEAD_MAX:
                    self.transport.loseConnection()
                break
            head = self.buf[:end]
            length = 0
            at = head.lower().find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop > 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                break
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            out.append(self.factory.answer(head, body))
        if out:
            self.transport.write(b"".join(out))


class Receipts(protocol.Factory):
    protocol = Target
    noisy = False

    def __init__(self) -> None:
        self.noted: list[tuple[float, str]] = []

    def answer(self, head: bytes, body: bytes) -> bytes:
        if head.startswith(b"POST "):
            self.noted.append((time.monotonic(), body.decode("utf-8", "replace")))
            return NO_CONTENT
        path = head.split(b" ", 2)[1]
        if path == b"/count":
            reply = str(len(self.noted)).encode()
        elif path == b"/receipts":
            reply, self.noted = json.dumps(self.noted).encode(), []
        else:
            reply = b"ready"
        return (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(reply)) + reply


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    reactor.listenTCP(args.port, Receipts(), backlog=1024, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
