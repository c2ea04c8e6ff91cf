"""The dashboard `/static/index.html` in a real headless Chromium against live servers
(docs/http-api.md#dashboard): the values it shows match Redis, every action works, actions are
refused (error shown, Redis unchanged) without the ACL's credentials, the auth key field works,
hostile queue names stay text, and 1,000 queues load a page at a time.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages ended by NUL, read on its fd 3, written on its fd 4). A reader thread takes every
message: replies go to the waiting call, events to handlers; the `Fetch` domain answers the
Basic auth challenges the way a user answers the browser's dialog (credentials, or cancel).

The run leaves a screenshot of the dashboard at $RESTMQ_DASHBOARD_PNG (default: the test's
temporary directory); docs/dashboard.png is made with
`RESTMQ_DASHBOARD_PNG=docs/dashboard.png pytest tests/test_dashboard.py -k screenshot`.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.http_client import hold_open, post, request
from tests.util import numsub, snapshot, v2_json, wait_until

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0

# Valid queue names (no whitespace) that would run script or rename the page if they ever
# reached the DOM as markup.
HOSTILE = [
    "<img/src=x/onerror=document.title='pwned'>",
    "<script>document.title='pwned'</script>",
    "\"><svg/onload=document.title='pwned'>",
    "'\"&amp;&lt;i&gt;",
]
HOSTILE_VALUE = "</script><img src=x onerror=document.title='pwned'>&amp;\u2028"


class Chromium:
    def __init__(self, profile: str):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail("chromium is missing: `make test` installs it")
        theirs_in, self._commands = os.pipe()
        self._replies, theirs_out = os.pipe()

        def fds():  # in the child: copies above 9 first, so that 3 and 4 clobber nothing
            read_end = fcntl.fcntl(theirs_in, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(theirs_out, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(theirs_in)
        os.close(theirs_out)
        self._lock = threading.Condition()
        self._results: dict[int, dict] = {}
        self._next_id = 0
        self._closed = False
        self.handlers: dict[str, callable] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._replies, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            buffer += data
            while b"\0" in buffer:
                raw, _, buffer = buffer.partition(b"\0")
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._results[message["id"]] = message
                        self._lock.notify_all()
                elif message.get("method") in self.handlers:
                    self.handlers[message["method"]](message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        return ident

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = TIMEOUT) -> dict:
        ident = self.send(method, params, session)
        with self._lock:
            ok = self._lock.wait_for(lambda: ident in self._results or self._closed, timeout)
            assert ok and ident in self._results, f"no DevTools reply to {method}"
            reply = self._results.pop(ident)
        assert "error" not in reply, (method, reply)
        return reply["result"]

    def answer_auth(self, session: str, credentials: tuple[str, str] | None) -> list[str]:
        """From now on every Basic challenge to `session`'s page is answered with
        `credentials`, or cancelled (None) as a user closing the dialog would; returns the list
        the challenged URLs are appended to."""
        challenged: list[str] = []

        def paused(message):
            params = message["params"]
            self.send("Fetch.continueRequest", {"requestId": params["requestId"]},
                      message.get("sessionId"))

        def auth(message):
            params = message["params"]
            challenged.append(params["request"]["url"])
            response = ({"response": "CancelAuth"} if credentials is None else
                        {"response": "ProvideCredentials", "username": credentials[0],
                         "password": credentials[1]})
            self.send("Fetch.continueWithAuth", {"requestId": params["requestId"],
                                                 "authChallengeResponse": response},
                      message.get("sessionId"))

        self.handlers["Fetch.requestPaused"] = paused
        self.handlers["Fetch.authRequired"] = auth
        self.call("Fetch.enable", {"handleAuthRequests": True,
                                   "patterns": [{"urlPattern": "*"}]}, session)
        return challenged

    def open(self, url: str, width: int = 1400, height: int = 900,
             credentials: tuple[str, str] | None | bool = False) -> "Page":
        """A page at `url`; with `credentials` other than False, Basic challenges are
        answered (see answer_auth) before the page loads."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        if credentials is not False:
            page.challenged = self.answer_auth(session, credentials)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session)
        self.call("Page.navigate", {"url": url}, session)
        wait_until(lambda: page.js("document.readyState + ' ' + location.href")
                   == f"complete {url}", TIMEOUT, f"{url} to load", interval=0.05)
        return page

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except AssertionError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)
        self._reader.join(10)
        os.close(self._replies)


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session
        self.challenged: list[str] = []

    def js(self, expression: str):
        """The JSON value of `expression` in the page (a promise is awaited)."""
        reply = self.browser.call("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True}, self.session)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def until(self, expression: str, what: str, timeout: float = TIMEOUT):
        """Polls `expression` in the page until it is truthy, and returns its value; an
        expression that throws (the element is not there yet) counts as false."""
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        return wait_until(lambda: self.js(guarded), timeout, what, interval=0.1)

    def click(self, selector: str) -> None:
        assert self.js(f"(() => {{ const b = document.querySelector({json.dumps(selector)});"
                       f" if (!b || b.disabled || b.offsetParent === null) return false;"
                       f" b.click(); return true; }})()"), f"{selector} cannot be clicked"

    def row_click(self, name: str, label: str) -> None:
        assert self.js(f"""(() => {{
            const row = [...document.querySelectorAll("#queues tr")]
                .find(r => r.dataset.queue === {json.dumps(name)});
            if (!row) return false;
            row.querySelector("button." + {json.dumps(label)}).click();
            return true; }})()"""), f"no row for {name!r}"

    def settled(self) -> None:
        """Waits until no button of the page is disabled (every action answered)."""
        self.until("![...document.querySelectorAll('button')].some(b => b.disabled"
                   " && b.offsetParent !== null && !['prev', 'next'].includes(b.id))",
                   "the actions to finish")

    def rows(self) -> dict[str, dict[str, str]]:
        return self.js("""Object.fromEntries([...document.querySelectorAll("#queues tr")].map(
            r => [r.dataset.queue, Object.fromEntries([...r.cells].map(
                (c, i) => [["name", "pending", "status", "policy", "priority", "inflight",
                            "delayed", "dead", "added", "consumed", "consumers"][i] || "x" + i,
                           c.textContent]))]))""")

    def facts(self) -> dict[str, str]:
        return self.js("""(() => { const f = {}; let term = null;
            for (const n of document.getElementById("facts").children)
              if (n.tagName === "DT") term = n.textContent; else f[term] = n.textContent;
            return f; })()""")

    def error(self) -> str | None:
        return self.js("document.getElementById('error').hidden ? null :"
                       " document.getElementById('error').textContent")

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.browser.call(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
            self.session)["data"])
        path.write_bytes(data)
        return data


