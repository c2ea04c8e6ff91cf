"""Helpers shared by the benchmark scripts (run.py, live.py, syslog.py): free ports, server
subprocesses, process limits and memory, and the machine/software facts for the reports."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


# --------------------------------------------------------------------------- processes

def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all sockets held open together so the kernel
    cannot hand out the same port twice; a race with other programs remains possible)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# urllib honours http_proxy & co.; a readiness probe to 127.0.0.1 must never go through one.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerProcess:
    """A server subprocess with its output in a log file; stopped with SIGTERM.

    Ready once `ready_url` answers 200; subclasses with no HTTP side override `ready()`.
    """

    def __init__(self, name: str, cmd: list[str], ready_url: str, logfile: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.ready_url = ready_url
        self.logfile = logfile
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        try:
            with _NO_PROXY_OPENER.open(self.ready_url, timeout=1.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 15.0) -> None:
        self._log = open(self.logfile, "wb")
        # A new session keeps a terminal Ctrl-C away from the servers, so they are stopped
        # in order by stop() rather than dying mid-run on their own.
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} during "
                                   f"startup:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no 200 from {self.ready_url} within {timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def venv_bin(name: str) -> str:
    """The repo's venv executable if there is one, else the one next to this Python."""
    candidate = REPO / ".venv" / "bin" / name
    if candidate.exists():
        return str(candidate)
    return str(Path(sys.executable).parent / name)


def checkout_env() -> dict[str, str]:
    """Environment that makes twistd load restmq and its plugin from this working tree.

    twistd finds plugins in every twisted/plugins directory on sys.path; putting the repo
    first means the benchmark measures the checked-out code even before (or without)
    `pip install -e .`, and is harmless after it.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def raise_exit(signum: int, frame: object) -> None:
    """SIGTERM handler: leave through the same try/finally path as Ctrl-C."""
    raise SystemExit(128 + signum)


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit and return it. Child
    processes started afterwards (the servers) inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def vm_rss_kb(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time `pid` has used so far, all threads, in seconds (nanosecond resolution, from
    /proc/<pid>/task/*/schedstat, where /proc/<pid>/stat would only give 10 ms ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def open_fds(pid: int) -> int:
    """Number of open file descriptors of `pid`."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------- machine facts

def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD")
    if not rev:
        return "no commit"
    return rev + (" (with uncommitted changes)" if git("status", "--porcelain", "-uno") else "")


def nproc() -> str:
    usable, online = len(os.sched_getaffinity(0)), os.cpu_count()
    return f"nproc {usable}" + (f" (of {online} online)" if online and online != usable else "")


def software_info(redis_version: str) -> dict[str, str]:
    """Machine and software facts shared by every report (run.py adds wrk's version)."""
    return {
        "nproc": nproc(),
        "cpu": cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "twisted": dist_version("twisted"),
        # cyclone's own __version__ says 1.2 (never bumped); the dist metadata is right.
        "cyclone": dist_version("cyclone"),
        "txredisapi": dist_version("txredisapi"),
        "redis-server": redis_version,
        "restmq": git_revision(),
    }


def header_lines(info: dict[str, str], started, load: tuple[float, float, float]) -> list[str]:
    """The date / machine / software / revision lines that open a report; `load` is
    os.getloadavg() taken before the benchmark started."""
    return [
        f"- date: {started:%Y-%m-%d %H:%M:%S %Z}",
        f"- machine: {info['nproc']}, {info['cpu']}, {info['os']}",
        f"- software: Python {info['python']}, Twisted {info['twisted']}, cyclone "
        f"{info['cyclone']}, txredisapi {info['txredisapi']}, redis-server "
        f"{info['redis-server']}",
        f"- restmq revision: {info['restmq']}",
        f"- load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min; "
        "other work on this machine shows in the figures)",
    ]


_LOG_PROBLEM_WORDS = ("traceback", "unhandled", "error", "warn", "fail", "dropped",
                      "disconnected", "lost")


def log_problems(logfile: Path) -> list[str]:
    """Lines of a twistd log that look like a warning, an error or a traceback."""
    try:
        lines = logfile.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if any(w in line.lower() for w in _LOG_PROBLEM_WORDS)]
