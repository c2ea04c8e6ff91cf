"""The `restmq` command (restmq.client.cli) run as a user runs it, against a real server:
each subcommand's JSON output and exit status."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.conftest import ROOT, free_port
from tests.test_client import OldServer, old_server  # noqa: F401 (a fixture)


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


def test_a_protocol_1_server_gives_status_5_for_what_needs_protocol_2(old_server):
    # the stub answers 404 to /health; nothing that needs protocol 2 is sent to it
    for args in (["claim", old_server, "q"], ["add", old_server, "q", "v", "--delay", "5"],
                 ["info", old_server, "q"], ["health", old_server]):
        status, out, err = restmq(*args)
        assert (status, out) == (5, ""), args
        assert json.loads(err)["status"] == 404 and "protocol" in json.loads(err)["error"]
    assert not [s for s in OldServer.seen if s != "GET /health"]
    # an add it can take, whose reply it drops: outcome unknown, status 4, sent once
    status, _, err = restmq("add", old_server, "q", "v")
    assert status == 4 and "no reply" in json.loads(err)["error"]
    assert [s for s in OldServer.seen if s.startswith("POST")] == ["POST /q/q key=None"]


def test_bad_usage_is_status_2_whatever_the_mistake(H, redis):
    for args in (["config", H, "jobs", "lease"], ["config", H, "jobs", "=5"],
                 ["--auth", "nocolon", "get", H, "jobs"], ["get", H],
                 ["claim", H, "jobs", "--limit", "many"]):
        status, out, err = restmq(*args)
        assert (status, out) == (2, ""), (args, err)
        assert err.strip(), args
    assert redis("EXISTS", "jobs:config") == 0


def documented_commands() -> dict[str, set[str]]:
    """The command table of docs/client.md: command -> the --options its row names."""
    text = (ROOT / "docs" / "client.md").read_text()
    table = text[text.index("## The restmq command"):]
    commands = {}
    for row in re.findall(r"^\| (`[^|]*)\|([^|]*)\|$", table, re.M):
        names = re.findall(r"`(\w+) URL", row[0])
        shared, *own = re.split(r"; (?=\w+ also )", row[1])   # "claim also `--lease`"
        for name in names:
            mine = [text for text in own if text.startswith(name + " also ")]
            commands[name] = set(re.findall(r"--[\w-]+", " ".join([shared, *mine])))
    assert len(commands) >= 11
    return commands


def test_help_lists_the_documented_commands_and_options():
    documented = documented_commands()
    status, out, _ = restmq("--help")
    assert status == 0
    listed = re.search(r"\{([\w,]+)\}", out).group(1).split(",")
    assert sorted(listed) == sorted(documented)
    for flag in ("--auth", "--auth-key", "--timeout", "--retries"):
        assert flag in out
    for name, options in documented.items():
        status, out, _ = restmq(name, "--help")
        assert status == 0
        assert set(re.findall(r"(?<![\w-])--[a-z][\w-]*", out)) - {"--help"} == options, name
        # every argument and option of a command says what it is, on its line or the next
        lines = out[out.index("positional arguments:"):].splitlines()
        for entry, following in zip(lines, lines[1:] + [""]):
            if re.match(r"  \S", entry):
                assert re.match(r"  \S+(?: \S+)?\s{2,}\S", entry) or \
                    re.match(r" {6,}\S", following), (name, entry)


def test_an_idempotency_key_covers_every_batch_of_a_long_add(H, redis):
    lines = "".join(f"line {n}\n" for n in range(150))
    status, out, err = restmq("add", H, "bulk", "--idempotency-key", "import-7", stdin=lines)
    assert (status, err) == (0, "")
    assert out["keys"] == [f"bulk:{n}" for n in range(1, 151)]
    # the same command again (a user re-running it after a lost reply) stores nothing more
    assert restmq("add", H, "bulk", "--idempotency-key", "import-7", stdin=lines)[:2] == \
        (0, out)
    assert redis("LLEN", "bulk:queue") == 150
    assert redis("LINDEX", "bulk:queue", "-1") == "bulk:1"  # the oldest, at the tail


def test_tail_into_a_pipe_that_closes_ends_quietly(H, redis):
    # `restmq tail URL q | head -1`: once head has its line and leaves, tail's next write meets a
    # closed pipe; it must end with status 0 and no traceback (as `yes | head` does)
    from tests.util import numsub, wait_until
    shell = subprocess.Popen(
        ["bash", "-c", "set -o pipefail; "
         f"{sys.executable} -m restmq.client.cli tail {H} piped --via comet | head -1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: numsub(redis, "piped") == 1, 10, "the tail's stream")
    restmq("add", H, "piped", "1")
    wait_until(lambda: numsub(redis, "piped") == 1, 10, "the stream still open")
    # head leaves after the first line; the second message makes tail write into nothing
    for n in range(2, 5):
        restmq("add", H, "piped", str(n))
    out, err = shell.communicate(timeout=20)
    assert json.loads(out) == {"key": "piped:1", "value": "1"}
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert shell.returncode == 0  # tail's own status too (pipefail)
