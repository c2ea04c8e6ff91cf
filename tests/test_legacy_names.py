"""Queues the original RestMQ created under names we would refuse today (`my queue`, from
`POST /` with `queue=my queue`): once such a name is in QUEUESET every route, the JSON protocol,
XML-RPC, the live consumers and `restmq-engine` address it; a name never registered keeps
today's rules, and names that would touch RestMQ's own keys stay refused even when registered.

Also the original dashboard's buttons, which POST `/control/<q>?callback=?` with a literal `?`.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.comet import CometClient
from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import delete, get, post, read_head, request
from tests.resp import snapshot
from tests.util import wait_until

NAME = "my queue"
PATH = quote(NAME, safe="")  # my%20queue
ENGINE = str(Path(sys.executable).with_name("restmq-engine"))
HTML = "text/html; charset=UTF-8"


def original_queue(redis, name: str, values: list[str]) -> None:
    """The keys the original RestMQ's add writes (INCR, SET, LPUSH, SADD, status 1)."""
    for value in values:
        n = redis("INCR", f"{name}:UUID")
        redis("SET", f"{name}:{n}", value)
        redis("LPUSH", f"{name}:queue", f"{name}:{n}")
        redis("SADD", "QUEUESET", name)
        redis("SETNX", f"queuestat::{name}", "1")


def numsub(redis, name: str) -> int:
    return redis("PUBSUB", "NUMSUB", f"{name}:PUBSUB")[1]


def error_of(reply) -> tuple[int, dict]:
    return reply.status, json.loads(reply.body)


# -- 1. every route addresses a registered legacy name --------------------------------------


def test_rest_reads_and_purges_a_queue_the_original_created(H, redis):
    original_queue(redis, NAME, ["one", "two", "three", "four"])
    reply = get(H, f"/q/{PATH}")
    assert (reply.status, json.loads(reply.body)) == (
        200, {"key": "my queue:1", "value": "one", "count": 0}), reply.body
    # `GET /?queue=`: a form value, where `+` is a space
    assert json.loads(get(H, "/?queue=my+queue").body)["value"] == "two"
    assert get(H, f"/?queue={PATH}&callback=cb").body == (
        b'cb({"key": "my queue:3", "value": "three", "count": 0});\r\n')
    reply = delete(H, f"/q/{PATH}")
    assert (reply.status, reply.body) == (200, b'{"queue": "my queue", "status": 1}\r\n')
    assert redis("EXISTS", "my queue:queue") == 0
    assert get(H, f"/q/{PATH}").status == 204


def test_adds_to_a_registered_legacy_queue_are_accepted(H, redis):
    """The original's producers keep writing to it: that creates no new name."""
    original_queue(redis, NAME, ["one"])
    reply = post(H, f"/q/{PATH}", form={"value": "two"})
    assert (reply.status, reply.body) == (200, b"my queue:2\r\n")
    reply = post(H, "/", form={"queue": NAME, "value": "three", "callback": "cb"})
    assert (reply.status, reply.body) == (200, b'cb("my queue:3");\r\n')
    assert redis("LRANGE", "my queue:queue", 0, -1) == ["my queue:3", "my queue:2", "my queue:1"]
    assert redis("SMEMBERS", "QUEUESET") == [NAME]


def test_json_protocol_commands_on_a_registered_legacy_name(H, redis):
    original_queue(redis, NAME, ["one"])

    def run(**command):
        reply = post(H, "/queue", form={"body": json.dumps(command)})
        assert reply.status == 200, reply.body
        return json.loads(reply.body)

    assert run(cmd="get", queue=NAME) == {"queue": NAME, "value": "one", "key": "my queue:1",
                                          "count": 1}
    assert run(cmd="add", queue=NAME, value="two") == {"queue": NAME, "value": "two",
                                                       "key": "my queue:2"}
    assert run(cmd="take", queue=NAME) == {"queue": NAME, "value": "one", "key": "my queue:1"}
    assert run(cmd="del", queue=NAME, key="my queue:2") == {"queue": NAME, "deleted": True,
                                                            "key": "my queue:2"}
    # the field order stays: a registered name passes, then the next field is checked
    assert run(cmd="add", queue=NAME) == {"error": "missing argument: value"}
    assert run(cmd="del", queue=NAME, key="my:1") == {"error": "invalid argument: key"}
    assert run(cmd="add", queue="not registered") == {"error": "invalid queue name"}


