"""The twistd plugin as a user meets it: --help from any directory, usage errors, the ACL
file at startup, and a clean shutdown on SIGTERM."""
from __future__ import annotations

import signal
import subprocess

import pytest

from tests.conftest import TWISTD, ServerProcess
from tests.util import wait_until

OPTIONS = ["--port", "--listen", "--ssl-cert", "--ssl-key", "--endpoint", "--redis-host",
           "--redis-port", "--redis-unix-socket", "--redis-password", "--redis-db",
           "--redis-pool", "--acl", "--consumed-ttl", "--max-body", "--trusted-proxy",
           "--access-log", "--reuse-port", "--pop-lease"]


def twistd(*args, cwd="/"):
    return subprocess.run([TWISTD, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_help_lists_every_option_from_any_directory(tmp_path):
    out = twistd("restmq", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for option in OPTIONS:
        assert option in out.stdout, option


def test_twistd_lists_the_plugin():
    assert "restmq" in twistd("--help").stdout


@pytest.mark.parametrize("args, message", [
    (["--port", "abc"], "--port must be an integer"),
    (["--port", "0"], "--port must be at least 1"),
    (["--redis-pool", "0"], "--redis-pool must be at least 1"),
    (["--consumed-ttl", "-1"], "--consumed-ttl must be at least 0"),
    (["--max-body", "0"], "--max-body must be at least 1"),
    (["--ssl-cert", "c.pem"], "--ssl-cert and --ssl-key must be given together"),
    (["--endpoint", "tcp:1", "--ssl-cert", "c", "--ssl-key", "k"], "--endpoint cannot"),
    (["--no-such-option"], "no-such-option"),
    (["--access-log", "maybe"], "--access-log must be on or off"),
    (["--pop-lease", "0"], "--pop-lease must be at least 1"),
    (["--pop-lease", "43201"], "--pop-lease must be at most 43200"),
    (["--reuse-port", "--endpoint", "tcp:1"], "--reuse-port works with --port/--listen"),
    (["--ssl-cert", "/nonexistent.pem", "--ssl-key", "/nonexistent.key"],
     "cannot load the TLS certificate or key"),
    (["--acl", "/nonexistent/acl.conf"], "Cannot load ACL file: /nonexistent/acl.conf"),
])
def test_bad_options_are_usage_errors(args, message, tmp_path):
    out = twistd("-n", "restmq", *args, cwd=tmp_path)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr


def test_an_acl_file_that_is_not_ini_stops_startup(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("hosts_allow = 127.0.0.1\n")
    out = twistd("-n", "restmq", "--acl", str(bad), cwd=tmp_path)
    assert out.returncode != 0
    assert f"Cannot load ACL file: {bad}" in out.stdout + out.stderr


def test_default_acl_falls_back_to_the_packaged_file(redis_proc, tmp_path):
    # Started from a directory without acl.conf: the packaged, all-comments file is used.
    server = ServerProcess(redis_proc.port)
    server.proc = subprocess.Popen(server.argv, cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
    try:
        import socket

        def listening():
            assert server.proc.poll() is None, server.proc.stdout.read()
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(listening, 20, "the server to listen")
    finally:
        server.stop()


def test_sigterm_shuts_down_cleanly(redis_proc):
    server = ServerProcess(redis_proc.port).start()
    # twistd listens before its reactor runs and installs the signal handlers: wait for a
    # sign of the running reactor, or an early SIGTERM just kills the process.
    wait_until(lambda: "pub/sub connection ready" in server.log(), 10, "a running reactor")
    server.proc.send_signal(signal.SIGTERM)
    # twistd re-raises the signal after a complete shutdown, so the exit status says SIGTERM.
    assert server.proc.wait(15) in (0, -signal.SIGTERM)
    log = server.log()
    assert "Server Shut Down" in log
    assert "Traceback" not in log
    assert "Scheduling retry" not in log


def test_access_log_on_and_off(redis_proc):
    import urllib.request
    for setting, expected in (("on", True), ("off", False)):
        server = ServerProcess(redis_proc.port, "--access-log", setting).start()
        try:
            urllib.request.urlopen(f"{server.url}/stats/x?probe={setting}").read()
        finally:
            server.stop()  # flushes the buffered lines
        assert (f'"GET /stats/x?probe={setting} HTTP/1.1" 200' in server.log()) is expected


def test_the_log_of_a_server_process_is_read_whole_after_twistd_rotates_it(redis_proc):
    """twistd starts a new log file past 1 MB (and on SIGUSR1), renaming the full one to
    `.1`, `.2` ...: a test that counts log lines (the adversarial tier counts pub/sub
    reconnects) reads every piece, oldest first; stopping removes them all."""
    import urllib.request
    from pathlib import Path
    server = ServerProcess(redis_proc.port).start()
    try:
        wait_until(lambda: "pub/sub connection ready" in server.log(), 10, "a running reactor")
        for n in (1, 2):
            server.proc.send_signal(signal.SIGUSR1)
            wait_until(lambda: Path(f"{server.logfile}.{n}").exists(), 10, f"rotation {n}")
            urllib.request.urlopen(f"{server.url}/stats/x?after={n}").read()
            wait_until(lambda: f"after={n}" in server.log(), 10, f"the request after {n}")
        log = server.log()
        assert log.count("pub/sub connection ready") == 1
        assert log.index("pub/sub connection ready") < log.index("after=1") < \
            log.index("after=2")
    finally:
        server.stop()
    assert "after=2" in server.final_log
    assert not list(Path(server.logfile).parent.glob(Path(server.logfile).name + "*"))


def test_start_up_warns_when_redis_persistence_cannot_protect_messages():
    from tests.conftest import RedisProcess
    from tests.http_client import get
    for extra, warned in (((), True), (("--appendonly", "yes", "--appendfsync", "always"), False)):
        redis = RedisProcess(extra=extra).start()
        try:
            server = ServerProcess(redis.port).start()
            try:
                # The check is the first connection's; a request answered by Redis later has
                # come after its reply, and the warning is written as soon as it is logged.
                assert get(server.url, "/stats/").status == 200
            finally:
                server.stop()
            assert ("Redis runs without AOF" in server.log()) is warned
        finally:
            redis.stop()
