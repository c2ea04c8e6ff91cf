"""contrib/prometheus/ and contrib/grafana/: the scrape configuration and the alert rules pass
promtool (their syntax, and the rules' own unit tests of series), a live `/metrics` reply of
a real server passes `promtool check metrics`, and every metric the rules and the Grafana
board name is one that `/metrics` exports (so a renamed series cannot leave a silent panel or
an alert that never fires)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import get, post
from tests.push_target import Target
from tests.util import wait_until

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "contrib" / "prometheus"
BOARD = ROOT / "contrib" / "grafana" / "restmq.json"
NAME = re.compile(r"\brestmq_[a-z0-9_]+\b")
# The sample names a family of each type gives (the text format's suffixes).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"), "gauge": ("",), "untyped": ("",)}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing (Debian package prometheus): `make test` installs it")
    return found


def run(*argv: str, stdin: bytes | None = None, cwd: Path = PROMETHEUS) -> str:
    out = subprocess.run(argv, input=stdin, capture_output=True, cwd=cwd, timeout=60)
    text = out.stdout.decode() + out.stderr.decode()
    assert out.returncode == 0, text
    return text


def test_scrape_config_and_its_rule_file_are_valid(promtool):
    text = run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in text


def test_alert_rules_are_valid(promtool):
    text = run(promtool, "check", "rules", "restmq.rules.yml")
    assert "SUCCESS: 6 rules found" in text


def test_alert_rules_pass_their_unit_tests(promtool):
    assert "SUCCESS" in run(promtool, "test", "rules", "restmq.rules.test.yml")


def board_queries() -> list[str]:
    """Every PromQL text of the board: panel targets and the template variables' queries."""
    board = json.loads(BOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            exprs += [var["definition"], var["query"]["query"]]
    return exprs


def rule_queries() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "restmq.rules.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_board_queries_are_valid_promql(promtool, tmp_path):
    """Grafana's variables replaced by what Grafana would put there, each query becomes a
    recording rule that promtool parses."""
    rules = []
    for i, expr in enumerate(board_queries()):
        expr = expr.replace("$__rate_interval", "1m").replace("$queue", ".*")
        if expr.startswith("label_values("):
            expr = expr[len("label_values("):].split(",")[0]
        assert "$" not in expr, expr
        rules.append({"record": f"board:query_{i}", "expr": expr})
    (tmp_path / "board.rules.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "board", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run(promtool, "check", "rules",
                                                       "board.rules.yml", cwd=tmp_path)


@pytest.fixture(scope="module")
def metrics_text() -> str:
    """A live /metrics reply from a --counters server (its own Redis: its push dispatcher
    must not meet other modules' queues) with a plain queue with messages in each state, a
    dead-letter queue holding a message, a push queue that met a 200 and a 500, and a live
    consumer."""
    from tests.comet import CometClient
    redis = RedisProcess().start()
    server = ServerProcess(redis.port, "--counters", "--push-private").start()
    target = Target().start()
    answers = iter([(200, {}, b"")])
    target.behave = lambda r: next(answers, (500, {}, b""))
    comet = None
    try:
        url = server.url
        for v in "abc":
            assert post(url, "/q/jobs", {"value": v}).status == 200
        assert post(url, "/q/jobs", {"value": "later", "delay": "600"}).status == 200
        assert post(url, "/claim/jobs", {"lease": "600"}).status == 200
        assert post(url, "/config/hooks", {"push_url": target.url(), "max_attempts": "1",
                                           "dead_letter": "hooks.dead"}).status == 200
        assert post(url, "/q/hooks", {"value": "ok"}).status == 200
        wait_until(lambda: target.requests, what="the first push")
        assert post(url, "/q/hooks", {"value": "fails"}).status == 200
        client = redis.client()
        wait_until(lambda: client("LLEN", "hooks.dead:queue") == 1, what="the dead letter")
        client.close()
        comet = CometClient(url, "live")
        wait_until(lambda: 'kind="comet"' in get(url, "/metrics").body.decode(),
                   what="the live consumer")
        reply = get(url, "/metrics")
        assert reply.status == 200
        yield reply.body.decode("utf-8")
    finally:
        if comet is not None:
            comet.close()
        target.stop()
        server.stop()
        redis.stop()


def test_promtool_accepts_a_live_metrics_reply(promtool, metrics_text):
    # The reply holds what the board draws: push outcomes, dead letters, live consumers.
    for sample in ('restmq_push_attempts_total{outcome="http_error",queue="hooks"} 1.0',
                   'restmq_push_attempts_total{outcome="ok",queue="hooks"} 1.0',
                   'restmq_messages_delivered_total{queue="hooks",via="push"} 2.0',
                   'restmq_queue_dead_letter_messages{queue="hooks"} 1.0',
                   'restmq_queue_inflight_messages{queue="jobs"} 1.0'):
        assert sample in metrics_text
    # check metrics exits non-zero on a parse error and prints each lint finding.
    assert run(promtool, "check", "metrics", stdin=metrics_text.encode()) == ""


def exported_names(text: str) -> set[str]:
    """The sample names /metrics may carry, from its `# TYPE` lines (also of a family
    without samples at this moment)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            for suffix in SUFFIXES[kind]:
                names.add(family if family.endswith(suffix) else family + suffix)
    return names


def unknown_names(queries: list[str], exported: set[str]) -> set[str]:
    return {name for expr in queries for name in NAME.findall(expr)} - exported


def test_every_metric_the_board_and_the_rules_name_is_exported(metrics_text):
    exported = exported_names(metrics_text)
    assert {"restmq_redis_command_duration_seconds_bucket", "restmq_messages_added_total",
            "restmq_queue_messages"} <= exported
    board, rules = board_queries(), rule_queries()
    assert unknown_names(board, exported) == set()
    assert unknown_names(rules, exported) == set()
    # The check can fail: a misspelt series, a histogram's family name or a counter without
    # its suffix is reported.
    assert unknown_names(["rate(restmq_messages_add_total[1m])",
                          "restmq_redis_command_duration_seconds",
                          "restmq_push_attempts"], exported) == {
        "restmq_messages_add_total", "restmq_redis_command_duration_seconds",
        "restmq_push_attempts"}
    named = {name for expr in board for name in NAME.findall(expr)}
    # The board draws every queue gauge, the push outcomes and the Redis histogram.
    assert {"restmq_queue_messages", "restmq_queue_inflight_messages",
            "restmq_queue_delayed_messages", "restmq_queue_dead_letter_messages",
            "restmq_push_attempts_total", "restmq_redis_command_duration_seconds_bucket",
            "restmq_redis_up", "restmq_messages_added_total"} <= named