def test_xmlrpc_methods_on_a_registered_legacy_name(H, redis):
    original_queue(redis, NAME, ["one", "two", "three"])
    rpc = xmlrpc.client.ServerProxy(H + "/xmlrpc")
    assert rpc.len(NAME) == 3
    assert rpc.get(NAME) == "one"
    assert rpc.take(NAME) == "two"
    assert rpc.set(NAME, "four") == "my queue:4"
    assert rpc.policy_set(NAME, "roundrobin") == "OK"
    assert rpc.policy_get(NAME) == "roundrobin"
    assert rpc.status_set(NAME, "stop") == "stop"
    assert rpc.status_get(NAME) == "stop"
    assert redis("GET", "queuestat::my queue") == "0"
    with pytest.raises(xmlrpc.client.Fault) as info:
        rpc.set("not registered", "v")
    assert (info.value.faultCode, info.value.faultString) == (400, "invalid queue name")
    with pytest.raises(xmlrpc.client.Fault) as info:  # the name is checked before the policy
        rpc.policy_set("not registered", "bogus")
    assert info.value.faultString == "invalid queue name"


def test_policy_control_stats_and_jobs_on_a_registered_legacy_name(H, redis):
    original_queue(redis, NAME, ["one", "two"])
    reply = post(H, f"/p/{PATH}", form={"policy": "roundrobin"})
    assert (reply.status, reply.body) == (200, b"OK\r\n")
    assert json.loads(get(H, f"/p/{PATH}").body) == {"queue": NAME, "value": "roundrobin"}
    reply = post(H, f"/control/{PATH}", form={"status": "stop"})
    assert json.loads(reply.body) == {"stat": {"queue": NAME, "status": 0}}
    assert json.loads(get(H, f"/control/{PATH}").body)["status"] == {"queue": NAME, "status": 0}
    assert json.loads(get(H, f"/stats/{PATH}").body)["len"] == 2
    reply = get(H, f"/j/{PATH}")
    assert reply.status == 200, reply.body
    assert b"<li>my queue:2</li>\n<li>my queue:1</li>" in reply.body


def test_links_of_the_queue_list_page_work_when_followed(H, redis):
    for name in (NAME, "tab\there", "x" * 300, "plain"):
        original_queue(redis, name, ["v"])
    page = get(H, "/q/").body.decode()
    links = re.findall(r'href="([^"]+)"', page)
    assert len(links) == 4, page
    for link in links:
        reply = get(H, link)
        assert reply.status == 200, (link, reply.body)
        assert json.loads(reply.body)["value"] == "v"


def test_reserved_names_stay_refused_even_when_registered(H, redis):
    """Addressing them would read or write RestMQ's own keys (an auth record, a status)."""
    names = ["AUTHKEY", "AUTHKEY:k", "QUEUESET", "queuestat:x", "a b:queue", "x:UUID",
             "x:queuepolicy", "x:PUBSUB", "x:1:lock", "x:1:refcount"]
    redis("SADD", "QUEUESET", *names)
    redis("SET", "AUTHKEY:k", '{"queues": ["q"], "privs": ["get"]}')
    before = snapshot(redis)
    for name in names:
        path = quote(name, safe="")
        for method, route, form in (("GET", f"/q/{path}", None), ("DELETE", f"/q/{path}", None),
                                    ("POST", f"/q/{path}", {"value": "v"}),
                                    ("POST", f"/control/{path}", {"status": "stop"}),
                                    ("POST", "/", {"queue": name, "value": "v"})):
            reply = request(H, method, route, form=form)
            assert error_of(reply) == (400, {"error": "invalid queue name"}), (method, route)
    assert snapshot(redis) == before


def test_unregistered_names_keep_todays_rules_and_nothing_is_written(H, redis):
    original_queue(redis, NAME, ["v"])
    before = snapshot(redis)
    for name in ("a b", "my  queue", "tab\there", "x" * 257):
        path = quote(name, safe="")
        for method, route, form in (("POST", f"/q/{path}", {"value": "v"}),
                                    ("POST", "/", {"queue": name, "value": "v"}),
                                    ("GET", f"/q/{path}", None), ("DELETE", f"/q/{path}", None),
                                    ("POST", f"/p/{path}", {"policy": "roundrobin"}),
                                    ("POST", f"/control/{path}", {"status": "stop"}),
                                    ("GET", f"/stats/{path}", None), ("GET", f"/j/{path}", None)):
            reply = request(H, method, route, form=form)
            assert error_of(reply) == (400, {"error": "invalid queue name"}), (method, route)
        reply = post(H, "/queue", form={"body": json.dumps({"cmd": "add", "queue": name,
                                                            "value": "v"})})
        assert json.loads(reply.body) == {"error": "invalid queue name"}
    assert snapshot(redis) == before


