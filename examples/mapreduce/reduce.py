#!/usr/bin/env python3
"""The reduce step: consumes the queue `reducer` (comet, GET /c/reducer) and prints the running
total of words after each message map.py posted; exits after --messages messages, or when the
queue is purged.

    python3 reduce.py --url http://127.0.0.1:8888 --messages 4
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import islice

from restmq.client import Client, RestMQError

DEFAULT_URL = "http://127.0.0.1:8888"


def reducer_args(description: str, queue: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"RestMQ base URL ({DEFAULT_URL})")
    parser.add_argument("--queue", default=queue, help=f"queue to consume ({queue})")
    parser.add_argument("--messages", type=int, default=0,
                        help="exit after this many messages (0: until the queue is purged)")
    return parser.parse_args()


def reduce_each(args: argparse.Namespace, step) -> int:
    """Calls step(summary) with each message's JSON value, up to --messages of them; returns
    the exit status (1 after an error, said on stderr; 130 on Ctrl-C)."""
    try:
        stream = Client(args.url).stream(args.queue, via="comet")
        for message in islice(stream, args.messages or None):
            step(json.loads(message.value))
    except RestMQError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main() -> int:
    args = reducer_args(__doc__.splitlines()[0], "reducer")
    total = 0

    def step(summary: dict) -> None:
        nonlocal total
        total += summary["words"]
        print(f"{summary['file']}: {summary['words']} words", flush=True)
        print(f"total: {total}", flush=True)

    return reduce_each(args, step)


if __name__ == "__main__":
    sys.exit(main())