@pytest.fixture
def chromium():
    with tempfile.TemporaryDirectory(prefix="restmq-dash-") as profile:
        browser = Chromium(profile)
        yield browser
        browser.close()


def pending_of(redis, queue: str) -> int:
    return redis("LLEN", f"{queue}:queue") + redis("ZCARD", f"{queue}:priority")


def add(H, queue: str, value: str = "v", **extra: str) -> str:
    reply = post(H, f"/q/{quote(queue)}", {"value": value, **extra})
    assert reply.status == 200, reply.body
    return reply.body.decode().strip()


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def busy_queues(H) -> None:
    """jobs: 3 at priority 0 (a, e, f), 2 at 5 (b, c), 1 at 9 (d), one delayed; d and b
    claimed, d released on its last attempt (the dead letter in jobs.dead), b in flight;
    paused, round robin."""
    for value, priority in (("a", "0"), ("b", "5"), ("c", "5"), ("d", "9"), ("e", "0"),
                            ("f", "0")):
        add(H, "jobs", value, priority=priority)
    add(H, "jobs", "later", delay="600")
    v2_json(post(H, "/config/jobs", {"max_attempts": "1", "dead_letter": "jobs.dead",
                                     "lease": "600"}))
    claimed = v2_json(post(H, "/claim/jobs", {"limit": "2"}))["messages"]
    v2_json(post(H, "/release/jobs", {"receipt": claimed[0]["receipt"]}))  # dead-lettered
    assert post(H, "/control/jobs", {"status": "stop"}).status == 200
    assert post(H, "/p/jobs", {"policy": "roundrobin"}).status == 200
    add(H, "other", "x")


