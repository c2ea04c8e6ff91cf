"""Live consumers under trouble: comet consumers reset mid-stream under roundrobin (delivery
is at most once: only what was in flight to a vanished consumer may be lost), and a consumer
that never reads (cut at 16 MiB of unsent output while the others get every message)."""
from __future__ import annotations

import time

from tests.faults.history import History
from tests.faults.load import (Load, RSSSampler, Stream, Target, assert_replies_clean, figures,
                               ident_of, pending_values, post, redis_client, rss_mb, wait_for)

BATCH = 10  # live-delivery batch size (docs/live-delivery.md#dispatch)


def test_roundrobin_consumers_reset_mid_stream(procs):
    queue = "rrq"
    redis = procs.redis()
    server = procs.server(redis.port)
    assert post(server.url, f"/p/{queue}", {"policy": "roundrobin"}) == 200
    history = History()

    def on_message(message):
        history.consumed(ident_of(message["value"]), "comet")

    def stream():
        s = Stream(server.url, queue, on_message)
        assert s.status == 200
        s.start()
        return s

    streams = [stream() for _ in range(4)]
    load = Load(Target(server.url), queue, history, producers=2, consumers=0)
    resets, received_by_reset, reset_at = 0, [], []
    try:
        with load:
            time.sleep(1.0)
            for i in range(10):
                victim = streams[i % len(streams)]
                # Half the consumers vanish while reading, half after 10 ms of not reading
                # (what the server wrote meanwhile is in flight when the RST comes).
                victim.reset(hold=0.01 if i % 2 else 0.0)
                resets += 1
                reset_at.append(time.monotonic())
                received_by_reset.append(victim.count)
                streams[i % len(streams)] = stream()
                time.sleep(0.4)
            time.sleep(1.0)
            load.stop()
        # Everything pending drains to the surviving consumers.
        wait_for(lambda: not pending_values(redis.port, queue), 20, interval=0.1,
                 message="queue drained by the live consumers")
        total = lambda: sum(s.count for s in streams)  # noqa: E731
        before = -1
        while before != total():  # quiet for 0.5 s
            before = total()
            time.sleep(0.5)
    finally:
        for s in streams:
            s.close()

    failures = [s.failure for s in streams if s.failure]
    assert not failures, failures
    report = history.check(pending_values(redis.port, queue))
    lost_in_reset = len(report.lost)
    figures("roundrobin_resets", produced=report.produced, acked=report.acked,
            received=report.received, pending=report.pending, resets=resets,
            lost_in_reset=lost_in_reset, bound=resets * BATCH,
            duplicated=len(report.duplicated), unexpected=len(report.unexpected),
            received_by_reset_consumers=received_by_reset, statuses=dict(load.log.statuses()))
    assert_replies_clean(load.log)
    assert report.acked == report.produced  # no Redis fault here: every add acknowledged
    # At most once: nothing twice, nothing invented ...
    assert not report.duplicated and not report.unexpected, report.details()
    # ... and produced = received + pending + lost in flight to a reset consumer.
    assert report.acked == len(set(history.received)) + report.pending + lost_in_reset
    assert lost_in_reset <= resets * BATCH, report.details()
    # Each lost message was acknowledged shortly before a reset: it was on its way to the
    # consumer that vanished, not dropped at some other time.
    for value in report.lost:
        acked = history.acked_at[value]
        assert any(0 <= at - acked < 2.0 for at in reset_at), (value, acked, reset_at)


