#!/usr/bin/env python3
"""A live consumer: prints every message of a queue as the comet stream `GET /c/<queue>`
delivers it, until --count messages arrived or the queue is purged.

    python3 examples/test_comet.py --queue jobs --count 3
"""
from __future__ import annotations

import argparse
import sys

from restmq_client import DEFAULT_URL, consume


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"RestMQ base URL ({DEFAULT_URL})")
    parser.add_argument("--queue", default="test", help="queue to consume (test)")
    parser.add_argument("--count", type=int, default=0,
                        help="exit after this many messages (0: run until the queue is purged)")
    args = parser.parse_args()

    print(f"consuming {args.url}/c/{args.queue}", flush=True)
    received = 0

    def show(message: dict) -> None:
        nonlocal received
        received += 1
        print(f"{message['key']}: {message['value']}", flush=True)

    status = consume(args.url, args.queue, show, args.count)
    if status == 0:
        print(f"received {received} messages" if received == args.count
              else f"queue purged after {received} messages", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
