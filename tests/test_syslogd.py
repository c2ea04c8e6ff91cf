"""The syslog frontend (docs/frontends.md#syslogd) against a real `twistd syslogd` process:
framing, priorities, garbage, concurrency, the real `logger` and rsyslog clients, and TCP
back-pressure while Redis is unavailable."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import (REDIS_TIMEOUT, ROOT, SHORT_TIMEOUT, RedisProcess, ServerProcess,
                            free_port)
from tests.util import wait_until

QUEUE = "syslogd:127.0.0.1"
SEVERITIES = ["emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"]
FACILITIES = ["kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
              "authpriv", "ftp", "ntp", "audit", "alert", "at", "local0", "local1", "local2",
              "local3", "local4", "local5", "local6", "local7"]


# --------------------------------------------------------------------------- fixtures, helpers

def check_log(server):
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


@pytest.fixture(scope="module")
def sserver(redis_proc):
    proc = ServerProcess(redis_proc.port, plugin="syslogd").start()
    yield proc
    proc.stop()
    check_log(proc)


@pytest.fixture
def S(sserver, redis):
    """The syslogd server, with an empty Redis."""
    return sserver


@pytest.fixture(scope="module")
def small_server(redis_proc):
    """A second receiver with --max-line 100."""
    proc = ServerProcess(redis_proc.port, "--max-line", "100", plugin="syslogd").start()
    yield proc
    proc.stop()
    check_log(proc)


def records(redis, queue=QUEUE):
    """The stored messages of `queue`, parsed, oldest first."""
    keys = list(reversed(redis("LRANGE", f"{queue}:queue", 0, -1)))
    out = []
    for key in keys:
        value = redis("GET", key)
        assert isinstance(value, str), (key, value)
        out.append(json.loads(value))
    return out


def lines(redis, queue=QUEUE):
    return [r["line"] for r in records(redis, queue)]


def log_of(server):
    """For wait_until's failure message: the end of the server's log."""
    return (lambda: f"server log:\n{server.log()[-4000:]}") if server else None


def wait_line(redis, text, queue=QUEUE, timeout=20.0, server=None):
    """Wait until a stored message has line `text`."""
    return wait_until(lambda: text in lines(redis, queue), timeout, f"line {text!r}",
                      details=log_of(server))


def connect(server, host="127.0.0.1"):
    sock = socket.create_connection((host, server.port), timeout=10)
    return sock


def assert_silent_and_open(sock):
    """Nothing was written back to the client and the server has not closed the connection."""
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        data = None
    finally:
        sock.setblocking(True)
        sock.settimeout(10)
    assert data is None, f"the server wrote {data!r}" if data else "the server closed the connection"


def exchange(server, redis, *chunks, pause=0.0):
    """Send `chunks` on one connection, then an LF-framed sentinel; once the sentinel is stored
    (messages of a connection are added in order) return the lines stored before it. The
    connection must still be open and silent."""
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    sock = connect(server)
    try:
        for chunk in chunks:
            sock.sendall(chunk)
            if pause:
                time.sleep(pause)
        sock.sendall(b"\n" + sentinel.encode() + b"\n")
        wait_line(redis, sentinel, server=server)
        assert_silent_and_open(sock)
    finally:
        sock.close()
    got = records(redis)
    assert got[-1]["line"] == sentinel
    return got[:-1]


def exchange_lines(server, redis, *chunks, **kw):
    return [r["line"] for r in exchange(server, redis, *chunks, **kw)]


# --------------------------------------------------------------------------- message format

def test_message_json(S, redis):
    before = time.time()
    [rec] = exchange(S, redis, b"<22>Nov  1 00:12:04 host postfix/smtpd[4880]: connect\n")
    after = time.time()
    assert set(rec) == {"line", "host", "tstamp", "facility", "severity"}
    assert rec["line"] == "<22>Nov  1 00:12:04 host postfix/smtpd[4880]: connect"
    assert rec["host"] == "127.0.0.1"
    assert isinstance(rec["tstamp"], float)
    assert before - 1 <= rec["tstamp"] <= after + 1
    assert rec["facility"] == "mail" and rec["severity"] == "info"
    # Added like any message (docs/redis-layout.md#add).
    assert redis("SMEMBERS", "QUEUESET") == [QUEUE]
    assert redis("GET", f"queuestat::{QUEUE}") == "1"
    assert redis("GET", f"{QUEUE}:1") is not None


def test_tstamps_follow_receive_order(S, redis):
    sock = connect(S)
    try:
        sock.sendall(b"<13>first\n")
        wait_line(redis, "<13>first")
        time.sleep(0.3)
        sock.sendall(b"<13>second\n")
        wait_line(redis, "<13>second")
    finally:
        sock.close()
    first, second = records(redis)
    assert second["tstamp"] - first["tstamp"] >= 0.2


# --------------------------------------------------------------------------- priority

@pytest.mark.parametrize("line, facility, severity", [
    ("<0>kernel panic", "kern", "emerg"),
    ("<191>last one", "local7", "debug"),
    ("<192>too big", None, None),
    ("<999>too big", None, None),
    ("<1a>not digits", None, None),
    ("<a1>not digits", None, None),
    ("<>empty", None, None),
    ("<0001>four digits", None, None),
    ("<001>three digits", "kern", "alert"),
    ("<01>two digits", "kern", "alert"),
    ("<13>", "user", "notice"),
    ("<13", None, None),
    ("<-1>negative", None, None),
    ("<+1>plus", None, None),
    ("< 1>space", None, None),
    ("<\uff11>fullwidth digit", None, None),
    ("<\u0663>arabic-indic digit", None, None),
    ("no pri at all", None, None),
    ("x<13>not at the start", None, None),
    ("13>no open", None, None),
    ("<<13>>double", None, None),
    ("<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - 'su root' failed",
     "auth", "crit"),
    ("<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time",
     "local4", "notice"),
])
def test_priority(S, redis, line, facility, severity):
    [rec] = exchange(S, redis, line.encode() + b"\n")
    assert rec["line"] == line          # kept raw, PRI included
    assert (rec["facility"], rec["severity"]) == (facility, severity)


def test_every_facility_and_severity(S, redis):
    sent = [f"<{pri}>pri {pri}" for pri in range(192)]
    got = exchange(S, redis, "".join(s + "\n" for s in sent).encode())
    assert [r["line"] for r in got] == sent
    for pri, rec in enumerate(got):
        assert rec["facility"] == FACILITIES[pri // 8], rec
        assert rec["severity"] == SEVERITIES[pri % 8], rec


def test_pri_after_leading_whitespace(S, redis):
    """`line` is stripped first, so PRI counts at the start of the stripped text."""
    [rec] = exchange(S, redis, b"  \t<13>indented  \n")
    assert rec["line"] == "<13>indented"
    assert (rec["facility"], rec["severity"]) == ("user", "notice")


# --------------------------------------------------------------------------- framing

def test_lf_and_crlf(S, redis):
    assert exchange_lines(S, redis, b"<13>one\n<13>two\r\n<13>three\n") == [
        "<13>one", "<13>two", "<13>three"]


def test_only_one_cr_removed_then_stripped(S, redis):
    # Whitespace is stripped anyway: CRs and spaces at the ends disappear, inner ones stay.
    assert exchange_lines(S, redis, b"a\r\r\n b \r c \n") == ["a", "b \r c"]


def test_octet_counting(S, redis):
    assert exchange_lines(S, redis, b"5 hello") == ["hello"]


def test_octet_counting_back_to_back(S, redis):
    assert exchange_lines(S, redis, b"5 hello3 abc11 <13>x y zzz") == ["hello", "abc", "<13>x y zzz"]


def test_octet_counting_then_lf_framing(S, redis):
    assert exchange_lines(S, redis, b"5 hello\n<13>lf framed\n7 counted") == [
        "hello", "<13>lf framed", "counted"]


def test_octet_counted_message_contains_lf(S, redis):
    assert exchange_lines(S, redis, b"11 hello\nworld4 next") == ["hello\nworld", "next"]


def test_octet_counted_message_trimmed(S, redis):
    assert exchange_lines(S, redis, b"9  hello  \n") == ["hello"]


@pytest.mark.parametrize("chunks, expected", [
    ([b"1", b"1 hello", b" world"], ["hello world"]),
    ([b"11", b" ", b"hello world"], ["hello world"]),
    ([b"11 ", b"hello", b" ", b"world"], ["hello world"]),
    ([b"<13>hel", b"lo wor", b"ld\n"], ["<13>hello world"]),
    ([b"<13>hello\r", b"\n<13>next\n"], ["<13>hello", "<13>next"]),
    ([b"12345", b"abc\n"], ["12345abc"]),
    ([b"1234567890", b"1 x\n"], ["12345678901 x"]),
])
def test_split_across_writes(S, redis, chunks, expected):
    assert exchange_lines(S, redis, *chunks, pause=0.15) == expected


@pytest.mark.parametrize("data, expected", [
    (b"123abc\n", ["123abc"]),                        # digits without a space: LF framing
    (b"42\n", ["42"]),
    (b"0 zero first\n", ["0 zero first"]),            # must start with 1-9
    (b"05 hello\n", ["05 hello"]),
    (b"12345678901 eleven digits\n", ["12345678901 eleven digits"]),
    (b"1.5 hello\n", ["1.5 hello"]),
    (b"-5 hello\n", ["-5 hello"]),
    (b" 5 hello\n", ["5 hello"]),                    # not at the start of the message
])
def test_not_octet_counting(S, redis, data, expected):
    assert exchange_lines(S, redis, data) == expected


def test_ten_digit_count_is_octet_counting(S, redis):
    """10 digits (1-9 then 9 more) are still a count; it exceeds --max-line, so those bytes
    are discarded whatever they contain, LFs included."""
    discards = discard_lines(S)
    sock = connect(S)
    try:
        sock.sendall(b"<13>before\n1000000000 <13>swallowed\n<13>also swallowed\n")
        wait_line(redis, "<13>before")
        wait_until(lambda: discard_lines(S) > discards, 10, "the discard in the log",
                   details=log_of(S))
        # Everything this connection sent was read with the count (one segment), so any add
        # of it went to Redis before the add of a line sent afterwards on another connection.
        other = connect(S)
        try:
            other.sendall(b"<13>after\n")
            wait_line(redis, "<13>after")
        finally:
            other.close()
        assert lines(redis) == ["<13>before", "<13>after"]
        assert_silent_and_open(sock)
    finally:
        sock.close()


def test_count_of_one(S, redis):
    assert exchange_lines(S, redis, b"1 x1 y") == ["x", "y"]


@pytest.mark.parametrize("data", [b"\n", b"   \n", b"\r\n", b"\t \t\r\n", b"3    ", b"1 \n",
                                  b"\n\n\n\n", b"\x0b\x0c\n"])
def test_empty_lines_ignored(S, redis, data):
    assert exchange_lines(S, redis, b"<13>a\n" + data + b"<13>b\n") == ["<13>a", "<13>b"]


# --------------------------------------------------------------------------- garbage

def test_nul_bytes_stored(S, redis):
    got = exchange(S, redis, b"<13>a\x00b\x00c\n", b"\x00\x00<13>x\n", b"7 \x00a\nb\x00c")
    assert [r["line"] for r in got] == ["<13>a\x00b\x00c", "\x00\x00<13>x", "\x00a\nb\x00c"]
    assert got[0]["facility"] == "user"
    assert got[1]["facility"] is None   # the PRI is not at the very start


def test_invalid_utf8_replaced(S, redis):
    got = exchange_lines(S, redis, b"<13>caf\xe9 \xff\xfe end\n", b"\xc3\x28\n", b"<13>\xed\xa0\x80\n")
    assert got == ["<13>caf\ufffd \ufffd\ufffd end", "\ufffd(", "<13>\ufffd\ufffd\ufffd"]


def test_utf8_kept(S, redis):
    text = "<13>h\u00e9llo \u20ac \U0001F600 \u4e2d\u6587"
    assert exchange_lines(S, redis, text.encode() + b"\n") == [text]


def test_control_characters_and_json_specials(S, redis):
    text = '<13>quote " backslash \\ tab\tbell\x07 <script>&'
    [rec] = exchange(S, redis, text.encode() + b"\n")
    assert rec["line"] == text


def test_no_newline_then_more_data(S, redis):
    """A message without LF continues with the next bytes of the connection."""
    assert exchange_lines(S, redis, b"<13>no newline yet", b" ... now\n", pause=0.3) == [
        "<13>no newline yet ... now"]


def test_unterminated_message_at_close_does_not_break_anything(S, redis):
    sock = connect(S)
    sock.sendall(b"<13>never terminated")
    sock.close()
    sock = connect(S)
    sock.sendall(b"5 hel")
    sock.close()
    assert exchange_lines(S, redis, b"<13>after\n")[-1] == "<13>after"


def discard_lines(server) -> int:
    return sum("discard" in line.lower() for line in server.log().splitlines())


def test_one_mib_line_discarded_next_stored(S, redis):
    discards = discard_lines(S)
    big = b"<13>" + b"x" * (1024 * 1024) + b"\n"
    got = exchange_lines(S, redis, b"<13>before\n", big[:300000], big[300000:] + b"<13>after\n",
                         pause=0.1)
    assert got == ["<13>before", "<13>after"]
    assert discard_lines(S) == discards + 1, S.log()[-3000:]


def test_max_line_boundary_lf(S, redis):
    exact = b"<13>" + b"a" * (16384 - 4)
    assert len(exact) == 16384
    over = exact + b"b"
    got = exchange_lines(S, redis, exact + b"\n", over + b"\n", exact + b"\r\n", b"<13>tail\n")
    assert got == [exact.decode(), exact.decode(), "<13>tail"]


def test_max_line_boundary_octet_counted(S, redis):
    exact = b"<13>" + b"a" * (16384 - 4)
    over = exact + b"b"
    got = exchange_lines(S, redis, b"16384 " + exact, b"16385 " + over, b"4 tail")
    assert got == [exact.decode(), "tail"]


def test_small_max_line(small_server, redis):
    S = small_server
    discards = discard_lines(S)
    exact = b"<13>" + b"m" * 96
    over = exact + b"n"
    with_lf = b"<13>" + b"q\n" * 50   # 104 bytes with LFs inside: discarded whole
    got = exchange_lines(S, redis,
                         b"100 " + exact,
                         b"101 " + over,
                         b"104 " + with_lf,
                         exact + b"\n",
                         over + b"\n",
                         b"<13>ok\n",
                         b"7 counted")
    assert got == [exact.decode(), exact.decode(), "<13>ok", "counted"]
    assert discard_lines(S) == discards + 3, S.log()[-3000:]


def test_huge_octet_count_discarded_on_small_server(small_server, redis):
    payload = b"<13>" + b"z\n" * 100000
    got = exchange_lines(small_server, redis, str(len(payload)).encode() + b" ",
                         payload[:50000], payload[50000:], b"<13>next\n", pause=0.05)
    assert got == ["<13>next"]


def test_never_writes_never_closes(S, redis):
    sock = connect(S)
    try:
        garbage = [b"\x00\x01\x02\xff\n", b"<999>", b"\r\r\r\n", b"9" * 50 + b"\n",
                   b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\n"]
        for g in garbage:
            sock.sendall(g)
        # A line after the garbage, stored: the server has been through all of it.
        sock.sendall(b"<13>still here\n")
        wait_line(redis, "<13>still here")
        assert_silent_and_open(sock)
        # And one more: whatever the server did after storing the first, it did before this.
        sock.sendall(b"<13>and still here\n")
        wait_line(redis, "<13>and still here")
        assert_silent_and_open(sock)
    finally:
        sock.close()
    assert "Connection from 127.0.0.1" in S.log()


# --------------------------------------------------------------------------- concurrency

def test_many_concurrent_senders(S, redis):
    senders, per_sender = 100, 50
    barrier = threading.Barrier(senders)
    errors = []

    def run(sender):
        try:
            sock = socket.create_connection(("127.0.0.1", S.port), timeout=30)
            try:
                barrier.wait(30)
                data = b""
                for i in range(per_sender):
                    text = f"<14>sender {sender:03d} line {i:03d}".encode()
                    data += (b"%d %s" % (len(text), text)) if i % 2 else text + b"\n"
                data += f"<14>sender {sender:03d} end\n".encode()  # after all of its lines
                # Several writes with arbitrary cut points.
                step = 97 + sender
                for start in range(0, len(data), step):
                    sock.sendall(data[start:start + step])
                done.wait(60)
                assert_silent_and_open(sock)
            finally:
                sock.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((sender, repr(e)))

    done = threading.Event()
    threads = [threading.Thread(target=run, args=(n,)) for n in range(senders)]
    for t in threads:
        t.start()
    try:
        total = senders * per_sender
        # Each sender's last line stored: so is everything it sent before (in order), surplus
        # included if there were any.
        wait_until(lambda: sum(line.endswith(" end") for line in lines(redis)) == senders, 60,
                   f"the last line of all {senders} senders", details=log_of(S))
    finally:
        done.set()
        for t in threads:
            t.join(90)
    assert not errors, errors
    got = [line for line in lines(redis) if not line.endswith(" end")]
    assert len(got) == senders * per_sender
    per = {}
    for line in got:
        _, sender, _, i = line.split(" ")
        per.setdefault(int(sender), []).append(int(i))
    assert sorted(per) == list(range(senders))
    for sender, numbers in per.items():
        assert numbers == list(range(per_sender)), (sender, numbers)


# --------------------------------------------------------------------------- IPv6

def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_sender(redis_proc, redis):
    # Never skipped: `make test` gives the loopback interface its ::1 where a container
    # started without one (Makefile, target ipv6-loopback).
    assert ipv6_loopback(), ("no IPv6 loopback (::1) on this machine: run `make test` as "
                             "root, or `make ipv6-loopback` once")
    server = ServerProcess(redis_proc.port, "--listen", "::1", plugin="syslogd")
    server.proc = subprocess.Popen(server.argv, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
    try:
        def listener():
            assert server.proc.poll() is None, server.log()
            try:
                return socket.create_connection(("::1", server.port), timeout=10)
            except OSError:
                return None

        sock = wait_until(listener, 20, f"a listener on [::1]:{server.port}",
                          details=log_of(server))
        # Not on IPv4.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        try:
            sock.sendall(b"<13>from v6\n9 counted 6")
            queue = "syslogd:::1"
            wait_until(lambda: len(records(redis, queue)) == 2, 20, "IPv6 messages",
                       details=log_of(server))
            recs = records(redis, queue)
            assert [r["line"] for r in recs] == ["<13>from v6", "counted 6"]
            assert all(r["host"] == "::1" for r in recs)
            assert recs[0]["facility"] == "user" and recs[0]["severity"] == "notice"
            assert redis("SMEMBERS", "QUEUESET") == [queue]
            assert_silent_and_open(sock)
        finally:
            sock.close()
        assert "Connection from ::1" in server.log()
    finally:
        server.stop()
    check_log(server)


# --------------------------------------------------------------------------- start script

def test_start_script_and_options(redis_proc, redis):
    port = free_port()
    proc = subprocess.Popen([str(ROOT / "start_scripts" / "syslogd_restmq_server"),
                             "--port", str(port), "--redis-port", str(redis_proc.port),
                             "--max-line=50"],
                            cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        server = type("S", (), {"port": port, "log": lambda self: ""})()

        def listening():
            assert proc.poll() is None, "syslogd_restmq_server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, 20, "syslogd_restmq_server to listen")
        got = exchange_lines(server, redis, b"<13>" + b"a" * 50 + b"\n", b"<13>short\n")
        assert got == ["<13>short"]   # --max-line=50 took effect
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_default_port_option():
    """`--port` defaults to 25000 for syslogd (checked without binding: the options parser)."""
    out = subprocess.run([str(Path(ROOT / ".venv" / "bin" / "python")), "-c",
                          "from restmq.tap.syslogd import Options as O; o = O(); o.parseOptions([]);"
                          " print(o['port'], o['listen'], o['max-line'])"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["25000", "127.0.0.1", "16384"]


# --------------------------------------------------------------------------- logger(1)

LOGGER = shutil.which("logger") or "/usr/bin/logger"


def require_logger():
    if not os.path.exists(LOGGER):
        pytest.fail("util-linux logger is not installed: cannot test the real client")
    out = subprocess.run([LOGGER, "--help"], capture_output=True, text=True).stdout
    for option in ("--tcp", "--octet-count", "--rfc3164", "--rfc5424"):
        if option not in out:
            pytest.fail(f"this logger lacks {option}: util-linux logger 2.26 or newer is needed")


@pytest.mark.parametrize("rfc", ["--rfc3164", "--rfc5424"])
@pytest.mark.parametrize("octet", [False, True])
@pytest.mark.parametrize("prio, facility, severity, pri", [
    ("mail.info", "mail", "info", 22),
    ("local3.err", "local3", "err", 155),
    ("local0.alert", "local0", "alert", 129),   # logger turns kern into user
    ("local7.debug", "local7", "debug", 191),
    ("auth.warning", "auth", "warn", 36),
    ("daemon.notice", "daemon", "notice", 29),
])
def test_logger(S, redis, rfc, octet, prio, facility, severity, pri):
    require_logger()
    text = f"hello from logger {uuid.uuid4().hex}"
    argv = [LOGGER, "--tcp", "-n", "127.0.0.1", "-P", str(S.port), rfc, "-p", prio,
            "-t", "restmqtest"]
    if octet:
        argv.append("--octet-count")
    before = time.time()
    result = subprocess.run(argv + [text], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: records(redis), 20, "the logger message", details=log_of(S))
    [rec] = records(redis)
    assert rec["host"] == "127.0.0.1"
    assert rec["facility"] == facility and rec["severity"] == severity
    assert before - 1 <= rec["tstamp"] <= time.time() + 1
    line = rec["line"]
    assert line.startswith(f"<{pri}>")
    assert line.endswith(text)
    assert "restmqtest" in line
    if rfc == "--rfc5424":
        assert line.startswith(f"<{pri}>1 ")   # VERSION follows the PRI
    else:
        assert not line.startswith(f"<{pri}>1 ")


def test_logger_several_lines_one_connection(S, redis):
    """logger reading stdin sends every line over one connection, in order."""
    require_logger()
    for octet in ([], ["--octet-count"]):
        redis("FLUSHALL")
        sent = [f"stdin line {i:03d}" for i in range(200)] + ["stdin last line"]
        result = subprocess.run([LOGGER, "--tcp", "-n", "127.0.0.1", "-P", str(S.port),
                                 "--rfc5424", "-p", "user.notice", "-t", "t", *octet],
                                input="\n".join(sent) + "\n", capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stderr
        # The last line stored: so is everything sent before it on the connection.
        wait_until(lambda: any(line.endswith("stdin last line") for line in lines(redis)), 20,
                   "the last line", details=log_of(S))
        got = lines(redis)
        assert [line.rsplit(" ", 3)[-3:] for line in got] == [s.split(" ") for s in sent]


# --------------------------------------------------------------------------- rsyslog

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


@pytest.mark.parametrize("framing", ["octet-counted", "traditional"])
def test_rsyslog_forwarding(S, redis, framing):
    if not os.path.exists(RSYSLOGD):
        pytest.fail("rsyslogd is not installed: cannot test rsyslog forwarding")
    work = tempfile.mkdtemp(prefix="restmq-rsyslog-")
    watched = Path(work, "watched.log")
    watched.write_text("")
    conf = Path(work, "rsyslog.conf")
    conf.write_text(
        f'global(workDirectory="{work}")\n'
        'module(load="imfile" PollingInterval="1")\n'
        f'input(type="imfile" File="{watched}" Tag="restmqtag" Facility="local5" '
        'Severity="warning")\n'
        'if $programname == "restmqtag" then {\n'
        f'  action(type="omfwd" Target="127.0.0.1" Port="{S.port}" Protocol="tcp" '
        f'TCP_Framing="{framing}")\n'
        '}\n')
    check = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        pytest.fail(f"rsyslogd rejects the configuration: {check.stdout}{check.stderr}")
    out = open(Path(work, "rsyslogd.out"), "wb")
    proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(Path(work, "rsyslogd.pid"))],
                            stdout=out, stderr=subprocess.STDOUT, cwd=work)
    try:
        sent = [f"rsyslog line {i:03d} caf\u00e9" for i in range(30)]
        with open(watched, "a", encoding="utf-8") as f:
            for text in sent[:10]:
                f.write(text + "\n")
        time.sleep(0.5)
        with open(watched, "a", encoding="utf-8") as f:
            for text in sent[10:]:
                f.write(text + "\n")

        def arrived():
            if proc.poll() is not None:
                pytest.fail(f"rsyslogd exited: {Path(work, 'rsyslogd.out').read_text()}")
            return len(records(redis)) >= len(sent)

        wait_until(arrived, 30, "rsyslog's forwarded lines", details=log_of(S))
        # One more line, forwarded after the others on rsyslog's connection: once it is
        # stored, anything forwarded twice before it is stored too.
        with open(watched, "a", encoding="utf-8") as f:
            f.write("rsyslog last line\n")
        wait_until(lambda: records(redis)[-1]["line"].endswith("rsyslog last line"), 30,
                   "the last forwarded line", details=log_of(S))
        got = records(redis)[:-1]
        assert len(got) == len(sent)
        for rec, text in zip(got, sent):
            assert rec["line"].startswith("<172>")            # local5.warning = 21 * 8 + 4
            assert rec["line"].endswith("restmqtag " + text) or rec["line"].endswith(
                "restmqtag: " + text), rec
            assert rec["facility"] == "local5" and rec["severity"] == "warn"
            assert rec["host"] == "127.0.0.1"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- back-pressure

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("outage", ["frozen", "stopped"])
def test_back_pressure_while_redis_unavailable(outage):
    """While Redis is unavailable (frozen with SIGSTOP, or stopped and later restarted on the
    same port) the receiver stops reading: the sender's writes block after a bounded number of
    bytes, the server's memory stays bounded, and once Redis is back every line the kernel
    accepted is stored once, in order. The receiver runs with the shortest command timeout
    (2 s), so that a try at the frozen Redis fails sooner."""
    redis_server = RedisProcess().start()
    server = ServerProcess(redis_server.port, *SHORT_TIMEOUT, plugin="syslogd").start()
    client = redis_server.client()
    sock = None
    try:
        def make(n):
            return (f"<13>bp {n:07d} ".encode() + b"x" * 980 + b"\n")

        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.sendall(make(0))
        wait_until(lambda: client("LLEN", f"{QUEUE}:queue") == 1, 20, "the first line",
                   details=log_of(server))
        rss_before = rss_kib(server.proc.pid)

        if outage == "frozen":
            os.kill(redis_server.pid, signal.SIGSTOP)
            first = 0            # line 0 stays in the frozen Redis
        else:
            client.close()
            redis_server.stop()  # its data (line 0) goes with it: no persistence
            first = 1
        sock.setblocking(False)
        n, pending = 1, memoryview(make(1))
        accepted = len(make(0))
        limit = 64 * 1024 * 1024
        started = time.monotonic()
        blocked_since = None
        max_rss = 0
        # Keep writing until nothing has been accepted for 4 s, and for at least 2 s past the
        # command timeout in all, so the retry path runs while the socket is full.
        while True:
            try:
                sent = sock.send(pending)
            except BlockingIOError:
                sent = 0
            if sent:
                accepted += sent
                blocked_since = None
                pending = pending[sent:]
                if not len(pending):
                    n += 1
                    pending = memoryview(make(n))
            else:
                now = time.monotonic()
                if blocked_since is None:
                    blocked_since = now
                elif now - blocked_since > 4 and now - started > REDIS_TIMEOUT + 2:
                    break
                max_rss = max(max_rss, rss_kib(server.proc.pid))
                time.sleep(0.05)
            assert accepted < limit, f"the server kept reading: {accepted} bytes accepted"
            assert time.monotonic() - started < 60, "writes never blocked"
        blocked_at = accepted
        max_rss = max(max_rss, rss_kib(server.proc.pid))
        assert server.proc.poll() is None
        assert max_rss < 300 * 1024, f"server RSS {max_rss} KiB (was {rss_before} KiB)"
        # Still blocked once the server has failed to store the held line again, after the
        # writes blocked: it had its chance to read, and did not.
        warnings = server.log().count("held, reading paused")
        wait_until(lambda: server.log().count("held, reading paused") > warnings, 20,
                   "another try at the held line", details=log_of(server))
        try:
            sent = sock.send(pending)
        except BlockingIOError:
            sent = 0
        assert sent == 0, "the socket accepted data again while Redis was still unavailable"
        assert "Redis unavailable" in server.log() or "unavailable" in server.log().lower()

        if outage == "frozen":
            os.kill(redis_server.pid, signal.SIGCONT)
        else:
            redis_server = RedisProcess(port=redis_server.port).start()
            client = redis_server.client()
        # Finish the partly sent line, then one more line.
        sock.setblocking(True)
        sock.settimeout(60)
        sock.sendall(bytes(pending))
        sock.sendall(make(n + 1))
        total = n + 2   # lines 0 .. n + 1
        expected = list(range(first, total))
        def last_line_stored():
            newest = client("LINDEX", f"{QUEUE}:queue", 0)
            line = json.loads(client("GET", newest))["line"] if newest else ""
            return line.startswith(f"<13>bp {n + 1:07d} ")

        # The last line stored: every line of the connection before it is stored too (in
        # order), a line stored twice included.
        wait_until(last_line_stored, 60, "the last line after Redis came back",
                   details=log_of(server))
        keys = list(reversed(client("LRANGE", f"{QUEUE}:queue", 0, -1)))
        numbers = []
        for key in keys:
            rec = json.loads(client("GET", key))
            numbers.append(int(rec["line"].split(" ")[1]))
        first_seen = list(dict.fromkeys(numbers))
        assert sorted(first_seen) == expected, (
            f"lines were lost: {sorted(set(expected) - set(numbers))[:20]}")
        assert first_seen == expected, "lines were stored out of order"
        # Exactly once: a command that timed out while Redis was frozen may still run when it
        # resumes; retrying it then stores the line twice.
        repeated = {x: numbers.count(x) for x in set(numbers) if numbers.count(x) > 1}
        assert not repeated, (
            f"lines stored more than once (line: times): {repeated}; {blocked_at} bytes were "
            f"accepted before the writes blocked\n"
            + "\n".join(line for line in server.log().splitlines() if "Redis" in line)[-3000:])
        assert_silent_and_open(sock)
        log = server.log()
        assert "Traceback" not in log and "Unhandled" not in log, log
    finally:
        if sock is not None:
            sock.close()
        client.close()
        server.stop()
        redis_server.stop()