# -- values ---------------------------------------------------------------------------------

def test_values_shown_match_redis(H, redis, chromium):
    busy_queues(H)
    page = chromium.open(H + "/static/index.html")
    page.until("document.querySelector('#queues tr[data-queue=jobs] td:nth-child(6)')"
               ".textContent !== ''", "the /info/ of jobs")
    rows = page.rows()
    assert set(rows) == {"jobs", "jobs.dead", "other"}
    jobs = rows["jobs"]
    assert jobs["name"] == "jobs"
    assert int(jobs["pending"]) == pending_of(redis, "jobs") == 4
    assert (jobs["status"], jobs["policy"]) == ("stopped", "roundrobin")
    assert redis("GET", "queuestat::jobs") == "0"
    assert jobs["priority"] == "p5:1 p0:3"  # d (priority 9) and b (5) were claimed
    assert int(jobs["inflight"]) == redis("ZCARD", "jobs:inflight") == 1
    assert int(jobs["delayed"]) == redis("ZCARD", "jobs:delayed") == 1
    assert int(jobs["dead"]) == pending_of(redis, "jobs.dead") == 1
    assert rows["other"]["pending"] == "1" and rows["other"]["dead"] == ""
    assert page.js("document.getElementById('count').textContent") == "3"

    page.row_click("jobs", "details")
    page.until("document.getElementById('facts').textContent.includes('jobs.dead')",
               "the details of jobs")
    facts = page.facts()
    assert facts["dead letters"] == "1 in jobs.dead"
    assert facts["added (ever)"] == redis("GET", "jobs:UUID") == "7"
    assert facts["in flight"] == "1" and facts["delayed"] == "1"
    assert facts["live consumers"] == "0" and facts["long polls waiting"] == "0"

    # Rates need two samples: 20 adds between them make added/s positive.
    before = page.js("document.body.dataset.loaded")
    for i in range(20):
        add(H, "other", str(i))
    page.until(f"document.body.dataset.loaded > {json.dumps(before)} &&"
               " document.querySelector('#queues tr[data-queue=other] td:nth-child(9)')"
               ".textContent !== ''", "a second sample", timeout=30)
    page.until("parseFloat(document.querySelector('#queues tr[data-queue=other]"
               " td:nth-child(9)').textContent) > 0", "added/s of other", timeout=30)
    # The charts are drawn: the row's canvas has coloured pixels.
    assert page.js("""(() => { const c = document.querySelector(
        '#queues tr[data-queue=other] canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 200 && d[i] < 100) return true;
        return false; })()""")


