"""Baseline for the benchmark: a bare cyclone app that answers `ok` and does nothing else.

It measures what cyclone + Twisted cost per request on this machine, so the RestMQ numbers
can be read as a ratio to the best any cyclone handler could do.
"""
from __future__ import annotations

import argparse

import cyclone.web
from twisted.internet import reactor


class BareHandler(cyclone.web.RequestHandler):
    # Same fixed body for both methods; no argument parsing, no I/O.
    def get(self) -> None:
        self.write("ok\r\n")

    def post(self) -> None:
        self.write("ok\r\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--listen", default="127.0.0.1")
    args = parser.parse_args()
    app = cyclone.web.Application([(r"/bare", BareHandler)])
    # No log.startLogging(): cyclone still formats its access-log line per request, but no
    # observer writes it anywhere, which is the cheapest a default cyclone app gets.
    reactor.listenTCP(args.port, app, interface=args.listen)
    reactor.run()


if __name__ == "__main__":
    main()
