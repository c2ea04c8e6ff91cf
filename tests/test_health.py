"""`/ping` and `/health` against real servers: each persistence mode on a Redis started with
that setting, CONFIG refused (renamed away, or not granted by Redis's ACL), Redis gone or
paused."""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import SHORT_TIMEOUT, RedisProcess, ServerProcess
from tests.http_client import get, request


def started(redis: RedisProcess, *args: str) -> ServerProcess:
    return ServerProcess(redis.port, *args).start()


def wait_for_log(server: ServerProcess, text: str, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        log = server.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{server.log()}")


@pytest.fixture
def private():
    """Start a private Redis with the given arguments and a server on it; both stopped after."""
    made = []

    def make(*redis_args: str, before_server=None, server_args=()):
        redis = RedisProcess(extra=redis_args).start()
        made.append(redis)
        if before_server:
            before_server(redis)
        server = started(redis, *server_args)
        made.append(server)
        return redis, server

    yield make
    for thing in reversed(made):
        thing.stop()


MODES = [
    (("--appendonly", "yes", "--appendfsync", "always"), "aof-always", []),
    (("--appendonly", "yes", "--appendfsync", "everysec"), "aof-everysec", []),
    (("--appendonly", "yes", "--appendfsync", "no"), "aof-no", ["persistence:aof-no"]),
    (("--save", "3600 1"), "rdb", ["persistence:rdb"]),
    ((), "none", ["persistence:none"]),
]


@pytest.mark.parametrize("redis_args, mode, warnings", MODES, ids=[m[1] for m in MODES])
def test_health_reports_the_persistence_mode_redis_runs_with(private, redis_args, mode, warnings):
    _, server = private(*redis_args)
    reply = get(server.url, "/health")
    assert reply.status == 200, reply.body
    assert reply.header("Content-Type") == "application/json"
    body = reply.json
    assert body["status"] == "ok" and body["protocol"] == 2
    from restmq import __version__
    assert body["version"] == __version__
    assert body["redis"]["persistence"] == mode
    assert body["redis"]["maxmemory_policy"] == "noeviction"
    assert body["redis"]["version"].count(".") == 2
    assert isinstance(body["redis"]["ping_ms"], float) and body["redis"]["ping_ms"] >= 0
    assert body["warnings"] == warnings
    for warning in warnings:  # the same warnings are logged once Redis is reached
        wait_for_log(server, f"Redis health warning: {warning}")


def test_an_evicting_memory_policy_is_a_warning(private):
    _, server = private("--appendonly", "yes", "--appendfsync", "always",
                        "--maxmemory-policy", "allkeys-lru")
    body = get(server.url, "/health").json
    assert body["redis"]["maxmemory_policy"] == "allkeys-lru"
    assert body["warnings"] == ["maxmemory-policy:allkeys-lru"]
    wait_for_log(server, "Redis health warning: maxmemory-policy:allkeys-lru")


def test_config_renamed_away_is_unknown_persistence(private):
    _, server = private("--rename-command", "CONFIG", "")
    body = get(server.url, "/health").json
    assert body["redis"]["persistence"] == "unknown"
    assert body["redis"]["maxmemory_policy"] is None
    assert body["warnings"] == ["persistence:unknown"]
    assert body["redis"]["version"]  # INFO still answers
    wait_for_log(server, "Redis health warning: persistence:unknown")


def test_config_not_granted_by_redis_acl_is_unknown_persistence(private):
    def deny_config(redis):
        client = redis.client()
        assert client("ACL", "SETUSER", "default", "-config") == "OK"
        client.close()

    _, server = private(before_server=deny_config)
    body = get(server.url, "/health").json
    assert body["redis"]["persistence"] == "unknown"
    assert body["warnings"] == ["persistence:unknown"]


def test_settings_are_reused_for_ten_seconds_then_read_again(private):
    redis, server = private()
    assert get(server.url, "/health").json["redis"]["persistence"] == "none"
    client = redis.client()
    client("CONFIG", "SET", "appendonly", "yes")
    started_at = time.monotonic()
    assert get(server.url, "/health").json["redis"]["persistence"] == "none"  # cached
    deadline = started_at + 30
    while time.monotonic() < deadline:
        if get(server.url, "/health").json["redis"]["persistence"] == "aof-everysec":
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the settings were never read again")
    assert time.monotonic() - started_at >= 9  # not before the 10 s (less our own slack)
    client.close()


def test_ping_never_asks_redis_and_health_is_503_once_redis_is_gone(private):
    redis, server = private()
    assert get(server.url, "/ping").status == 204
    assert get(server.url, "/health").status == 200
    redis.stop()
    reply = get(server.url, "/ping")
    assert reply.status == 204 and reply.body == b""
    assert reply.header("Content-Length") is None and reply.header("Content-Type") is None
    started_at = time.monotonic()
    reply = get(server.url, "/health")
    assert reply.status == 503 and reply.json == {"error": "redis unavailable"}
    assert time.monotonic() - started_at < 3  # fast, not the 5 s command timeout


def test_health_of_a_paused_redis_is_503_after_the_one_second_ping_deadline(private):
    redis, server = private()
    assert get(server.url, "/health").status == 200  # settings cached: only PING waits
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        started_at = time.monotonic()
        reply = get(server.url, "/health")
        waited = time.monotonic() - started_at
        assert reply.status == 503 and reply.json == {"error": "redis unavailable"}
        assert waited < 4  # the 1 s deadline, not the 5 s command timeout
        assert get(server.url, "/ping").status == 204
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    # The PING left unanswered at the deadline is not cancelled: its late reply does not
    # shift the replies of the connection's later commands.
    for _ in range(10):
        assert get(server.url, "/health").status == 200
    assert request(server.url, "POST", "/q/after", form={"value": "v"}).body == b"after:1\r\n"
    assert get(server.url, "/q/after").json["value"] == "v"


@pytest.mark.parametrize("path", ["/ping", "/health"])
def test_other_methods_are_405_with_allow_and_a_trailing_slash_is_404(H, path):
    for method in ("POST", "PUT", "DELETE", "HEAD", "OPTIONS"):
        reply = request(H, method, path)
        assert reply.status == 405, method
        assert reply.header("Allow") == "GET"
    assert get(H, path + "/").status == 404
    assert get(H, path + "x").status == 404


def test_ping_and_health_need_no_acl_section_nor_auth_key(private, tmp_path):
    acl = tmp_path / "acl.conf"
    acl.write_text("[rest:consumer]\nhosts_allow = 10.9.9.9\nhosts_deny = all\n"
                   "[rest:producer]\nhosts_allow = 10.9.9.9\nhosts_deny = all\n")
    _, server = private(server_args=("--acl", str(acl)))
    assert get(server.url, "/q/x").status == 401  # the file is in force
    assert get(server.url, "/ping").status == 204
    assert get(server.url, "/health").status == 200
    assert get(server.url, "/health", headers={"X-Auth-Key": "unknown"}).status == 200
