#!/usr/bin/env python3
"""The map step: counts the words of each FILE and posts one message per file to the queue
`reducer`, the JSON text {"file": NAME, "words": N}. Run reduce.py to add them up.

    python3 map.py --url http://127.0.0.1:8888 part-*
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from restmq.client import Client, RestMQError

DEFAULT_URL = "http://127.0.0.1:8888"


def mapper_args(description: str, queue: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"RestMQ base URL ({DEFAULT_URL})")
    parser.add_argument("--queue", default=queue, help=f"queue to post to ({queue})")
    parser.add_argument("files", nargs="+", metavar="FILE", help="text files, one message each")
    return parser.parse_args()


def post_each(args: argparse.Namespace, summarize) -> int:
    """Posts summarize(name, text) as JSON for every file; prints `name: key`."""
    mq = Client(args.url, timeout=10)
    for name in args.files:
        text = Path(name).read_text(encoding="utf-8", errors="replace")
        try:
            key = mq.add(args.queue, json.dumps(summarize(name, text)))
        except RestMQError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            return 1
        print(f"{name}: {key}", flush=True)
    return 0


def main() -> int:
    args = mapper_args(__doc__.splitlines()[0], "reducer")
    return post_each(args, lambda name, text: {"file": name, "words": len(text.split())})


if __name__ == "__main__":
    sys.exit(main())
