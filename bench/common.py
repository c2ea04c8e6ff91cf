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

    def launch(self) -> None:
        """Start the process without waiting for it (see wait_ready and start_all)."""
        self._log = open(self.logfile, "wb")
        # A new session keeps a terminal Ctrl-C away from the servers, so they are stopped
        # in order by stop() rather than dying mid-run on their own.
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
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

    def start(self, timeout: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout)

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


def start_all(servers: list[ServerProcess], timeout: float = 60.0) -> None:
    """Launch every server at once, then wait for each: on 2 cores, Python start-ups
    overlap well enough to save several seconds over starting them one by one."""
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_ready(timeout)


def stop_all(servers: list[ServerProcess]) -> None:
    """Stop every server that was launched, even if stopping one of them fails."""
    errors = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as exc:  # noqa: BLE001 - report it, keep stopping the rest
            errors.append(f"{server.name}: {exc}")
    if errors:
        raise RuntimeError("could not stop: " + "; ".join(errors))


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


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all CPUs, from /proc/stat:
    busy includes every process, ours and any other work on the machine."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / ticks, total / ticks


class CpuMeter:
    """CPU used by named processes and by the whole machine over an interval, in cores
    (CPU seconds per second): shows which process was busy and how much was left idle."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = {name: [p for p in group if p] for name, group in pids.items()}

    def _sample(self) -> tuple[float, dict[str, float], tuple[float, float]]:
        per = {}
        for name, group in self.pids.items():
            total = 0.0
            for pid in group:
                try:
                    total += cpu_seconds(pid)
                except (FileNotFoundError, ProcessLookupError):
                    pass
            per[name] = total
        return time.perf_counter(), per, machine_cpu_seconds()

    def start(self) -> None:
        self._t0 = self._sample()

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Cores used per name since start(), plus `machine` (all processes) and `idle`;
        `extra` adds CPU seconds measured elsewhere (wrk's own rusage)."""
        t1, per1, (busy1, total1) = self._sample()
        t0, per0, (busy0, total0) = self._t0
        wall = t1 - t0
        out = {name: (per1[name] - per0[name]) / wall for name in per1}
        for name, seconds in (extra or {}).items():
            out[name] = seconds / wall
        span = total1 - total0  # CPU-seconds available over the interval, all CPUs
        cpus = span / wall if wall else 0.0
        out["machine"] = (busy1 - busy0) / wall
        out["idle"] = max(0.0, cpus - out["machine"])
        return out


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
    """Machine and software facts for the report (run.py adds wrk's and a few more)."""
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


_LOG_PROBLEM_WORDS = ("traceback", "unhandled", "error", "warn", "fail", "dropped",
                      "disconnected", "lost")


def log_problems(logfile: Path) -> list[str]:
    """Lines of a twistd log that look like a warning, an error or a traceback."""
    try:
        lines = logfile.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if any(w in line.lower() for w in _LOG_PROBLEM_WORDS)]
