"""restmq.client.Worker as separate worker processes against a real server: five processes
share 10,000 messages of which 1 % always raise (poison) and 0.5 % hang past their lease on
the first delivery; SIGTERM in the middle of a run loses nothing and exits within the lease."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from restmq.client import Client
from tests.conftest import ROOT

WORKER = """
import sys, time
from restmq.client import Worker
url, queue, out, mode = sys.argv[1:5]
log = open(out, "a", buffering=1)

class Job(Worker):
    concurrency = 4
    wait = 2
    if mode == "mixed":
        lease = 2
        max_hold = 1.0   # a job that hangs loses its lease and is delivered again

        def work(self, m):
            n = int(m.value)
            if n % 100 == 1:
                raise RuntimeError("poison")
            if n % 200 == 3 and m.deliveries == 1:
                # past the lease the last extend (before max_hold) gave, plus the second the
                # server may take to notice a lapse: 3.5 s raced the ack of a loaded machine
                time.sleep(6)
            log.write(f"done {m.value} {m.deliveries}\\n")

        def fail(self, m, error):
            return 0
    else:
        lease = 5

        def work(self, m):
            log.write(f"start {m.value}\\n")
            time.sleep(0.3)
            log.write(f"done {m.value}\\n")

log.write("ready\\n")
Job(url, queue).run()
log.write("exited\\n")
"""


def start_workers(tmp_path: Path, url: str, queue: str, mode: str, count: int):
    script = tmp_path / "job.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outs = [tmp_path / f"worker-{i}.log" for i in range(count)]
    # stderr to files: the warnings of failed jobs could fill a pipe nobody reads
    procs = [subprocess.Popen([sys.executable, str(script), url, queue, str(out), mode],
                              env=env, stderr=open(f"{out}.err", "w")) for out in outs]
    return procs, outs


def lines(outs):
    return [line.split() for out in outs if out.exists() for line in out.read_text().splitlines()]


def stop(procs, timeout=30.0):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise


def test_five_workers_process_everything_and_dead_letter_the_poison(H, redis, tmp_path):
    total = 10_000
    client = Client(H)
    client.set_config("work", max_attempts=3, dead_letter="work.dead")
    for i in range(0, total, 100):
        client.add_batch("work", [str(n) for n in range(i, i + 100)])
    poison = {str(n) for n in range(total) if n % 100 == 1}
    hanging = {str(n) for n in range(total) if n % 200 == 3}
    procs, outs = start_workers(tmp_path, H, "work", "mixed", 5)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            info = client.info("work")
            if info.pending == info.inflight == info.delayed == 0 and \
                    client.info("work.dead").pending == len(poison):
                break
            time.sleep(0.5)
        stop(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    done = Counter(entry[1] for entry in lines(outs) if entry[0] == "done")
    assert set(done) == {str(n) for n in range(total)} - poison  # nothing lost
    # a hanging job lost its lease and was done again by the next delivery
    redelivered = {entry[1] for entry in lines(outs) if entry[0] == "done" and entry[2] != "1"}
    assert hanging <= redelivered
    dead, _ = client.peek("work.dead", limit=100)
    assert sorted(m.value for m in dead) == sorted(poison)  # after 3 deliveries each
    assert client.info("work").inflight == 0
    assert all(p.returncode == 0 for p in procs), [Path(f"{o}.err").read_text()[-2000:] for o in outs]


def test_sigterm_finishes_running_work_releases_the_rest_and_loses_nothing(H, redis, tmp_path):
    total = 200
    client = Client(H)
    client.add_batch("slow", [str(n) for n in range(100)])
    client.add_batch("slow", [str(n) for n in range(100, total)])
    procs, outs = start_workers(tmp_path, H, "slow", "slow", 1)
    try:
        deadline = time.monotonic() + 60
        while sum(e[0] == "done" for e in lines(outs)) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop(procs, timeout=5.0)  # exits within the lease of 5 s
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    entries = lines(outs)
    assert entries[-1] == ["exited"], Path(f"{outs[0]}.err").read_text()
    started = {e[1] for e in entries if e[0] == "start"}
    done = {e[1] for e in entries if e[0] == "done"}
    assert started == done  # running work was finished
    info = client.info("slow")
    assert info.inflight == 0  # acked what was done, released the rest at once
    pending = {m.value for page in [client.peek("slow", limit=100),
                                    client.peek("slow", limit=100,
                                                after=client.peek("slow", limit=100)[1])]
               for m in page[0]}
    assert done | pending == {str(n) for n in range(total)} and not done & pending


def test_the_example_workers_run_as_documented(H, redis, tmp_path):
    # examples/worker.py and examples/tx_worker.py: print each job, stop on SIGTERM, report
    client = Client(H)
    for name in ("worker.py", "tx_worker.py"):
        queue = f"ex-{name}"
        client.add_batch(queue, ["one", "two"])
        proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / name), H, queue],
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # worked on concurrently: in either order
            assert sorted(proc.stdout.readline().split()[1] for _ in "12") == ["one", "two"]
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)  # a claim in its long poll is cut short
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0 and out.strip() == "processed 2, failed 0", (name, out, err)
        assert client.info(queue).inflight == 0
