"""The arguments of leases, dead letters and per-queue configuration, checked as pure functions
(no Redis, no HTTP): each takes the text a request carried (None when absent or empty) and
returns the value the core wants, or raises MissingArgument / InvalidArgument naming the
argument. Checks that need Redis's state (the cross-field rules of a configuration, an eta
against Redis's clock) are the scripts' own."""
from __future__ import annotations

import re
from typing import Any, Mapping

from restmq.core import targets
from restmq.errors import InvalidArgument, MissingArgument
from restmq.names import is_valid_name
from restmq.redis import keys

LIMIT_MAX = 100  # messages per claim
REDRIVE_LIMIT_MAX = 1000  # messages per redrive
WAIT_MAX = 20  # seconds a claim may wait
LEASE_MAX = 43200  # seconds of one lease (12 h)
DELAY_MAX = 2592000  # seconds of a delay (30 days)
RECEIPTS_MAX = 100  # receipts per settle call
PRIORITY_MAX = 9
DEDUP_MAX = 255  # bytes of an idempotency key
TTL_MAX = 2147483647

_DECIMAL = re.compile(r"[0-9]+(\.[0-9]{1,3})?\Z")
_DEDUP = re.compile(r"[\x21-\x7e]+\Z")


def integer(text: str, name: str, low: int, high: int) -> int:
    """ASCII decimal digits (leading zeros allowed) within low..high, else
    InvalidArgument(name). The length is checked before int(), which refuses over 4,300
    digits."""
    if not (text.isascii() and text.isdigit()):
        raise InvalidArgument(name)
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(high)) or not low <= int(digits) <= high:
        raise InvalidArgument(name)
    return int(digits)


def decimal(text: str, name: str) -> float:
    """Digits, optionally `.` and 1 to 3 digits (no sign, no exponent), else
    InvalidArgument(name)."""
    if not _DECIMAL.match(text) or len(text) > 20:
        raise InvalidArgument(name)
    return float(text)


def limit(text: str | None, default: int = 1, maximum: int = LIMIT_MAX) -> int:
    """`limit`: 1 to `maximum` messages (a redrive: REDRIVE_LIMIT_MAX, default 100)."""
    return default if text is None else integer(text, "limit", 1, maximum)


def wait(text: str | None) -> int:
    """`wait`: 0 to 20 seconds, default 0."""
    return 0 if text is None else integer(text, "wait", 0, WAIT_MAX)


def lease(text: str | None, required: bool = False) -> int | None:
    """`lease`: 1 to 43200 seconds; None when absent (the queue's configured lease applies), or
    MissingArgument when `required` (extend)."""
    if text is None:
        if required:
            raise MissingArgument("lease")
        return None
    return integer(text, "lease", 1, LEASE_MAX)


def delay(text: str | None) -> int | None:
    """`delay`: 0 to 2592000 seconds; None when absent."""
    return None if text is None else integer(text, "delay", 0, DELAY_MAX)


def eta(text: str | None, delay_given: bool = False) -> float | None:
    """`eta`: Unix seconds with up to 3 decimals; refused together with a delay. Whether it is
    at most 30 days ahead is checked against Redis's clock by the add itself."""
    if text is None:
        return None
    if delay_given:
        raise InvalidArgument("eta")
    return decimal(text, "eta")


def priority(text: str | None) -> int:
    """`priority`: 0 to 9, default 0."""
    return 0 if text is None else integer(text, "priority", 0, PRIORITY_MAX)


def receipts(text: str | None) -> list[str]:
    """`receipt`: 1 to 100 receipts joined by `,`. One that does not parse is not refused here:
    the settle call reports it stale, like any receipt that names no current lease."""
    if text is None:
        raise MissingArgument("receipt")
    found = text.split(",")
    if len(found) > RECEIPTS_MAX:
        raise InvalidArgument("receipt")
    return found


def dedup(text: str | None, header: bool = False) -> str | None:
    """An idempotency key: 1 to 255 bytes of 0x21-0x7E. From the header, one pair of
    surrounding double quotes is removed first."""
    if text is None:
        return None
    if header and len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not _DEDUP.match(text) or len(text) > DEDUP_MAX:
        raise InvalidArgument("dedup")
    return text


def after(text: str | None, queue: str) -> str | None:
    """`after` of a peek: a message key of the queue, `<q>:<n>` (up to 15 digits, as the
    scripts read them). Whether it is still pending is the peek's own check."""
    if text is None:
        return None
    number = keys.number_of(queue, text)
    if number is None or len(number) > 15:
        raise InvalidArgument("after")
    return text


