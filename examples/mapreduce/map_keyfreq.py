#!/usr/bin/env python3
"""The map step of a word-frequency count: posts one message per FILE to the queue
`reducer_keyfreq`, the JSON text {"file": NAME, "freq": {WORD: COUNT, ...}}. Words are runs of
letters, digits and apostrophes, lower-cased. Run reduce_keyfreq.py to merge them.

    python3 map_keyfreq.py --url http://127.0.0.1:8888 part-*
"""
from __future__ import annotations

import re
import sys
from collections import Counter

from map import mapper_args, post_each

WORD = re.compile(r"[\w']+")


def frequencies(text: str) -> dict[str, int]:
    return dict(Counter(word.strip("'") for word in WORD.findall(text.lower())
                        if word.strip("'")))


def main() -> int:
    args = mapper_args(__doc__.splitlines()[0], "reducer_keyfreq")
    return post_each(args, lambda name, text: {"file": name, "freq": frequencies(text)})


if __name__ == "__main__":
    sys.exit(main())
