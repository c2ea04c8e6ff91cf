"""What the dashboard's polling costs the producers: add throughput, and the server's CPU per
add, with and without the requests of N open dashboards.

An open dashboard (restmq/static/index.html) asks every REFRESH_S seconds for `/info/<q>` of
each queue on its page (PAGE_SIZE of them), and every LIST_EVERY-th time for `/stats/` (every
queue) too. Here POLLERS threads each play one open page, on a keep-alive connection (the
pages spread over the interval), sending what the page sends. The server
holds QUEUES queues, so `/stats/` reads a realistic list.

Each round runs wrk (`POST /q/<q>`, 50 connections) once quiet and once with the pollers
running, in alternating order, ROUNDS rounds at least. On a shared machine the req/s of two
runs a few seconds apart differ by tens of per cent whatever the pollers do, so three figures
are taken:

* the req/s ratio polled ÷ quiet within a round, median of the rounds (and its range);
* the server's CPU per add (CPU seconds of the twistd process, all threads, from
  /proc/<pid>/task/*/schedstat, over the run, ÷ the adds wrk completed), quiet and polled, and
  1 − quiet ÷ polled as the polling's share, median of the rounds. It is steadier than req/s,
  but other work on the cores still moves it by several per cent from run to run (caches, how
  many requests one wake-up of the reactor serves): more than the effect sought;
* the polling alone, without adds, for IDLE_CYCLES refresh intervals: the server's and Redis's
  CPU per second beyond what they spend at rest (measured just before, as long), which hardly
  depends on other work, as a share of the CPU the server used adding flat out (the median of
  the quiet runs). A server that is the bottleneck of the adds loses that share of its add
  throughput to the polling: this is the figure the target is judged on. What one `/info/`
  and one `/stats/` cost alone is measured too, to show where the polling's CPU goes.

Target (issue 17): the polling lowers add throughput by no more than 2 %, i.e. its CPU is at
most 2 % of the adding server's. The polls are checked: every reply must be 200.

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
from common import (ServerProcess, checkout_env, cpu_seconds, free_ports, start_all, stop_all,
                    venv_bin)

REFRESH_S = 10.0   # the page's interval (REFRESH_MS in dashboard.js)
LIST_EVERY = 3     # /stats/ every 3rd tick (LIST_EVERY in dashboard.js)
PAGE_SIZE = 25     # its default page
POLLERS = 10       # open dashboards
QUEUES = 1000
ADD_Q = "dashadd"
RATIO_GOAL = 0.98
SHARE_GOAL = 0.02  # the polling's share of the server's CPU at full add load
ROUNDS = 10        # at least, whatever bench/run.py's --rounds says
IDLE_CYCLES = 3    # refresh intervals of polling alone


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


class Cpu:
    """CPU seconds used by the server and Redis between start() and stop()."""

    def __init__(self, server_pid: int, redis_pid: int):
        self.pids = {"server": server_pid, "redis": redis_pid}

    def _read(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def start(self) -> None:
        self.t0, self.c0 = time.monotonic(), self._read()

    def stop(self) -> dict[str, float]:
        c1, seconds = self._read(), time.monotonic() - self.t0
        used = {name: c1[name] - self.c0[name] for name in c1}
        used["seconds"] = seconds
        return used


def add_run(wrk_bin: str, port: int, script: Path, duration: float, cpu: Cpu) -> dict:
    cpu.start()
    measured = wrk.run(wrk_bin, f"http://127.0.0.1:{port}/q/{ADD_Q}", threads=2,
                       connections=50, duration=duration, script=script)
    used = cpu.stop()
    r = measured.result
    return {"rps": r.requests_per_sec, "p99_ms": r.p99_ms, "non_2xx": r.non_2xx,
            "socket_errors": r.socket_errors, "requests": r.requests,
            "server_cpu": used["server"], "redis_cpu": used["redis"],
            "server_us_per_add": 1e6 * used["server"] / max(1, r.requests),
            "redis_us_per_add": 1e6 * used["redis"] / max(1, r.requests),
            "server_cores": used["server"] / used["seconds"]}


def start_pollers(port: int, names: list[str], pollers: int):
    stop = threading.Event()
    threads = [Poller(port, names[:PAGE_SIZE], REFRESH_S * i / pollers, stop)
               for i in range(pollers)]
    for t in threads:
        t.start()

    def finish(out: dict) -> dict:
        stop.set()
        for t in threads:
            t.join(15)
        out["poll_requests"] = sum(t.requests for t in threads)
        out["poll_failures"] = [f for t in threads for f in t.failures]
        return out
    return finish


def polled_run(wrk_bin: str, port: int, script: Path, duration: float,
               names: list[str], pollers: int, cpu: Cpu) -> dict:
    finish = start_pollers(port, names, pollers)
    out: dict = {}
    try:
        out = add_run(wrk_bin, port, script, duration, cpu)
    finally:
        finish(out)
    return out


def at_rest(seconds: float, cpu: Cpu) -> dict[str, float]:
    """CPU per second of the server and Redis with no request at all (the ticks, the sweeps)."""
    cpu.start()
    time.sleep(seconds)
    used = cpu.stop()
    return {"server": used["server"] / used["seconds"], "redis": used["redis"] / used["seconds"]}


def idle_polling(port: int, names: list[str], pollers: int, seconds: float, cpu: Cpu) -> dict:
    """The pollers alone: what their requests cost the server and Redis, per second, beyond
    what both spend at rest (measured just before, as long)."""
    rest = at_rest(seconds, cpu)
    finish = start_pollers(port, names, pollers)
    cpu.start()
    time.sleep(seconds)
    used = cpu.stop()
    out = finish({"seconds": used["seconds"], "rest_server_cores": rest["server"],
                  "rest_redis_cores": rest["redis"]})
    out["server_cores"] = used["server"] / used["seconds"] - rest["server"]
    out["redis_cores"] = used["redis"] / used["seconds"] - rest["redis"]
    out["server_us_per_poll"] = 1e6 * out["server_cores"] * used["seconds"] / \
        max(1, out["poll_requests"])
    return out


def request_cost(port: int, paths: list[str], cpu: Cpu) -> dict:
    """Server and Redis CPU per request of `paths`, sent one after the other on one
    connection with nothing else running: what each kind of poll costs."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        cpu.start()
        for path in paths:
            conn.request("GET", path)
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"GET {path}: {reply.status}")
        used = cpu.stop()
    finally:
        conn.close()
    return {"requests": len(paths), "server_us": 1e6 * used["server"] / len(paths),
            "redis_us": 1e6 * used["redis"] / len(paths)}


