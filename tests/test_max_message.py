"""A queue's configured `max_message` holds for every way a message is added (REST, the JSON
protocol, XML-RPC, collectd, syslog), each refusing in its own format and writing nothing;
the configuration is written straight into Redis, as the configuration route would."""
from __future__ import annotations

import json
import socket
import xmlrpc.client

import pytest

from tests.conftest import ServerProcess
from tests.http_client import post, request
from tests.util import snapshot, wait_until


def configure(redis, queue: str, max_message: int) -> None:
    redis("HSET", f"{queue}:config", "max_message", max_message)


@pytest.fixture(scope="module")
def collectd_server(redis_proc):
    proc = ServerProcess(redis_proc.port, plugin="collectd").start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.final_log, proc.final_log


@pytest.fixture(scope="module")
def syslog_server(redis_proc):
    proc = ServerProcess(redis_proc.port, plugin="syslogd").start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.final_log, proc.final_log


def test_rest_add_answers_413(H, redis):
    configure(redis, "q", 3)
    before = snapshot(redis)
    reply = post(H, "/q/q", {"value": "four"})
    assert (reply.status, reply.json) == (413, {"error": "message too large"})
    assert snapshot(redis) == before
    reply = post(H, "/", {"queue": "q", "value": "abcd"})
    assert (reply.status, reply.json) == (413, {"error": "message too large"})
    assert post(H, "/q/q", {"value": "abc"}).body == b"q:1\r\n"


def test_json_protocol_add_answers_an_error_object(H, redis):
    configure(redis, "q", 3)
    before = snapshot(redis)
    body = json.dumps({"cmd": "add", "queue": "q", "value": "four"})
    reply = post(H, "/queue", {"body": body})
    assert (reply.status, reply.json) == (200, {"error": "message too large"})
    assert snapshot(redis) == before


def test_xmlrpc_set_faults_413(H, redis):
    configure(redis, "q", 3)
    before = snapshot(redis)
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.ServerProxy(H + "/xmlrpc").set("q", "four")
    assert (fault.value.faultCode, fault.value.faultString) == (413, "message too large")
    assert snapshot(redis) == before


def test_collectd_answers_413(collectd_server, redis):
    queue = "collectd_data"
    configure(redis, queue, 3)
    before = snapshot(redis)
    reply = request(collectd_server.url, "POST", "/collectd/data", body="[1, 2, 3]",
                    headers={"Content-Type": "application/json"})
    assert (reply.status, reply.json) == (413, {"error": "message too large"})
    assert snapshot(redis) == before


def test_syslog_drops_and_logs_a_message_too_large_and_goes_on(syslog_server, redis):
    queue = "syslogd:127.0.0.1"
    configure(redis, queue, 200)
    with socket.create_connection(("127.0.0.1", syslog_server.port), timeout=10) as sock:
        sock.sendall(b"<13>" + b"x" * 300 + b"\n<13>short one\n")
        wait_until(lambda: redis("LLEN", f"{queue}:queue") == 1, 10, "the next message",
                   details=syslog_server.log)
    (stored,) = [json.loads(redis("GET", k)) for k in redis("LRANGE", f"{queue}:queue", 0, -1)]
    assert stored["line"].endswith("short one")
    wait_until(lambda: "dropped: longer than the queue's max_message" in syslog_server.log(),
               5, "the log line")
