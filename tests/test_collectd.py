"""The collectd frontend (docs/frontends.md#collectd), through HTTP against a real `twistd
collectd` process, then with the real collectd daemon: write_http in both formats and a
notification posted by the exec plugin's NotificationExec script."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.comet import CometClient
from tests.conftest import ServerProcess
from tests.http_client import get, request
from tests.util import wait_until

HTML = "text/html; charset=UTF-8"
COLLECTD = "/usr/sbin/collectd"
PLUGIN_DIR = "/usr/lib/collectd"
TYPES_DB = "/usr/share/collectd/types.db"
NOTIFY_SCRIPT = Path(__file__).resolve().parent / "collectd_notify.sh"
HOSTNAME = "restmq-test-host"


# --------------------------------------------------------------------------- fixtures, helpers

@pytest.fixture(scope="module")
def cserver(redis_proc):
    proc = ServerProcess(redis_proc.port, plugin="collectd").start()
    yield proc
    proc.stop()
    log = proc.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


@pytest.fixture
def C(cserver, redis):
    """The collectd server's base URL, with an empty Redis."""
    return cserver.url


def post_raw(url, path, body, content_type="text/plain", headers=None):
    hdrs = dict(headers or {})
    if content_type is not None:
        hdrs["Content-Type"] = content_type
    return request(url, "POST", path, body=body, headers=hdrs)


def post_data(url, body, content_type="text/plain", **kw):
    return post_raw(url, "/collectd/data", body, content_type, **kw)


def post_event(url, body, content_type="text/plain", **kw):
    return post_raw(url, "/collectd/event", body, content_type, **kw)


def stored(redis, queue):
    """The pending values of `queue`, oldest first (raw text)."""
    keys = redis("LRANGE", f"{queue}:queue", 0, -1)
    return [redis("GET", key) for key in reversed(keys)]


def stored_json(redis, queue):
    return [json.loads(value) for value in stored(redis, queue)]


def assert_ok(reply, key):
    assert reply.status == 200, (reply.status, reply.body)
    assert reply.header("Content-Type") == HTML
    assert reply.body == key.encode() + b"\r\n"


def assert_error(reply, status, reason):
    assert reply.status == status, (reply.status, reply.body)
    assert reply.header("Content-Type") == "application/json"
    assert reply.json == {"error": reason}
    assert not reply.body.endswith(b"\r\n")


def assert_nothing_stored(redis):
    assert redis("KEYS", "*") == []


def data_items(url, redis, body, content_type="text/plain"):
    """POST one data body, expect success, and return the parsed stored list."""
    reply = post_data(url, body, content_type)
    assert_ok(reply, "collectd_data:1")
    values = stored(redis, "collectd_data")
    assert len(values) == 1
    return json.loads(values[0])


def event_items(url, redis, body, content_type="text/plain"):
    reply = post_event(url, body, content_type)
    assert_ok(reply, "collectd_event:1")
    values = stored(redis, "collectd_event")
    assert len(values) == 1
    return json.loads(values[0])


def putval(host="h", plugin="p", type_="t", interval="10", value="N:1"):
    return {"host": host, "plugin_instance": plugin, "type_instance": type_,
            "interval": interval, "value": value}


# --------------------------------------------------------------------------- PUTVAL parsing

def test_spec_example_putval(C, redis):
    body = "PUTVAL srv1/df/df-boot interval=10 1288548767:116497408.000000:391246848.000000\n"
    assert data_items(C, redis, body) == [{
        "host": "srv1", "plugin_instance": "df", "type_instance": "df-boot", "interval": "10",
        "value": "1288548767:116497408.000000:391246848.000000"}]
    # Registered like any added queue (docs/redis-layout.md#add).
    assert redis("SMEMBERS", "QUEUESET") == ["collectd_data"]
    assert redis("GET", "queuestat::collectd_data") == "1"
    assert redis("GET", "collectd_data:UUID") == "1"


def test_keys_count_up(C, redis):
    for n in range(1, 4):
        assert_ok(post_data(C, f"PUTVAL h/p/t interval=1 {n}\n"), f"collectd_data:{n}")
    assert [json.loads(v)[0]["value"] for v in stored(redis, "collectd_data")] == ["1", "2", "3"]


