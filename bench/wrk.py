"""Running wrk and reading its text report.

wrk has no machine-readable output, so the numbers the benchmark needs (req/s, p50, p99,
non-2xx count, socket errors) are parsed from the `--latency` report.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# wrk prints latencies with the unit that keeps the number short (src/units.c).
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"([0-9.]+)(us|ms|s|m|h)"

_RE_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$", re.M)
_RE_TOTAL = re.compile(r"^\s*(\d+) requests in " + _TIME + r",", re.M)
_RE_NON2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)\s*$", re.M)
_RE_SOCKET = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$", re.M)


def _percentile_re(pct: int) -> re.Pattern[str]:
    return re.compile(r"^\s*%d%%\s+%s\s*$" % (pct, _TIME), re.M)


_RE_P50 = _percentile_re(50)
_RE_P99 = _percentile_re(99)


class WrkError(RuntimeError):
    """wrk failed or printed something this parser does not understand."""


@dataclasses.dataclass(frozen=True)
class WrkResult:
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    non_2xx: int        # wrk counts status > 399 here ("Non-2xx or 3xx" is its wording)
    socket_errors: int  # connect + read + write + timeout


def _to_ms(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS_MS[unit]


def parse(output: str) -> WrkResult:
    """Parse the stdout of `wrk --latency`. Raises WrkError if a required line is missing."""
    def need(regex: re.Pattern[str], what: str) -> re.Match[str]:
        match = regex.search(output)
        if match is None:
            raise WrkError(f"no {what} line in wrk output:\n{output}")
        return match

    rps = need(_RE_RPS, "Requests/sec")
    total = need(_RE_TOTAL, "'N requests in T'")
    p50 = need(_RE_P50, "50% latency (was --latency given?)")
    p99 = need(_RE_P99, "99% latency (was --latency given?)")
    # These two lines only appear when their count is non-zero.
    non_2xx = _RE_NON2XX.search(output)
    socket = _RE_SOCKET.search(output)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=_to_ms(*p50.groups()),
        p99_ms=_to_ms(*p99.groups()),
        requests=int(total.group(1)),
        seconds=_to_ms(total.group(2), total.group(3)) / 1000.0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in socket.groups()) if socket else 0,
    )


def find_wrk() -> str | None:
    return shutil.which("wrk")


def version(wrk: str) -> str:
    # `wrk --version` prints its banner and exits non-zero; only the first line is useful.
    proc = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    first = (proc.stdout or proc.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


def _lua_str(s: str) -> str:
    """A Lua string literal: long bracket strings would do too, but escapes are simpler."""
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + out + '"'


def write_script(path: Path, method: str, body: str | None = None,
                 headers: dict[str, str] | None = None) -> Path:
    """Write a wrk Lua script that sends every request with this method, body and headers
    (wrk computes Content-Length itself)."""
    lines = [f"wrk.method = {_lua_str(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {_lua_str(body)}")
    for name, value in (headers or {}).items():
        lines.append(f"wrk.headers[{_lua_str(name)}] = {_lua_str(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_post_script(path: Path, body: str, content_type: str) -> Path:
    """A POST with a body of the given media type."""
    return write_script(path, "POST", body, {"Content-Type": content_type})


@dataclasses.dataclass(frozen=True)
class Measured:
    result: WrkResult
    cpu_seconds: float  # user + system CPU wrk itself used (all its threads)


def run(wrk: str, url: str, *, threads: int, connections: int, duration: float,
        script: Path | None = None, cpus: str | None = None) -> Measured:
    """Run one wrk measurement (keep-alive, the wrk default) and return the parsed result.

    `cpus` pins wrk with `taskset -c` (e.g. "1"): the client then competes with the servers
    on that CPU only.
    """
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    # os.wait4 gives the child's own rusage: wrk's CPU time, which shows how much of the
    # machine the load generator took from the servers.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        # The deadline only guards against a wedged wrk; a normal run ends at `duration`.
        deadline = time.monotonic() + duration + 60
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise WrkError(f"{' '.join(cmd)}: no exit within {duration + 60:g} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # keeps Popen from waiting again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise WrkError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stdout}{stderr}")
    return Measured(parse(stdout), usage.ru_utime + usage.ru_stime)


# A real report (trimmed from a run against a 404 route) that run.py checks the parser with
# before measuring: the two optional lines and mixed time units included.
SAMPLE_OUTPUT = """\
Running 2s test @ http://127.0.0.1:18123/nope
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.25ms    1.83ms  26.65ms   95.81%
    Req/Sec     3.50k   327.67     3.79k    85.00%
  Latency Distribution
     50%  680.00us
     75%    7.29ms
     90%    7.92ms
     99%    1.02s 
  13921 requests in 2.00s, 2.83MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 13921
Requests/sec:   6948.32
Transfer/sec:      1.41MB
"""
SAMPLE_EXPECTED = WrkResult(requests_per_sec=6948.32, p50_ms=0.68, p99_ms=1020.0,
                            requests=13921, seconds=2.0, non_2xx=13921, socket_errors=5)
