"""Redis trouble under load: killed (-9) and restarted on its own data, paused, absent at
start-up, its connections killed. Four producer and four consumer threads with keep-alive
HTTP clients run throughout; at the end no acknowledged message may be missing."""
from __future__ import annotations

import time
from collections import Counter

from tests.conftest import REDIS_TIMEOUT, SHORT_TIMEOUT
from tests.faults.load import (Load, Target, assert_replies_clean, client_list, explain_lost,
                               figures, pending_values, probe, redis_client, settle, wait_for)
from tests.http_client import request

QUEUE = "faultq"
WARM = 200  # successful adds and gets of the load before a fault and after the recovery


def verdict(load: Load, redis_port: int, reference: float | None = None, queue: str = QUEUE):
    """The history's report; each lost value is explained from what Redis still holds."""
    report = load.history.check(pending_values(redis_port, queue))
    report.explained = explain_lost(load.history, report.lost, redis_port, reference=reference,
                                    limit=len(report.lost)) if report.lost else []
    for line in report.explained:
        print("LOST", line, flush=True)
    # At most once (README, Guarantees): a hard get that Redis ran but whose reply the lost
    # connection swallowed (kill -9, CLIENT KILL) consumed its message, retained by its key;
    # that is allowed, once per get answered 503. Anything else lost is a failure.
    popped = [line.split(" ", 1)[0] for line in report.explained
              if "retired (popped by a get" in line]
    get_503s = sum(e.role == "consume" and e.status == 503 for e in load.log.snapshot())
    print(f"FIGURES popped_by_unanswered_gets={len(popped)} get_503s={get_503s}", flush=True)
    assert len(popped) <= get_503s, (popped, get_503s)
    report.lost = [value for value in report.lost if value not in set(popped)]
    return report


def test_redis_kill9_and_restart_loses_no_acknowledged_message(procs):
    redis = procs.redis(durable=True)
    server = procs.server(redis.port)
    pid = server.proc.pid
    load = Load(Target(server.url), QUEUE)
    with load:
        load.wait_successes(WARM)
        killed = time.monotonic()
        redis.kill9()
        time.sleep(1.0)  # Redis stays down for a second
        redis.start()
        up = time.monotonic()
        recovery = settle(load, up)
        back = up + recovery
        load.wait_successes(WARM, since=back)
        load.stop()

    report = verdict(load, redis.port, reference=killed)
    entries = load.log.snapshot()
    during = [e for e in entries if e.started >= killed and e.ended <= up]
    worst = load.log.max_duration(killed, back)
    figures("redis_kill9", lost=len(report.lost), duplicated=len(report.duplicated),
            unexpected=len(report.unexpected), refused_but_stored=len(report.refused_but_stored),
            acked=report.acked, received=report.received, pending=report.pending,
            outage_replies=len(during), outage_503=sum(e.status == 503 for e in during),
            client_errors=len(load.log.errors()), worst_latency_s=worst,
            redis_down_s=up - killed, back_after_restart_s=recovery,
            statuses=dict(load.log.statuses()))
    assert report.ok, (report.details(), report.explained)
    assert_replies_clean(load.log)
    # While Redis was down every reply was a JSON 503, and none took longer than about 5 s.
    assert during, "no request ran while Redis was down"
    assert all(e.status == 503 and e.unavailable_json for e in during), \
        [(e.role, e.status, e.body[:100]) for e in during if e.status != 503][:5]
    assert worst < 7.0
    assert not load.log.errors(), [e.error for e in load.log.errors()[:5]]
    assert server.proc.poll() is None and server.proc.pid == pid
    assert recovery < 15.0


