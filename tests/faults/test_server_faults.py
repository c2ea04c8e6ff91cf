"""The server killed (-9) under load and replaced by a new process on the same Redis: nothing
that was pending is lost, and once everything is consumed and the retention has passed no
message key is left behind."""
from __future__ import annotations

import re
import time

from tests.faults.load import (Load, Target, assert_replies_clean, figures, pending_values,
                               redis_client, scan_keys, wait_for)

QUEUE = "crashq"
RETENTION = 2


def redis_client_call(port, *args):
    client = redis_client(port)
    try:
        return client(*args) or []
    finally:
        client.close()


def test_server_kill9_and_restart_keeps_pending_messages_and_leaves_no_orphans(procs):
    redis = procs.redis()
    first = procs.server(redis.port, "--consumed-ttl", str(RETENTION))
    target = Target(first.url)
    # Consumers mix hard gets, JSON takes and JSON peeks (which create `:refcount` keys).
    load = Load(target, QUEUE, mix=True)
    with load:
        load.wait_successes(300)
        procs.kill9_server(first)
        # After the kill, not before: a request started while SIGKILL was on its way may be
        # cut too, and only requests started after this moment certainly were not.
        killed = time.monotonic()
        # Nothing touches Redis until the new server is up: this is the state the kill left.
        pending_at_kill = set(redis_client_call(redis.port, "LRANGE", f"{QUEUE}:queue", 0, -1))
        keys_at_kill = set(scan_keys(redis.port, f"{QUEUE}:*"))
        second = procs.server(redis.port, "--consumed-ttl", str(RETENTION))
        target.url = second.url
        restarted = time.monotonic()
        load.wait_successes(200, since=restarted)  # adds and gets on the new server
        load.stop_producers()
        # The consumers go on until the queue is empty.
        wait_for(lambda: not pending_values(redis.port, QUEUE), 30, interval=0.2,
                 message="queue drained")
        load.stop()

    report = load.history.check(pending_values(redis.port, QUEUE))
    errors = load.log.errors()
    # Requests the kill cut: their outcome is unknown to the client. A cut get or take may
    # have popped its message just before the process died: that message is lost with it
    # (at most once per cut request), and only a message acknowledged before the kill.
    cut = [e for e in errors if e.started < killed]
    cut_gets = [e for e in cut if e.role in ("consume", "take")]
    cut_adds = [e for e in cut if e.role == "produce"]
    lost_before_kill = [v for v in report.lost if load.history.acked_at.get(v, 0) < killed]
    explained, pending_then_lost = [], []
    for value in report.lost:
        key = load.history.keys.get(value)
        if key in pending_at_kill:
            pending_then_lost.append(key)
            state = "PENDING at the kill, lost afterwards"
        elif key in keys_at_kill:
            state = "popped by a hard get the kill cut (retired, not pending)"
        else:
            state = "popped by a take the kill cut (deleted)"
        explained.append(f"{value} -> {key}: {state}")
        print("LOST", explained[-1], flush=True)

    allowed = {f"{QUEUE}:UUID", "QUEUESET", f"queuestat::{QUEUE}", f"{QUEUE}:queuepolicy"}

    def orphans_left():
        return [k for k in scan_keys(redis.port) if k not in allowed]

    # Consumed values expire after the retention: wait for that, or fail with what is left.
    try:
        wait_for(lambda: not orphans_left(), RETENTION + 10, interval=0.2,
                 message="every consumed value to expire")
    except AssertionError:
        pass  # reported below, with the figures
    keys = scan_keys(redis.port)
    orphans = [k for k in keys if k not in allowed]
    message_orphans = [k for k in orphans
                       if re.fullmatch(re.escape(QUEUE) + r":\d+(:refcount)?", k)]
    figures("server_kill9", lost=len(report.lost), duplicated=len(report.duplicated),
            unexpected=len(report.unexpected), acked=report.acked, received=report.received,
            pending=report.pending, unknown_adds=report.unknown,
            unknown_adds_stored=report.unknown_stored, client_errors=len(errors),
            requests_cut=len(cut),
            cut_gets=len(cut_gets), cut_adds=len(cut_adds),
            orphan_keys=len(orphans),
            keys_left=keys, statuses=dict(load.log.statuses()))
    assert not report.duplicated and not report.unexpected, report.details()
    assert_replies_clean(load.log)
    # Every acknowledged message is received or pending, except those popped by a request
    # the kill cut (none, usually).
    assert len(report.lost) <= len(cut_gets), (report.details(), explained)
    assert lost_before_kill == report.lost, (report.details(), explained)
    assert not pending_then_lost, explained
    # Client errors only at the kill: none on the new server.
    assert all(e.started < restarted for e in errors), [e.error for e in errors][:5]
    assert not orphans, orphans[:20]
    assert not message_orphans