def test_a_consumer_that_never_reads_is_cut_and_does_not_hold_back_the_others(procs):
    wide, lone = "wideq", "loneq"
    redis = procs.redis()
    server = procs.server(redis.port)
    sequences = ([], [])
    readers = [Stream(server.url, wide, lambda m, i=i: sequences[i].append(ident_of(m["value"])),
                      http10=(i == 1)) for i in range(2)]
    for reader in readers:
        reader.start()
    stalled_wide = Stream(server.url, wide, stalled=True)
    stalled_lone = Stream(server.url, lone, stalled=True)
    admin = redis_client(redis.port)

    def numsub(channel):
        return int(admin("PUBSUB", "NUMSUB", channel)[1])

    baseline = rss_mb(server.proc.pid)
    sampler = RSSSampler(server.proc.pid)
    sampler.start()
    size = 100_000
    wide_load = Load(Target(server.url), wide, producers=4, consumers=0, size=size, limit=100)
    lone_load = Load(Target(server.url), lone, producers=2, consumers=0, size=size, limit=150)
    try:
        assert numsub(f"{lone}:PUBSUB") == 1
        with wide_load, lone_load:
            wait_for(lambda: all(p.sent >= 100 for p in wide_load.producers)
                     and all(p.sent >= 150 for p in lone_load.producers), 60,
                     message="all messages sent")
            wide_load.stop()
            lone_load.stop()
        wide_acked = wide_load.history.count("acked")
        wait_for(lambda: all(r.count >= wide_acked for r in readers), 60, interval=0.1,
                 message="readers received everything")
        cut_after = wait_for(lambda: numsub(f"{lone}:PUBSUB") == 0, 30, interval=0.1,
                             message="the lone stalled consumer unsubscribed")
        wide_subscribed = numsub(f"{wide}:PUBSUB")  # the readers are still there
        peak = sampler.stop()
        stalled_wide.drain()
        stalled_lone.drain()
    finally:
        sampler.stop()
        admin.close()
        for reader in readers:
            reader.close()
        stalled_wide.close()
        stalled_lone.close()

    lone_pending = pending_values(redis.port, lone)
    cut_lines = server.log().count("more than 16 MiB behind")
    figures("stalled_consumer", pushed_mb=round((wide_acked + lone_load.history.count("acked"))
                                                * size / 1e6, 1),
            rss_baseline_mb=baseline, rss_peak_mb=peak, reader_counts=[r.count for r in readers],
            wide_acked=wide_acked, stalled_wide_received=stalled_wide.count,
            stalled_wide_mb=round(stalled_wide.bytes / 1e6, 1),
            stalled_lone_received=stalled_lone.count,
            stalled_lone_mb=round(stalled_lone.bytes / 1e6, 1),
            wide_numsub_after=wide_subscribed, lone_acked=lone_load.history.count("acked"),
            lone_pending=len(lone_pending),
            lone_lost_at_cut=lone_load.history.count("acked") - stalled_lone.count
            - len(lone_pending), numsub_drop_after_s=cut_after, cut_log_lines=cut_lines,
            stalled_end=[stalled_wide.end_error or "closed", stalled_lone.end_error or "closed"])
    assert_replies_clean(wide_load.log)
    assert_replies_clean(lone_load.log)
    assert wide_acked == 400 and lone_load.history.count("acked") == 300
    # Broadcast: both readers got every message, in the same order.
    expected = set(wide_load.history.keys)
    assert set(sequences[0]) == expected and sequences[0] == sequences[1]
    # The stalled consumers were cut: the stream ended, short of everything.
    assert stalled_wide.ended and stalled_wide.count < wide_acked
    assert stalled_lone.ended and stalled_lone.count < 300
    assert cut_lines >= 2
    assert wide_subscribed == 1
    assert peak < 300.0
    # Lost with the cut (at most once): what sat in the server's buffers for the stalled
    # consumer, i.e. up to 16 MiB, the kernel's send buffer and one batch; the rest of the
    # lone queue stayed pending once the process unsubscribed.
    lost_at_cut = lone_load.history.count("acked") - stalled_lone.count - len(lone_pending)
    wmem_max = int(open("/proc/sys/net/ipv4/tcp_wmem").read().split()[2])
    assert lost_at_cut * size <= 16 * 1024 * 1024 + wmem_max + BATCH * size
    assert {ident_of(v) for v in lone_pending} <= set(lone_load.history.keys)
