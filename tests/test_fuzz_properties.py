"""Property tests (hypothesis), pure and fast: no Redis, no sockets.

* queue names: the Redis keys of two different accepted names never meet, nor the fixed keys
  (docs/http-api.md#queue-names, docs/redis-layout.md#keys);
* the JSON protocol's parse and field checks, the XML-RPC document check, the collectd body
  parser and the syslog framing and priority (docs/frontends.md) never fail with
  anything but their documented BadRequest.

Each test is bounded by `max_examples` so that it runs in a few seconds; set RESTMQ_FUZZ_SCALE
(a factor, default 1) for a deeper run. No example database is written (database=None).
"""
from __future__ import annotations

import datetime
import json
import os
import re
import string
import xmlrpc.client

import pytest

import hypothesis  # noqa: E402,F401 - installed by make test

from hypothesis import (HealthCheck, assume, example, given, settings,  # noqa: E402
                        strategies as st)

from restmq import names as core  # noqa: E402
from restmq.frontends import collectd, jsoncmd as dispatch, syslogd, xmlrpc as rpc  # noqa: E402
from restmq.errors import BadRequest  # noqa: E402

from tests.oracles import (COLLECTD_NOTIFICATION_FIELDS, SYSLOG_FACILITIES,  # noqa: E402
                           SYSLOG_SEVERITIES, valid_queue_name)

SCALE = float(os.environ.get("RESTMQ_FUZZ_SCALE", "1"))


def bounded(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


FAST = bounded(300)
SLOW = bounded(150)


# -- queue names and the key layout (docs/redis-layout.md#keys) ------------------------------

# Pieces that make key names meet when concatenated: the separators, counters, the reserved
# words with and without their colon, and some text that is not ASCII.
TOKENS = [":", "::", ":::", "0", "1", "12", "007", "queue", "UUID", "queuepolicy", "PUBSUB",
          "lock", "refcount", "queuestat", "queuestat:", "AUTHKEY", "AUTHKEY:", "QUEUESET",
          ":queue", ":UUID", ":queuepolicy", ":PUBSUB", ":lock", ":refcount", ":1", ":2",
          ":1:", ":12:", ":queued", "queue:", "a", "b", "x", "é", "\u00ff", "😀", "*", "/",
          "%3A", "\\", "QUEUE", "uuid", "Queue"]

name_text = st.one_of(
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=8).map("".join),
    st.text(alphabet=st.sampled_from(":0123456789aqUD"), min_size=1, max_size=12),
    st.text(min_size=1, max_size=20),
)
valid_names = name_text.filter(valid_queue_name)

N = r"[0-9]+"  # the message counter, any number of digits (INCR never gives a sign or 0 here)


def key_families(q: str) -> dict[str, str]:
    """Every key (and the pub/sub channel) a queue `q` creates, as regular expressions over
    the whole key; `<n>` stands for any counter value."""
    e = re.escape(q)
    return {
        "<q>:UUID": e + ":UUID",
        "<q>:<n>": e + ":" + N,
        "<q>:queue": e + ":queue",
        "queuestat::<q>": "queuestat::" + e,
        "<q>:queuepolicy": e + ":queuepolicy",
        "<q>:<n>:refcount": e + ":" + N + ":refcount",
        "<q>:<n>:lock": e + ":" + N + ":lock",
        "<q>:PUBSUB": e + ":PUBSUB",
    }


FIXED = {"QUEUESET": "QUEUESET", "AUTHKEY:<k>": "AUTHKEY:.*"}


def concrete_keys(q: str, counters: list[int]) -> dict[str, str]:
    """The keys of `q` for the given counter values."""
    keys = {}
    for family, pattern in key_families(q).items():
        if "<n>" in family:
            for n in counters:
                keys[family.replace("<n>", str(n)) + f" (n={n})"] = \
                    family.replace("<q>", q).replace("<n>", str(n))
        else:
            keys[family] = family.replace("<q>", q)
    return keys


def counters_for(*names: str) -> list[int]:
    """Counter values that could make keys meet: every run of digits in the names, and 1."""
    found = {1, 2, 10}
    for name in names:
        found.update(int(run) for run in re.findall(r"[0-9]{1,18}", name))
    return sorted(n for n in found if n >= 1)


def assert_disjoint(a: str, b: str) -> None:
    counters = counters_for(a, b)
    families_b = {**{f"{f} of {b!r}": p for f, p in key_families(b).items()}, **FIXED}
    for label, key in concrete_keys(a, counters).items():
        for other, pattern in families_b.items():
            assert not re.fullmatch(pattern, key, re.DOTALL), \
                f"key {key!r} ({label} of queue {a!r}) is also {other}"


