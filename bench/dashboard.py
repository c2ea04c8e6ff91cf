"""What the dashboard's polling costs the producers: add throughput with and without the
requests of N open dashboards.

An open dashboard (restmq/static/index.html) asks every REFRESH_S seconds for `/info/<q>` of
each queue on its page (PAGE_SIZE of them), and every LIST_EVERY-th time for `/stats/` (every
queue) too. Here POLLERS threads each play one open page, on a keep-alive connection (the
pages spread over the interval), sending what the page sends. The server
holds QUEUES queues, so `/stats/` reads a realistic list.

Each round runs wrk (`POST /q/<q>`, 50 connections) once quiet and once with the pollers
running, in alternating order; the ratio polled ÷ quiet is taken within a round and reported
as the median of the rounds. Target (issue 17): the polling lowers add throughput by no more
than 2 %, i.e. a ratio of at least 0.98. The polls are checked: every reply must be 200.

This module starts its own Redis and one `twistd restmq --access-log off`.
`python bench/dashboard.py [--quick]` prints the figures; bench/run.py runs it as `dashboard`.
"""
from __future__ import annotations

import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis_private
import wrk
from common import ServerProcess, checkout_env, free_ports, start_all, stop_all, venv_bin

REFRESH_S = 10.0   # the page's interval (REFRESH_MS in dashboard.js)
LIST_EVERY = 3     # /stats/ every 3rd tick (LIST_EVERY in dashboard.js)
PAGE_SIZE = 25     # its default page
POLLERS = 10       # open dashboards
QUEUES = 1000
ADD_Q = "dashadd"
RATIO_GOAL = 0.98