def test_the_lookup_comes_after_the_acl_file_and_before_the_auth_key(H, redis, redis_proc,
                                                                     tmp_path):
    original_queue(redis, NAME, ["one", "two"])
    redis("SET", "AUTHKEY:mine", json.dumps({"queues": [NAME], "privs": []}))
    redis("SET", "AUTHKEY:other", json.dumps({"queues": ["other"], "privs": []}))
    assert get(H, f"/q/{PATH}", headers={"X-Auth-Key": "mine"}).status == 200
    reply = get(H, f"/q/{PATH}", headers={"X-Auth-Key": "other"})
    assert error_of(reply) == (401, {"error": "unauthorized"})
    # an unregistered name is a bad request whoever asks (the name is checked first)
    reply = get(H, "/q/a%20b", headers={"X-Auth-Key": "other"})
    assert error_of(reply) == (400, {"error": "invalid queue name"})

    acl = tmp_path / "acl.conf"
    acl.write_text("[rest:consumer]\nhosts_allow = 10.255.255.\n")
    server = ServerProcess(redis_proc.port, "--acl", str(acl)).start()
    try:
        redis("CONFIG", "RESETSTAT")
        reply = get(server.url, f"/q/{PATH}")
        assert error_of(reply) == (401, {"error": "unauthorized"})
        assert "cmdstat_sismember" not in redis("INFO", "commandstats")
    finally:
        server.stop()
    assert redis("LLEN", "my queue:queue") == 1


# -- live consumers --------------------------------------------------------------------------


def assert_delivery_never_paused(server) -> None:
    """Delivery knows a queue again by its pub/sub channel, as plain text: a pop refused
    for that name pauses it (the next sweep, a second later, would still deliver)."""
    assert "live delivery of my queue paused" not in server.log(), server.log()


def test_comet_streams_a_registered_legacy_queue(H, redis, server):
    original_queue(redis, NAME, ["backlog"])
    comet = CometClient(H, PATH)
    try:
        assert comet.status == 200
        assert comet.messages(1) == [{"key": "my queue:1", "value": "backlog"}]
        post(H, f"/q/{PATH}", form={"value": "live"})  # wakes delivery through <q>:PUBSUB
        assert comet.messages(2)[1] == {"key": "my queue:2", "value": "live"}
        redis("SET", "my queue:queuepolicy", "2")  # roundrobin pops for this process alone
        post(H, f"/q/{PATH}", form={"value": "rr"})
        assert comet.messages(3)[2] == {"key": "my queue:3", "value": "rr"}
        assert delete(H, f"/q/{PATH}").status == 200
        comet.wait_end()
        assert comet.body.endswith(b"null\r\n")
        assert_delivery_never_paused(server)
    finally:
        comet.close()


def open_raw(base: str, path: str, headers: dict[str, str]) -> tuple[socket.socket, int, bytes]:
    host, port = base.split("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n{lines}\r\n".encode())
    status, _, rest = read_head(sock)
    return sock, status, rest