def related_name(draw, a: str) -> str:
    """A second name built from the first, where collisions would be: a prefix or suffix
    added or removed, a counter inserted."""
    piece = draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=3).map("".join))
    how = draw(st.sampled_from(["suffix", "prefix", "cut", "counter", "stat", "free"]))
    if how == "suffix":
        return a + piece
    if how == "prefix":
        return piece + a
    if how == "cut":
        i = draw(st.integers(1, max(1, len(a))))
        return a[:i] or a
    if how == "counter":
        return a + ":" + str(draw(st.integers(0, 10**6)))
    if how == "stat":
        return "queuestat:" + a
    return draw(valid_names)


@st.composite
def name_pairs(draw):
    a = draw(valid_names)
    b = related_name(draw, a)
    assume(valid_queue_name(b) and b != a)
    return a, b


@FAST
@given(name_pairs())
@example(("a", "a:1"))
@example(("a:1", "a"))
@example(("queuestat", "UUID"))
@example(("syslogd:::1", "syslogd::"))
@example(("x:queued", "x"))
@example(("5", ":5"))
@example(("AUTHKEYS", "AUTHKE"))
def test_keys_of_two_accepted_names_never_meet(pair):
    a, b = pair
    assert_disjoint(a, b)
    assert_disjoint(b, a)


@pytest.mark.parametrize("a, b", [("queuestat:", "UUID"), ("queuestat:", "5"),
                                  ("AUTHKEY", "x")])
def test_the_check_finds_the_collisions_the_reserved_names_prevent(a, b):
    """Not vacuous: without the reserved names the counter of `queuestat:` would be the
    status of queue `UUID` (`queuestat::UUID`), its message 5 the status of queue `5`, and
    message 1 of `AUTHKEY` the auth record of key `1`."""
    assert not valid_queue_name(a) and not core.is_valid_name(a)
    with pytest.raises(AssertionError):
        assert_disjoint(a, b)


@FAST
@given(valid_names, st.integers(1, 10**12))
def test_keys_of_an_accepted_name_never_meet_the_fixed_keys(name, n):
    for label, key in concrete_keys(name, counters_for(name) + [n]).items():
        for fixed, pattern in FIXED.items():
            assert not re.fullmatch(pattern, key, re.DOTALL), f"{key!r} ({label}) is {fixed}"
    # the families of one name do not meet each other either (the key reads back one way)
    families = key_families(name)
    for label, key in concrete_keys(name, counters_for(name) + [n]).items():
        owners = [f for f, p in families.items() if re.fullmatch(p, key, re.DOTALL)]
        assert len(owners) == 1, (key, owners)


@FAST
@given(name_text)
def test_accepted_names_are_those_of_section_1_1(name):
    assert core.is_valid_name(name) == valid_queue_name(name)


# -- the JSON protocol (docs/frontends.md#json-protocol) ---------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12)

commands = st.fixed_dictionaries(
    {"cmd": st.one_of(st.sampled_from(["add", "get", "take", "del", "", "ADD", "foo"]),
                      json_values)},
    optional={"queue": st.one_of(valid_names, name_text, json_values),
              "value": json_values, "key": st.one_of(st.text(), json_values)})

command_texts = st.one_of(
    st.text(),
    json_values.map(json.dumps),
    commands.map(json.dumps),
    commands.map(lambda c: json.dumps(c, ensure_ascii=False)),
    st.sampled_from(['{"cmd": NaN}', '{"cmd": "add", "value": Infinity}', "-Infinity",
                     '{"cmd": "\\ud800"}', '{"cmd": "add", "queue": "\\udfff"}',
                     "[" * 100000, '{"a":' * 50000, "1" * 5000, '{"cmd": "add"}' * 2,
                     '{"cmd": "get"} ', '\ufeff{"cmd": "get"}', '{"cmd": "get", "cmd": ""}']),
)


@FAST
@given(command_texts)
def test_json_parse_returns_a_command_or_malformed_json(text):
    try:
        obj = dispatch.parse(text)
    except BadRequest as e:
        assert e.reason == "malformed JSON"
        return
    assert isinstance(obj, dict)
    assert isinstance(obj["cmd"], str) and obj["cmd"]


FIELD_ERRORS = re.compile(r"(missing|invalid) argument: (queue|value|key)|invalid queue name")


