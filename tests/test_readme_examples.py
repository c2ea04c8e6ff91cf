"""README.rst's examples run as written: the complete example of "Push queues" (bash and curl
against a real server started with --push-private, as its first line says, and a real Redis)
and the producer of "Client library". Only what a test cannot take as written changes: the
server's address (the example's $H) and the push worker's port 8000 (a free one here)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, RedisProcess, ServerProcess, free_port


def example() -> str:
    """The shell lines of the example, from README.rst's literal block."""
    text = (ROOT / "README.rst").read_text("utf-8")
    section = text[text.index("\nPush queues\n===========\n"):]
    start = section.index("    $ twistd -n restmq --push-private &\n")
    block = []
    for line in section[start:].splitlines():
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block)


def script_and_replies(block: str) -> tuple[str, list[str]]:
    """The commands (after `$ `, with their heredoc and continuation lines) and the lines the
    README shows as replies or as the worker's output (comments dropped)."""
    commands, shown, in_heredoc = [], [], False
    for line in block.splitlines():
        if in_heredoc:
            commands.append(line)
            in_heredoc = line != "EOF"
        elif line.startswith("$ "):
            commands.append(line[2:])
            in_heredoc = "<<'EOF'" in line
        elif line.startswith("    ") and commands and commands[-1].endswith("\\"):
            commands.append(line)
        elif line.strip():
            shown.append(re.sub(r"\s+#.*$", "", line).strip())
    return "\n".join(commands), shown


@pytest.fixture
def push_server():
    redis = RedisProcess().start()
    server = ServerProcess(redis.port, "--push-private").start()
    yield server
    server.stop()
    redis.stop()


def test_the_push_example_runs_as_written(push_server, tmp_path):
    block = example()
    script, shown = script_and_replies(block)
    assert script.startswith("twistd -n restmq --push-private &")
    script = script.split("\n", 1)[1]  # the server is the fixture's
    port = free_port()
    script = script.replace("8000", str(port)).replace("python3 worker.py &",
                                                       f"{sys.executable} -u worker.py "
                                                       "> worker.out &")
    # the worker must listen before the first push (a person types slower than bash)
    script = script.replace("> worker.out &\n", "> worker.out &\nWORKER=$!\n"
                            f"until curl -s -o /dev/null http://127.0.0.1:{port}/; do "
                            "sleep 0.1; done\n", 1)
    run = subprocess.run(["bash", "-c", "set -e\n" + script + "\nkill $WORKER"],
                         env={"H": push_server.url, "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    # the curl replies, in order: the two keys, then the dead letter
    replies = [line for line in run.stdout.splitlines() if line.strip()]
    assert replies == [shown[0], shown[2], shown[-1]]
    # the worker printed each attempt, as the README shows
    worker = (tmp_path / "worker.out").read_text().splitlines()
    assert worker == [shown[1], shown[3], shown[4], shown[5]]


def literal_block_after(marker: str) -> str:
    """The indented literal block that follows `marker` in README.rst, dedented."""
    text = (ROOT / "README.rst").read_text("utf-8")
    rest = text[text.index(marker) + len(marker):].lstrip("\n")
    block = []
    for line in rest.splitlines():
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip() + "\n"


def test_the_client_library_producer_runs_as_written(push_server, tmp_path):
    # README "Client library": the producer, against this test's server (its URL replaces
    # the example's); the claim long-polls 20 s at most and finds the two messages due now
    code = literal_block_after("the ``restmq`` command. A producer::")
    assert "Client(\"http://127.0.0.1:8888\"" in code
    code = code.replace("http://127.0.0.1:8888", push_server.url)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["resize", "42.png", "a", "b"]
