"""contrib/nginx.conf with Debian's real nginx in front of a RestMQ server started with
--trusted-proxy: comet, Server-Sent Events and WebSocket streams go through unbuffered, names
with %2F pass unchanged, and the client's own address reaches the server's ACL as X-Real-IP.

nginx runs in the foreground (`daemon off`) with a copy of the file whose two ports are
rewritten to free ones, every path of the file under its own prefix (a temporary directory),
and is stopped by its PID."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, free_port
from tests.test_sse import RawStream
from tests.test_websocket import OP_CLOSE, OP_TEXT, Raw, frame, numsub, wait_until

CONF = Path(__file__).resolve().parent.parent / "contrib" / "nginx.conf"
# producers only from 127.0.0.1; nginx itself connects to the server from 127.0.0.1
ACL = "[rest:producer]\nhosts_allow = 127.0.0.1\nhosts_deny = all\n"
ELSEWHERE = "127.0.0.5"   # another loopback address, as a client that is not this host
PROMPT = 3.0              # a delivery through the proxy must not wait for more data


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if found is None:
        pytest.fail("nginx is missing: `make test` installs Debian's nginx-light")
    return found


@pytest.fixture(scope="module")
def proxy(redis_proc):
    """(nginx URL, RestMQ server) with the contrib configuration in front of the server."""
    tmp = tempfile.mkdtemp(prefix="restmq-nginx-")
    os.chmod(tmp, 0o755)   # nginx's workers run as `nobody` when the tests run as root
    Path(tmp, "acl.conf").write_text(ACL)
    server = ServerProcess(redis_proc.port, "--trusted-proxy", "--acl", f"{tmp}/acl.conf")
    server.start()
    port = free_port()
    text = CONF.read_text()
    for old in ("listen 8080;", "server 127.0.0.1:8888;"):
        assert text.count(old) == 1, f"contrib/nginx.conf no longer has exactly one {old!r}"
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    text = text.replace("server 127.0.0.1:8888;", f"server 127.0.0.1:{server.port};")
    Path(tmp, "nginx.conf").write_text(text)
    stderr = open(Path(tmp, "nginx.stderr"), "wb")
    nginx = subprocess.Popen([nginx_binary(), "-p", f"{tmp}/", "-e", "stderr",
                              "-c", f"{tmp}/nginx.conf", "-g", "daemon off;"],
                             stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
    try:
        def listening():
            if nginx.poll() is not None:
                raise RuntimeError("nginx exited: "
                                   + Path(tmp, "nginx.stderr").read_text(errors="replace"))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, 15, "nginx to listen", interval=0.05,
                   details=lambda: Path(tmp, "nginx.stderr").read_text(errors="replace"))
        yield f"http://127.0.0.1:{port}", server
    finally:
        if nginx.poll() is None:
            nginx.send_signal(signal.SIGTERM)   # the master stops its workers
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        stderr.close()
        server.stop()
        errors = Path(tmp, "error.log").read_text(errors="replace") \
            if Path(tmp, "error.log").exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
    assert "[emerg]" not in errors and "[crit]" not in errors, errors


@pytest.fixture
def N(proxy, redis):
    """nginx's URL, with an empty Redis."""
    return proxy[0]


def request(url: str, method: str, path: str, body: str | None = None, source: str = "127.0.0.1",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    headers = dict(headers or {})
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def add(url: str, queue: str, value: str) -> str:
    status, body = request(url, "POST", f"/q/{queue}", f"value={value}")
    assert status == 200, body
    return body.decode().strip()


def test_comet_through_nginx(N, redis):
    stream = RawStream(N, "/c/jobs")
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/plain"
        assert stream.headers["transfer-encoding"] == "chunked"
        wait_until(lambda: numsub(redis, "jobs") == 1, what="the consumer to register")
        for n, value in enumerate(["one", "two"], 1):
            assert add(N, "jobs", value) == f"jobs:{n}"
            # each line arrives on its own, not when a buffer fills or the stream ends
            stream.wait(lambda s: s.body.count(b"\r\n") == n, PROMPT, f"line {n}")
            line = stream.body.split(b"\r\n")[n - 1]
            assert json.loads(line) == {"key": f"jobs:{n}", "value": value}
        assert request(N, "DELETE", "/q/jobs")[0] == 200
        stream.wait_end()
        assert stream.body.split(b"\r\n")[2:] == [b"null", b""]
    finally:
        stream.close()


def test_sse_through_nginx(N, redis):
    stream = RawStream(N, "/sse/news")
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        wait_until(lambda: numsub(redis, "news") == 1, what="the consumer to register")
        assert add(N, "news", "hello") == "news:1"
        stream.wait(lambda s: s.body.endswith(b"\n\n"), PROMPT, "the event")
        body = stream.body
        id_line, data_line, blank, end = body.split(b"\n")
        assert (id_line, blank, end) == (b"id: news:1", b"", b"")
        assert data_line.startswith(b"data: ")
        assert json.loads(data_line[6:]) == {"key": "news:1", "value": "hello"}
        assert request(N, "DELETE", "/q/news")[0] == 200
        stream.wait_end()
        assert stream.body.endswith(b"\n\ndata: null\n\n")
    finally:
        stream.close()


def test_websocket_echo_and_delivery_through_nginx(N, redis):
    with Raw(N) as ws:
        headers = ws.upgrade("/ws/chat")
        assert headers["upgrade"] == ["websocket"]
        ws.send(frame(OP_TEXT, b"ping through the proxy"))
        _, opcode, payload, _ = ws.read_frame()
        assert (opcode, payload) == (OP_TEXT, b"ping through the proxy")   # echoed, not queued
        assert redis("EXISTS", "chat:queue") == 0
        wait_until(lambda: numsub(redis, "chat") == 1, what="the consumer to register")
        assert add(N, "chat", "hi") == "chat:1"
        ws.sock.settimeout(PROMPT)
        _, opcode, payload, _ = ws.read_frame()
        assert opcode == OP_TEXT and json.loads(payload) == {"key": "chat:1", "value": "hi"}
        assert request(N, "DELETE", "/q/chat")[0] == 200
        _, opcode, payload, _ = ws.read_frame()
        assert (opcode, payload) == (OP_TEXT, b"null")
        _, opcode, payload, _ = ws.read_frame()
        assert (opcode, payload) == (OP_CLOSE, (1000).to_bytes(2, "big"))


def test_encoded_names_pass_unchanged(N, redis):
    assert add(N, "a%2Fb", "x") == "a/b:1"
    status, body = request(N, "GET", "/q/a/b")
    assert status == 200 and json.loads(body) == {"key": "a/b:1", "value": "x", "count": 0}


def test_real_client_address_reaches_the_acl(N, redis):
    # the server only sees nginx (127.0.0.1): a 401 proves it judged the X-Real-IP header
    assert request(N, "POST", "/q/acl", "value=1", source=ELSEWHERE) == (
        401, b'{"error": "unauthorized"}')
    # nginx replaces what the client claims
    assert request(N, "POST", "/q/acl", "value=2", source=ELSEWHERE,
                   headers={"X-Real-IP": "127.0.0.1", "X-Forwarded-For": "127.0.0.1"}) == (
        401, b'{"error": "unauthorized"}')
    assert request(N, "POST", "/q/acl", "value=3") == (200, b"acl:1\r\n")
    # consumers are allowed from anywhere
    status, body = request(N, "GET", "/q/acl", source=ELSEWHERE)
    assert status == 200 and json.loads(body)["value"] == "3"