@FAST
@given(st.one_of(commands, st.dictionaries(st.text(max_size=6), json_values, max_size=5)),
       st.sampled_from(sorted(dispatch.FIELDS)))
def test_field_error_never_raises(obj, cmd):
    error = dispatch.field_error(obj, dispatch.FIELDS[cmd])
    assert error is None or FIELD_ERRORS.fullmatch(error), error
    if error is None:  # what passed is fit for the reply and for Redis
        for name in dispatch.FIELDS[cmd]:
            assert isinstance(obj[name], str)
            obj[name].encode("utf-8")
        assert valid_queue_name(obj["queue"])


@FAST
@given(valid_names, st.text())
def test_field_error_for_del_keys(queue, key):
    error = dispatch.field_error({"queue": queue, "key": key}, dispatch.FIELDS["del"])
    ok = re.fullmatch(re.escape(queue) + ":[0-9]+", key, re.ASCII) is not None
    assert (error is None) == ok, (queue, key, error)
    if not ok:
        assert error == "invalid argument: key"


# -- XML-RPC documents (docs/frontends.md#xml-rpc) -------------------------------------------

def assert_call_or_bad_request(body: bytes):
    try:
        method, params = rpc.parse_call(body)
    except BadRequest as e:
        assert e.reason == rpc.MALFORMED
        return None
    assert isinstance(method, str)
    assert isinstance(params, tuple)
    return method, params


XML_CHARS = st.characters(blacklist_categories=("Cs",),
                          blacklist_characters="\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b"
                                               "\x0c\x0e\x0f\x10\x11\x12\x13\x14\x15\x16"
                                               "\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\r"
                                               "\ufffe\uffff")
xml_text = st.text(alphabet=XML_CHARS, max_size=30)
method_names = st.text(alphabet=string.ascii_letters + string.digits + "_.:/", min_size=1,
                       max_size=20)
rpc_values = st.recursive(
    st.one_of(xml_text, st.integers(-2**31, 2**31 - 1), st.booleans(),
              st.floats(allow_nan=False, allow_infinity=False), st.binary(max_size=20),
              st.none(),
              st.datetimes(min_value=datetime.datetime(1900, 1, 1),
                           max_value=datetime.datetime(9999, 12, 31)).map(
                  lambda d: d.replace(microsecond=0))),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(xml_text, inner, max_size=3),
    max_leaves=8)


@FAST
@given(method_names, st.lists(rpc_values, max_size=4).map(tuple))
def test_xmlrpc_dumps_round_trip(method, params):
    body = xmlrpc.client.dumps(params, methodname=method, allow_none=True).encode("utf-8")
    assert rpc.parse_call(body) == (method, params)


XML_PIECES = ["<methodCall>", "</methodCall>", "<methodName>", "</methodName>", "<params>",
              "</params>", "<param>", "</param>", "<value>", "</value>", "<string>",
              "</string>", "<int>", "</int>", "<i4>", "<i8>", "<double>", "<boolean>",
              "<base64>", "<dateTime.iso8601>", "<array>", "<data>", "<struct>", "<member>",
              "<name>", "<nil/>", "<fault>", "<methodResponse>", "&amp;", "&lt;", "&#65;",
              "&#x10FFFF;", "&#0;", "&foo;", "&xxe;", "<![CDATA[x]]>", "<!-- c -->",
              "<?pi x?>", "set", "get", "q", "1", "abc", " ", "\n", "é",
              '<?xml version="1.0"?>', '<?xml version="1.0" encoding="iso-8859-1"?>',
              '<?xml version="1.0" encoding="utf-16"?>', '<?xml version="1.0" encoding="x"?>',
              '<!DOCTYPE methodCall>', '<!DOCTYPE methodCall [<!ENTITY xxe "v">]>',
              '<!DOCTYPE x SYSTEM "file:///etc/passwd">', '<!ENTITY % p "x">',
              '<!DOCTYPE methodCall [<!ENTITY xxe SYSTEM "http://127.0.0.1:1/">]>',
              '<!DOCTYPE methodCall [<!NOTATION n SYSTEM "x">]>', "<a xmlns='u'>", "</a>"]

xml_documents = st.lists(st.sampled_from(XML_PIECES), max_size=25).map(
    lambda parts: "".join(parts).encode("utf-8"))