def test_live_consumers_are_shown(H, redis, chromium):
    """A comet, two WebSockets, an SSE stream and a long poll on one queue: the row counts them,
    the details split them by kind; once they left, both show none."""
    add(H, "feed", "x")
    clients = [hold_open(H, kind, "feed") for kind in ("comet", "websocket", "websocket", "sse")]
    wait_until(lambda: redis("LLEN", "feed:queue") == 0, what="the live consumers to take x")
    clients.append(hold_open(H, "waiter", "feed"))  # nothing pending: it waits
    try:
        page = chromium.open(H + "/static/index.html")
        open_details(page, "feed")
        page.until("document.querySelector('#queues tr[data-queue=feed] td:nth-child(11)')"
                   ".textContent === '5'", "the row's count")
        cell = page.js("document.querySelector('#queues tr[data-queue=feed] td:nth-child(11)')"
                       ".title")
        assert cell.startswith("comet 1, WebSocket 2, SSE 1, long polls waiting 1"), cell
        facts = page.facts()
        assert facts["live consumers"] == "4: comet 1, WebSocket 2, SSE 1", facts
        assert facts["long polls waiting"] == "1"
        assert facts["processes listening"] == "1"
    finally:
        for sock in clients:
            sock.close()
    wait_until(lambda: numsub(redis, "feed") == 0, what="the server to let go of feed")
    # The next sample (every 10 s) shows none, in the row and in the details.
    wait_until(lambda: page.rows()["feed"]["consumers"] == "0"
               and page.facts()["processes listening"] == "0", TIMEOUT, "the next sample")
    facts = page.facts()
    assert (facts["live consumers"], facts["long polls waiting"]) == ("0", "0"), facts


def test_screenshot(H, redis, chromium, tmp_path):
    """A few queues at work for three samples, one of them in detail; the PNG goes to
    $RESTMQ_DASHBOARD_PNG (docs/dashboard.png is made so)."""
    busy_queues(H)
    for i in range(12):
        add(H, f"mail.outbound" if i % 3 else "thumbnails", str(i), priority=str(i % 4))
    # Live consumers: two comets take thumbnails' messages; jobs is paused, so its WebSocket
    # and SSE stream wait.
    clients = [hold_open(H, kind, queue) for kind, queue in (
        ("comet", "thumbnails"), ("comet", "thumbnails"), ("websocket", "jobs"), ("sse", "jobs"))]
    try:
        take_screenshot(H, chromium, tmp_path)
    finally:
        for sock in clients:
            sock.close()


def take_screenshot(H, chromium, tmp_path) -> None:
    page = chromium.open(H + "/static/index.html", width=1500, height=1000)
    open_details(page, "jobs")
    page.click("#peek-first")
    page.settled()
    for sample in range(3):
        before = page.js("document.body.dataset.loaded")
        for i in range(10 * (sample + 1)):
            add(H, "mail.outbound", f"m{sample}-{i}")
            add(H, "jobs", f"j{sample}-{i}", priority=str(i % 3))
        assert post(H, "/pop/mail.outbound", {"limit": str(5 * (3 - sample))}).status == 200
        page.until(f"document.body.dataset.loaded > {json.dumps(before)}", "a sample",
                   timeout=30)
    page.until("document.querySelector('#queues tr[data-queue=jobs] td:nth-child(9)')"
               ".textContent !== ''", "the rates")
    page.until("document.getElementById('facts').textContent.includes('WebSocket 1')",
               "the live consumers of jobs")
    shot = page.screenshot(Path(os.environ.get("RESTMQ_DASHBOARD_PNG",
                                               tmp_path / "dashboard.png")))
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10000


def test_rates_are_derived_from_successive_samples(H, chromium):
    """The rate arithmetic on its own (pure logic, with samples made up)."""
    page = chromium.open(H + "/static/index.html")
    rates = page.js("""(() => { const r = window.RestMQChart.rates;
        const a = {t: 0, pending: 10, inflight: 0, delayed: 0, added: 100};
        return [r(a, {t: 5000, pending: 15, inflight: 2, delayed: 1, added: 150}),
                r(a, {t: 5000, pending: 0, inflight: 0, delayed: 0, added: 100}),
                r(a, {t: 5000, pending: 0, inflight: 0, delayed: 0, added: 3})]; })()""")
    # 50 added, depth grew by 8: 42 left; purged 10 with no add; a counter that went back.
    assert rates == [{"t": 5000, "added": 10, "consumed": 8.4},
                     {"t": 5000, "added": 0, "consumed": 2},
                     {"t": 5000, "added": None, "consumed": None}]


# -- actions ----------------------------------------------------------------------------------

