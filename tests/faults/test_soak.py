"""The soak: every fault of this tier in turn under continuous pull load on one queue and
broadcast comet consumers on another. A one-minute run is part of the suite; the long one,
RESTMQ_SOAK_SECONDS (default 180), is deselected unless run with `-m soak` (`make soak`)."""
from __future__ import annotations

import os
import time

import pytest

from tests.faults.history import History
from tests.faults.load import (Load, RSSSampler, Stream, Target, assert_replies_clean,
                               client_list, explain_lost, figures, ident_of, pending_values,
                               post, redis_client, settle, wait_for)

PULL, LIVE = "soakq", "soaklive"
FAULTS = ("redis_kill9", "redis_pause", "client_kill", "server_kill9")
RETENTION = 3600  # consumed values stay readable: a lost message's key tells when it was popped
MARKER = "marker"  # a live message added at the end, not part of the load's history


@pytest.mark.soak
def test_soak_every_fault_in_turn(procs):
    soak(procs, float(os.environ.get("RESTMQ_SOAK_SECONDS", "180")))


def test_soak_for_a_minute(procs):
    """Every fault at least once (a cycle of the four takes about 25 s); faults start for
    45 s, and with the last recovery and the checks the run takes about a minute."""
    soak(procs, float(os.environ.get("RESTMQ_SHORT_SOAK_SECONDS", "45")))


def soak(procs, duration: float) -> None:
    redis = procs.redis(durable=True)
    server = procs.server(redis.port, "--consumed-ttl", str(RETENTION))
    target = Target(server.url)
    load = Load(target, PULL, mix=True)
    live_history = History()
    live_load = Load(target, LIVE, live_history, producers=1, consumers=0, interval=0.005)
    readers: list[Stream] = []

    last_value: dict[int, str] = {}  # by position in `readers`

    def on_message(message, index, slot):
        last_value[slot] = message["value"]
        if message["value"] != MARKER:
            live_history.consumed(ident_of(message["value"]), f"comet{index}")

    def open_readers():
        for index in range(2):
            slot = len(readers)
            stream = Stream(target.url, LIVE, lambda m, i=index, n=slot: on_message(m, i, n))
            stream.start()
            readers.append(stream)

    open_readers()
    sampler = RSSSampler(server.proc.pid, interval=0.5)
    sampler.start()
    rss_peaks, recoveries, worst = [], [], []
    cut_gets = 0
    started = time.monotonic()
    turn = 0
    timeline = []
    try:
        with load, live_load:
            load.wait_successes(200)
            while time.monotonic() - started < duration:
                fault = FAULTS[turn % len(FAULTS)]
                turn += 1
                at = time.monotonic()
                timeline.append((fault, round(at - started, 2)))
                if fault == "redis_kill9":
                    redis.kill9()
                    time.sleep(1.0)  # Redis down for a second
                    redis.start()
                elif fault == "redis_pause":
                    redis.pause()
                    try:
                        time.sleep(6.0)  # past the 5 s timeout
                    finally:
                        redis.resume()
                elif fault == "client_kill":
                    for _ in range(3):
                        admin = redis_client(redis.port)
                        admin("CLIENT", "KILL", "TYPE", "normal")
                        admin.close()
                        time.sleep(0.3)
                else:
                    rss_peaks.append(sampler.stop())
                    procs.kill9_server(server)
                    cut_gets += sum(1 for e in load.log.snapshot()
                                    if e.status is None and e.started < at
                                    and e.role in ("consume", "take"))
                    server = procs.server(redis.port, "--consumed-ttl", str(RETENTION))
                    target.url = server.url
                    open_readers()
                    sampler = RSSSampler(server.proc.pid, interval=0.5)
                    sampler.start()
                back = time.monotonic()
                recoveries.append((fault, round(settle(load, back), 3)))
                worst.append((fault, round(load.log.max_duration(at, time.monotonic()), 3)))
                time.sleep(4.0)  # steady load between two faults
            load.stop_producers()
            live_load.stop()
            wait_for(lambda: not pending_values(redis.port, PULL), 60, interval=0.2,
                     message="pull queue drained")
            wait_for(lambda: not pending_values(redis.port, LIVE), 30, interval=0.2,
                     message="live queue drained")
            # Broadcast, in order: once the current readers have a marker added now, they have
            # everything that came before.
            assert post(target.url, f"/q/{LIVE}", {"value": MARKER}) == 200
            wait_for(lambda: all(last_value.get(slot) == MARKER
                                 for slot in (len(readers) - 2, len(readers) - 1)), 30,
                     message="the marker at both readers")
            load.stop()
        rss_peaks.append(sampler.stop())
        # Once the pool has reconnected after the faults: the pool (10), the pub/sub
        # connection and this one.
        connections = wait_for_connections(redis.port, 12)
    finally:
        sampler.stop()
        for stream in readers:
            stream.close()

    report = load.history.check(pending_values(redis.port, PULL))
    explained = explain_lost(load.history, report.lost, redis.port, retention=RETENTION,
                             reference=started, limit=len(report.lost))
    for line in explained:
        print("LOST", line, flush=True)
    # Gets and takes whose reply never came: cut by a server kill, or answered 503 because
    # the connection to Redis was lost after Redis ran them (README, Guarantees).
    get_503s = sum(e.role in ("consume", "take") and e.status == 503
                   for e in load.log.snapshot())
    live = live_history.check(pending_values(redis.port, LIVE))
    figures("soak", seconds=round(time.monotonic() - started), faults=turn,
            lost=len(report.lost), duplicated=len(report.duplicated),
            unexpected=len(report.unexpected), refused_but_stored=len(report.refused_but_stored),
            acked=report.acked, received=report.received, pending=report.pending,
            cut_gets_at_server_kills=cut_gets, get_503s=get_503s, live_acked=live.acked,
            live_lost=len(live.lost), live_unexpected=len(live.unexpected),
            rss_peaks_mb=[round(p, 1) for p in rss_peaks], connections_after=connections,
            timeline=timeline, recoveries=recoveries, worst_latency=worst,
            statuses=dict(load.log.statuses()))
    assert not report.duplicated and not report.unexpected, report.details()
    # Only a get or take whose reply never came may take its message with it: each lost
    # message was popped (retired by a hard get, or deleted by a take), one per such request.
    assert all("popped by a get" in line or "gone from Redis" in line for line in explained), \
        explained
    assert len(report.lost) <= cut_gets + get_503s, (report.details(), explained)
    assert_replies_clean(load.log)
    assert all(seconds < 15.0 for _, seconds in recoveries)
    assert all(seconds < 7.5 for _, seconds in worst)
    assert max(rss_peaks) < 300.0
    assert connections <= 12
    # Broadcast: each reader receives a message once; nothing invented.
    assert not live.unexpected
    per_reader = {}
    for value, sources in live_history.sources.items():
        for source in sources:
            per_reader.setdefault(source, []).append(value)
    for source, values in per_reader.items():
        assert len(values) == len(set(values)), source


def wait_for_connections(port: int, limit: int) -> int:
    """The number of Redis clients once it is at most `limit` (or after 15 s: then more)."""
    try:
        wait_for(lambda: len(client_list(port)) <= limit, 15, interval=0.2,
                 message=f"at most {limit} Redis clients")
    except AssertionError:
        pass  # reported with the figures, then asserted
    return len(client_list(port))
