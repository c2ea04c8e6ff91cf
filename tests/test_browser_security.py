"""Browser security, checked with raw sockets and in a real headless Chromium
(reply headers and JSONP of docs/http-api.md#replies and #jsonp, the HTML pages, and the `auth`
cookie of /ws/ and /sse/ in docs/access-control.md#credentials).

* Hostile queue names render as text on the dashboard, the `/q/` list and the `/j/<q>` jobs
  page: each page is loaded live (where the CSP sandbox would stop a script anyway) and again
  as a file:// copy of the served bytes without that header, so the escaping is tested on its
  own; the dumped DOM must hold the names as text, no element from a payload, and the real
  title (every payload tries `document.title='pwned'`).
* JSONP: callbacks outside the grammar are refused on every JSONP route, valid ones are only
  ever used as the `NAME(` prefix, replies never carry a raw `<`, `>` or `&`, and a page
  written by the test loads JSONP replies as <script src> and gets the parsed objects.
* Headers on every API route, method and outcome; no CORS, also for a preflight.
* With credentials configured for /ws/ and /sse/, the `auth` cookie counts only without an
  Origin or from the same origin: raw handshakes, then Chromium on a page of another origin
  on the same host (cookies ignore the port, so the browser sends RestMQ's cookie along).
"""
from __future__ import annotations

import base64
import concurrent.futures
import html.parser
import http.server
import json
import shutil
import socket
import subprocess
import tempfile
import threading
from urllib.parse import quote, urlencode

import pytest

from tests.conftest import ServerProcess
from tests.http_client import request
from tests.util import wait_until

CSP = "default-src 'none'; sandbox"
EVIL = "http://evil.example"

# Every payload tries to rename the document; names contain no whitespace
# (docs/http-api.md#queue-names).
NAMES = [
    "<img/src=x/onerror=document.title='pwned'>",
    "<script>document.title='pwned'</script>",
    "\"><svg/onload=document.title='pwned'>",
    "</title><script>document.title='pwned'</script>",
    "'\"&amp;&lt;i&gt;&#60;b&#x3e;",
    "javascript:document.title='pwned'",
]
VALUE = ("</script><script>document.title='pwned'</script>"
         "<img src=x onerror=document.title='pwned'>&amp;&lt; \u2028\u00e9")
PAYLOAD_TAGS = {"img", "svg", "iframe", "object", "embed", "i", "b", "math", "base"}


def path_of(name: str) -> str:
    return quote(name, safe="")


# -- Chromium ---------------------------------------------------------------------------------

def chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is missing: `make test` installs it")
    return binary


def chromium_args(profile: str, *extra: str) -> list[str]:
    return [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            *extra]


def console_lines(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if ":CONSOLE" in line)


def chromium_dom(url: str, *extra: str) -> tuple[str, str]:
    """The DOM of `url` once loaded (scripts run), and the page's console messages."""
    with tempfile.TemporaryDirectory(prefix="restmq-sec-profile-") as profile:
        out = subprocess.run(chromium_args(profile, *extra, "--timeout=30000", "--dump-dom", url),
                             capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, console_lines(out.stderr)


def chromium_many(urls: list[str], *extra: str) -> list[tuple[str, str]]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda url: chromium_dom(url, *extra), urls))


