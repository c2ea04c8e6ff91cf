"""One headless Chromium page consuming a queue by EventSource and by WebSocket at once, while
the test adds messages and purges the queue (docs/live-delivery.md#websocket,
#server-sent-events, #purge).

How the browser is driven (nothing is written to the product's static directory):
* the page is a temporary file loaded as file://, with `--disable-web-security` (a throw-away
  profile) so that its EventSource may read the RestMQ origin, which sends no CORS headers;
* once both transports are open the page POSTs to the queue `ready`; the test waits for that
  in Redis, then adds two messages, waits until the server delivered them, and purges;
* `--dump-dom` dumps when the page's load event fires. The page holds its load open with an
  <img> on the comet stream `/c/hold`; when it has seen `null` on both transports it purges
  `hold`, which ends that stream, lets the load finish and the DOM be dumped. `--timeout`
  bounds the whole run if anything goes wrong (the DOM is then dumped as it is).
"""
from __future__ import annotations

import html.parser
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.http_client import delete, post
from tests.util import wait_until

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>live</title></head><body>
<ul id="sse"></ul><ul id="ws"></ul><p id="state">running</p>
<script>
"use strict";
const H = %(base)s, WS = %(ws)s;
function note(list, text, attrs) {
  const li = document.createElement("li");
  li.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) li.setAttribute("data-" + k, v);
  document.getElementById(list).appendChild(li);
}
let opened = 0, finished = 0;
function isOpen() {
  if (++opened === 2)
    fetch(H + "/q/ready", {method: "POST", body: new URLSearchParams({value: "open"})});
}
function isDone() {
  if (++finished === 2) {
    document.getElementById("state").textContent = "done";
    fetch(H + "/q/hold", {method: "DELETE"});
  }
}
const es = new EventSource(H + "/sse/live");
es.onopen = () => { note("sse", "open"); isOpen(); };
es.onerror = () => note("sse", "error", {state: es.readyState});
es.addEventListener("message", e => {
  note("sse", e.data, {id: e.lastEventId, type: e.type});
  if (e.data === "null") { es.close(); isDone(); }
});
const ws = new WebSocket(WS + "/ws/live");
ws.onopen = () => { note("ws", "open"); isOpen(); };
ws.onerror = () => note("ws", "error");
ws.onmessage = e => note("ws", e.data, {kind: typeof e.data});
ws.onclose = e => { note("ws", "close", {code: e.code, clean: e.wasClean}); isDone(); };
</script>
<img src="%(hold)s" alt="">
</body></html>
"""


class _Lists(html.parser.HTMLParser):
    """The <li> items (text and data-* attributes) of every <ul id>, and the #state text."""

    def __init__(self):
        super().__init__()
        self.lists: dict[str, list[tuple[str, dict]]] = {}
        self.state = None
        self._ul = None
        self._li = None
        self._in_state = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "ul" and "id" in attrs:
            self._ul = self.lists.setdefault(attrs["id"], [])
        elif tag == "li" and self._ul is not None:
            self._li = ["", {k[5:]: v for k, v in attrs.items() if k.startswith("data-")}]
        elif tag == "p" and attrs.get("id") == "state":
            self._in_state = True
            self.state = ""

    def handle_endtag(self, tag):
        if tag == "li" and self._li is not None:
            self._ul.append((self._li[0], self._li[1]))
            self._li = None
        elif tag == "ul":
            self._ul = None
        elif tag == "p":
            self._in_state = False

    def handle_data(self, data):
        if self._li is not None:
            self._li[0] += data
        elif self._in_state:
            self.state += data


def wait_for(predicate, timeout, what, browser=None):
    """wait_until, failing at once if chromium exits."""
    def running():
        if browser is not None and browser.poll() is not None:
            raise AssertionError(f"chromium exited while waiting for {what}")
    return wait_until(predicate, timeout, what, interval=0.05, check=running)


def test_eventsource_and_websocket_in_chromium(H, redis):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is missing: `make test` installs it")
    values = ["first <b>&amp;</b> \"q\"", "zweite \u00e9 \u2603"]
    with tempfile.TemporaryDirectory(prefix="restmq-browser-") as tmp:
        page = Path(tmp, "live.html")
        page.write_text(PAGE % {"base": json.dumps(H),
                                "ws": json.dumps("ws" + H.removeprefix("http")),
                                "hold": H + "/c/hold"}, encoding="utf-8")
        errors = Path(tmp, "chromium.err").open("wb")
        browser = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp}/profile", "--disable-web-security",
             "--timeout=40000", "--dump-dom", page.as_uri()],
            stdout=subprocess.PIPE, stderr=errors)
        try:
            wait_for(lambda: redis("LLEN", "ready:queue") == 1, 30,
                     "the page to open both transports", browser)
            for channel in ("live:PUBSUB", "hold:PUBSUB"):
                wait_for(lambda: redis("PUBSUB", "NUMSUB", channel)[1] >= 1, 10,
                         f"a subscription to {channel}", browser)
            keys = []
            for value in values:
                reply = post(H, "/q/live", {"value": value})
                assert reply.status == 200, reply.body
                keys.append(reply.body.decode().strip())
            assert keys == ["live:1", "live:2"]
            # delivered (popped and deleted by the server) before the purge
            wait_for(lambda: redis("LLEN", "live:queue") == 0
                     and redis("EXISTS", *keys) == 0, 10, "the delivery", browser)
            assert delete(H, "/q/live").status == 200
            dom, _ = browser.communicate(timeout=60)
        finally:
            if browser.poll() is None:
                browser.kill()
                browser.wait()
            if browser.stdout:
                browser.stdout.close()
            errors.close()
        assert browser.returncode == 0, Path(tmp, "chromium.err").read_text(errors="replace")

    parsed = _Lists()
    parsed.feed(dom.decode("utf-8"))
    assert parsed.state == "done", dom
    expected = [{"key": k, "value": v} for k, v in zip(keys, values)]

    sse = parsed.lists["sse"]
    assert [text for text, _ in sse][0] == "open", sse
    assert len(sse) == 4, sse   # open, two messages, null; no error, no reconnect
    assert [json.loads(text) for text, _ in sse[1:3]] == expected
    assert [attrs["id"] for _, attrs in sse[1:3]] == keys
    assert all(attrs["type"] == "message" for _, attrs in sse[1:])
    assert sse[3][0] == "null"

    ws = parsed.lists["ws"]
    assert [text for text, _ in ws][0] == "open", ws
    assert len(ws) == 5, ws     # open, two messages, null, close
    assert [json.loads(text) for text, _ in ws[1:3]] == expected
    assert all(attrs["kind"] == "string" for _, attrs in ws[1:4])   # text frames
    assert ws[3][0] == "null"
    assert ws[4] == ("close", {"code": "1000", "clean": "true"})

    wait_for(lambda: redis("PUBSUB", "NUMSUB", "live:PUBSUB")[1] == 0, 10,
             "the server to drop the page's consumers")
    wait_for(lambda: redis("PUBSUB", "NUMSUB", "hold:PUBSUB")[1] == 0, 10,
             "the server to drop the hold stream")
