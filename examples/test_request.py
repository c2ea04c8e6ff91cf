#!/usr/bin/env python3
"""A producer: adds --count messages to a queue with `POST /q/<queue>` and prints their keys.
In --value, `{n}` becomes the message's number (1, 2, ...). Each add carries an idempotency
key, so the client's retries after a lost reply never store a message twice.

    python3 examples/test_request.py --queue jobs --count 3 --value 'job {n}'
"""
from __future__ import annotations

import argparse
import sys

from restmq.client import Client, RestMQError

DEFAULT_URL = "http://127.0.0.1:8888"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"RestMQ base URL ({DEFAULT_URL})")
    parser.add_argument("--queue", default="test", help="queue to add to (test)")
    parser.add_argument("--count", type=int, default=1, help="how many messages (1)")
    parser.add_argument("--value", default="hello {n}",
                        help="the message; {n} is replaced by its number ('hello {n}')")
    args = parser.parse_args()

    mq = Client(args.url, timeout=10)
    for n in range(1, args.count + 1):
        value = args.value.replace("{n}", str(n))
        try:
            key = mq.add(args.queue, value)
        except RestMQError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{key}: {value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
