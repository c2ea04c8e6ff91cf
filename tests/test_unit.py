"""Pure logic, no Redis and no sockets: names, arguments, JSON text, ACL rules, JSON commands."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from restmq import acl, names as core
from restmq.redis import keys
from restmq.frontends import jsoncmd as dispatch
from restmq.errors import BadRequest, InvalidArgument, Unauthorized
from restmq.http.args import CALLBACK, parse_urlencoded
from restmq.jsontext import json_text


@pytest.mark.parametrize("name", ["test", "a/b", "syslogd:::1", "syslogd:127.0.0.1", "ü€😀",
                                  "x" * 256, "a+b", "queuestat", "AUTHKEYS", "q:queued",
                                  "é" * 128])
def test_valid_names(name):
    assert core.is_valid_name(name)


@pytest.mark.parametrize("name", ["", "a b", "a\tb", "a\nb", "a\x00b", "a\x7fb", "a\x85b",
                                  "a\u2003b", "x" * 257, "é" * 129, "QUEUESET", "AUTHKEY",
                                  "AUTHKEY:k", "queuestat:", "queuestat:x", "q:queue", "q:UUID",
                                  "q:queuepolicy", "q:PUBSUB", "q:1:lock", "q:1:refcount",
                                  "\ud800"])
def test_invalid_names(name):
    assert not core.is_valid_name(name)


def test_name_check_matches_isspace_and_category_cc_everywhere():
    import sys
    import unicodedata
    for code in range(sys.maxunicode + 1):
        c = chr(code)
        forbidden = c.isspace() or unicodedata.category(c) == "Cc"
        assert bool(core._FORBIDDEN.search(c)) == forbidden, hex(code)


def test_scan_pattern_escapes_glob_characters():
    assert keys.match_all("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\*"


def test_json_text_escapes_non_ascii_and_html_characters():
    assert json_text({"v": "<a&b>é"}) == '{"v": "\\u003ca\\u0026b\\u003e\\u00e9"}'


def test_parse_urlencoded_last_wins_and_decodes_strictly():
    args = {}
    parse_urlencoded(b"a=1&b=x+y&a=%C3%A9&c=%2B&d=", args)
    assert args == {"a": "é", "b": "x y", "c": "+", "d": ""}
    with pytest.raises(InvalidArgument) as e:
        parse_urlencoded(b"value=%FF", {})
    assert e.value.reason == "invalid argument: value"


@pytest.mark.parametrize("name, ok", [("cb", True), ("$.a_1.b$", True), ("a.", False),
                                      ("1a", False), ("a-b", False), ("a" * 128, True),
                                      ("a(1)", False)])
def test_callback_names(name, ok):
    assert bool(CALLBACK.match(name)) is ok


def _request(auth=None, cookie=None):
    headers = {}
    if auth:
        headers["Authorization"] = auth
    if cookie:
        headers["Cookie"] = cookie
    return SimpleNamespace(headers=headers)


def _rule(text):
    return acl.parse_rules("[rest:producer]\n" + text)["rest:producer"]


@pytest.mark.parametrize("text, address, allowed", [
    ("", "10.0.0.1", True),
    ("hosts_allow = 127.0.0.1", "127.0.0.1", True),
    ("hosts_allow = 127.0.0.1", "10.0.0.1", False),
    ("hosts_allow = 127.0.0.1\nhosts_deny = all", "127.0.0.1", True),
    ("hosts_allow = 127.0.0.1\nhosts_deny = all", "127.0.0.2", False),
    ("hosts_deny = all", "127.0.0.1", False),
    ("hosts_deny = 10.0.0.1", "10.0.0.15", False),
    ("hosts_deny = 10.0.0.1", "10.0.1.1", True),
    ("hosts_allow = 10.\nhosts_deny = 192.", "172.16.0.1", True),
    ("hosts_allow = all", "1.2.3.4", True),
    ("hosts_allow = all 10.", "1.2.3.4", False),
    ("hosts_allow =", "1.2.3.4", True),
])
def test_acl_decision_by_address(text, address, allowed):
    rule = _rule(text)
    if allowed:
        acl.decide(rule, address, _request())
    else:
        with pytest.raises(Unauthorized) as e:
            acl.decide(rule, address, _request())
        assert not e.value.challenge


def test_acl_credentials_are_checked_with_a_challenge():
    rule = _rule("username = u\npassword = p:w")
    acl.decide(rule, "1.2.3.4", _request(auth="Basic dTpwOnc="))  # u:p:w
    acl.decide(rule, "1.2.3.4", _request(auth="basic dTpwOnc="))
    for bad in (None, "Basic dTp4", "Basic !!!", "Bearer dTpwOnc="):
        with pytest.raises(Unauthorized) as e:
            acl.decide(rule, "1.2.3.4", _request(auth=bad))
        assert e.value.challenge
    with pytest.raises(Unauthorized):
        acl.decide(rule, "1.2.3.4", _request(cookie="auth=u:p:w"))
    acl.decide(rule, "1.2.3.4", _request(cookie="x=1; auth=u:p:w"), cookie_ok=True)


def test_acl_cookie_only_from_the_same_origin():
    rule = _rule("username = u\npassword = p")

    def request(origin):
        headers = {"Cookie": "auth=u:p", "Host": "mq.example:8888"}
        if origin:
            headers["Origin"] = origin
        return SimpleNamespace(headers=headers)

    acl.decide(rule, "1.2.3.4", request(None), cookie_ok=True)
    acl.decide(rule, "1.2.3.4", request("http://MQ.example:8888"), cookie_ok=True)
    for foreign in ("http://evil.example", "http://mq.example:9999", "null", "mq.example:8888"):
        with pytest.raises(Unauthorized) as e:
            acl.decide(rule, "1.2.3.4", request(foreign), cookie_ok=True)
        assert e.value.challenge


def test_acl_credentials_need_both_parts():
    acl.decide(_rule("username = u"), "1.2.3.4", _request())


def test_acl_file_syntax():
    rules = acl.parse_rules("# c\n; c\n[REST:producer]\nHOSTS_DENY: all\n[rest:consumer]\n"
                            "hosts_deny = 1.\nhosts_deny = 2.\npassword = %x\nusername = u\n")
    assert "rest:producer" not in rules  # section names are exact
    assert rules["rest:consumer"].deny == ("2.",)  # the last repeated option wins
    assert rules["rest:consumer"].password == "%x"  # no interpolation
    with pytest.raises(acl.AclError):
        acl.parse_rules("hosts_allow = 1\n")


def test_client_address_with_and_without_trusted_proxy():
    def request(peer, **headers):
        transport = SimpleNamespace(getPeer=lambda: SimpleNamespace(host=peer))
        return SimpleNamespace(headers=headers, connection=SimpleNamespace(transport=transport))

    assert acl.client_address(request("::ffff:10.0.0.1"), False) == "10.0.0.1"
    assert acl.client_address(request("2001:DB8::1"), False) == "2001:db8::1"
    proxied = request("127.0.0.1", **{"X-Real-IP": "10.1.1.1", "X-Forwarded-For": "1.1.1.1"})
    assert acl.client_address(proxied, False) == "127.0.0.1"
    assert acl.client_address(proxied, True) == "10.1.1.1"
    forwarded = request("127.0.0.1", **{"X-Real-IP": "junk", "X-Forwarded-For": "1.1.1.1, 2.2.2.2"})
    assert acl.client_address(forwarded, True) == "2.2.2.2"
    assert acl.client_address(request("127.0.0.1", **{"X-Forwarded-For": "x"}), True) == \
        "127.0.0.1"


@pytest.mark.parametrize("text", ["", "nope", "[]", '"cmd"', '{"cmd": 1}', '{"cmd": ""}',
                                  '{"queue": "q"}', '{"cmd": "add", "v": NaN}', "[" * 100000])
def test_dispatch_rejects_malformed_commands(text):
    with pytest.raises(BadRequest) as e:
        dispatch.parse(text)
    assert e.value.reason == "malformed JSON"


@pytest.mark.parametrize("obj, fields, error", [
    ({}, ("queue", "value"), "missing argument: queue"),
    ({"queue": None}, ("queue",), "missing argument: queue"),
    ({"queue": 1, "value": None}, ("queue", "value"), "invalid argument: queue"),
    ({"queue": "a b"}, ("queue", "value"), "invalid queue name"),
    ({"queue": "q"}, ("queue", "value"), "missing argument: value"),
    ({"queue": "q", "value": ["x"]}, ("queue", "value"), "invalid argument: value"),
    ({"queue": "q", "value": ""}, ("queue", "value"), None),
    ({"queue": "q", "key": "q:12"}, ("queue", "key"), None),
    ({"queue": "q", "key": "q:"}, ("queue", "key"), "invalid argument: key"),
    ({"queue": "q", "key": "r:1"}, ("queue", "key"), "invalid argument: key"),
    ({"queue": "q", "key": "q:١"}, ("queue", "key"), "invalid argument: key"),
    ({"queue": "a.b", "key": "aXb:1"}, ("queue", "key"), "invalid argument: key"),
    ({"queue": "q", "value": "x\ud800"}, ("queue", "value"), "invalid argument: value"),
])
def test_dispatch_field_checks_in_order(obj, fields, error):
    assert dispatch.field_error(obj, fields) == error