def one_round(rnd: int, wrk_bin: str, port: int, script: Path, duration: float, pause: float,
              names: list[str], pollers: int, cpu: Cpu) -> dict:
    runs: dict = {}
    for kind in (("quiet", "polled") if rnd % 2 else ("polled", "quiet")):
        time.sleep(pause)
        runs[kind] = (add_run(wrk_bin, port, script, duration, cpu) if kind == "quiet"
                      else polled_run(wrk_bin, port, script, duration, names, pollers, cpu))
    runs["round"] = rnd
    runs["ratio"] = runs["polled"]["rps"] / runs["quiet"]["rps"]
    runs["cpu_share"] = 1 - runs["quiet"]["server_us_per_add"] / \
        runs["polled"]["server_us_per_add"]
    print(f"  dashboard round {rnd}: adds/s quiet {runs['quiet']['rps']:,.0f}, "
          f"polled {runs['polled']['rps']:,.0f} ({runs['polled']['poll_requests']} polls), "
          f"ratio {runs['ratio']:.3f}; server µs/add {runs['quiet']['server_us_per_add']:.1f} "
          f"vs {runs['polled']['server_us_per_add']:.1f}, share {runs['cpu_share']:+.2%}",
          flush=True)
    return runs


def problems_of(runs: dict) -> list[str]:
    rnd = runs["round"]
    found = [f"dashboard round {rnd}: {p}" for p in runs["polled"]["poll_failures"]]
    for kind in ("quiet", "polled"):
        if runs[kind]["non_2xx"] or runs[kind]["socket_errors"]:
            found.append(f"dashboard round {rnd} {kind}: {runs[kind]['non_2xx']} non-2xx, "
                         f"{runs[kind]['socket_errors']} socket errors")
    return found