@pytest.mark.parametrize("identifier, expected", [
    ('"srv1/cpu-0/cpu-idle"', ("srv1", "cpu-0", "cpu-idle")),   # a surrounding pair is removed
    ("srv1/cpu-0/cpu-idle", ("srv1", "cpu-0", "cpu-idle")),
    ('"srv1/cpu/cpu', ('"srv1', "cpu", "cpu")),                  # no pair: kept
    ('srv1/cpu/cpu"', ("srv1", "cpu", 'cpu"')),
    ('""a/b/c""', ('"a', "b", 'c"')),                            # one pair only
    ("//", ("", "", "")),                                        # empty parts are parts
    ('"//"', ("", "", "")),
    ("h\u00e9/pl\u00fcg/t\u20ac", ("h\u00e9", "pl\u00fcg", "t\u20ac")),
])
def test_putval_identifier(C, redis, identifier, expected):
    items = data_items(C, redis, f"PUTVAL {identifier} interval=10 N:1\n")
    assert items == [putval(*expected)]


@pytest.mark.parametrize("identifier", ["a/b", "a", "a/b/c/d", '"a/b"', '"a/b/c/d"', '""', '"',
                                        "a/b/c/", "/a/b/c"])
def test_putval_identifier_needs_three_parts(C, redis, identifier):
    assert_error(post_data(C, f"PUTVAL {identifier} interval=10 N:1\n"), 400,
                 "malformed collectd body")
    assert_nothing_stored(redis)


@pytest.mark.parametrize("token, interval", [
    ("interval=10", "10"),
    ("interval=10.000", "10.000"),
    ("foo=bar=baz", "bar=baz"),          # after the first `=`
    ("=5", "5"),
    ("interval=", ""),
    ("=", ""),
    ("x==", "="),
])
def test_putval_interval(C, redis, token, interval):
    assert data_items(C, redis, f"PUTVAL h/p/t {token} N:1\n") == [putval(interval=interval)]


@pytest.mark.parametrize("line", [
    "PUTVAL h/p/t interval10 N:1",      # token 3 without `=`
    "PUTVAL h/p/t interval:10 N:1",
    "PUTVAL h/p/t interval=1",          # 3 tokens
    "PUTVAL h/p/t",
    "PUTVAL h/p/t ",                    # 3 tokens, the last empty
    "PUTVAL",
    "PUTVAL ",
    "PUTVAL  h/p/t interval=1 v",       # empty identifier token
    "PUTVAL h/p/t  interval=1 v",       # empty token 3: no `=`
])
def test_putval_malformed(C, redis, line):
    assert_error(post_data(C, line + "\n"), 400, "malformed collectd body")
    assert_nothing_stored(redis)


@pytest.mark.parametrize("line, value", [
    ("PUTVAL h/p/t interval=10 N:1 extra tokens here", "N:1"),   # further tokens ignored
    ("PUTVAL h/p/t interval=10 N:1 ", "N:1"),                     # trailing empty token
    ("PUTVAL h/p/t interval=10  N:1", ""),                        # consecutive spaces
    ("PUTVAL h/p/t interval=10 ", ""),                            # 4 tokens, the last empty
    ("PUTVAL h/p/t interval=10 N:1\tx", "N:1\tx"),                # only spaces split
    ("PUTVAL h/p/t interval=10 v\u00fc\u20ac", "v\u00fc\u20ac"),
])
def test_putval_value_token(C, redis, line, value):
    assert data_items(C, redis, line + "\n") == [putval(value=value)]


def test_putval_values_are_strings(C, redis):
    items = data_items(C, redis, "PUTVAL 1/2/3 interval=4 5\n")
    assert items == [putval("1", "2", "3", "4", "5")]
    assert all(isinstance(v, str) for v in items[0].values())


# --------------------------------------------------------------------------- notification headers

HEADER_NAMES = ["Severity", "Time", "Host", "Plugin", "Type", "TypeInstance", "DataSource",
                "CurrentValue", "WarningMin", "WarningMax", "FailureMin", "FailureMax"]


@pytest.mark.parametrize("name", HEADER_NAMES)
@pytest.mark.parametrize("colon", [":", ""])
def test_header_names(C, redis, name, colon):
    assert data_items(C, redis, f"{name}{colon} value1\n") == [{name.lower(): "value1"}]


@pytest.mark.parametrize("line, expected", [
    ("Severity: WARNING and more words", [{"severity": "WARNING"}]),   # only the first word
    ("Severity: ", [{"severity": ""}]),                                # token 2 is empty
    ("Severity:  WARNING", [{"severity": ""}]),                        # consecutive spaces
    ("severity: WARNING", []),                                         # case-sensitive
    ("SEVERITY: WARNING", []),
    ("Severity:: WARNING", []),                                        # one `:` removed only
    ("Severity :WARNING", [{"severity": ":WARNING"}]),
    ("Severity\tWARNING", []),                                         # no space: one token
    ("Message: hello", []),                                            # not a header name
    (" Severity: WARNING", []),                                        # first token empty
])
def test_header_lines(C, redis, line, expected):
    assert data_items(C, redis, line + "\n") == expected


