"""The soak: every fault of this tier in turn, for RESTMQ_SOAK_SECONDS (default 180), under
continuous pull load on one queue and broadcast comet consumers on another. Deselected unless
run with `-m soak` (`make soak`)."""
from __future__ import annotations

import os
import time

import pytest

from tests.faults.history import History
from tests.faults.load import (Load, RSSSampler, Stream, Target, assert_replies_clean,
                               client_list, explain_lost, figures, ident_of, pending_values,
                               redis_client, settle, wait_for)

PULL, LIVE = "soakq", "soaklive"
FAULTS = ("redis_kill9", "redis_pause", "client_kill", "server_kill9")
RETENTION = 3600  # consumed values stay readable: a lost message's key tells when it was popped


@pytest.mark.soak
def test_soak_every_fault_in_turn(procs):
    duration = float(os.environ.get("RESTMQ_SOAK_SECONDS", "180"))
    redis = procs.redis(durable=True)
    server = procs.server(redis.port, "--consumed-ttl", str(RETENTION))
    target = Target(server.url)
    load = Load(target, PULL, mix=True)
    live_history = History()
    live_load = Load(target, LIVE, live_history, producers=1, consumers=0, interval=0.005)
    readers: list[Stream] = []

    def on_message(message, index):
        live_history.consumed(ident_of(message["value"]), f"comet{index}")

    def open_readers():
        for index in range(2):
            stream = Stream(target.url, LIVE, lambda m, i=index: on_message(m, i))
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
            time.sleep(2.0)
            while time.monotonic() - started < duration:
                fault = FAULTS[turn % len(FAULTS)]
                turn += 1
                at = time.monotonic()
                timeline.append((fault, round(at - started, 2)))
                if fault == "redis_kill9":
                    redis.kill9()
                    time.sleep(1.0)
                    redis.start()
                elif fault == "redis_pause":
                    redis.pause()
                    try:
                        time.sleep(6.0)
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
                time.sleep(4.0)
            load.stop_producers()
            live_load.stop()
            wait_for(lambda: not pending_values(redis.port, PULL), 60, interval=0.2,
                     message="pull queue drained")
            wait_for(lambda: not pending_values(redis.port, LIVE), 30, interval=0.2,
                     message="live queue drained")
            time.sleep(1.0)
            load.stop()
        rss_peaks.append(sampler.stop())
        time.sleep(6.0)
        connections = len(client_list(redis.port))
    finally:
        sampler.stop()
        for stream in readers:
            stream.close()

    report = load.history.check(pending_values(redis.port, PULL))
    for line in explain_lost(load.history, report.lost, redis.port, retention=RETENTION,
                             reference=started):
        print("LOST", line, flush=True)
    live = live_history.check(pending_values(redis.port, LIVE))
    figures("soak", seconds=round(time.monotonic() - started), faults=turn,
            lost=len(report.lost), duplicated=len(report.duplicated),
            unexpected=len(report.unexpected), refused_but_stored=len(report.refused_but_stored),
            acked=report.acked, received=report.received, pending=report.pending,
            cut_gets_at_server_kills=cut_gets, live_acked=live.acked,
            live_lost=len(live.lost), live_unexpected=len(live.unexpected),
            rss_peaks_mb=[round(p, 1) for p in rss_peaks], connections_after=connections,
            timeline=timeline, recoveries=recoveries, worst_latency=worst,
            statuses=dict(load.log.statuses()))
    assert not report.duplicated and not report.unexpected, report.details()
    # Only a get or take cut by a server kill may take its message with it.
    assert len(report.lost) <= cut_gets, report.details()
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
