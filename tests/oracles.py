"""What the tests hold the code to, written down here from the protocol's own words rather than
taken from the modules under test: an oracle imported from the code would agree with any bug
in it."""
from __future__ import annotations

import unicodedata

# -- queue names ------------------------------------------------------------------------------
# A valid name is 1 to 256 bytes of UTF-8 without whitespace or control characters (Unicode
# category Cc), and does not write keys that belong to something else: the two fixed keys,
# the auth records and queue statuses by prefix, and the per-queue keys by suffix.

RESERVED_NAMES = ("QUEUESET", "AUTHKEY")
RESERVED_PREFIXES = ("AUTHKEY:", "queuestat:")
RESERVED_SUFFIXES = (":queue", ":UUID", ":queuepolicy", ":PUBSUB", ":lock", ":refcount")


def valid_queue_name(name: str) -> bool:
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not text at all
        return False
    return (1 <= size <= 256
            and not any(c.isspace() or unicodedata.category(c) == "Cc" for c in name)
            and name not in RESERVED_NAMES
            and not name.startswith(RESERVED_PREFIXES)
            and not name.endswith(RESERVED_SUFFIXES))


def valid_path_name(raw: bytes) -> bool:
    """A name as it arrives percent-decoded in a path: it must also be UTF-8."""
    try:
        return valid_queue_name(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return False


# -- collectd: the notification header fields (case-sensitive, a trailing ":" allowed) -------

COLLECTD_NOTIFICATION_FIELDS = ("Severity", "Time", "Host", "Plugin", "Type", "TypeInstance",
                                "DataSource", "CurrentValue", "WarningMin", "WarningMax",
                                "FailureMin", "FailureMax")

# -- syslog: names of PRI // 8 and PRI % 8 -----------------------------------------------------

SYSLOG_SEVERITIES = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
SYSLOG_FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp",
                     "cron", "authpriv", "ftp", "ntp", "audit", "alert", "at", "local0",
                     "local1", "local2", "local3", "local4", "local5", "local6", "local7")