@pytest.mark.parametrize("line", ["Severity:", "Severity", "Host:", "FailureMax"])
def test_header_without_value_is_malformed(C, redis, line):
    assert_error(post_data(C, f"PUTVAL h/p/t interval=1 v\n{line}\n"), 400,
                 "malformed collectd body")
    assert_nothing_stored(redis)


# --------------------------------------------------------------------------- lines, CR, bodies

def test_lines_in_order_mixed_with_ignored(C, redis):
    body = ("PUTVAL a/b/c interval=1 v1\n"
            "\n"
            "just some text\n"
            "putval x/y/z interval=1 lower\n"
            "Severity: OKAY\n"
            "   \n"
            "PUTVAL \"d/e/f\" interval=2 v2\n")
    assert data_items(C, redis, body) == [
        putval("a", "b", "c", "1", "v1"), {"severity": "OKAY"}, putval("d", "e", "f", "2", "v2")]


@pytest.mark.parametrize("body, value", [
    ("PUTVAL h/p/t interval=10 v\r\n", "v"),          # CR stripped
    ("PUTVAL h/p/t interval=10 v\r", "v"),            # also on a last line without LF
    ("PUTVAL h/p/t interval=10 v\r\r\n", "v\r"),      # one CR only
    ("PUTVAL h/p/t interval=10 v", "v"),              # no final LF
    ("PUTVAL h/p/t interval=10 v\n\n\n", "v"),
])
def test_cr_and_final_lf(C, redis, body, value):
    assert data_items(C, redis, body) == [putval(value=value)]


def test_cr_stripped_from_identifier_tokens_and_headers(C, redis):
    body = "PUTVAL h/p/t interval=1\r\nSeverity: FAILURE\r\nPUTVAL h/p/t interval=10 v\r\n"
    # `interval=1\r` loses its CR, leaving 3 tokens: malformed.
    assert_error(post_data(C, body), 400, "malformed collectd body")
    body = "Severity: FAILURE\r\nPUTVAL h/p/t interval=10 v\r\n"
    assert data_items(C, redis, body) == [{"severity": "FAILURE"}, putval(value="v")]


def test_lone_cr_does_not_split_lines(C, redis):
    body = "PUTVAL h/p/t interval=10 v\rPUTVAL x/y/z interval=1 w\n"
    assert data_items(C, redis, body) == [putval(value="v\rPUTVAL")]


@pytest.mark.parametrize("body", ["", "\n", "\r\n", "hello\nworld\n", "   ", "putval a/b/c i=1 v",
                                  "# PUTVAL a/b/c interval=1 v\n", "\n\n\n"])
def test_data_without_recognized_lines_stores_empty_list(C, redis, body):
    reply = post_data(C, body)
    assert_ok(reply, "collectd_data:1")
    assert stored(redis, "collectd_data") == ["[]"]


def test_one_malformed_line_fails_whole_body(C, redis):
    body = "".join(f"PUTVAL h/p/t interval=1 {n}\n" for n in range(50)) + "PUTVAL h/p/t x\n"
    assert_error(post_data(C, body), 400, "malformed collectd body")
    assert_nothing_stored(redis)
    # The next good body is collectd_data:1: the failed one did not even count.
    assert_ok(post_data(C, "PUTVAL h/p/t interval=1 v\n"), "collectd_data:1")


def test_many_lines(C, redis):
    body = "".join(f"PUTVAL host/load/load interval=1.000 {n}:0.1:0.2:0.3\n" for n in range(2000))
    items = data_items(C, redis, body)
    assert len(items) == 2000
    assert items[1234] == putval("host", "load", "load", "1.000", "1234:0.1:0.2:0.3")


def test_body_over_max_body(C, redis):
    reply = post_data(C, "PUTVAL h/p/t interval=1 " + "v" * (1024 * 1024))
    assert_error(reply, 413, "request body too large")
    assert_nothing_stored(redis)


# --------------------------------------------------------------------------- UTF-8

@pytest.mark.parametrize("kind, content_type", [
    ("data", "text/plain"), ("data", "application/json"), ("event", "text/plain"),
    ("event", None)])
@pytest.mark.parametrize("body", [b"PUTVAL h/p/t interval=1 caf\xe9\n", b"\xff\xfe",
                                  b"Severity: OK\n\n\xc3\x28", b"\xed\xa0\x80"])
def test_invalid_utf8(C, redis, kind, content_type, body):
    reply = post_raw(C, f"/collectd/{kind}", body, content_type)
    assert_error(reply, 400, "malformed collectd body")
    assert_nothing_stored(redis)