# Declared encodings: known ones, multi-byte ones expat cannot use, unknown names, and codecs
# that are not text encodings.
ENCODINGS = ["utf-8", "UTF-8", "utf-16", "iso-8859-1", "latin-1", "us-ascii", "cp1252", "cp037",
             "utf-7", "shift_jis", "utf-32", "x", "", "nonexistent", "rot13", "base64", "hex",
             "idna", "undefined", "mbcs", "utf_8_sig", "punycode"]
declarations = st.builds(lambda v, e: f'<?xml version="{v}" encoding="{e}"?>',
                         st.sampled_from(["1.0", "1.1", "", "2"]), st.sampled_from(ENCODINGS))


@SLOW
@given(st.one_of(st.binary(max_size=200), xml_documents,
                 xml_documents.map(lambda b: b.decode("utf-8").encode("utf-16")),
                 st.builds(lambda d, b: d.encode() + b, declarations, xml_documents),
                 st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass"))))
@example(b'<?xml version="1.0" encoding="utf-7"?><methodCall/>')
def test_xmlrpc_arbitrary_documents_parse_or_bad_request(body):
    assert_call_or_bad_request(body)


def test_xmlrpc_unknown_declared_encoding_is_bad_request():
    """Found by the test above: expat asks Python's codecs for an encoding it does not know,
    and an unknown name (or a codec that is not a text encoding) raises LookupError out of
    check_document: an HTTP 500 `internal error` at POST /xmlrpc instead of the 400."""
    for encoding in ("x", "nonexistent", "rot13", "base64"):
        body = (f'<?xml version="1.0" encoding="{encoding}"?><methodCall><methodName>len'
                f'</methodName></methodCall>').encode()
        assert assert_call_or_bad_request(body) is None, encoding


@FAST
@given(method_names, st.lists(xml_text, max_size=3),
       st.sampled_from(['<!DOCTYPE methodCall [<!ENTITY e "{v}">]>',
                        '<!DOCTYPE methodCall SYSTEM "file:///etc/passwd">',
                        '<!DOCTYPE methodCall [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
                        '<!DOCTYPE methodCall [<!ENTITY % e "{v}"> %e;]>',
                        '<!DOCTYPE methodCall [<!ELEMENT methodCall ANY>]>',
                        '<!DOCTYPE methodCall>']),
       st.booleans())
def test_xmlrpc_doctypes_and_entities_are_refused(method, params, doctype, use_entity):
    body = xmlrpc.client.dumps(tuple(params), methodname=method)
    head, _, rest = body.partition("\n")  # the XML declaration comes first
    if use_entity:
        rest = rest.replace("<params>", "<params><param><value><string>&e;</string>"
                                        "</value></param>", 1)
    document = (head + "\n" + doctype.replace("{v}", "v") + "\n" + rest).encode("utf-8")
    try:
        rpc.parse_call(document)
    except BadRequest as e:
        assert e.reason == rpc.MALFORMED
    else:
        raise AssertionError(f"accepted a DOCTYPE: {document!r}")


@FAST
@given(st.sampled_from(["zz", "foo", "ltx", "#xD800", "#0", "#x110000", "e", "#", "#x"]),
       method_names)
def test_xmlrpc_undefined_or_invalid_entity_references_are_refused(ref, method):
    body = (f"<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params>"
            f"<param><value><string>a&{ref};b</string></value></param></params>"
            "</methodCall>").encode()
    try:
        rpc.parse_call(body)
    except BadRequest:
        return
    raise AssertionError(body)


# -- collectd bodies (docs/frontends.md#line-parsing) ----------------------------------------

COLLECTD_PIECES = ["PUTVAL", "PUTVAL ", " ", "  ", "\n", "\r\n", "\r", '"', "/", "=",
                   "interval=10", "a/b/c", '"h/p/t"', "Severity:", "Severity", "Time:",
                   "Host:", "Plugin:", "Type:", "TypeInstance:", "DataSource:", "CurrentValue:",
                   "WarningMin:", "WarningMax:", "FailureMin:", "FailureMax:", "severity:",
                   "1:2:3", "x", "é", "\t", "\x00", "\ud800"]

collectd_bodies = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(COLLECTD_PIECES), max_size=30).map(
        lambda p: "".join(p).encode("utf-8", "surrogatepass")),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
content_types = st.one_of(st.none(), st.sampled_from(
    ["text/plain", "TEXT/PLAIN; charset=utf-8", " text/plain ;x", "application/json",
     "application/JSON;charset=utf-8", "text/html", "", ";", "text/plain\x00", "multipart/x"]),
    st.text(max_size=20))


@FAST
@given(collectd_bodies, content_types)
def test_collectd_data_message_is_json_none_or_malformed(body, content_type):
    try:
        value = collectd.data_message(body, content_type)
    except BadRequest as e:
        assert e.reason == "malformed collectd body"
        return
    if value is None:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        assert media not in ("text/plain", "application/json")
        return
    assert isinstance(value, str)
    value.encode("utf-8")  # storable
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "text/plain":
        items = json.loads(value)
        assert isinstance(items, list) and all(isinstance(i, dict) for i in items)
    else:
        assert value == body.decode("utf-8")


@FAST
@given(collectd_bodies)
def test_collectd_event_message_is_json_or_malformed(body):
    try:
        value = collectd.event_message(body)
    except BadRequest as e:
        assert e.reason == "malformed collectd body"
        return
    items = json.loads(value)
    assert isinstance(items, list) and items and "event_text" in items[-1]


# A token: no space (the separator), no LF (the line end), no CR at the end, no `"` so that
# the identifier's quoting is ours alone.
TOKEN_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters=' \n\r"')
part = st.text(alphabet=TOKEN_CHARS, max_size=8)
no_slash = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                          blacklist_characters=' \n\r"/'), max_size=8)


