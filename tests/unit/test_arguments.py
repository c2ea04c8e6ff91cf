"""The argument checks of leases and queue configuration (restmq/core/arguments.py): pure
functions, each refusing with the argument's name."""
from __future__ import annotations

import pytest

from restmq.core import arguments as a
from restmq.errors import InvalidArgument, MissingArgument


def refused(call, *args, **kwargs) -> str:
    with pytest.raises((InvalidArgument, MissingArgument)) as raised:
        call(*args, **kwargs)
    return raised.value.reason


def test_integers_are_ascii_digits_within_bounds():
    assert a.integer("007", "x", 0, 10) == 7
    assert a.integer("0", "x", 0, 10) == 0
    for text in ("", "-1", "+1", "1.0", "1e3", " 1", "1 ", "١", "²", "11", "0x1",
                 "9" * 5000):
        assert refused(a.integer, text, "x", 0, 10) == "invalid argument: x", text
    assert refused(a.integer, "0", "x", 1, 10) == "invalid argument: x"


def test_decimals_have_at_most_three_places():
    assert a.decimal("1700000000.123", "eta") == 1700000000.123
    assert a.decimal("5", "eta") == 5.0
    for text in ("1.", ".5", "1.1234", "-1", "1e9", "nan", "inf", "1,5", "9" * 30):
        assert refused(a.decimal, text, "eta") == "invalid argument: eta", text


def test_limit_wait_lease_delay_priority():
    assert (a.limit(None), a.limit("100"), a.limit(None, 100, a.REDRIVE_LIMIT_MAX)) == \
        (1, 100, 100)
    assert a.limit("1000", maximum=a.REDRIVE_LIMIT_MAX) == 1000
    assert refused(a.limit, "101") == "invalid argument: limit"
    assert refused(a.limit, "0") == "invalid argument: limit"
    assert (a.wait(None), a.wait("20")) == (0, 20)
    assert refused(a.wait, "21") == "invalid argument: wait"
    assert (a.lease(None), a.lease("43200")) == (None, 43200)
    assert refused(a.lease, None, required=True) == "missing argument: lease"
    assert refused(a.lease, "0") == "invalid argument: lease"
    assert refused(a.lease, "43201") == "invalid argument: lease"
    assert (a.delay(None), a.delay("0"), a.delay("2592000")) == (None, 0, 2592000)
    assert refused(a.delay, "2592001") == "invalid argument: delay"
    assert (a.priority(None), a.priority("9")) == (0, 9)
    assert refused(a.priority, "10") == "invalid argument: priority"


def test_eta_is_refused_together_with_a_delay():
    assert a.eta(None) is None and a.eta("12.5") == 12.5
    assert refused(a.eta, "12", delay_given=True) == "invalid argument: eta"


def test_after_is_a_message_key_of_the_queue():
    assert a.after(None, "jobs") is None
    assert a.after("jobs:0", "jobs") == "jobs:0"
    assert a.after("a:b:" + "9" * 15, "a:b") == "a:b:" + "9" * 15
    for text in ("jobs", "jobs:", "jobs:x", "jobs:-1", "jobs:1 ", "job:1", "other:1",
                 "jobs:1:refcount", "jobs:" + "1" * 16, "jobs:١", "jobsx:1"):
        assert refused(a.after, text, "jobs") == "invalid argument: after", text


def test_receipts_one_to_a_hundred_unparsed_ones_kept():
    assert a.receipts("1.1.0123456789abcdef,junk,") == ["1.1.0123456789abcdef", "junk", ""]
    assert len(a.receipts(",".join(["x"] * 100))) == 100
    assert refused(a.receipts, None) == "missing argument: receipt"
    assert refused(a.receipts, ",".join(["x"] * 101)) == "invalid argument: receipt"


def test_dedup_keys_are_printable_ascii_and_lose_one_pair_of_quotes_from_the_header():
    assert a.dedup("k-1") == "k-1" and a.dedup(None) is None
    assert a.dedup('"k"', header=True) == "k"
    assert a.dedup('"k"') == '"k"'
    assert a.dedup("x" * 255) == "x" * 255
    for text in ("a b", "é", "x" * 256, "\x7f"):
        assert refused(a.dedup, text) == "invalid argument: dedup", text
    assert refused(a.dedup, '""', header=True) == "invalid argument: dedup"


def test_another_queue_name():
    assert a.queue_other_than("q.dead", "q", "to") == "q.dead"
    assert a.queue_other_than(None, "q", "to") is None
    for text in ("q", "a b", "QUEUESET", "x:queue", "x" * 257):
        assert refused(a.queue_other_than, text, "q", "to") == "invalid argument: to", text


def test_config_changes_checks_each_attribute_in_table_order_then_unset():
    changes, removed = a.config_changes(
        {"lease": "007", "ttl": "60", "push_link": "ignored", "dead_letter": "d", "delay": ""},
        "max_message", "q", 1000)
    assert changes == {"ttl": "60", "lease": "7", "dead_letter": "d"}
    assert removed == ["max_message"]
    assert refused(a.config_changes, {"ttl": "0", "lease": "0"}, None, "q", 1000) == \
        "invalid argument: ttl"
    assert refused(a.config_changes, {"max_message": "1001"}, None, "q", 1000) == \
        "invalid argument: max_message"
    assert a.config_changes({"max_message": "1000"}, None, "q", 1000)[0] == \
        {"max_message": "1000"}
    assert refused(a.config_changes, {"dead_letter": "q"}, None, "q", 1000) == \
        "invalid argument: dead_letter"
    assert refused(a.config_changes, {"max_attempts": "1001"}, None, "q", 1000) == \
        "invalid argument: max_attempts"
    assert refused(a.config_changes, {"dedup_window": "604801"}, None, "q", 1000) == \
        "invalid argument: dedup_window"
    assert refused(a.config_changes, {}, "lease,nope", "q", 1000) == "invalid argument: unset"
    assert refused(a.config_changes, {"lease": "5"}, "lease", "q", 1000) == \
        "invalid argument: unset"
    assert a.config_changes({}, "lease,lease", "q", 1000) == ({}, ["lease"])


def test_effective_configuration_fills_in_defaults():
    assert a.effective({}) == {"ttl": None, "delay": 0, "max_message": None, "lease": 30,
                               "max_attempts": 0, "dead_letter": None, "dedup_window": 300,
                               "push_url": None, "push_auth": None,
                               "push_type": "text/plain; charset=utf-8", "push_timeout": 30,
                               "push_rate": 10, "push_burst": 10, "push_concurrency": 10,
                               "backoff_min": 1, "backoff_max": 300, "pre_hook": None,
                               "post_hook": None}
    shown = a.effective({"lease": "5", "dead_letter": "d", "ttl": "by hand", "other": "x"})
    assert (shown["lease"], shown["dead_letter"], shown["ttl"]) == (5, "d", "by hand")
    assert "other" not in shown