def test_non_ascii_values_round_trip(C, redis):
    items = data_items(C, redis, "PUTVAL h\u00e9/p/t interval=1 \U0001F600\n")
    assert items == [putval("h\u00e9", interval="1", value="\U0001F600")]


# --------------------------------------------------------------------------- Content-Type

@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain; charset=utf-8", "TEXT/PLAIN", "Text/Plain;charset=UTF-8",
    "text/plain ; charset=utf-8", "text/plain;", "text/plain; anything=goes; x"])
def test_text_plain_media_type(C, redis, content_type):
    items = data_items(C, redis, "PUTVAL h/p/t interval=1 v\n", content_type)
    assert items == [putval(interval="1", value="v")]


@pytest.mark.parametrize("content_type", [
    "application/json", "Application/JSON", "application/json; charset=utf-8",
    "APPLICATION/JSON ;charset=x"])
@pytest.mark.parametrize("body", [
    '[{"values":[1.5],"host":"h"}]',
    "PUTVAL h/p/t interval=1 v\n",      # not parsed
    "{not json at all",                 # not validated
    "",                                 # even empty
    '["caf\u00e9 \U0001F600"]\r\n\r\n',  # verbatim, whitespace and all
])
def test_application_json_stored_verbatim(C, redis, content_type, body):
    assert_ok(post_data(C, body, content_type), "collectd_data:1")
    assert stored(redis, "collectd_data") == [body]


@pytest.mark.parametrize("content_type", [
    None, "application/x-www-form-urlencoded", "text/html", "text/plainx", "text/plai",
    "application/jsonx", "application/json-seq", "text/json", "multipart/form-data; boundary=x",
    "text", "", "plain/text"])
def test_unexpected_content_type(C, redis, content_type):
    reply = post_data(C, "PUTVAL h/p/t interval=1 v\n", content_type)
    assert_error(reply, 503, "unexpected Content-Type")
    assert_nothing_stored(redis)


# --------------------------------------------------------------------------- events

def test_event_notification(C, redis):
    body = ("Severity: FAILURE\n"
            "Time: 1200928930.515\n"
            "Host: myhost.mydomain.org\n"
            "Plugin: df\n"
            "Type: df\n"
            "TypeInstance: boot\n"
            "DataSource: used\n"
            "CurrentValue: 4.100000e+09\n"
            "WarningMin: nan\n"
            "WarningMax: 3.000000e+09\n"
            "FailureMin: nan\n"
            "FailureMax: 4.000000e+09\n"
            "\n"
            "Host myhost.mydomain.org, plugin df (instance boot) type df: Data source \"used\" "
            "is currently 4100000000.\n")
    assert event_items(C, redis, body) == [
        {"severity": "FAILURE"}, {"time": "1200928930.515"}, {"host": "myhost.mydomain.org"},
        {"plugin": "df"}, {"type": "df"}, {"typeinstance": "boot"}, {"datasource": "used"},
        {"currentvalue": "4.100000e+09"}, {"warningmin": "nan"}, {"warningmax": "3.000000e+09"},
        {"failuremin": "nan"}, {"failuremax": "4.000000e+09"},
        {"event_text": "Host myhost.mydomain.org, plugin df (instance boot) type df: "
                       "Data source \"used\" is currently 4100000000."}]
    assert redis("SMEMBERS", "QUEUESET") == ["collectd_event"]


@pytest.mark.parametrize("body, expected", [
    ("only text", [{"event_text": "only text"}]),
    ("only text\n", [{"event_text": "only text"}]),
    ("only text\r\n", [{"event_text": "only text"}]),
    ("\n", [{"event_text": ""}]),                                   # one empty line
    ("\n\n", [{"event_text": ""}]),
    ("Severity: OKAY\n\nfine", [{"severity": "OKAY"}, {"event_text": "fine"}]),
    # The line before the text is removed even when it is not blank.
    ("Severity: WARNING\nHost: h\nthe text\n", [{"severity": "WARNING"}, {"event_text": "the text"}]),
    ("Severity: WARNING\nthe text", [{"event_text": "the text"}]),
    # ...and it is not parsed, so a malformed one does not matter.
    ("Severity: WARNING\nSeverity:\nthe text\n", [{"severity": "WARNING"}, {"event_text": "the text"}]),
    ("Severity: WARNING\nPUTVAL bad\nthe text\n", [{"severity": "WARNING"}, {"event_text": "the text"}]),
    # The text is kept as it is (no trimming, not parsed).
    ("Severity: OKAY\n\n  spaced  text  \n", [{"severity": "OKAY"}, {"event_text": "  spaced  text  "}]),
    ("Severity: OKAY\n\nPUTVAL h/p/t interval=1 v", [{"severity": "OKAY"},
                                                      {"event_text": "PUTVAL h/p/t interval=1 v"}]),
    ("Severity: OKAY\n\nSeverity:", [{"severity": "OKAY"}, {"event_text": "Severity:"}]),
    ("junk\nseverity: x\nHost h\n\ncaf\u00e9 \U0001F600", [{"host": "h"},
                                                          {"event_text": "caf\u00e9 \U0001F600"}]),
    ("PUTVAL a/b/c interval=1 v\n\ntext", [putval("a", "b", "c", "1", "v"), {"event_text": "text"}]),
])
def test_event_body_rules(C, redis, body, expected):
    assert event_items(C, redis, body) == expected