@st.composite
def putval_lines(draw):
    host, plugin_instance, type_instance = draw(no_slash), draw(no_slash), draw(no_slash)
    option = draw(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                 blacklist_characters=' \n\r="'), max_size=8))
    interval, value = draw(part), draw(part)
    extra = draw(st.lists(part, max_size=2))
    identifier = f"{host}/{plugin_instance}/{type_instance}"
    if draw(st.booleans()):
        identifier = f'"{identifier}"'
    line = " ".join(["PUTVAL", identifier, f"{option}={interval}", value, *extra])
    expected = {"host": host, "plugin_instance": plugin_instance,
                "type_instance": type_instance, "interval": interval, "value": value}
    return line, expected


@st.composite
def header_lines(draw):
    name = draw(st.sampled_from(COLLECTD_NOTIFICATION_FIELDS))
    value = draw(part)
    colon = draw(st.sampled_from([":", ""]))
    rest = draw(st.lists(part, max_size=2))
    return " ".join([name + colon, value, *rest]), {name.lower(): value}


ignored_lines = st.one_of(
    st.just(""),
    st.text(alphabet=TOKEN_CHARS, max_size=10).filter(
        lambda t: t.split(" ")[0] not in ("PUTVAL", *COLLECTD_NOTIFICATION_FIELDS)
        and t.split(" ")[0].rstrip(":") not in COLLECTD_NOTIFICATION_FIELDS
        and not t.split(" ")[0].endswith(tuple(f + ":" for f in COLLECTD_NOTIFICATION_FIELDS))))


def join_lines(draw, lines):
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    return ending.join(lines) + draw(st.sampled_from(["", ending]))


@FAST
@given(st.data())
def test_collectd_putval_lines_round_trip(data):
    items = data.draw(st.lists(st.one_of(putval_lines(), header_lines(),
                                         ignored_lines.map(lambda t: (t, None))), max_size=6))
    body = join_lines(data.draw, [line for line, _ in items])
    value = collectd.data_message(body.encode("utf-8"), "text/plain")
    assert json.loads(value) == [d for _, d in items if d is not None]


@FAST
@given(st.data())
def test_collectd_events_round_trip(data):
    headers = data.draw(st.lists(header_lines(), max_size=5))
    separator = data.draw(st.sampled_from(["", "anything"]))
    text = data.draw(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                    blacklist_characters="\n"), max_size=20))
    assume(not text.endswith("\r"))
    ending = data.draw(st.sampled_from(["\n", "\r\n"]))
    # an empty last line exists only when a line end follows it
    final = ending if not text else data.draw(st.sampled_from(["", ending]))
    body = ending.join([line for line, _ in headers] + [separator, text]) + final
    items = json.loads(collectd.event_message(body.encode("utf-8")))
    assert items == [d for _, d in headers] + [{"event_text": text}]


# -- syslog framing and priority (docs/frontends.md#syslogd) ---------------------------------

class Collect:
    def __init__(self, max_line: int):
        self.messages: list[bytes] = []
        self.discards: list[int] = []
        self.framer = syslogd.Framer(max_line, self.messages.append, self.discards.append)


