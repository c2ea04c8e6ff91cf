#!/usr/bin/env python3
"""A live consumer: prints every message of a queue as the comet stream `GET /c/<queue>`
delivers it, until --count messages arrived or the queue is purged. Live delivery is at most
once: a message sent while the connection is down is not seen.

    python3 examples/test_comet.py --queue jobs --count 3
"""
from __future__ import annotations

import argparse
import sys
from itertools import islice

from restmq.client import Client, RestMQError

DEFAULT_URL = "http://127.0.0.1:8888"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"RestMQ base URL ({DEFAULT_URL})")
    parser.add_argument("--queue", default="test", help="queue to consume (test)")
    parser.add_argument("--count", type=int, default=0,
                        help="exit after this many messages (0: run until the queue is purged)")
    args = parser.parse_args()

    print(f"consuming {args.url}/c/{args.queue}", flush=True)
    received = 0
    try:
        stream = Client(args.url).stream(args.queue, via="comet")
        for message in islice(stream, args.count or None):
            received += 1
            print(f"{message.key}: {message.value}", flush=True)
    except RestMQError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"received {received} messages" if received == args.count
          else f"queue purged after {received} messages", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