@pytest.mark.parametrize("body", [
    "Severity:\n\ntext",
    "Severity: OK\nHost\n\ntext\n",
    "PUTVAL a/b interval=1 v\n\ntext",
    "PUTVAL a/b/c interval=1\n\ntext",
])
def test_event_malformed_header(C, redis, body):
    assert_error(post_event(C, body), 400, "malformed collectd body")
    assert_nothing_stored(redis)


def test_event_empty_body(C, redis):
    assert_error(post_event(C, ""), 400, "malformed collectd body")
    assert_error(post_event(C, "", content_type=None), 400, "malformed collectd body")
    assert_nothing_stored(redis)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json",
                                          "application/octet-stream", "x/y; z"])
def test_event_content_type_not_checked(C, redis, content_type):
    assert event_items(C, redis, "Severity: OKAY\n\nmsg\n", content_type) == [
        {"severity": "OKAY"}, {"event_text": "msg"}]


# --------------------------------------------------------------------------- kinds, JSONP, routes

@pytest.mark.parametrize("path", ["/collectd/", "/collectd/foo", "/collectd/DATA", "/collectd/Event",
                                  "/collectd/data/", "/collectd/data/x", "/collectd/events",
                                  "/collectd/collectd_data", "/collectd/ data"])
def test_unknown_kind(C, redis, path):
    reply = post_raw(C, path.replace(" ", "%20"), "PUTVAL h/p/t interval=1 v\n")
    assert_error(reply, 400, "unknown collectd kind")
    assert_nothing_stored(redis)


def test_jsonp_post(C, redis):
    reply = post_raw(C, "/collectd/data?callback=cb", "PUTVAL h/p/t interval=1 v\n")
    assert reply.status == 200
    assert reply.header("Content-Type") == HTML
    assert reply.body == b'cb("collectd_data:1");\r\n'
    reply = post_raw(C, "/collectd/event?callback=a.b_c$", "text")
    assert reply.body == b'a.b_c$("collectd_event:1");\r\n'


def test_jsonp_invalid_callback_is_ignored_on_post(C, redis):
    """Only a GET can be loaded by a <script>: a POST answers as without a callback."""
    reply = post_raw(C, "/collectd/data?callback=1bad", "PUTVAL h/p/t interval=1 v\n")
    assert (reply.status, reply.body) == (200, b"collectd_data:1\r\n")


def test_errors_are_not_wrapped(C, redis):
    assert_error(post_raw(C, "/collectd/data?callback=cb", "PUTVAL x\n"), 400,
                 "malformed collectd body")
    assert_error(post_raw(C, "/collectd/data?callback=cb", "x", "text/html"), 503,
                 "unexpected Content-Type")
    assert_error(post_raw(C, "/collectd/nope?callback=cb", "x"), 400, "unknown collectd kind")


def test_get_and_delete_behave_as_q(C, redis):
    assert_ok(post_data(C, "PUTVAL h/p/t interval=1 v\n"), "collectd_data:1")
    assert_ok(post_data(C, "PUTVAL h/p/t interval=1 w\n"), "collectd_data:2")
    reply = get(C, "/collectd/collectd_data")
    assert reply.status == 200 and reply.header("Content-Type") == HTML
    assert reply.body.endswith(b"\r\n")
    got = reply.json
    assert got["key"] == "collectd_data:1" and got["count"] == 0
    assert json.loads(got["value"]) == [putval(interval="1", value="v")]
    # JSONP on GET, as /q/.
    reply = get(C, "/collectd/collectd_data?callback=cb")
    assert reply.body.startswith(b"cb({") and reply.body.endswith(b");\r\n")
    assert json.loads(reply.body[3:-4])["key"] == "collectd_data:2"
    # Empty: 204, empty body.
    reply = get(C, "/collectd/collectd_data")
    assert reply.status == 204 and reply.body == b""
    # Any queue, not only the collectd ones.
    assert request(C, "POST", "/q/other", form={"value": "x"}).body == b"other:1\r\n"
    assert get(C, "/collectd/other").json == {"key": "other:1", "value": "x", "count": 0}
    # DELETE purges.
    assert_ok(post_event(C, "text"), "collectd_event:1")
    reply = request(C, "DELETE", "/collectd/collectd_event")
    assert reply.status == 200 and reply.header("Content-Type") == HTML
    assert reply.json == {"queue": "collectd_event", "status": 1}
    assert reply.body.endswith(b"\r\n")
    assert request(C, "DELETE", "/collectd/collectd_event").json == {
        "queue": "collectd_event", "status": 0}
    reply = request(C, "DELETE", "/collectd/collectd_data?callback=cb")
    assert reply.body.startswith(b"cb(") and reply.body.endswith(b");\r\n")
    assert_error(request(C, "DELETE", "/collectd/"), 400, "invalid queue name")
    assert_error(get(C, "/collectd/a%20b"), 400, "invalid queue name")


