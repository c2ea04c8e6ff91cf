"""Baselines for the benchmark: cyclone and Twisted doing the least any handler could do.

Each RestMQ figure is reported as a ratio to one of these, measured in the same run, so the
ratio says what RestMQ costs on top of the framework on this machine:

* `GET|POST /bare`: answers `ok` and does nothing else (the add / get / JSON / XML-RPC /
  collectd baseline).
* `GET /c/<anything>`: a never-ending chunked response held open, like a comet consumer;
  `POST /fan/<anything>` (form field `value`) writes one comet line to every held stream,
  straight from the handler, then answers. The fan-out and memory-per-consumer baseline.
* `GET /drain?n=N`: streams N comet lines, 10 per reactor turn (RestMQ pops 10 per batch),
  then ends. The backlog-drain baseline: how fast the same client can read that stream.
* `--sink-port`: a TCP receiver of LF-terminated lines that only counts them (the syslogd
  baseline); `GET /lines` returns the count so far.
"""
from __future__ import annotations

import argparse
import json

import cyclone.web
from twisted.internet import protocol, reactor
from twisted.protocols import basic

STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
DRAIN_BATCH = 10


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def comet_line(key: str, value: str) -> bytes:
    # The same message object RestMQ writes: {"key": K, "value": V} + CRLF.
    return json.dumps({"key": key, "value": value}).encode() + b"\r\n"


class BareHandler(cyclone.web.RequestHandler):
    # Same fixed body for both methods; no argument parsing, no I/O.
    def get(self) -> None:
        self.write("ok\r\n")

    def post(self) -> None:
        self.write("ok\r\n")


class StreamHandler(cyclone.web.RequestHandler):
    """A held-open chunked response: the head is written once, straight to the transport."""

    streams: set = set()  # transports of every open stream, shared by all handlers

    def get(self, _name: str) -> None:
        self._auto_finish = False
        self.transport = self.request.connection.transport
        self.transport.write(STREAM_HEAD)
        self.streams.add(self.transport)

    def on_connection_close(self, *args) -> None:
        self.streams.discard(getattr(self, "transport", None))


class FanHandler(cyclone.web.RequestHandler):
    counter = 0

    def post(self, name: str) -> None:
        FanHandler.counter += 1
        key = f"{name}:{FanHandler.counter}"
        data = chunk(comet_line(key, self.get_argument("value")))
        for transport in StreamHandler.streams:
            transport.write(data)
        self.write(key + "\r\n")


class DrainHandler(cyclone.web.RequestHandler):
    def get(self) -> None:
        self._auto_finish = False
        self.left = int(self.get_argument("n"))
        self.sent = 0
        self.transport = self.request.connection.transport
        self.transport.write(STREAM_HEAD)
        self._next()

    def _next(self) -> None:
        n = min(DRAIN_BATCH, self.left)
        lines = [comet_line(f"drain:{self.sent + i + 1}", "drain") for i in range(n)]
        self.transport.write(b"".join(chunk(line) for line in lines))
        self.sent += n
        self.left -= n
        if self.left:
            reactor.callLater(0, self._next)  # one batch per reactor turn, like a pop
        else:
            self.transport.write(b"0\r\n\r\n")
            self.transport.loseConnection()


class LineSink(basic.LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 16384
    count = 0  # lines received by every connection so far

    def lineReceived(self, line: bytes) -> None:
        LineSink.count += 1


class LinesHandler(cyclone.web.RequestHandler):
    def get(self) -> None:
        self.write(f"{LineSink.count}\r\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sink-port", type=int, default=None)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--restmq-connection", action="store_true",
                        help="serve through RestMQ's HTTP connection instead of cyclone's")
    args = parser.parse_args()
    application = cyclone.web.Application
    if args.restmq_connection:
        from restmq.http.compat import Application as application
    app = application([
        (r"/bare", BareHandler),
        (r"/c/(.*)", StreamHandler),
        (r"/fan/(.*)", FanHandler),
        (r"/drain", DrainHandler),
        (r"/lines", LinesHandler),
    ])
    # No log.startLogging(): cyclone still formats its access-log line per request, but no
    # observer writes it anywhere, which is the cheapest a default cyclone app gets.
    reactor.listenTCP(args.port, app, interface=args.listen)  # Twisted's backlog, as RestMQ's
    if args.sink_port:
        reactor.listenTCP(args.sink_port, protocol.Factory.forProtocol(LineSink),
                          interface=args.listen)
    reactor.run()


if __name__ == "__main__":
    main()
