"""Queue names: which names a new queue may have, which would collide with the keys RestMQ
keeps, and the admitted legacy names of queues the original RestMQ created."""
from __future__ import annotations

import re

from restmq.errors import InvalidName
from restmq.redis.keys import collides
# Whitespace (str.isspace) and control characters (category Cc: U+0000-001F, U+007F-009F);
# tests/test_unit.py checks the equivalence over every code point.
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def is_safe_name(name: str) -> bool:
    """Harmless to the key layout: non-empty, encodable as UTF-8, and not reserved (a reserved
    name would read or write keys RestMQ keeps for something else)."""
    if not isinstance(name, str) or not name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return not collides(name)


def is_valid_name(name: str) -> bool:
    """The rule for new names: safe, 1-256 UTF-8 bytes, no whitespace or control character."""
    return (is_safe_name(name) and len(name.encode("utf-8")) <= 256
            and not _FORBIDDEN.search(name))


class RegisteredName(str):
    """A safe name that breaks the rule for new names but was found in QUEUESET (the
    original RestMQ accepted `my queue`): only Core.admit makes one, and only such a name
    gets past check_name, so no caller can create a new one by forgetting the lookup."""

    __slots__ = ()


def check_name(name: str) -> str:
    """The name, if valid or admitted as registered; InvalidName otherwise."""
    if is_valid_name(name) or (isinstance(name, RegisteredName) and is_safe_name(name)):
        return name
    raise InvalidName()