def open_details(page: Page, name: str) -> None:
    page.until(f"[...document.querySelectorAll('#queues tr')].some(r => r.dataset.queue"
               f" === {json.dumps(name)})", f"the row of {name!r}")
    page.row_click(name, "details")
    page.until("document.getElementById('config').rows.length > 0", "the configuration")
    page.until("document.getElementById('facts').textContent.includes('pending')",
               "the facts")


def test_every_action_works(H, redis, chromium):
    busy_queues(H)
    page = chromium.open(H + "/static/index.html")
    open_details(page, "jobs")

    page.click("#d-resume")
    page.settled()
    assert redis("GET", "queuestat::jobs") == "1" and page.error() is None
    page.click("#d-pause")
    page.settled()
    assert redis("GET", "queuestat::jobs") == "0"

    # peek: the next messages in consumption order, nothing consumed
    page.click("#peek-first")
    page.settled()
    items = page.js("[...document.querySelectorAll('#peek li')].map(li =>"
                    " [...li.children].map(c => c.textContent))")
    assert items == [["jobs:3", "p5", "c"], ["jobs:1", "p0", "a"], ["jobs:5", "p0", "e"],
                     ["jobs:6", "p0", "f"]]
    assert pending_of(redis, "jobs") == 4

    # configuration: shows what is stored; a change sets and unsets only what changed
    inputs = page.js("Object.fromEntries([...document.querySelectorAll('#config input')]"
                     ".map(i => [i.name, i.value]))")
    assert (inputs["lease"], inputs["max_attempts"], inputs["dead_letter"]) == (
        "600", "1", "jobs.dead")
    assert inputs["ttl"] == ""
    page.js("""(() => { const set = (n, v) => {
        document.querySelector('#config input[name=' + n + ']').value = v; };
        set('lease', '45'); set('ttl', '3600'); })()""")
    page.click("#config-save")
    page.settled()
    flat = redis("HGETALL", "jobs:config")
    assert dict(zip(flat[::2], flat[1::2])) == {"lease": "45", "ttl": "3600",
                                                "max_attempts": "1", "dead_letter": "jobs.dead"}
    page.js("document.querySelector('#config input[name=ttl]').value = ''")
    page.click("#config-save")
    page.settled()
    assert redis("HEXISTS", "jobs:config", "ttl") == 0 and page.error() is None

    # redrive the dead letters of jobs back to it
    page.until("!document.getElementById('redrive-dead').hidden", "the redrive button")
    page.click("#redrive-dead")
    page.settled()
    assert pending_of(redis, "jobs.dead") == 0
    assert redis("LRANGE", "jobs:queue", 0, 0) == ["jobs:4"]  # back under its own key
    assert "redrove 1 from jobs.dead" in page.js("document.getElementById('notice').textContent")

    # purge: the first click only asks
    page.click("#purge")
    assert page.js("document.getElementById('purge-question').textContent").startswith(
        "Purge jobs?")
    page.click("#purge-no")
    assert pending_of(redis, "jobs") == 5
    page.click("#purge")
    page.click("#purge-yes")
    page.settled()
    assert pending_of(redis, "jobs") == 0 and redis("ZCARD", "jobs:inflight") == 0

    # clear the configuration
    page.click("#config-clear")
    page.settled()
    assert redis("EXISTS", "jobs:config") == 0
    assert page.error() is None


ACL = """[rest:producer]
username = admin
password = s3cret

[rest:admin]
username = admin
password = s3cret
"""


@pytest.fixture(scope="module")
def acl_server(redis_proc, tmp_path_factory):
    path = tmp_path_factory.mktemp("acl") / "acl.conf"
    path.write_text(ACL)
    proc = ServerProcess(redis_proc.port, "--acl", str(path)).start()
    yield proc
    proc.stop()


ACTIONS = [("#d-resume", None), ("#d-pause", None), ("#purge", "#purge-yes"),
           ("#redrive-dead", None), ("#redrive-self", None)]