def test_list_page(C, redis):
    post_data(C, "PUTVAL h/p/t interval=1 v\n")
    post_event(C, "x")
    request(C, "POST", "/q/a&b", form={"value": "x"})
    reply = get(C, "/collectd/")
    assert reply.status == 200 and reply.header("Content-Type") == HTML
    assert reply.body == get(C, "/q/").body
    page = reply.body.decode()
    assert "<title>avaliable queue for REST</title>" in page
    assert '<li><a href="/q/collectd_data">/q/collectd_data</a></li>' in page
    assert '<li><a href="/q/collectd_event">/q/collectd_event</a></li>' in page
    assert '<li><a href="/q/a%26b">/q/a&amp;b</a></li>' in page
    assert page.index("a%26b") < page.index("collectd_data") < page.index("collectd_event")


def test_other_methods(C, redis):
    for method in ("PUT", "PATCH", "HEAD", "OPTIONS"):
        reply = request(C, method, "/collectd/data", body=b"x",
                        headers={"Content-Type": "text/plain"})
        assert reply.status == 405, method
        assert reply.header("Allow")
    assert_nothing_stored(redis)
    assert_error(get(C, "/collectd"), 404, "not found")


def test_live_consumers_notified(C, redis):
    data = CometClient(C, "collectd_data")
    event = CometClient(C, "collectd_event")
    try:
        assert data.status == 200 and event.status == 200
        assert_ok(post_data(C, "PUTVAL h/p/t interval=1 v\n"), "collectd_data:1")
        assert_ok(post_data(C, '{"a": 1}', "application/json"), "collectd_data:2")
        assert_ok(post_event(C, "Severity: OKAY\n\nall good"), "collectd_event:1")
        first, second = data.messages(2)
        assert first["key"] == "collectd_data:1"
        assert json.loads(first["value"]) == [putval(interval="1", value="v")]
        assert second == {"key": "collectd_data:2", "value": '{"a": 1}'}
        [ev] = event.messages(1)
        assert ev["key"] == "collectd_event:1"
        assert json.loads(ev["value"]) == [{"severity": "OKAY"}, {"event_text": "all good"}]
    finally:
        data.close()
        event.close()


def test_restmq_plugin_has_no_collectd_route(H, redis):
    for path in ("/collectd/data", "/collectd/event", "/collectd/"):
        reply = post_raw(H, path, "PUTVAL h/p/t interval=1 v\n")
        assert_error(reply, 404, "not found")
        assert_error(get(H, path), 404, "not found")
    assert_nothing_stored(redis)


def test_start_script(redis_proc, redis):
    """start_scripts/collectd_restmq_server runs the collectd plugin with the options given."""
    server = ServerProcess(redis_proc.port, plugin="collectd")
    root = Path(__file__).resolve().parent.parent
    # The script puts twistd's options before the plugin name: only plugin options here.
    server.argv = [str(root / "start_scripts" / "collectd_restmq_server"),
                   "--port", str(server.port), "--redis-port", str(redis_proc.port)]
    server.start()
    try:
        assert_ok(post_data(server.url, "PUTVAL h/p/t interval=1 v\n"), "collectd_data:1")
    finally:
        server.stop()


# --------------------------------------------------------------------------- the real collectd

def require_collectd():
    missing = [p for p in (COLLECTD, f"{PLUGIN_DIR}/write_http.so", f"{PLUGIN_DIR}/load.so",
                           f"{PLUGIN_DIR}/memory.so", TYPES_DB) if not os.path.exists(p)]
    if missing:
        pytest.fail(f"the real collectd cannot run here: missing {missing} (install collectd-core)")