def read_until(sock: socket.socket, data: bytes, marker: bytes) -> bytes:
    deadline = time.monotonic() + 10
    while marker not in data:
        assert time.monotonic() < deadline, data
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_websocket_streams_a_registered_legacy_queue(H, redis, server):
    original_queue(redis, NAME, ["backlog"])
    key = base64.b64encode(os.urandom(16)).decode()
    sock, status, data = open_raw(H, f"/ws/{PATH}", {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": key})
    try:
        assert status == 101, data
        data = read_until(sock, data, b'"backlog"}')
        wait_until(lambda: numsub(redis, NAME) >= 1, what="the subscription to my queue:PUBSUB")
        post(H, f"/q/{PATH}", form={"value": "live"})
        data = read_until(sock, data, b'"live"}')
        assert b'{"key": "my queue:2", "value": "live"}' in data
        assert_delivery_never_paused(server)
    finally:
        sock.close()


def test_sse_streams_a_registered_legacy_queue(H, redis, server):
    original_queue(redis, NAME, ["backlog"])
    sock, status, data = open_raw(H, f"/sse/{PATH}", {})
    try:
        assert status == 200, data
        data = read_until(sock, data, b'"backlog"}')
        wait_until(lambda: numsub(redis, NAME) >= 1, what="the subscription to my queue:PUBSUB")
        post(H, f"/q/{PATH}", form={"value": "live"})
        data = read_until(sock, data, b'"live"}')
        assert b'id: my queue:2\ndata: {"key": "my queue:2", "value": "live"}' in data
        assert_delivery_never_paused(server)
    finally:
        sock.close()


# -- Redis trouble during the membership check ------------------------------------------------


def test_membership_check_fails_with_503_when_redis_is_gone():
    redis_proc = RedisProcess().start()
    server = ServerProcess(redis_proc.port).start()
    try:
        client = redis_proc.client()
        original_queue(client, NAME, ["v"])
        client.close()
        assert get(server.url, f"/q/{PATH}").status == 200  # the pool is up
        redis_proc.stop()
        for method, path, form in (("GET", "/q/a%20b", None),
                                   ("POST", "/q/a%20b", {"value": "v"}),
                                   ("POST", "/control/a%20b", {"status": "stop"})):
            started = time.monotonic()
            reply = request(server.url, method, path, form=form)
            assert error_of(reply) == (503, {"error": "redis unavailable"}), (method, path)
            assert time.monotonic() - started < 8
    finally:
        server.stop()
        redis_proc.stop()


# -- restmq-engine ---------------------------------------------------------------------------


def engine(redis, *args):
    port = redis.sock.getpeername()[1]
    out = subprocess.run([ENGINE, "--redis-port", str(port), "--queue", NAME, *args],
                         capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout.splitlines(), out.stderr


def test_engine_works_on_a_registered_legacy_queue(redis):
    original_queue(redis, NAME, ["one", "two", "three"])
    assert engine(redis, "-t")[1] == ["my queue:1: one", "my queue:2: two",
                                      "my queue:3: three"]
    assert engine(redis, "-g")[1] == ["key: my queue:1", "value: one", "count: 1",
                                      "policy: broadcast"]
    assert engine(redis, "-c")[1] == ["key: my queue:1", "value: one", "policy: broadcast"]
    assert engine(redis, "-k")[1] == ["key: my queue:2", "value: two", "policy: broadcast"]
    assert engine(redis, "-p", "--value", "four") == (0, ["key: my queue:4"], "")
    assert engine(redis, "-j", "-q")[1] == ["policy: broadcast", "resp: OK"]
    assert engine(redis, "-i")[1] == ["my queue:4", "my queue:3"]


def test_engine_refuses_an_unregistered_invalid_name_and_writes_nothing(redis):
    before = snapshot(redis)
    code, out, err = engine(redis, "-p")
    assert (code, out) == (2, [])
    assert "invalid queue name: 'my queue'" in err
    redis("SADD", "QUEUESET", "AUTHKEY")
    code, out, err = engine(redis, "--queue", "AUTHKEY", "-p")
    assert (code, out) == (2, []) and "invalid queue name: 'AUTHKEY'" in err
    assert redis("KEYS", "*") == ["QUEUESET"] and before == {}


# -- 2. callbacks on POST and DELETE -------------------------------------------------------------


def test_the_original_dashboard_pauses_and_starts_queues(H, redis):
    """Its buttons send `POST /control/<q>?callback=?` (jQuery's $.post keeps the `?`)."""
    original_queue(redis, "plain", ["v"])
    original_queue(redis, NAME, ["v"])
    for name in ("plain", NAME):
        for status, flag in (("stop", 0), ("start", 1)):
            reply = post(H, f"/control/{quote(name, safe='')}?callback=?",
                         form={"status": status})
            assert (reply.status, reply.header("Content-Type")) == (200, HTML), reply.body
            assert reply.body == (json.dumps({"stat": {"queue": name, "status": flag}})
                                  + "\r\n").encode()
            assert redis("GET", f"queuestat::{name}") == str(flag)


@pytest.mark.parametrize("callback", ["?", "1x", "alert(1)//", "a b"])
def test_an_invalid_callback_on_post_and_delete_is_ignored(H, redis, callback):
    q = quote(callback, safe="")
    for method, path, form, expected in (
            ("POST", f"/q/t?callback={q}", {"value": "v"}, b"t:1\r\n"),
            ("POST", "/", {"queue": "t", "value": "v", "callback": callback}, b"t:2\r\n"),
            ("POST", f"/p/t?callback={q}", {"policy": "roundrobin"}, b"OK\r\n"),
            ("POST", f"/p/t?callback={q}", {"policy": "bogus"}, b"null\r\n"),
            ("DELETE", f"/q/t?callback={q}", None, b'{"queue": "t", "status": 1}\r\n')):
        reply = request(H, method, path, form=form)
        assert (reply.status, reply.body) == (200, expected), (method, path, form)
        assert reply.header("Content-Type") == HTML
        assert reply.header("X-Content-Type-Options") == "nosniff"
    # a GET can be a <script>: there an invalid callback is still refused
    reply = get(H, f"/q/t?callback={q}")
    assert error_of(reply) == (400, {"error": "invalid argument: callback"})


# -- the dashboard in Chromium ------------------------------------------------------------------


class Chromium:
    """Headless Chromium driven over DevTools on a pipe (`--remote-debugging-pipe`: JSON
    messages ended by NUL, read on its fd 3, written on its fd 4)."""

    def __init__(self, profile: str):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail("chromium is missing: `make test` installs it")
        theirs_in, commands = os.pipe()
        self._replies, theirs_out = os.pipe()

        def fds():  # in the child: copies above 9 first, so that 3 and 4 clobber nothing
            read_end = fcntl.fcntl(theirs_in, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(theirs_out, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(theirs_in)
        os.close(theirs_out)
        self._commands = commands
        self._buffer = b""
        self._last_id = 0

    def send(self, method: str, session: str | None = None, timeout: float = 30.0, **params):
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                assert left > 0 and select.select([self._replies], [], [], left)[0], method
                data = os.read(self._replies, 65536)
                assert data, f"chromium exited during {method}"
                self._buffer += data
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._last_id:
                assert "error" not in reply, (method, reply)
                return reply["result"]

    def evaluate(self, session: str, expression: str):
        """The value of `expression` in the page, awaited when it is a promise."""
        reply = self.send("Runtime.evaluate", session, expression=expression,
                          awaitPromise=True, returnByValue=True)
        return reply["result"].get("value")

    def open(self, url: str) -> str:
        """A new page at `url`, loaded; returns its DevTools session."""
        target = self.send("Target.createTarget", url=url)["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        wait_until(lambda: self.evaluate(session, "location.href + ' ' + document.readyState")
                   == f"{url} complete", 30, f"{url} to load", interval=0.05)
        return session

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except AssertionError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)
        os.close(self._replies)


# Clicks a button in the dashboard row of a queue, waits until the dashboard re-enables the
# row's buttons (its POST to /control/ finished), and returns its error line or "ok".
CLICK = """new Promise((resolve) => {
  const name = %(name)s, label = %(label)s;
  let button = null;
  const started = Date.now();
  const poll = setInterval(() => {
    if (Date.now() - started > 15000) { clearInterval(poll); resolve("timed out"); return; }
    if (button === null) {
      const row = [...document.querySelectorAll("tr")].find(r => r.dataset.queue === name);
      if (!row) return;
      button = row.querySelector("button." + label);
      button.click();
      return;
    }
    if (button.disabled) return;
    clearInterval(poll);
    const error = document.getElementById("error");
    resolve(error.hidden ? "ok" : error.textContent);
  }, 50);
})"""


def test_the_dashboard_pauses_and_starts_a_queue_whose_name_has_a_space(H, redis):
    original_queue(redis, NAME, ["v"])
    with tempfile.TemporaryDirectory(prefix="restmq-names-") as profile:
        browser = Chromium(profile)
        try:
            page = browser.open(H + "/static/index.html")
            for label, stored in (("pause", "0"), ("start", "1")):
                outcome = browser.evaluate(page, CLICK % {"name": json.dumps(NAME),
                                                          "label": json.dumps(label)})
                assert outcome == "ok", outcome
                assert redis("GET", "queuestat::my queue") == stored
        finally:
            browser.close()