def queue_other_than(text: str | None, queue: str, name: str) -> str | None:
    """A queue name (new-name rules) other than `queue`: `to` of a redrive, `dead_letter`."""
    if text is None:
        return None
    if not is_valid_name(text) or text == queue:
        raise InvalidArgument(name)
    return text


# -- per-queue configuration ------------------------------------------------------------------

# The attributes in the order they are checked.
ATTRIBUTES = ("ttl", "delay", "max_message", "lease", "max_attempts", "dead_letter",
              "dedup_window", "push_url", "push_auth", "push_type", "push_timeout", "push_rate",
              "push_burst", "push_concurrency", "backoff_min", "backoff_max", "pre_hook",
              "post_hook")
PUSH_TYPE = "text/plain; charset=utf-8"
DEFAULTS: dict[str, Any] = {"ttl": None, "delay": 0, "max_message": None, "lease": 30,
                            "max_attempts": 0, "dead_letter": None, "dedup_window": 300,
                            "push_url": None, "push_auth": None, "push_type": PUSH_TYPE,
                            "push_timeout": 30, "push_rate": 10, "push_burst": 10,
                            "push_concurrency": 10, "backoff_min": 1, "backoff_max": 300,
                            "pre_hook": None, "post_hook": None}
SECRET = "***"  # how a stored push_auth reads back
# attribute: (low, high); None for `--max-body`. dead_letter is a queue name.
_NUMBERS = {"ttl": (1, TTL_MAX), "delay": (0, DELAY_MAX), "max_message": (1, None),
            "lease": (1, LEASE_MAX), "max_attempts": (0, 1000), "dedup_window": (1, 604800),
            "push_timeout": (1, 600), "push_burst": (1, 1000), "push_concurrency": (1, 1000)}
_DECIMALS = {"push_rate": (0.01, 1000), "backoff_min": (0.1, 86400),
             "backoff_max": (0.1, 86400)}
_URLS = ("push_url", "pre_hook", "post_hook")
_AUTH = re.compile(r"[\x20-\x7e]{1,1024}\Z")
# type "/" subtype, then parameters: printable ASCII, at most 128 bytes in all.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(;[\x20-\x7e]*)?\Z")


def _decimal_within(text: str, name: str) -> str:
    low, high = _DECIMALS[name]
    value = decimal(text, name)
    if not low <= value <= high:
        raise InvalidArgument(name)
    return str(int(value)) if value == int(value) else repr(value)


def attribute(name: str, text: str, queue: str, max_body: int, private: bool = False) -> str:
    """The text to store for attribute `name` (numbers without leading zeros), or
    InvalidArgument(name). `private`: push and hook targets on loopback and private addresses
    are allowed (`--push-private`)."""
    if name == "dead_letter":
        return queue_other_than(text, queue, name)
    if name in _URLS:
        return targets.check_url(text, name, private)
    if name == "push_auth":
        if not _AUTH.match(text):
            raise InvalidArgument(name)
        return text
    if name == "push_type":
        if len(text) > 128 or not _MEDIA_TYPE.match(text):
            raise InvalidArgument(name)
        return text
    if name in _DECIMALS:
        return _decimal_within(text, name)
    low, high = _NUMBERS[name]
    return str(integer(text, name, low, max_body if high is None else high))


def config_changes(args: Mapping[str, str | None], unset: str | None, queue: str,
                   max_body: int, private: bool = False) -> tuple[dict[str, str], list[str]]:
    """The attributes a configuration write sets (those of ATTRIBUTES among `args`, absent or
    empty ones ignored, other arguments ignored) and the names `unset` removes (a `,`-joined
    list of attributes). Checked in the order of ATTRIBUTES, then `unset`: the first fault is
    raised. Refused: an unknown name in `unset`, or a name both set and removed."""
    changes = {name: attribute(name, args[name], queue, max_body, private)
               for name in ATTRIBUTES if args.get(name)}
    removed: list[str] = []
    if unset is not None:
        for name in unset.split(","):
            if name not in ATTRIBUTES or name in changes:
                raise InvalidArgument("unset")
            if name not in removed:
                removed.append(name)
    return changes, removed


def effective(stored: Mapping[str, str]) -> dict[str, Any]:
    """Every attribute's value in force: the stored one (numbers as int or float), else its
    default (None when it has none); a stored push_auth reads "***". Stored fields that are
    no attribute are left out."""
    config: dict[str, Any] = {}
    for name in ATTRIBUTES:
        value = stored.get(name)
        if value is None:
            config[name] = DEFAULTS[name]
        elif name == "push_auth":
            config[name] = SECRET
        elif name in _NUMBERS or name in _DECIMALS:
            config[name] = _number(value)
        else:
            config[name] = value
    return config


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value  # written by hand: shown as it is