class Collectd:
    """`collectd -f -C <conf>` in a private directory, stopped by its PID."""

    def __init__(self, body: str):
        require_collectd()
        self.dir = tempfile.mkdtemp(prefix="restmq-collectd-")
        os.chmod(self.dir, 0o755)  # the exec plugin's child runs as nobody
        self.conf = os.path.join(self.dir, "collectd.conf")
        self.out = os.path.join(self.dir, "collectd.out")
        Path(self.conf).write_text(
            f'Hostname "{HOSTNAME}"\n'
            "FQDNLookup false\n"
            f'BaseDir "{self.dir}"\n'
            f'PIDFile "{self.dir}/collectd.pid"\n'
            f'PluginDir "{PLUGIN_DIR}"\n'
            f'TypesDB "{TYPES_DB}"\n'
            "Interval 1\n"
            "LoadPlugin logfile\n"
            "<Plugin logfile>\n  LogLevel info\n  File STDOUT\n  Timestamp true\n</Plugin>\n"
            + body)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Collectd":
        check = subprocess.run([COLLECTD, "-t", "-C", self.conf], capture_output=True, text=True)
        if check.returncode != 0:
            pytest.fail(f"collectd rejects its configuration: {check.stdout}{check.stderr}")
        self.log_file = open(self.out, "wb")
        self.proc = subprocess.Popen([COLLECTD, "-f", "-C", self.conf], stdout=self.log_file,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        return self

    def log(self) -> str:
        try:
            return Path(self.out).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self.log_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"collectd exited with {self.proc.returncode}:\n{self.log()}")


def write_http_conf(url: str, fmt: str) -> str:
    # FlushInterval 1 makes write_http post every second instead of waiting for a full buffer.
    return ("LoadPlugin load\n"
            "LoadPlugin memory\n"
            "<LoadPlugin write_http>\n  FlushInterval 1\n</LoadPlugin>\n"
            "<Plugin write_http>\n"
            '  <Node "restmq">\n'
            f'    URL "{url}/collectd/data"\n'
            f'    Format "{fmt}"\n'
            "    StoreRates true\n"
            "    BufferSize 8192\n"
            "    Timeout 5000\n"
            "  </Node>\n"
            "</Plugin>\n")


def wait_for(predicate, timeout, what, daemon=None, server=None):
    """wait_until, checking that collectd still runs and adding both logs on a timeout."""
    return wait_until(predicate, timeout, what, interval=0.2,
                      check=daemon.assert_running if daemon is not None else None,
                      details=lambda: (daemon.log() if daemon else "") + "\n"
                      + (server.log()[-4000:] if server else ""))


def check_command_items(items, now):
    assert isinstance(items, list) and items
    for item in items:
        assert set(item) == {"host", "plugin_instance", "type_instance", "interval", "value"}
        assert all(isinstance(v, str) for v in item.values())
        assert item["host"] == HOSTNAME
        assert item["plugin_instance"] in ("load", "memory"), item
        assert float(item["interval"]) == 1.0
        fields = item["value"].split(":")
        assert abs(float(fields[0]) - now) < 300, item   # the time stamp
        if item["plugin_instance"] == "load":
            assert item["type_instance"] == "load"
            assert len(fields) == 4                       # shortterm, midterm, longterm
            assert all(float(f) >= 0 for f in fields[1:])
        else:
            assert item["type_instance"].startswith("memory-"), item
            assert len(fields) == 2 and float(fields[1]) >= 0


def check_json_body(text, now):
    body = json.loads(text)
    assert isinstance(body, list) and body
    for item in body:
        assert item["host"] == HOSTNAME
        assert item["plugin"] in ("load", "memory"), item
        assert item["interval"] == 1.0
        assert abs(item["time"] - now) < 300
        assert len(item["values"]) == len(item["dstypes"]) == len(item["dsnames"])
        if item["plugin"] == "load":
            assert item["type"] == "load" and item["dsnames"] == ["shortterm", "midterm", "longterm"]
        else:
            assert item["type"] == "memory" and item["dsnames"] == ["value"]
    return body


def plugins_of(values, fmt):
    seen = set()
    for value in values:
        items = json.loads(value)
        seen |= {item["plugin_instance" if fmt == "Command" else "plugin"] for item in items}
    return seen