def test_redis_paused_for_more_than_twice_the_timeout(procs):
    """A pause of two and a half command timeouts (the shortest timeout, 2 s: a 5 s pause):
    requests sent during the pause, also on connections opened after the first 503s, all get
    their 503, and service comes back after it."""
    redis = procs.redis()
    server = procs.server(redis.port, *SHORT_TIMEOUT)
    load = Load(Target(server.url), QUEUE)
    with load:
        load.wait_successes(WARM)
        paused = time.monotonic()
        redis.pause()
        try:
            time.sleep(2.5 * REDIS_TIMEOUT)  # the pause itself
        finally:
            redis.resume()
        resumed = time.monotonic()
        recovery = settle(load, resumed)
        load.wait_successes(WARM, since=resumed + recovery)
        load.stop()

    report = verdict(load, redis.port, reference=resumed)
    entries = load.log.snapshot()
    # Replies that came back while Redis was stopped (a reply read just before the stop may
    # still be on its way: 50 ms of grace).
    in_pause = [e for e in entries if paused + 0.05 <= e.ended <= resumed]
    failed_after = load.log.last_failure(resumed)
    full_service = 0.0 if failed_after is None else failed_after - resumed
    worst = load.log.max_duration()
    figures("redis_sigstop", lost=len(report.lost), duplicated=len(report.duplicated),
            unexpected=len(report.unexpected), refused_but_stored=len(report.refused_but_stored),
            acked=report.acked, received=report.received, pending=report.pending,
            replies_in_pause=len(in_pause),
            successes_in_pause=sum(e.status in (200, 204) for e in in_pause),
            worst_latency_s=worst, first_success_after_cont_s=recovery,
            last_failure_after_cont_s=full_service,
            get_503s=sum(e.role == "consume" and e.status == 503 for e in entries),
            client_errors=len(load.log.errors()), statuses=dict(load.log.statuses()))
    assert report.ok, (report.details(), report.explained)
    assert_replies_clean(load.log)
    assert worst < REDIS_TIMEOUT + 2.5  # the timeout, the watchdog's look, scheduling
    assert in_pause and all(e.status == 503 for e in in_pause), \
        [(e.role, e.status, round(e.ended - paused, 2)) for e in in_pause if e.status != 503][:5]
    assert full_service < 5.0
    assert not load.log.errors(), [e.error for e in load.log.errors()[:5]]


def test_server_started_without_redis_fails_at_once_then_serves(procs):
    redis = procs.redis(start=False)
    server = procs.server(redis.port)
    # The first request waits for the first connection attempt, refused: then a 503.
    assert probe(server.url) == 503
    load = Load(Target(server.url), QUEUE)
    with load:
        wait_for(lambda: len(load.log.snapshot()) >= 100, 30, message="100 replies without Redis")
        before = load.log.snapshot()
        redis.start()
        up = time.monotonic()
        recovery = settle(load, up)
        load.wait_successes(WARM, since=up + recovery)
        load.stop()

    report = verdict(load, redis.port)
    worst_before = max((e.duration for e in before), default=0.0)
    figures("redis_absent_at_start", lost=len(report.lost), duplicated=len(report.duplicated),
            unexpected=len(report.unexpected), refused_but_stored=len(report.refused_but_stored),
            acked=report.acked, received=report.received, pending=report.pending,
            replies_without_redis=len(before), worst_latency_without_redis_s=worst_before,
            back_after_redis_start_s=recovery, statuses=dict(load.log.statuses()))
    assert report.ok, (report.details(), report.explained)
    assert_replies_clean(load.log)
    assert before and all(e.status == 503 and e.unavailable_json for e in before)
    assert worst_before < 1.0  # at once, not after the 5 s timeout
    assert not report.refused_but_stored  # Redis was not there: a 503 stored nothing
    assert recovery < 15.0