def test_actions_are_refused_without_the_acl_credentials(acl_server, redis, chromium):
    """Reading is open, writing takes the ACL's credentials: the user cancels the browser's
    dialog, so every action shows the refusal and Redis is unchanged; with them it works."""
    H = acl_server.url
    busy_queues_with(H, ("admin", "s3cret"))
    page = chromium.open(H + "/static/index.html", credentials=None)
    open_details(page, "jobs")
    page.until("!document.getElementById('redrive-dead').hidden", "the redrive button")
    before = snapshot(redis)
    for first, second in ACTIONS:
        page.js("document.getElementById('error').hidden = true")
        page.click(first)
        if second:
            page.click(second)
        page.settled()
        error = page.until("document.getElementById('error').hidden ? null :"
                           " document.getElementById('error').textContent", f"{first} refused")
        assert "refused: HTTP 401 unauthorized" in error, error
    page.js("document.querySelector('#config input[name=lease]').value = '7'")
    page.click("#config-save")
    page.settled()
    assert "changing the configuration of jobs refused: HTTP 401" in page.error()
    page.click("#config-clear")
    page.settled()
    assert "clearing the configuration of jobs refused: HTTP 401" in page.error()
    assert page.challenged  # the browser was asked, and the user said no
    assert snapshot(redis) == before

    admin = chromium.open(H + "/static/index.html", credentials=("admin", "s3cret"))
    open_details(admin, "jobs")
    admin.click("#d-resume")
    admin.settled()
    assert redis("GET", "queuestat::jobs") == "1" and admin.error() is None
    admin.click("#purge")
    admin.click("#purge-yes")
    admin.settled()
    assert pending_of(redis, "jobs") == 0 and admin.error() is None


def busy_queues_with(H, credentials):
    auth = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
    for value in ("a", "b"):
        assert request(H, "POST", "/q/jobs", form={"value": value},
                       headers={"Authorization": auth}).status == 200
    for path, form in (("/config/jobs", {"max_attempts": "1", "dead_letter": "jobs.dead"}),
                       ("/control/jobs", {"status": "stop"})):
        assert request(H, "POST", path, form=form, headers={"Authorization": auth}).status == 200
    claimed = v2_json(request(H, "POST", "/claim/jobs"))["messages"]
    v2_json(request(H, "POST", "/release/jobs", form={"receipt": claimed[0]["receipt"]}))


LOCKED = """[rest:consumer]
hosts_deny = all
[rest:producer]
hosts_deny = all
[rest:admin]
hosts_deny = all
"""


@pytest.fixture(scope="module")
def locked_server(redis_proc, tmp_path_factory):
    path = tmp_path_factory.mktemp("locked") / "acl.conf"
    path.write_text(LOCKED)
    proc = ServerProcess(redis_proc.port, "--acl", str(path)).start()
    yield proc
    proc.stop()


def test_the_auth_key_field(locked_server, redis, chromium):
    """The ACL refuses everyone; a key entered in the page is sent with every request."""
    H = locked_server.url
    redis("SET", "AUTHKEY:all-queues", json.dumps({"queues": [], "privs": ["create"]}))
    redis("SET", "AUTHKEY:only-jobs", json.dumps({"queues": ["jobs"], "privs": []}))
    for value in ("a", "b"):
        assert request(H, "POST", "/q/jobs", form={"value": value},
                       headers={"X-Auth-Key": "all-queues"}).status == 200
    page = chromium.open(H + "/static/index.html")
    assert "reading /stats/ refused: HTTP 401 unauthorized" in page.until(
        "document.getElementById('error').textContent", "the refusal")
    assert page.rows() == {}

    page.js("document.getElementById('authkey').value = 'only-jobs'")
    page.click("#key-form button[type=submit]")
    page.until("document.getElementById('error').textContent.includes('401')"
               " && document.getElementById('key-state').textContent.includes('carry')",
               "the key in use")
    assert page.rows() == {}  # /stats/ addresses every queue: this key does not grant it

    page.js("document.getElementById('authkey').value = 'all-queues'")
    page.click("#key-form button[type=submit]")
    page.until("document.querySelector('#queues tr[data-queue=jobs] td:nth-child(6)')"
               "?.textContent === '0'", "jobs with its /info/")
    assert page.error() is None
    open_details(page, "jobs")
    page.click("#d-pause")
    page.settled()
    assert redis("GET", "queuestat::jobs") == "0" and page.error() is None