@pytest.mark.parametrize("fmt", ["Command", "JSON"])
def test_real_collectd_write_http(cserver, redis, fmt):
    url = cserver.url
    comet = CometClient(url, "collectd_data")
    daemon = Collectd(write_http_conf(url, fmt))
    try:
        assert comet.status == 200
        daemon.start()
        now = time.time()
        # The comet consumer, connected before collectd started, gets its posts as they come.
        deadline = time.monotonic() + 30
        messages = []
        while plugins_of([m["value"] for m in messages], fmt) != {"load", "memory"}:
            if time.monotonic() > deadline:
                pytest.fail(f"comet saw {messages!r}\ncollectd log:\n{daemon.log()}\n"
                            f"server log:\n{cserver.log()[-4000:]}")
            daemon.assert_running()
            try:
                messages = comet.messages(len(messages) + 1, timeout=2)
            except AssertionError:
                pass
        for n, message in enumerate(messages):
            assert message["key"].startswith("collectd_data:")
            if fmt == "Command":
                check_command_items(json.loads(message["value"]), now)
            else:
                check_json_body(message["value"], now)
        keys = [int(m["key"].rsplit(":", 1)[1]) for m in messages]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        comet.close()
        comet = None
        # Without a live consumer the posts stay in the queue.
        values = wait_for(lambda: (lambda v: v if plugins_of(v, fmt) == {"load", "memory"}
                                   else None)(stored(redis, "collectd_data")),
                          30, "collectd_data in Redis", daemon, cserver)
        for value in values:
            if fmt == "Command":
                check_command_items(json.loads(value), now)
            else:
                check_json_body(value, now)
        assert redis("SISMEMBER", "QUEUESET", "collectd_data") == 1
    finally:
        if comet is not None:
            comet.close()
        daemon.stop()
    assert "Traceback" not in cserver.log()


def test_real_collectd_notification(cserver, redis):
    if shutil.which("curl") is None:
        pytest.fail("the NotificationExec script needs curl, which is not installed")
    try:
        subprocess.run(["id", "nobody"], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.fail("the exec plugin needs an unprivileged user `nobody` to run its script as")
    if not os.path.exists(f"{PLUGIN_DIR}/exec.so") or not os.path.exists(f"{PLUGIN_DIR}/threshold.so"):
        pytest.fail("the collectd exec and threshold plugins are not installed")
    # The threshold plugin fires a WARNING at once: used memory is always above 1 byte.
    daemon = Collectd(
        "LoadPlugin memory\n"
        "LoadPlugin exec\n"
        "LoadPlugin threshold\n"
        "<Plugin exec>\n"
        f'  NotificationExec "nobody" "{{script}}" "{cserver.url}/collectd/event"\n'
        "</Plugin>\n"
        "<Plugin threshold>\n"
        '  <Plugin "memory">\n'
        '    <Type "memory">\n'
        '      Instance "used"\n'
        "      WarningMax 1\n"
        "    </Type>\n"
        "  </Plugin>\n"
        "</Plugin>\n")
    try:
        # The script must be readable and executable by nobody: copy it into the 0755 dir.
        script = os.path.join(daemon.dir, "collectd_notify.sh")
        shutil.copy(NOTIFY_SCRIPT, script)
        os.chmod(script, 0o755)
        conf = Path(daemon.conf)
        conf.write_text(conf.read_text().replace("{script}", script))
        daemon.start()
        values = wait_for(lambda: stored(redis, "collectd_event"), 30,
                          "a notification in collectd_event", daemon, cserver)
        items = json.loads(values[0])
        assert items[0] == {"severity": "WARNING"}
        flat = {k: v for item in items[:-1] for k, v in item.items()}
        assert flat["host"] == HOSTNAME
        assert flat["plugin"] == "memory" and flat["type"] == "memory"
        assert flat["typeinstance"] == "used"
        assert flat["datasource"] == "value"
        assert abs(float(flat["time"]) - time.time()) < 300
        assert float(flat["warningmax"]) == 1.0
        assert float(flat["currentvalue"]) > 1
        assert set(items[-1]) == {"event_text"}
        assert "memory" in items[-1]["event_text"] and "warning threshold" in items[-1]["event_text"]
        assert all(len(item) == 1 for item in items)
    finally:
        daemon.stop()


def test_a_form_encoded_event_body_is_not_read_as_arguments(C, redis):
    """docs/http-api.md#arguments: /collectd/ reads the raw body, so curl's default Content-Type
    does not matter, even for a body that would be an undecodable form."""
    from tests.http_client import request
    body = "Severity: FAILURE\nHost: h%ff\n\nvalue=%ff&callback=1x\n"
    reply = request(C, "POST", "/collectd/event", body=body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (reply.status, reply.body) == (200, b"collectd_event:1\r\n")
    stored = __import__("json").loads(redis("GET", "collectd_event:1"))
    assert stored == [{"severity": "FAILURE"}, {"host": "h%ff"}, {"event_text": "value=%ff&callback=1x"}]