def test_redis_connections_killed_repeatedly(procs):
    redis = procs.redis()
    server = procs.server(redis.port)
    load = Load(Target(server.url), QUEUE)
    admin = redis_client(redis.port)
    kills = []
    try:
        with load:
            load.wait_successes(WARM)
            for _ in range(10):
                kills.append(admin("CLIENT", "KILL", "TYPE", "normal"))
                time.sleep(0.5)  # the kills are spread over five seconds
            last = time.monotonic()
            recovery = settle(load, last)
            load.wait_successes(WARM, since=last + recovery)
            load.stop()
    finally:
        admin.close()

    report = verdict(load, redis.port, reference=last)
    # Once the pool has finished reconnecting: ours + the pool (10) + the pub/sub connection.
    for _ in range(50):
        assert probe(server.url) == 200
    wait_for(lambda: len(client_list(redis.port)) <= 12, 15, interval=0.2,
             message="no more than the pool, the pub/sub connection and ours")
    rows = client_list(redis.port)
    last_commands = dict(Counter(row.get("cmd", "?") for row in rows))
    figures("redis_client_kill", lost=len(report.lost), duplicated=len(report.duplicated),
            unexpected=len(report.unexpected), refused_but_stored=len(report.refused_but_stored),
            acked=report.acked, received=report.received, pending=report.pending,
            connections_killed=sum(kills), kills=len(kills), back_after_last_kill_s=recovery,
            client_list_after=len(rows), client_last_commands=last_commands,
            get_503s=sum(e.role == "consume" and e.status == 503 for e in load.log.snapshot()),
            client_errors=len(load.log.errors()), statuses=dict(load.log.statuses()))
    assert report.ok, (report.details(), report.explained)
    assert_replies_clean(load.log)
    assert sum(kills) >= 10
    assert not load.log.errors(), [e.error for e in load.log.errors()[:5]]
    # pool (10) + pub/sub (1) + this CLIENT LIST connection (1)
    assert len(rows) <= 12, rows


def test_requests_answered_503_during_a_pause_change_nothing_afterwards(procs):
    """The pause, one request at a time: a 503 must mean the operation did not happen, also
    after Redis resumes and reads what was sent to it before the watchdog dropped the
    connection (Redis runs commands that reached its socket before the reset). An add
    carries a deadline for this; a get, take or purge that runs late takes messages that
    nobody receives. The server runs with the shortest command timeout (2 s): each 503
    comes sooner, and the write deadline still comes a second before it."""
    redis = procs.redis()
    server = procs.server(redis.port, *SHORT_TIMEOUT)
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    def call(method, path, body=None, timeout=15.0):
        return request(server.url, method, path, body=body, headers=form if body else None,
                       timeout=timeout)

    for value in ("first", "second", "third", "fourth"):
        assert call("POST", f"/q/{QUEUE}", f"value={value}").status == 200
    # Load every script into Redis first (on another queue): a script Redis does not know
    # yet fails there with NOSCRIPT and would hide what a late run does.
    assert call("GET", "/q/warmup").status == 204
    assert call("POST", "/queue", 'body={"cmd": "take", "queue": "warmup"}').status == 200
    assert call("DELETE", "/q/warmup").status == 200
    calls = [("add", "POST", f"/q/{QUEUE}", "value=late"),
             ("hard get", "GET", f"/q/{QUEUE}", None),
             ("take", "POST", "/queue", 'body={"cmd": "take", "queue": "%s"}' % QUEUE),
             ("purge", "DELETE", f"/q/{QUEUE}", None)]
    outcome, changed = {}, {}
    for name, method, path, body in calls:
        before = pending_values(redis.port, QUEUE)
        redis.pause()
        try:
            started = time.monotonic()
            reply = call(method, path, body, timeout=20)
            outcome[name] = (reply.status, round(time.monotonic() - started, 2))
        finally:
            redis.resume()
        # A request from a new connection: Redis handles it after what reached it before the
        # pause, which was ready to read first.
        assert probe(server.url) == 200
        after = pending_values(redis.port, QUEUE)
        if after != before:
            changed[name] = (before, after)
    figures("redis_pause_single_requests", outcomes=outcome, changed_after_503=changed)
    assert all(status == 503 for status, _ in outcome.values()), outcome
    assert not changed, f"a request answered 503 was run by Redis after the pause: {changed}"