# -- hostile names ------------------------------------------------------------------------------

def test_hostile_names_render_as_text(H, redis, chromium):
    for name in HOSTILE:
        add(H, name, HOSTILE_VALUE)
    v2_json(post(H, f"/config/{quote(HOSTILE[0])}", {"max_attempts": "2",
                                                     "dead_letter": HOSTILE[1]}))
    page = chromium.open(H + "/static/index.html")
    page.until(f"document.querySelectorAll('#queues tr').length === {len(HOSTILE)}", "the rows")
    rows = page.rows()
    assert set(rows) == set(HOSTILE)
    assert all(rows[n]["name"] == n for n in HOSTILE)
    open_details(page, HOSTILE[0])
    page.until("document.getElementById('facts').textContent.includes('in ')", "the facts")
    assert page.facts()["dead letters"] == f"1 in {HOSTILE[1]}"  # its own message
    assert page.js("document.getElementById('detail-name').textContent") == HOSTILE[0]
    page.click("#peek-first")
    page.settled()
    assert page.js("document.querySelector('#peek .value').textContent") == HOSTILE_VALUE
    assert page.js("document.querySelector('#config input[name=dead_letter]').value") == \
        HOSTILE[1]
    # nothing ran, nothing was parsed as markup
    assert page.js("document.title") == "RestMQ dashboard"
    counts = page.js("['img', 'svg', 'script', 'i'].map(t => document.getElementsByTagName(t)"
                     ".length)")
    assert counts == [0, 0, 2, 0]
    assert page.js("[...document.querySelectorAll('*')].filter(e => [...e.attributes]"
                   ".some(a => a.name.startsWith('on'))).length") == 0


# -- 1,000 queues ----------------------------------------------------------------------------------

def test_a_thousand_queues_load_a_page_at_a_time(H, redis, chromium):
    names = [f"q-{i:04d}" for i in range(1000)]
    for name in names:
        add(H, name)
    page = chromium.open(H + "/static/index.html")
    page.until("document.getElementById('pageinfo').textContent === 'queues 1-25 of 1000'",
               "the first page")
    assert list(page.rows()) == names[:25]
    # Only the page on screen is read from /info/.
    page.until("document.querySelector('#queues tr[data-queue=\"q-0024\"] td:nth-child(6)')"
               ".textContent === '0'", "the page's /info/")
    read = page.js("[...new Set(performance.getEntriesByType('resource')"
                   ".map(e => new URL(e.name).pathname)"
                   ".filter(p => p.startsWith('/info/')))]")
    assert sorted(read) == [f"/info/{n}" for n in names[:25]]

    page.click("#next")
    page.until("document.getElementById('pageinfo').textContent === 'queues 26-50 of 1000'",
               "the second page")
    assert list(page.rows()) == names[25:50]
    page.js("""(() => { const f = document.getElementById('filter'); f.value = 'q-0999';
        f.dispatchEvent(new Event('input')); })()""")
    page.until("document.getElementById('pageinfo').textContent.startsWith('queues 1-1 of 1 ')",
               "the filter")
    assert list(page.rows()) == ["q-0999"]
    page.until("document.querySelector('#queues tr[data-queue=\"q-0999\"] td:nth-child(6)')"
               ".textContent === '0'", "the /info/ of the match")
    page.row_click("q-0999", "pause")
    page.settled()
    assert redis("GET", "queuestat::q-0999") == "0" and page.error() is None