def feed_in_pieces(max_line: int, stream: bytes, cuts: list[int]) -> Collect:
    c = Collect(max_line)
    points = sorted({min(max(0, x), len(stream)) for x in cuts})
    start = 0
    for p in points + [len(stream)]:
        c.framer.feed(stream[start:p])
        start = p
    return c


SYSLOG_PIECES = [b"1", b"5", b"12", b"0", b"9999999999", b" ", b"\n", b"\r\n", b"\r",
                 b"<13>", b"<191>", b"<192>", b"msg", b"\xff", b"\x00", b"abcdefgh" * 3]
streams = st.one_of(st.binary(max_size=300),
                    st.lists(st.sampled_from(SYSLOG_PIECES), max_size=40).map(b"".join))


@FAST
@given(streams, st.lists(st.integers(0, 300), max_size=12), st.integers(1, 40))
def test_syslog_framer_split_anywhere_gives_the_same_messages(stream, cuts, max_line):
    whole = Collect(max_line)
    whole.framer.feed(stream)
    pieces = feed_in_pieces(max_line, stream, cuts)
    assert pieces.messages == whole.messages
    assert len(pieces.discards) == len(whole.discards)
    assert all(len(m) <= max_line for m in whole.messages)
    one_by_one = feed_in_pieces(max_line, stream, list(range(len(stream))))
    assert one_by_one.messages == whole.messages


@st.composite
def framed_messages(draw, max_line: int):
    """(wire bytes, expected message or None when too long) for one message."""
    octet = draw(st.booleans())
    if octet:
        body = draw(st.binary(min_size=1, max_size=max_line + 10))  # "0 " is no octet count
        return b"%d %s" % (len(body), body), (body if len(body) <= max_line else None), True
    body = draw(st.binary(max_size=max_line + 10).filter(lambda b: b"\n" not in b))
    # a line that starts like an octet count would be framed as one: not an LF message
    assume(not re.match(rb"[1-9][0-9]{0,9} ", body))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    expected = body[:-1] if ending == b"\n" and body.endswith(b"\r") else body
    return body + ending, (expected if len(expected) <= max_line else None), True


@FAST
@given(st.integers(1, 30), st.data())
def test_syslog_framed_messages_are_recovered_exactly(max_line, data):
    frames = data.draw(st.lists(framed_messages(max_line), max_size=8))
    stream = b"".join(wire for wire, _, _ in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    for c in (feed_in_pieces(max_line, stream, []), feed_in_pieces(max_line, stream, cuts)):
        assert c.messages == [m for _, m, _ in frames if m is not None]
        assert len(c.discards) == sum(1 for _, m, _ in frames if m is None)


@FAST
@given(st.integers(1, 50), st.integers(1, 60), st.binary(max_size=20).filter(
    lambda b: b"\n" not in b and not re.match(rb"[1-9][0-9]{0,9} ", b)), st.booleans(),
    st.lists(st.integers(0, 200), max_size=6))
def test_syslog_too_long_message_is_discarded_and_the_next_comes_through(
        max_line, extra, following, octet, cuts):
    long_body = b"x" * (max_line + extra)
    wire = b"%d %s" % (len(long_body), long_body) if octet else long_body + b"\n"
    stream = wire + following + b"\n"
    c = feed_in_pieces(max_line, stream, cuts)
    expected = following[:-1] if following.endswith(b"\r") else following
    if len(expected) <= max_line:
        assert c.messages == [expected]
        assert len(c.discards) == 1
    else:  # the following message is too long itself
        assert c.messages == [] and len(c.discards) == 2


PRI = re.compile(r"<([0-9]{1,3})>")


@FAST
@given(st.one_of(st.text(max_size=12),
                 st.integers(0, 1200).map(lambda n: f"<{n}>x"),
                 st.integers(0, 999).map(lambda n: f"<{n:03d}>"),
                 st.sampled_from(["<>", "<", "<1", "<1>", "<0>", "<191>", "<192>", "<0001>",
                                  "<-1>", "<+1>", "< 1>", "<１>", "<١>", "<²>", "x<13>",
                                  " <13>", "<13 >", "<1>>"])))
def test_syslog_priority_names_only_for_pri_0_to_191(line):
    facility, severity = syslogd.priority(line)
    m = PRI.match(line)
    if m and int(m.group(1)) <= 191:
        pri = int(m.group(1))
        assert (facility, severity) == (SYSLOG_FACILITIES[pri // 8],
                                        SYSLOG_SEVERITIES[pri % 8])
    else:
        assert (facility, severity) == (None, None)
