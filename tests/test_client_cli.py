"""The `restmq` command (restmq.client.cli) run as a user runs it, against a real server:
each subcommand's JSON output and exit status."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, free_port


def restmq(*args: str, stdin: str = "") -> tuple[int, object, str]:
    done = subprocess.run([sys.executable, "-m", "restmq.client.cli", *args], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=30)
    out = done.stdout.strip()
    return done.returncode, (json.loads(out) if out and "\n" not in out else out), done.stderr


def test_produce_consume_and_settle(H, redis):
    assert restmq("add", H, "jobs", "a") == (0, {"queue": "jobs", "keys": ["jobs:1"]}, "")
    assert restmq("add", H, "jobs", "--priority", "5", stdin="b\nc\n")[:2] == \
        (0, {"queue": "jobs", "keys": ["jobs:2", "jobs:3"]})
    status, out, _ = restmq("peek", H, "jobs", "--limit", "1")
    assert status == 0 and out["messages"][0] == {"key": "jobs:2", "value": "b", "priority": 5}
    assert out["next"] == "jobs:2"
    assert restmq("get", H, "jobs")[:2] == (0, {"queue": "jobs", "key": "jobs:2", "value": "b"})
    status, out, _ = restmq("claim", H, "jobs", "--lease", "30")
    assert status == 0 and out["messages"][0]["key"] == "jobs:3"
    receipt = out["messages"][0]["receipt"]
    assert restmq("ack", H, "jobs", receipt)[:2] == \
        (0, {"queue": "jobs", "acked": [receipt], "stale": []})
    assert restmq("ack", H, "jobs", receipt)[:2] == \
        (3, {"queue": "jobs", "acked": [], "stale": [receipt]})  # stale: status 3
    assert restmq("pop", H, "jobs", "--limit", "5")[:2] == \
        (0, {"queue": "jobs", "messages": [{"key": "jobs:1", "value": "a"}]})
    for empty in ("get", "pop", "claim"):
        assert restmq(empty, H, "jobs")[0] == 3  # nothing there


def test_config_info_redrive_health(H, redis):
    status, out, _ = restmq("config", H, "jobs", "max_attempts=1", "dead_letter=jobs.dead")
    assert status == 0 and out["set"] == ["dead_letter", "max_attempts"]
    assert restmq("config", H, "jobs")[1]["config"]["dead_letter"] == "jobs.dead"
    restmq("add", H, "jobs", "x")
    receipt = restmq("claim", H, "jobs")[1]["messages"][0]["receipt"]
    subprocess.run([sys.executable, "-c", "from restmq.client import Client; import sys; "
                    f"Client({H!r}).release('jobs', [{receipt!r}])"], cwd=ROOT, check=True)
    status, out, _ = restmq("info", H, "jobs")
    assert status == 0 and out["dead_letter"] == {"queue": "jobs.dead", "pending": 1}
    assert restmq("redrive", H, "jobs.dead")[:2] == (0, {
        "queue": "jobs.dead", "moved": [{"from": "jobs.dead:1", "to": "jobs:1"}],
        "remaining": 0, "stopped": None})
    assert restmq("config", H, "jobs", "--clear")[:2] == (0, {"queue": "jobs", "deleted": True})
    status, out, _ = restmq("health", H)
    assert status == 0 and out["status"] == "ok" and out["protocol"] == 2


def test_tail_prints_a_line_per_message_until_the_count(H, redis):
    tail = subprocess.Popen([sys.executable, "-m", "restmq.client.cli", "tail", H, "feed",
                             "--count", "2", "--via", "comet"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    from tests.util import numsub, wait_until
    wait_until(lambda: numsub(redis, "feed") == 1, 10, "the tail's stream")
    restmq("add", H, "feed", "1", "2")
    out, _ = tail.communicate(timeout=20)
    assert tail.returncode == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"key": "feed:1", "value": "1"}, {"key": "feed:2", "value": "2"}]


def test_errors_have_their_exit_status_and_reason(H, redis):
    assert restmq("add", H, "jobs", "v", "--ttl", "0")[::2] == \
        (1, '{"status": 400, "error": "invalid argument: ttl"}\n')
    assert restmq("--auth-key", "nope", "get", H, "jobs")[::2] == \
        (1, '{"status": 401, "error": "unauthorized"}\n')
    status, _, err = restmq("--retries", "0", "get", f"http://127.0.0.1:{free_port()}", "jobs")
    assert status == 4 and json.loads(err)["status"] is None
    assert restmq("get", "not a url", "jobs")[0] == 2
    assert restmq("frobnicate", H)[0] == 2
