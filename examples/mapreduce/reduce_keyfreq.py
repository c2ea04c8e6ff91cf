#!/usr/bin/env python3
"""The reduce step of a word-frequency count: merges the messages of map_keyfreq.py from the
queue `reducer_keyfreq` and, after --messages messages (or when the queue is purged, or on
Ctrl-C), prints the 10 most frequent words as `COUNT WORD`, most frequent first.

    python3 reduce_keyfreq.py --url http://127.0.0.1:8888 --messages 4
"""
from __future__ import annotations

import sys
from collections import Counter

from reduce import reduce_each, reducer_args


def main() -> int:
    args = reducer_args(__doc__.splitlines()[0], "reducer_keyfreq")
    total: Counter = Counter()

    def step(summary: dict) -> None:
        total.update(summary["freq"])
        print(f"{summary['file']}: {len(summary['freq'])} distinct words, "
              f"{len(total)} so far", flush=True)

    status = reduce_each(args, step)
    # ties in alphabetical order, so that the list does not depend on the arrival order
    top = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:10]
    print("top 10:")
    for word, count in top:
        print(f"{count:7} {word}")
    return status


if __name__ == "__main__":
    sys.exit(main())
