"""Live consumers under trouble: comet consumers reset mid-stream under roundrobin (delivery
is at most once: only what was in flight to a vanished consumer may be lost), and a consumer
that never reads (cut at 16 MiB of unsent output while the others get every message)."""
from __future__ import annotations

from tests.faults.history import History
from tests.faults.load import (Load, RSSSampler, Stream, Target, assert_replies_clean, figures,
                               ident_of, pending_values, post, redis_client, rss_mb, wait_for)

BATCH = 10  # live-delivery batch size (docs/live-delivery.md#dispatch)


CONSUMERS = 4
RESETS = 10
MARKER = "marker-"  # added after the load, not part of its history


def number(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


class Tracked:
    """A comet consumer of the roundrobin queue and the key numbers it received, in order."""

    def __init__(self, url: str, queue: str, history: History):
        self.numbers: list[int] = []

        def on_message(message):
            if not message["value"].startswith(MARKER):
                history.consumed(ident_of(message["value"]), "comet")
            self.numbers.append(number(message["key"]))

        self.stream = Stream(url, queue, on_message)
        assert self.stream.status == 200
        self.stream.start()

    def last(self) -> int:
        return self.numbers[-1] if self.numbers else 0


def test_roundrobin_consumers_reset_mid_stream(procs):
    """Consumers reset (TCP RST) mid-stream under roundrobin lose what was written to them
    and nothing else. Message numbers are handed out in order, one each in rotation among the
    four registered consumers, so what the server wrote to a consumer after the last message
    it read is exactly every fourth number from there until the server learned of the reset
    (its replacement's first message comes later). Each reset is accounted for that way:
    the messages it lost are those numbers, the first of them being the ones that had
    reached its socket unread; every other message is received by someone."""
    queue = "rrq"
    redis = procs.redis()
    server = procs.server(redis.port)
    assert post(server.url, f"/p/{queue}", {"policy": "roundrobin"}) == 200
    history = History()
    consumers = [Tracked(server.url, queue, history) for _ in range(CONSUMERS)]
    everyone = list(consumers)
    load = Load(Target(server.url), queue, history, producers=2, consumers=0)
    resets = []  # (last number read, unread numbers, first number of the replacement)
    try:
        with load:
            since = 0  # the rotation is stable from the number after this one on
            for i in range(RESETS):
                victim = consumers[i % CONSUMERS]
                # It has read messages handed out in the stable rotation of four.
                wait_for(lambda: sum(n > since for n in victim.numbers) >= 10, 20,
                         message="messages to the victim")
                # Half the consumers vanish while reading, half after 10 ms of not reading
                # (what the server writes meanwhile reaches the socket, unread).
                victim.stream.reset(hold=0.01 if i % 2 else 0.0)
                unread = [number(m["key"]) for m in victim.stream.unread]
                replacement = consumers[i % CONSUMERS] = Tracked(server.url, queue, history)
                everyone.append(replacement)
                since = wait_for_first(replacement)
                resets.append((victim.last(), unread, since))
            load.stop()
        # Everything pending drains to the consumers; then a marker for each: what one got
        # before its marker is everything it will ever get of the load.
        wait_for(lambda: not pending_values(redis.port, queue), 20, interval=0.1,
                 message="queue drained by the live consumers")
        top = max(number(key) for key in history.keys.values())  # the load's last message
        markers = add_markers(server.url, queue, consumers, top)
    finally:
        for c in everyone:
            c.stream.close()

    failures = [c.stream.failure for c in everyone if c.stream.failure]
    assert not failures, failures
    report = history.check(pending_values(redis.port, queue))
    lost = sorted(number(history.keys[value]) for value in report.lost)
    per_reset = [sorted(n for n in lost if last < n < first) for last, _, first in resets]
    figures("roundrobin_resets", produced=report.produced, acked=report.acked,
            received=report.received, pending=report.pending, resets=len(resets),
            lost=len(lost), lost_per_reset=[len(n) for n in per_reset],
            unread_per_reset=[len(unread) for _, unread, _ in resets], markers=markers,
            duplicated=len(report.duplicated), unexpected=len(report.unexpected),
            statuses=dict(load.log.statuses()))
    assert_replies_clean(load.log)
    assert report.acked == report.produced  # no Redis fault here: every add acknowledged
    # At most once: nothing twice, nothing invented ...
    assert not report.duplicated and not report.unexpected, report.details()
    # ... every lost message was on its way to a consumer that was reset ...
    assert sorted(n for numbers in per_reset for n in numbers) == lost, (lost, resets)
    for (last, unread, first), numbers in zip(resets, per_reset):
        # ... it was written to that consumer: its share of the rotation after the last
        # message it read, with what had reached its socket first.
        assert numbers == [last + CONSUMERS * k for k in range(1, len(numbers) + 1)], \
            (last, unread, first, numbers)
        assert numbers[:len(unread)] == unread, (last, unread, first, numbers)


def wait_for_first(consumer: Tracked) -> int:
    wait_for(lambda: consumer.numbers, 20, message="the replacement's first message")
    return consumer.numbers[0]


def add_markers(url: str, queue: str, consumers: list[Tracked], top: int) -> int:
    """Add markers (numbered above `top`) until every consumer has received one: a consumer
    reads in order, so what it got before is all it got of what came before. Returns how
    many it took."""
    added = 0
    while not all(c.last() > top for c in consumers):
        assert added < 50, "some consumer never got a marker"
        assert post(url, f"/q/{queue}", {"value": f"{MARKER}{added}"}) == 200
        added += 1
        wait_for(lambda: sum(n > top for c in consumers for n in c.numbers) == added, 10,
                 message="the marker")
    return added


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