class Poller(threading.Thread):
    """One open dashboard page."""

    def __init__(self, port: int, names: list[str], offset: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.names, self.offset, self.stop = port, names, offset, stop
        self.requests = 0
        self.failures: list[str] = []

    def get(self, conn: http.client.HTTPConnection, path: str) -> None:
        conn.request("GET", path)
        reply = conn.getresponse()
        reply.read()
        self.requests += 1
        if reply.status != 200 and len(self.failures) < 5:
            self.failures.append(f"GET {path}: {reply.status}")

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        next_at = time.monotonic() + self.offset
        ticks = 0
        try:
            while not self.stop.wait(max(0.0, next_at - time.monotonic())):
                next_at += REFRESH_S
                if ticks % LIST_EVERY == 0:
                    self.get(conn, "/stats/")
                ticks += 1
                for name in self.names:
                    self.get(conn, f"/info/{name}")
        except OSError as exc:
            self.failures.append(f"poller: {exc}")
        finally:
            conn.close()


def fill(port: int, count: int) -> list[str]:
    names = [f"dash-{i:04d}" for i in range(count)]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for name in names:
            conn.request("POST", f"/q/{name}", body="value=x",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"filling {name}: {reply.status}")
    finally:
        conn.close()
    return names


def add_run(wrk_bin: str, port: int, script: Path, duration: float) -> dict:
    measured = wrk.run(wrk_bin, f"http://127.0.0.1:{port}/q/{ADD_Q}", threads=2,
                       connections=50, duration=duration, script=script)
    r = measured.result
    return {"rps": r.requests_per_sec, "p99_ms": r.p99_ms, "non_2xx": r.non_2xx,
            "socket_errors": r.socket_errors}


def polled_run(wrk_bin: str, port: int, script: Path, duration: float,
               names: list[str], pollers: int) -> dict:
    stop = threading.Event()
    threads = [Poller(port, names[:PAGE_SIZE], REFRESH_S * i / pollers, stop)
               for i in range(pollers)]
    for t in threads:
        t.start()
    try:
        out = add_run(wrk_bin, port, script, duration)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    out["poll_requests"] = sum(t.requests for t in threads)
    out["poll_failures"] = [f for t in threads for f in t.failures]
    return out


def measure(redis_bin: str, wrk_bin: str, rounds: int = 3, duration: float = 10.0,
            pause: float = 0.3, quick: bool = False, pollers: int = POLLERS) -> dict:
    if quick:
        rounds, duration = 1, 3.0
    out: dict = {"settings": {"rounds": rounds, "duration": duration, "pollers": pollers,
                              "refresh_s": REFRESH_S, "page_size": PAGE_SIZE, "list_every": LIST_EVERY,
                              "queues": QUEUES},
                 "rounds": [], "problems": []}
    with tempfile.TemporaryDirectory(prefix="restmq-dash-") as tmp_name:
        tmp = Path(tmp_name)
        rport, port = free_ports(2)
        redis = redis_private.PrivateRedis(redis_bin, rport, tmp)
        server = ServerProcess("dash", [venv_bin("twistd"), "-n", "--pidfile=", "restmq",
                                        "--port", str(port), "--redis-port", str(rport),
                                        "--access-log", "off"],
                               f"http://127.0.0.1:{port}/stats/", tmp / "dash.log",
                               env=checkout_env())
        script = wrk.write_post_script(tmp / "add.lua", "value=hello",
                                       "application/x-www-form-urlencoded")
        redis.start()
        try:
            start_all([server])
            names = fill(port, QUEUES)
            for rnd in range(1, rounds + 1):
                runs = {}
                for kind in (("quiet", "polled") if rnd % 2 else ("polled", "quiet")):
                    time.sleep(pause)
                    runs[kind] = (add_run(wrk_bin, port, script, duration) if kind == "quiet"
                                  else polled_run(wrk_bin, port, script, duration, names,
                                                  pollers))
                runs["round"] = rnd
                runs["ratio"] = runs["polled"]["rps"] / runs["quiet"]["rps"]
                out["rounds"].append(runs)
                out["problems"] += [f"dashboard round {rnd}: {p}"
                                    for p in runs["polled"]["poll_failures"]]
                for kind in ("quiet", "polled"):
                    if runs[kind]["non_2xx"] or runs[kind]["socket_errors"]:
                        out["problems"].append(
                            f"dashboard round {rnd} {kind}: {runs[kind]['non_2xx']} non-2xx, "
                            f"{runs[kind]['socket_errors']} socket errors")
                print(f"  dashboard round {rnd}: adds/s quiet {runs['quiet']['rps']:,.0f}, "
                      f"polled {runs['polled']['rps']:,.0f} "
                      f"({runs['polled']['poll_requests']} polls), "
                      f"ratio {runs['ratio']:.3f}", flush=True)
        finally:
            try:
                stop_all([server])
            finally:
                redis.stop()
    out["ratio"] = statistics.median(r["ratio"] for r in out["rounds"])
    return out


def analyse(a) -> None:
    """Adds this section's target and problems to report.Analysis `a`."""
    from report import Target
    sec = a.sec.get("dashboard")
    if not sec or not sec.get("rounds"):
        return
    st = sec["settings"]
    a.problems += sec.get("problems", [])
    a.fig.add("dashboard.ratio", sec["ratio"], "polled ÷ quiet add req/s", "higher")
    a.targets.append(Target(
        f"add req/s with {st['pollers']} dashboards polling ÷ without", f"{sec['ratio']:.3f}",
        f"≥ {RATIO_GOAL}", sec["ratio"] >= RATIO_GOAL))


def render(sec: dict) -> list[str]:
    st = sec["settings"]
    o = ["## Dashboard polling", "",
         f"bench/dashboard.py, {st['rounds']} round(s), its own Redis and one `twistd restmq "
         f"--access-log off` holding {st['queues']:,} queues. wrk adds (`POST /q/<q>`, 50 "
         f"connections, {st['duration']:g} s) quiet, then with {st['pollers']} threads each "
         f"playing an open dashboard: every {st['refresh_s']:g} s {st['page_size']} `/info/<q>`, "
         f"every {st['list_every']}th time also `/stats/` (alternating order by round). Ratio: polled ÷ quiet "
         "within a round, median of the rounds.", "",
         "| round | quiet adds/s | polled adds/s | polls during the run | ratio |",
         "|---:|---:|---:|---:|---:|"]
    for r in sec["rounds"]:
        o.append(f"| {r['round']} | {r['quiet']['rps']:,.0f} | {r['polled']['rps']:,.0f} | "
                 f"{r['polled']['poll_requests']:,} | {r['ratio']:.3f} |")
    o += ["", f"Median ratio: **{sec['ratio']:.3f}** (target ≥ {RATIO_GOAL}).", ""]
    return o


if __name__ == "__main__":
    import shutil
    found = shutil.which("redis-server")
    result = measure(found or "redis-server", shutil.which("wrk") or "wrk",
                     quick="--quick" in sys.argv)
    print("\n".join(render(result)))
