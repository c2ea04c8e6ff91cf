"""A private RabbitMQ node with the management plugin, the HTTP peer RestMQ is compared with.

Debian's `rabbitmq-server`, on 127.0.0.1 only, with every file (Mnesia, logs, config, the
enabled-plugins file, the Erlang cookie) in a temporary directory and ports of its own, so
it neither reads nor touches a system RabbitMQ. Erlang's port mapper (epmd) is started here
too, on a port of its own, so the node never starts a shared one on 4369; both are stopped
by PID.

The benchmark drives the management HTTP API (what a user picks for RabbitMQ over HTTP):
publish = POST /api/exchanges/%2F/amq.default/publish, get = POST /api/queues/%2F/<q>/get
with ackmode ack_requeue_false. Only the prefill before the get runs uses AMQP (pika), the
way RestMQ's queue is prefilled straight in Redis: it is not measured.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVER_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the real one, not the su wrapper
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()  # guest works on loopback only
POLICY_RC = Path("/usr/sbin/policy-rc.d")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RabbitError(RuntimeError):
    pass


def ensure_installed(log) -> str | None:
    """None if the server is there (installing Debian's package first when it is missing and
    this runs as root with apt-get), else why the section has to be skipped."""
    if os.path.exists(SERVER_SCRIPT) and shutil.which("epmd"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return ("rabbitmq-server is not installed and this run is not root with apt-get "
                "(as root: `apt-get install -y rabbitmq-server`)")
    log("installing Debian's rabbitmq-server (once)")
    # The package's postinst starts a system RabbitMQ (and epmd on 4369) unless a
    # policy-rc.d forbids it; where none exists, one is put in place for the install only.
    ours = not POLICY_RC.exists()
    if ours:
        POLICY_RC.write_text("#!/bin/sh\n# restmq bench: no service start during install\n"
                             "exit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-qq", "rabbitmq-server"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:  # a stale package list: update once and retry
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        if ours:
            POLICY_RC.unlink()
    if proc.returncode != 0 or not os.path.exists(SERVER_SCRIPT):
        return f"installing rabbitmq-server failed: {(proc.stderr or proc.stdout)[-500:]}"
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return kids


def _find_beam(root: int) -> int | None:
    """The Erlang VM among root's descendants: the start script runs helpers (and erl's
    own shell wrappers) before it, so its first child is not always the VM."""
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip().startswith("beam"):
                    return pid
        except OSError:
            continue
        todo += _children(pid)
    return None


class RabbitMQ:
    def __init__(self, directory: Path, amqp_port: int, http_port: int, dist_port: int,
                 epmd_port: int) -> None:
        self.dir = directory
        self.amqp_port, self.http_port = amqp_port, http_port
        self.dist_port, self.epmd_port = dist_port, epmd_port
        self.base = f"http://127.0.0.1:{http_port}"
        self.epmd: subprocess.Popen | None = None
        self.script: subprocess.Popen | None = None
        self.beam_pid: int | None = None  # the Erlang VM, the script's child
        self.logfile = directory / "rabbitmq.out"
        self._log = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 90.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"management.tcp.port = {self.http_port}\n"
            "management.tcp.ip = 127.0.0.1\n")
        self._log = open(self.logfile, "wb")
        self.epmd = subprocess.Popen(
            [shutil.which("epmd"), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        env = {
            **os.environ,
            "HOME": str(self.dir),  # the Erlang cookie goes here
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": f"restmq-bench-{os.getpid()}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),  # none: not /etc's
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.dir / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
        }
        self._wait_epmd()
        self.script = subprocess.Popen([SERVER_SCRIPT], cwd=self.dir, env=env,
                                       stdout=self._log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.script.poll() is not None:
                raise RabbitError(f"rabbitmq-server exited with {self.script.returncode}:\n"
                                  f"{self.log_tail()}")
            if self.beam_pid is None:
                self.beam_pid = _find_beam(self.script.pid)
            try:
                if self.api("GET", "/api/overview")[0] == 200:
                    self.beam_pid = _find_beam(self.script.pid)
                    if self.beam_pid is None:
                        raise RabbitError("the management API answers but no Erlang VM runs "
                                          "under the start script")
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RabbitError(f"the management API did not answer within {timeout:.0f} s:\n"
                          f"{self.log_tail()}")

    def _wait_epmd(self, timeout: float = 10.0) -> None:
        import socket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.epmd.poll() is not None:
                raise RabbitError(f"epmd exited with {self.epmd.returncode}:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.epmd_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RabbitError("epmd did not listen")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the start script, which passes it on to the VM and waits for it; then
        the VM and epmd by PID, killed if they outlive the timeout."""
        if self.script is not None and self.script.poll() is None:
            self.script.send_signal(signal.SIGTERM)
            try:
                self.script.wait(timeout)
            except subprocess.TimeoutExpired:
                self.script.kill()
                self.script.wait()
        if self.beam_pid is not None:
            deadline = time.monotonic() + 10
            while _alive(self.beam_pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(self.beam_pid) and b"beam" in Path(
                    f"/proc/{self.beam_pid}/cmdline").read_bytes():
                os.kill(self.beam_pid, signal.SIGKILL)
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            try:
                self.epmd.wait(10)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
                self.epmd.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ HTTP API

    def api(self, method: str, path: str, body: object | None = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": AUTH,
                                              "Content-Type": "application/json"})
        try:
            with _NO_PROXY.open(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def versions(self) -> tuple[str, str]:
        status, overview = self.api("GET", "/api/overview")
        if status != 200:
            return "unknown", "unknown"
        return overview.get("rabbitmq_version", "?"), overview.get("erlang_version", "?")

    def declare(self, queue: str) -> None:
        # Not durable, like RestMQ on a Redis without persistence (the benchmark's Redis
        # saves nothing); messages published over HTTP are transient by default.
        status, body = self.api("PUT", f"/api/queues/%2F/{queue}",
                                {"durable": False, "auto_delete": False})
        if status not in (201, 204):
            raise RabbitError(f"declaring {queue}: {status} {body!r}")

    def depth(self, queue: str) -> int:
        """Messages ready in `queue` now. The queue's own statistics lag by seconds, so this
        fetches one message with ack_requeue_true (put back at once) and reads the
        message_count that comes with it: the messages left besides that one."""
        status, body = self.api("POST", f"/api/queues/%2F/{queue}/get",
                                {"count": 1, "ackmode": "ack_requeue_true",
                                 "encoding": "auto"})
        if status != 200:
            raise RabbitError(f"get from {queue}: {status} {body!r}")
        return body[0]["message_count"] + 1 if body else 0

    def top_up(self, queue: str, target: int) -> int:
        """Publish over AMQP until `queue` holds at least `target` messages."""
        import pika  # bench/requirements.txt
        have = self.depth(queue)
        if have >= target:
            return have
        params = pika.ConnectionParameters("127.0.0.1", self.amqp_port,
                                           credentials=pika.PlainCredentials("guest", "guest"))
        conn = pika.BlockingConnection(params)
        try:
            channel = conn.channel()
            for _ in range(target - have):
                channel.basic_publish(exchange="", routing_key=queue, body=b"hello")
        finally:
            conn.close()  # after every publish has been written
        # Publishing is asynchronous: wait until the queue has them all (a few ms).
        deadline = time.monotonic() + 30
        while (have := self.depth(queue)) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        return have


PUBLISH_BODY = {"properties": {}, "routing_key": "", "payload": "hello",
                "payload_encoding": "string"}
GET_BODY = {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}