class Dom(html.parser.HTMLParser):
    """Every start tag with its attributes, the text per element kind, the title, the <li>s."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.title: str | None = None
        self.texts: list[str] = []
        self.items: list[tuple[str, dict]] = []
        self.links: list[tuple[str, str]] = []
        self.rows: dict[str, list[str]] = {}
        self._stack: list[tuple[str, dict, list[str]]] = []
        self._row: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "tr" and "data-queue" in attrs:
            self._row = attrs["data-queue"]
            self.rows[self._row] = []
        if tag in ("title", "li", "a", "h1", "p", "td"):
            self._stack.append((tag, attrs, []))

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if self._stack and self._stack[-1][0] == tag:
            tag, attrs, parts = self._stack.pop()
            text = "".join(parts)
            if self._stack:
                self._stack[-1][2].append(text)
            if tag == "title":
                self.title = text
            elif tag == "li":
                self.items.append((text, attrs))
            elif tag == "a":
                self.links.append((attrs.get("href"), text))
            elif tag == "td" and self._row is not None:
                self.rows[self._row].append(text)
            else:
                self.texts.append(text)

    def handle_data(self, data):
        if self._stack:
            self._stack[-1][2].append(data)

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.tags if t == tag)

    def assert_no_payload(self, page: str, own_scripts: int = 0) -> None:
        found = [(t, a) for t, a in self.tags if t in PAYLOAD_TAGS]
        assert not found, f"{page}: elements from a payload: {found}"
        assert self.count("script") == own_scripts, f"{page}: injected <script>: {self.tags}"
        handlers = [(t, a) for t, a in self.tags if any(k.startswith("on") for k in a)]
        assert not handlers, f"{page}: event handler attributes: {handlers}"


# -- raw HTTP ---------------------------------------------------------------------------------

def raw_exchange(port: int, data: bytes, until: bytes = b"\r\n\r\n", timeout: float = 10) -> bytes:
    """Send `data`, read until `until` has arrived (or the server closes), close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        received = b""
        while until not in received:
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def parse_head(data: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, rest


def raw_get(port: int, path: str, headers: dict[str, str], method: str = "GET"):
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return parse_head(raw_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")))


def ws_headers(**extra: str) -> dict[str, str]:
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **extra}


def header_map(message) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in message.items():
        headers.setdefault(name.lower(), []).append(value)
    return headers


def assert_no_cors(headers: dict[str, list[str]], where: str) -> None:
    cors = {k: v for k, v in headers.items() if k.startswith("access-control-")}
    assert not cors, f"{where}: CORS headers {cors}"


def assert_api_headers(headers: dict[str, list[str]], where: str,
                       jsonp: bool | None = False) -> None:
    """The headers of docs/http-api.md#replies, nosniff included, which a JSONP reply goes without
    (a browser would refuse to run it as a script under its JSON or HTML type); `jsonp` None:
    either is fine."""
    if jsonp is False:
        assert headers.get("x-content-type-options") == ["nosniff"], f"{where}: {headers}"
    elif jsonp:
        assert "x-content-type-options" not in headers, f"{where}: {headers}"
    assert headers.get("cache-control") == ["no-store"], f"{where}: {headers}"
    assert headers.get("content-security-policy") == [CSP], f"{where}: {headers}"
    assert "etag" not in headers, f"{where}: {headers}"
    assert_no_cors(headers, where)


# -- 1. hostile names on the HTML pages -------------------------------------------------------

def test_hostile_names_render_as_text_on_every_page(H, redis, tmp_path):
    for name in NAMES:
        for n in (1, 2):
            reply = request(H, "POST", f"/q/{path_of(name)}", form={"value": VALUE})
            assert (reply.status, reply.body) == (200, f"{name}:{n}\r\n".encode()), name

    # the API pages: the CSP header is there, and the bytes go into file:// copies without it
    served = {"/q/": request(H, "GET", "/q/")}
    for name in NAMES:
        served[f"/j/{path_of(name)}"] = request(H, "GET", f"/j/{path_of(name)}")
    copies = {}
    for i, (path, reply) in enumerate(served.items()):
        assert reply.status == 200, (path, reply.body)
        assert reply.header("Content-Type") == "text/html; charset=UTF-8"
        assert_api_headers(header_map(reply.headers), path)
        assert VALUE not in reply.body.decode()   # values never appear on these pages
        copy = tmp_path / f"page{i}.html"
        copy.write_bytes(reply.body)
        copies[path] = copy.as_uri()

    live_paths = list(served)
    urls = ([f"{H}/static/index.html"] + [H + p for p in live_paths]
            + [copies[p] for p in live_paths])
    doms = chromium_many(urls, "--virtual-time-budget=5000")
    dashboard, live, copied = doms[0], doms[1:1 + len(live_paths)], doms[1 + len(live_paths):]

    for (dom, console), label in ([(d, f"live {p}") for d, p in zip(live, live_paths)]
                                  + [(d, f"file copy of {p}") for d, p in zip(copied, live_paths)]):
        path = label.split()[-1]
        parsed = Dom(dom)
        parsed.assert_no_payload(label)
        if path == "/q/":
            assert parsed.title == "avaliable queue for REST", (label, dom)
            expected = [(f"/q/{quote(n, safe='/:@-._~')}", f"/q/{n}") for n in sorted(NAMES)]
            assert parsed.links == expected, (label, dom)
        else:
            name = next(n for n in NAMES if path == f"/j/{path_of(n)}")
            assert parsed.title == f"jobs in queue {name}", (label, dom)
            assert f"jobs in queue {name}" in parsed.texts, (label, dom)
            assert f"queue name: {name}" in parsed.texts, (label, dom)
            assert [text for text, _ in parsed.items] == [f"{name}:2", f"{name}:1"], (label, dom)

    dom, console = dashboard
    parsed = Dom(dom)
    assert parsed.title == "RestMQ dashboard", dom
    parsed.assert_no_payload("dashboard", own_scripts=2)
    assert set(parsed.rows) == set(NAMES), (
        "the dashboard shows no queues; its load of /stats/ failed.\n"
        f"browser console:\n{console}")
    for name in NAMES:
        assert parsed.rows[name][:4] == [name, "2", "started", "broadcast"], parsed.rows[name]
    links = [(href, text) for href, text in parsed.links if href and href.startswith("/j/")]
    assert sorted(links) == sorted((f"/j/{quote(n, safe=chr(39) + '-_.!~*()')}", n)
                                   for n in NAMES)


# -- 2. JSONP -----------------------------------------------------------------------------------

BAD_CALLBACKS = ["alert(1)//", "a;b", "<x>", "a=1", "a" * 129, "a.", ".a", "a..b", "1a", "a-b",
                 "a b", "a(b)", "a,b", "a[0]", "</script>", "a\u2028", "a\nb", "\u00e9",
                 "a.1b", "x'", "x\"", "a&b"]
GOOD_CALLBACKS = ["__proto__.x", "$", "_", "a.b.c", "$a_1.$b2._", "A" * 128, "constructor"]


def jsonp_requests(callback: str) -> list[tuple[str, str, dict | None]]:
    """One request per JSONP route and method of docs/http-api.md#route-table, with `callback`."""
    q = urlencode({"callback": callback})
    return [
        ("GET", f"/?queue=jq&{q}", None),
        ("POST", "/", {"queue": "jq", "value": "v", "callback": callback}),
        ("GET", f"/q/jq?{q}", None),
        ("POST", "/q/jq", {"value": "v", "callback": callback}),
        ("POST", f"/q/jq?{q}", {"value": "v"}),
        ("DELETE", f"/q/jq?{q}", None),
        ("GET", f"/c/jq?{q}", None),
        ("GET", f"/p/jq?{q}", None),
        ("POST", "/p/jq", {"policy": "roundrobin", "callback": callback}),
        ("POST", "/control/jq", {"status": "stop", "callback": callback}),
        ("GET", f"/stats/?{q}", None),
        ("GET", f"/stats/jq?{q}", None),
    ]


def test_jsonp_refuses_callbacks_outside_the_grammar(H, redis):
    cases = [(callback, *r) for callback in BAD_CALLBACKS for r in jsonp_requests(callback)]
    for callback, method, path, form in cases:
        if method != "GET":
            continue
        reply = request(H, method, path, form=form, timeout=10)
        where = f"{method} {path} {form} callback={callback!r}"
        assert reply.status == 400, (where, reply.status, reply.body)
        assert reply.header("Content-Type") == "application/json", where
        assert reply.json == {"error": "invalid argument: callback"}, (where, reply.body)
        assert callback.encode() not in reply.body, where
        assert_api_headers(header_map(reply.headers), where)
    assert redis("DBSIZE") == 0   # nothing was written by a refused request

    # no <script> sends a POST or DELETE: these answer as without a callback, never wrapped
    for callback, method, path, form in cases:
        if method == "GET":
            continue
        reply = request(H, method, path, form=form, timeout=10)
        where = f"{method} {path} {form} callback={callback!r}"
        assert reply.status == 200, (where, reply.status, reply.body)
        assert callback.encode() not in reply.body, where
        assert_api_headers(header_map(reply.headers), where)
    redis("FLUSHALL")  # those POSTs set a policy

    # routes without JSONP ignore it (docs/http-api.md#jsonp): never reflected, never wrapped
    for path in ("/control/jq", "/control/", "/j/jq"):
        reply = request(H, "GET", f"{path}?{urlencode({'callback': 'alert(1)//'})}")
        assert reply.status == 200 and b"alert" not in reply.body, (path, reply.body)

    for callback in GOOD_CALLBACKS:
        q = urlencode({"callback": callback})
        for method, path, form, inner in [
                ("GET", f"/p/jq?{q}", None, {"queue": "jq", "value": "broadcast"}),
                ("POST", "/q/jq", {"value": "v", "callback": callback}, None),
                ("GET", f"/stats/jq?{q}", None, None)]:
            reply = request(H, method, path, form=form)
            body = reply.body.decode("ascii")
            assert reply.status == 200, (callback, path, body)
            assert body.startswith(callback + "(") and body.count(callback) == 1, body
            payload = body[len(callback) + 1:body.rindex(")")]
            assert body[body.rindex(")"):] in (");\r\n", ")"), body
            if inner is not None:
                assert json.loads(payload) == inner, body
            json.loads(payload)


def jsonp_payload(body: bytes, callback: str):
    """The argument of `callback(...)`, after checking the bytes are safe in a <script>."""
    assert body.isascii(), body
    text = body.decode("ascii")
    for raw in "<>&":
        assert raw not in text, f"raw {raw!r} in a JSONP reply: {text}"
    assert text.startswith(callback + "(") and text.count(callback + "(") == 1, text
    return json.loads(text[len(callback) + 1:text.rindex(")")])


def test_jsonp_replies_escape_markup(H, redis):
    q = "</script><b>jq</b>&amp;"
    p, cb = path_of(q), "cb"
    reply = request(H, "POST", f"/q/{p}", form={"value": VALUE, "callback": cb})
    assert jsonp_payload(reply.body, cb) == f"{q}:1"
    reply = request(H, "POST", "/", form={"queue": q, "value": VALUE, "callback": cb})
    assert jsonp_payload(reply.body, cb) == f"{q}:2"
    reply = request(H, "GET", f"/q/{p}?callback={cb}")
    assert jsonp_payload(reply.body, cb) == {"key": f"{q}:1", "value": VALUE, "count": 0}
    reply = request(H, "GET", f"/?queue={p}&callback={cb}")
    assert jsonp_payload(reply.body, cb) == {"key": f"{q}:2", "value": VALUE, "count": 0}
    reply = request(H, "GET", f"/p/{p}?callback={cb}")
    assert jsonp_payload(reply.body, cb) == {"queue": q, "value": "broadcast"}
    reply = request(H, "POST", f"/control/{p}", form={"status": "<script>x", "callback": cb})
    assert jsonp_payload(reply.body, cb) == {"stat": "invalid status: <script>x"}
    reply = request(H, "GET", f"/stats/?callback={cb}")
    assert jsonp_payload(reply.body, cb)["queues"][q]["name"] == q
    reply = request(H, "GET", f"/stats/{p}?callback={cb}")
    assert jsonp_payload(reply.body, cb)["queue"] == q
    reply = request(H, "DELETE", f"/q/{p}?callback={cb}")
    assert jsonp_payload(reply.body, cb) == {"queue": q, "status": 0}

    # a comet line
    assert request(H, "POST", f"/q/{p}", form={"value": VALUE}).status == 200
    port = int(H.rsplit(":", 1)[1])
    data = raw_exchange(port, f"GET /c/{p}?callback={cb} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                        until=b");\r\n")
    status, _, rest = parse_head(data)
    assert status == 200
    line = rest[rest.index(b"cb("):rest.index(b");\r\n") + 2]
    assert jsonp_payload(line, cb) == {"key": f"{q}:3", "value": VALUE}


JSONP_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>jsonp</title></head><body><ul id="got"></ul>
<script>
"use strict";
function got(name) {
  return function (data) {
    const li = document.createElement("li");
    li.setAttribute("data-cb", name);
    li.textContent = JSON.stringify(data);
    document.getElementById("got").appendChild(li);
  };
}
for (const name of %(names)s) window[name] = got(name);
window.ns = {inner: {got: got("ns.inner.got")}};
</script>
%(scripts)s
</body></html>
"""


def test_jsonp_in_a_script_element_in_chromium(H, redis, tmp_path):
    q = "</script><b>jq</b>&amp;"
    p = path_of(q)
    for queue in (q, q + "2"):
        assert request(H, "POST", f"/q/{path_of(queue)}", form={"value": VALUE}).status == 200
    sources = {
        "got_q": f"/q/{p}?callback=got_q",
        "got_root": f"/?queue={path_of(q + '2')}&callback=got_root",
        "got_p": f"/p/{p}?callback=got_p",
        "got_stats": "/stats/?callback=got_stats",
        "ns.inner.got": f"/stats/{p}?callback=ns.inner.got",
    }
    names = [n for n in sources if "." not in n]
    page = tmp_path / "jsonp.html"
    page.write_text(JSONP_PAGE % {
        "names": json.dumps(names),
        "scripts": "\n".join(f'<script src="{H}{src}"></script>' for src in sources.values()),
    }, encoding="utf-8")
    dom, console = chromium_dom(page.as_uri(), "--allow-file-access-from-files")

    parsed = Dom(dom)
    assert parsed.title == "jsonp", dom
    parsed.assert_no_payload("jsonp page", own_scripts=1 + len(sources))
    got = {attrs["data-cb"]: json.loads(text) for text, attrs in parsed.items}
    assert len(got) == len(parsed.items), parsed.items   # every callback ran at most once
    assert set(got) == set(sources), (
        f"callbacks called: {sorted(got)}; expected {sorted(sources)}.\n"
        f"browser console:\n{console}")
    assert got["got_q"] == {"key": f"{q}:1", "value": VALUE, "count": 0}
    assert got["got_root"] == {"key": f"{q}2:1", "value": VALUE, "count": 0}
    assert got["got_p"] == {"queue": q, "value": "broadcast"}
    assert got["got_stats"]["queues"][q]["name"] == q
    assert got["ns.inner.got"]["queue"] == q


# -- 3. headers ---------------------------------------------------------------------------------

XMLRPC_CALL = ("<?xml version='1.0'?><methodCall><methodName>len</methodName><params>"
               "<param><value><string>hq</string></value></param></params></methodCall>")


def header_cases() -> list[tuple[str, str, object, int]]:
    """(method, path, form dict / raw body / None, expected status), in an order where the
    queue state makes each status certain."""
    return [
        ("GET", "/", None, 302),
        ("GET", "/?queue=hq", None, 200),
        ("GET", "/?queue=nothing", None, 404),
        ("GET", "/?queue=hq&callback=cb", None, 200),
        ("POST", "/", {"queue": "hq", "value": "b"}, 200),
        ("POST", "/", {"value": "b"}, 400),
        ("DELETE", "/", None, 405),
        ("GET", "/q/hq", None, 200),
        ("GET", "/q/hq?callback=cb", None, 200),
        ("GET", "/q/nothing", None, 204),
        ("GET", "/q/nothing?callback=cb", None, 204),
        ("GET", "/q/", None, 200),
        ("POST", "/q/hq", {"value": "c"}, 200),
        ("POST", "/q/hq", {"value": "c", "callback": "cb"}, 200),
        ("POST", "/q/hq", {"value": "c", "ttl": "abc"}, 400),
        ("POST", "/q/", {"value": "c"}, 400),
        ("GET", "/q/%20", None, 400),
        ("PUT", "/q/hq", b"value=x", 405),
        ("PATCH", "/q/hq", None, 405),
        ("HEAD", "/q/hq", None, 405),
        ("DELETE", "/q/hq?callback=cb", None, 200),
        ("DELETE", "/q/", None, 400),
        ("POST", "/c/hq", None, 405),
        ("GET", "/c/", None, 400),
        ("GET", "/c/hq?callback=a;b", None, 400),
        ("DELETE", "/c/hq", None, 405),
        ("GET", "/ws/hq", None, 403),
        ("POST", "/ws/hq", None, 405),
        ("GET", "/sse/", None, 400),
        ("POST", "/sse/hq", None, 405),
        ("GET", "/p/hq", None, 200),
        ("POST", "/p/hq", {"policy": "roundrobin"}, 200),
        ("POST", "/p/hq", {"policy": "x", "callback": "cb"}, 200),
        ("POST", "/p/hq", None, 400),
        ("GET", "/p/", None, 400),
        ("DELETE", "/p/hq", None, 405),
        ("GET", "/control/", None, 200),
        ("GET", "/control/hq", None, 200),
        ("POST", "/control/hq", {"status": "stop"}, 200),
        ("POST", "/control/hq", {"status": "start", "callback": "cb"}, 200),
        ("POST", "/control/", {"status": "stop"}, 400),
        ("DELETE", "/control/hq", None, 405),
        ("GET", "/stats/", None, 200),
        ("GET", "/stats/?callback=cb", None, 200),
        ("GET", "/stats/hq", None, 200),
        ("POST", "/stats/", None, 405),
        ("GET", "/j/hq", None, 200),
        ("GET", "/j/", None, 400),
        ("POST", "/j/hq", None, 405),
        ("GET", "/queue", None, 302),
        ("POST", "/queue", {"body": '{"cmd": "add", "queue": "hq", "value": "d"}'}, 200),
        ("POST", "/queue", {"body": '{"cmd": "nope"}'}, 200),
        ("POST", "/queue", {"body": "{"}, 400),
        ("POST", "/queue", None, 400),
        ("DELETE", "/queue", None, 405),
        ("POST", "/xmlrpc", XMLRPC_CALL.encode(), 200),
        ("POST", "/xmlrpc", b"<not xml", 400),
        ("GET", "/xmlrpc", None, 405),
        ("GET", "/nope", None, 404),
        ("POST", "/nope", None, 404),
        ("GET", "/stats", None, 404),
        ("GET", "/queue/", None, 404),
        ("GET", "/q", None, 404),
    ]


def test_api_headers_on_every_route_and_outcome(H, redis):
    port = int(H.rsplit(":", 1)[1])
    for value in ("a", "b", "c"):
        assert request(H, "POST", "/q/hq", form={"value": value}).status == 200

    for method, path, body, expected in header_cases():
        form = body if isinstance(body, dict) else None
        raw = body if isinstance(body, bytes) else None
        headers = {"Origin": EVIL}
        if raw is not None:
            headers["Content-Type"] = "text/xml"
        reply = request(H, method, path, form=form, body=raw, headers=headers)
        where = f"{method} {path} {body!r}"
        assert reply.status == expected, (where, reply.status, reply.body)
        jsonp = reply.status == 200 and reply.body.startswith(b"cb(")
        wrapped = "callback=cb" in path or (isinstance(body, dict) and body.get("callback") == "cb")
        assert jsonp == (wrapped and expected == 200), (where, reply.body)
        assert_api_headers(header_map(reply.headers), where, jsonp)
        if expected == 405:
            assert reply.header("Allow"), where

    # the same without an Origin
    for method, path in (("GET", "/q/"), ("GET", "/stats/"), ("GET", "/j/hq"), ("GET", "/nope"),
                         ("PUT", "/q/hq"), ("GET", "/q/nothing")):
        reply = request(H, method, path)
        assert_api_headers(header_map(reply.headers), f"{method} {path} without Origin")

    # conditional requests never give 304
    for path in ("/stats/", "/q/", "/j/hq", "/p/hq"):
        conditions = {"If-None-Match": "*", "If-Modified-Since": "Sun, 01 Jan 2090 00:00:00 GMT"}
        reply = request(H, "GET", path, headers=conditions)
        assert reply.status == 200, (path, reply.status)
        assert_api_headers(header_map(reply.headers), f"conditional GET {path}")

    # streams and handshakes, read with raw sockets
    for path, extra, expected in [
            ("/c/hq", {}, 200), ("/c/hq?callback=cb", {}, 200), ("/sse/hq", {}, 200),
            ("/ws/hq", ws_headers(**{"Sec-WebSocket-Version": "8"}), 426),
            ("/ws/hq", ws_headers(**{"Sec-WebSocket-Key": "short"}), 400)]:
        status, headers, _ = raw_get(port, path, {"Origin": EVIL, **extra})
        assert status == expected, (path, status, headers)
        assert_api_headers(headers, f"GET {path} {extra}", None if "callback" in path else False)
    status, headers, _ = raw_get(port, "/ws/hq", ws_headers(Origin=EVIL))
    assert status == 101
    assert_no_cors(headers, "WebSocket 101")

    # 413: the declared length is refused before the body is read
    status, headers, _ = parse_head(raw_exchange(port, (
        "POST /q/hq HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 2000000\r\n\r\n"
    ).encode()))
    assert status == 413
    assert_api_headers(headers, "413")

    # CORS preflights: 405 with Allow, no Access-Control-* anywhere
    preflight = {"Origin": EVIL, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type, x-auth-key"}
    for path in ("/", "/q/hq", "/q/", "/c/hq", "/ws/hq", "/sse/hq", "/p/hq", "/control/hq",
                 "/stats/", "/stats/hq", "/j/hq", "/queue", "/xmlrpc"):
        reply = request(H, "OPTIONS", path, headers=preflight)
        assert reply.status == 405, (path, reply.status)
        assert reply.header("Allow"), path
        assert_api_headers(header_map(reply.headers), f"OPTIONS {path}")
    for path in ("/static/index.html", "/favicon.ico"):
        reply = request(H, "OPTIONS", path, headers=preflight)
        assert reply.status == 405, (path, reply.status)
        assert_no_cors(header_map(reply.headers), f"OPTIONS {path}")
        reply = request(H, "GET", path, headers={"Origin": EVIL})
        assert reply.status == 200
        assert_no_cors(header_map(reply.headers), f"GET {path}")


# -- 4. the auth cookie of /ws/ and /sse/ across origins ------------------------------------------

ACL = """[websocket:consumer]
username = u
password = p

[sse:consumer]
username = u
password = p
"""


@pytest.fixture(scope="module")
def acl_server(redis_proc, tmp_path_factory):
    path = tmp_path_factory.mktemp("acl") / "acl.conf"
    path.write_text(ACL)
    proc = ServerProcess(redis_proc.port, "--acl", str(path)).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log() and "Unhandled" not in proc.log(), proc.log()


def open_live(port: int, kind: str, headers: dict[str, str]):
    extra = ws_headers(**headers) if kind == "ws" else headers
    return raw_get(port, f"/{kind}/rawq", extra)


def test_auth_cookie_needs_the_same_origin_raw(acl_server, redis):
    port = acl_server.port
    cookie = {"Cookie": "auth=u:p"}
    basic = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    refused = [
        {},
        {"Cookie": "auth=u:wrong", "Origin": f"http://127.0.0.1:{port}"},
        {**cookie, "Origin": EVIL},
        {**cookie, "Origin": "null"},
        {**cookie, "Origin": f"http://127.0.0.1:{port + 1}"},
        {**cookie, "Origin": f"http://localhost:{port}"},
        {**cookie, "Origin": f"http://127.0.0.1:{port}.evil.example"},
        {**cookie, "Origin": f"http://evil.example/127.0.0.1:{port}"},
        {**cookie, "Origin": f"127.0.0.1:{port}"},
        {**cookie, "Authorization": "Basic " + base64.b64encode(b"u:x").decode()},
    ]
    accepted = [
        {**cookie, "Origin": f"http://127.0.0.1:{port}"},
        cookie,
        {**basic, "Origin": EVIL},
        basic,
    ]
    for kind, ok in (("ws", 101), ("sse", 200)):
        for headers in refused:
            status, reply, _ = open_live(port, kind, headers)
            where = f"/{kind}/ with {headers}"
            assert status == 401, (where, status)
            assert reply.get("www-authenticate") == ['Basic realm="RestMQ Restricted Access"'], \
                where
            assert_api_headers(reply, where)
        for headers in accepted:
            status, reply, _ = open_live(port, kind, headers)
            assert status == ok, (f"/{kind}/ with {headers}", status)
            assert_no_cors(reply, f"/{kind}/ with {headers}")


ATTACK_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>other origin</title></head><body><ul id="log"></ul>
<script>
"use strict";
function note(text) {
  const li = document.createElement("li");
  li.textContent = text;
  document.getElementById("log").appendChild(li);
}
let pending = 4;
function settled() { if (--pending === 0) fetch("/done", {method: "POST"}); }
function once(f) { let done = false; return () => { if (!done) { done = true; f(); } }; }
function watchWebSocket(label, url) {
  const finish = once(settled);
  const ws = new WebSocket(url);
  ws.onopen = () => { note(label + " open"); setTimeout(() => ws.close(), 1000); };
  ws.onmessage = e => note(label + " message " + e.data);
  ws.onerror = () => note(label + " error");
  ws.onclose = e => { note(label + " close " + e.code); finish(); };
}
function watchEventSource(label, url) {
  const finish = once(settled);
  const es = new EventSource(url, {withCredentials: true});
  es.onopen = () => { note(label + " open"); setTimeout(() => { es.close(); finish(); }, 1000); };
  es.onmessage = e => note(label + " message " + e.data);
  es.onerror = () => { note(label + " error " + es.readyState); es.close(); finish(); };
  // Headless Chromium may hold a 401 with a Basic challenge for a login prompt that never
  // comes: then there is neither error nor open.
  setTimeout(() => {
    if (es.readyState === 0) { note(label + " no answer"); es.close(); finish(); }
  }, 5000);
}
watchWebSocket("ws", %(ws)s);
watchEventSource("sse", %(sse)s);
watchWebSocket("probe-ws", %(probe_ws)s);
watchEventSource("probe-sse", %(probe_sse)s);
</script>
<img src="/hold" alt="">
</body></html>
"""


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


def start_http(handler) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def test_auth_cookie_from_another_origin_in_chromium(acl_server, redis, tmp_path):
    """A page on 127.0.0.1:<other port> that set `auth=u:p` (a cookie for the host 127.0.0.1,
    so sent to every port of it) opens WebSocket and EventSource to RestMQ: both refused, and a
    pending message stays in the queue. A probe server on a third port records that the
    browser really sends the cookie and its Origin with such requests."""
    queue = "secret"
    assert request(acl_server.url, "POST", f"/q/{queue}", form={"value": "s3cret"}).status == 200
    done, reported = threading.Event(), threading.Event()
    probes: list[tuple[str, dict]] = []

    class Site(_Quiet):
        def do_GET(self):
            if self.path == "/attack":
                body = page.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Set-Cookie", "auth=u:p; Path=/")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path == "/hold":
                done.wait(30)
            self.send_response(204 if self.path == "/hold" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            reported.set()
            done.set()
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    class Probe(_Quiet):
        def do_GET(self):
            probes.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()

    site, site_thread = start_http(Site)
    probe, probe_thread = start_http(Probe)
    site_port, probe_port = site.server_address[1], probe.server_address[1]
    restmq = f"127.0.0.1:{acl_server.port}"
    page = ATTACK_PAGE % {
        "ws": json.dumps(f"ws://{restmq}/ws/{queue}"),
        "sse": json.dumps(f"http://{restmq}/sse/{queue}"),
        "probe_ws": json.dumps(f"ws://127.0.0.1:{probe_port}/probe-ws"),
        "probe_sse": json.dumps(f"http://127.0.0.1:{probe_port}/probe-sse"),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="restmq-sec-profile-") as profile:
            out = subprocess.run(
                chromium_args(profile, "--timeout=40000", "--dump-dom",
                              f"http://127.0.0.1:{site_port}/attack"),
                capture_output=True, text=True, timeout=90)
    finally:
        done.set()
        for server, thread in ((site, site_thread), (probe, probe_thread)):
            server.shutdown()
            server.server_close()
            thread.join(10)
    assert out.returncode == 0, out.stderr[-3000:]
    assert reported.is_set(), out.stdout   # the page saw all four connections end
    log = [text for text, _ in Dom(out.stdout).items]
    origin = f"http://127.0.0.1:{site_port}"

    # the browser sent the host's cookie and the page's Origin to another port
    seen = {path: headers for path, headers in probes}
    for path in ("/probe-ws", "/probe-sse"):
        assert path in seen, (probes, log)
        assert "auth=u:p" in seen[path].get("cookie", ""), (path, seen[path])
        assert seen[path].get("origin") == origin, (path, seen[path])

    assert not [e for e in log if e.startswith(("ws open", "sse open", "ws message",
                                                "sse message"))], log
    assert "ws error" in log and "ws close 1006" in log, log
    sse = [e for e in log if e.startswith("sse ")]
    assert sse in (["sse error 2"], ["sse no answer"]), log
    # the server refused both (rather than the browser not asking): its access log says 401
    for kind in ("ws", "sse"):
        line = f'"GET /{kind}/{queue} HTTP/1.1" 401'
        wait_until(lambda: line in acl_server.log(), 10, line,
                   details=lambda: acl_server.log()[-3000:])
    assert redis("LLEN", f"{queue}:queue") == 1   # no consumer was ever admitted
    wait_until(lambda: redis("PUBSUB", "NUMSUB", f"{queue}:PUBSUB")[1] == 0, 10,
               f"no subscription to {queue}:PUBSUB")