def measure(redis_bin: str, wrk_bin: str, rounds: int = ROUNDS, duration: float = 10.0,
            pause: float = 0.3, quick: bool = False, pollers: int = POLLERS) -> dict:
    rounds, idle = max(rounds, ROUNDS), IDLE_CYCLES * REFRESH_S
    if quick:
        rounds, duration, idle = 1, 3.0, REFRESH_S
    out: dict = {"settings": {"rounds": rounds, "duration": duration, "pollers": pollers,
                              "refresh_s": REFRESH_S, "page_size": PAGE_SIZE,
                              "list_every": LIST_EVERY,
                              "queues": QUEUES, "idle_s": idle},
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
            cpu = Cpu(server.pid, redis.pid)
            names = fill(port, QUEUES)
            out["cost"] = {"info": request_cost(port, [f"/info/{n}" for n in names[:PAGE_SIZE]]
                                                * (2 if quick else 20), cpu),
                           "stats": request_cost(port, ["/stats/"] * (3 if quick else 30), cpu)}
            out["idle"] = idle_polling(port, names, pollers, idle, cpu)
            out["problems"] += [f"dashboard idle polling: {p}"
                                for p in out["idle"]["poll_failures"]]
            print(f"  dashboard polling alone: server {1000 * out['idle']['server_cores']:.1f} "
                  f"ms/s, Redis {1000 * out['idle']['redis_cores']:.1f} ms/s "
                  f"({out['idle']['poll_requests']} polls)", flush=True)
            for rnd in range(1, rounds + 1):
                runs = one_round(rnd, wrk_bin, port, script, duration, pause, names, pollers,
                                 cpu)
                out["rounds"].append(runs)
                out["problems"] += problems_of(runs)
        finally:
            try:
                stop_all([server])
            finally:
                redis.stop()
    summarise(out)
    return out


def summarise(out: dict) -> None:
    rounds = out["rounds"]
    med = statistics.median
    out["ratio"] = med(r["ratio"] for r in rounds)
    out["ratio_range"] = (min(r["ratio"] for r in rounds), max(r["ratio"] for r in rounds))
    out["cpu_share"] = med(r["cpu_share"] for r in rounds)
    out["cpu_share_range"] = (min(r["cpu_share"] for r in rounds),
                              max(r["cpu_share"] for r in rounds))
    quiet_cores = med(r["quiet"]["server_cores"] for r in rounds)
    out["quiet_server_cores"] = quiet_cores
    # The polling's CPU per second, as a share of the CPU the server had while adding flat out.
    out["idle_share"] = out["idle"]["server_cores"] / quiet_cores


def analyse(a) -> None:
    """Adds this section's target and problems to report.Analysis `a`."""
    from report import Target
    sec = a.sec.get("dashboard")
    if not sec or not sec.get("rounds"):
        return
    st = sec["settings"]
    a.problems += sec.get("problems", [])
    a.fig.add("dashboard.ratio", sec["ratio"], "polled ÷ quiet add req/s", "higher")
    a.fig.add("dashboard.cpu_share", sec["cpu_share"], "polling's share of server CPU per add",
              "lower")
    low, high = sec["ratio_range"]
    a.targets.append(Target(
        f"add with {st['pollers']} dashboards polling: their polling's server CPU ÷ the "
        "server's CPU adding flat out",
        f"{sec['idle_share']:.2%} ({1000 * sec['idle']['server_cores']:.1f} ms/s of "
        f"{sec['quiet_server_cores']:.2f} cores; per round: CPU per add "
        f"{sec['cpu_share']:+.1%}, req/s ratio {sec['ratio']:.3f}, {low:.2f}–{high:.2f})",
        f"≤ {SHARE_GOAL:.0%}", sec["idle_share"] <= SHARE_GOAL))


def render(sec: dict) -> list[str]:
    st = sec["settings"]
    idle = sec["idle"]
    o = ["## Dashboard polling", "",
         f"bench/dashboard.py, {st['rounds']} round(s), its own Redis and one `twistd restmq "
         f"--access-log off` holding {st['queues']:,} queues. {st['pollers']} threads each "
         f"play an open dashboard: every {st['refresh_s']:g} s {st['page_size']} `/info/<q>`, "
         f"every {st['list_every']}th time also `/stats/`. Each round, wrk adds (`POST /q/<q>`, "
         f"50 connections, {st['duration']:g} s) quiet and with the pollers (alternating "
         "order by round). Per run: req/s, and the server's CPU per add (CPU seconds of the "
         "twistd process over the run, from /proc/<pid>/task/*/schedstat, ÷ the adds). The "
         "polling's share of the server's CPU in a round is 1 − (µs/add quiet ÷ µs/add "
         "polled); figures are medians of the rounds.", "",
         "| round | quiet adds/s | polled adds/s | polls | req/s ratio | server µs/add quiet "
         "| polled | polling's CPU share | Redis µs/add quiet | polled |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sec["rounds"]:
        q, p = r["quiet"], r["polled"]
        o.append(f"| {r['round']} | {q['rps']:,.0f} | {p['rps']:,.0f} | "
                 f"{p['poll_requests']:,} | {r['ratio']:.3f} | {q['server_us_per_add']:.1f} | "
                 f"{p['server_us_per_add']:.1f} | {r['cpu_share']:+.2%} | "
                 f"{q['redis_us_per_add']:.1f} | {p['redis_us_per_add']:.1f} |")
    low, high = sec["ratio_range"]
    slow, shigh = sec["cpu_share_range"]
    o += ["",
          f"The polling's share of the server's CPU per add: median {sec['cpu_share']:+.2%} "
          f"(rounds {slow:+.2%} to {shigh:+.2%}). req/s polled ÷ quiet: median "
          f"{sec['ratio']:.3f} (rounds {low:.3f} to {high:.3f})."
          + (" Both move from round to round by more than the 2 % sought: other work on the "
             "cores changes req/s, and the CPU a request costs too; hence the figure below."
             if shigh - slow > SHARE_GOAL else ""), "",
          f"The polling alone, {idle['seconds']:.0f} s without adds ({idle['poll_requests']:,} "
          f"requests), beyond what the server ({1000 * idle['rest_server_cores']:.1f} ms/s) "
          f"and Redis ({1000 * idle['rest_redis_cores']:.1f} ms/s) spend at rest: "
          f"the server {1000 * idle['server_cores']:.1f} ms of CPU per second "
          f"({idle['server_us_per_poll']:.0f} µs a request, `/stats/` of "
          f"{st['queues']:,} queues included), Redis {1000 * idle['redis_cores']:.1f} ms/s. "
          f"The server used {sec['quiet_server_cores']:.2f} cores adding flat out (median of "
          f"the quiet runs): the polling is **{sec['idle_share']:.2%}** of that (target "
          f"≤ {SHARE_GOAL:.0%}), {sec['idle']['server_cores']:.2%} of a whole core.", ""]
    cost = sec.get("cost")
    if cost:
        info, stats = cost["info"], cost["stats"]
        per_s = st["pollers"] / st["refresh_s"]  # page refreshes per second, all dashboards
        infos, lists = per_s * st["page_size"], per_s / st["list_every"]
        o += [f"One request alone (one after the other, nothing else running): `/info/<q>` "
              f"{info['server_us']:.0f} µs of server CPU and {info['redis_us']:.0f} µs of Redis "
              f"({info['requests']} requests), `/stats/` of {st['queues']:,} queues "
              f"{stats['server_us'] / 1000:.1f} ms and {stats['redis_us'] / 1000:.1f} ms "
              f"({stats['requests']}). {st['pollers']} dashboards thus ask per second "
              f"{infos:.0f} `/info/` ({infos * info['server_us'] / 1000:.1f} ms of server CPU) "
              f"and {lists:.2f} `/stats/` ({lists * stats['server_us'] / 1000:.1f} ms).", ""]
    return o


if __name__ == "__main__":
    import shutil
    found = shutil.which("redis-server")
    result = measure(found or "redis-server", shutil.which("wrk") or "wrk",
                     quick="--quick" in sys.argv)
    print("\n".join(render(result)))
