"""contrib/interact.html, served as /static/interact.html, in a real headless Chromium: it
watches a queue by Server-Sent Events or WebSocket, posts with its own form, and shows what
arrives in order, as text.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
commands on fd 3, replies on fd 4, each ended by NUL), so that the test can read the page's
log while the stream is open, click the page's buttons, and purge the queue at the end."""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.http_client import delete, get, post
from tests.util import wait_until

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0


class Chromium:
    """One headless Chromium; `open` gives a page (a DevTools session) to evaluate JS in."""

    def __init__(self, profile: str):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail("chromium is missing: `make test` installs it")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # The browser wants the pipes on fds 3 and 4 exactly: bash puts them there, from
        # fds above 9 so that neither redirection overwrites the other's source.
        for fd in (commands_read, replies_write):
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            if fd == commands_read:
                commands_read = high
            else:
                replies_write = high
        self.errors = open(Path(profile, "chromium.err"), "wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{commands_read} 4>&{replies_write}', "bash", binary,
             "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}/profile", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(commands_read, replies_write), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self.errors)
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = TIMEOUT) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:   # replies to our id; events and other replies are skipped
            while b"\0" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self._replies], [], [], remaining)[0]:
                    raise AssertionError(f"no DevTools reply to {method}")
                data = os.read(self._replies, 1 << 16)
                if not data:
                    raise AssertionError(f"chromium exited during {method}")
                self._buffer += data
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]

    def open(self, url: str) -> "Page":
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, target, session)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)
        os.close(self._replies)
        self.errors.close()


class Page:
    def __init__(self, browser: Chromium, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session

    def js(self, expression: str):
        """The JSON value of `expression` in the page (promises awaited)."""
        result = self.browser.call("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True},
            self.session)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def log(self) -> list[dict]:
        """The page's log: kind, text and data-* of every <li>, in order."""
        return self.js("""Array.from(document.querySelectorAll('#log li'), li =>
                          Object.assign({text: li.textContent}, li.dataset))""")

    def wait_log(self, predicate, what: str) -> list[dict]:
        def logged():
            entries = self.log()
            if predicate(entries):
                return entries
            if any(entry["kind"] == "error" for entry in entries):
                raise AssertionError(f"the page logged an error waiting for {what}: {entries}")
            return None
        return wait_until(logged, TIMEOUT, what, interval=0.05,
                          details=lambda: f"the log: {self.log()}")

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})


def kinds(entries: list[dict], kind: str) -> list[dict]:
    return [e for e in entries if e["kind"] == kind]


@pytest.fixture(scope="module")
def chromium():
    with tempfile.TemporaryDirectory(prefix="restmq-interact-") as profile:
        browser = Chromium(profile)
        try:
            yield browser
        finally:
            browser.close()


def test_static_interact_is_the_contrib_page(H):
    reply = get(H, "/static/interact.html")
    assert reply.status == 200
    assert reply.header("Content-Type") == "text/html; charset=UTF-8"
    assert reply.body == (ROOT / "contrib" / "interact.html").read_bytes()


@pytest.mark.parametrize("mode", ["sse", "ws"])
def test_interact_page_shows_messages_in_order(H, redis, chromium, mode):
    queue = f"interact-{mode}/<b>&"      # a slash and markup in the name
    page = chromium.open(f"{H}/static/interact.html?queue={quote(queue, safe='')}&mode={mode}")
    try:
        page.wait_log(lambda log: kinds(log, "open"), "the stream to open")
        assert page.js("document.getElementById('queue').value") == queue
        assert page.js("document.getElementById('mode').value") == mode

        values = ["first <i>not markup</i> & \"quoted\"", "zweite \u00e9 \u2603"]
        keys = []
        for value in values:
            reply = post(H, "/", {"queue": queue, "value": value})
            assert reply.status == 200, reply.body
            keys.append(reply.body.decode().strip())
        # the page's own form: fetch POST /q/<queue>
        own = "posted by the page <u>"
        page.js(f"document.getElementById('value').value = {json.dumps(own)};"
                "document.getElementById('post').click()")
        log = page.wait_log(lambda log: len(kinds(log, "message")) == 3 and kinds(log, "posted"),
                            "three messages and the page's post")
        posted = kinds(log, "posted")
        assert [(e["key"], e["value"]) for e in posted] == [(f"{queue}:3", own)]

        if mode == "ws":   # the echo button sends over the WebSocket: echoed, never queued
            page.js("document.getElementById('value').value = 'echo me';"
                    "document.getElementById('echo').click()")
            page.wait_log(lambda log: kinds(log, "echo"), "the echo")
            assert redis("LLEN", f"{queue}:queue") == 0

        assert delete(H, "/q/" + quote(queue, safe="")).status == 200
        log = page.wait_log(lambda log: kinds(log, "purged")
                            and (mode == "sse" or kinds(log, "closed")), "the purge")
        assert page.js("document.querySelectorAll('#log li *').length") == 0   # text only
        assert page.js("document.querySelectorAll('i, u, b').length") == 0
    finally:
        page.close()

    expected = [(k, v) for k, v in zip(keys + [f"{queue}:3"], values + [own])]
    messages = kinds(log, "message")
    assert [(e["key"], e["value"]) for e in messages] == expected
    assert [e["text"] for e in messages] == [f"{k}: {v}" for k, v in expected]
    assert log[0]["kind"] == "open"
    assert not kinds(log, "error"), log
    order = [e["kind"] for e in log if e["kind"] != "posted"]  # the POST reply races delivery
    if mode == "sse":
        assert order == ["open", "message", "message", "message", "purged"]
    else:
        assert order == ["open", "message", "message", "message", "echo", "purged", "closed"]
        assert kinds(log, "echo")[0]["text"] == "echo me"
        assert kinds(log, "closed")[0]["code"] == "1000"
