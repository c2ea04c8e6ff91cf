"""What live delivery popped from Redis, under trouble: every popped message is handed out,
put back, or dropped with a log line naming it (purged meanwhile). A later step of a stepped
pop whose reply is slow, a purge that overtakes a put-back, a put-back held by a write pause,
and a SIGTERM while a consumer still has output buffered."""
from __future__ import annotations

import queue as queues
import re
import signal
import socket
import threading
import time

from tests.conftest import REDIS_TIMEOUT, SHORT_TIMEOUT
from tests.faults.load import Stream, pending_values, post, redis_client, wait_for
from tests.http_client import delete


class DelayProxy:
    """A TCP proxy in front of Redis that holds the replies on command connections for
    `delay` seconds (set at any time; each chunk keeps the delay in force when it arrived), as
    a slow link would; pub/sub connections are never held, so notifications can overtake the
    replies of commands."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [down, up]
            link = {"held": queues.Queue(), "subscriber": False}
            threading.Thread(target=self._pump, args=(down, up, link, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, link, False), daemon=True).start()
            threading.Thread(target=self._release, args=(link["held"], down),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, link: dict, upward: bool) -> None:
        held = None if upward else link["held"]
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upward:
                    link["subscriber"] = link["subscriber"] or b"SUBSCRIBE" in data
                    dst.sendall(data)
                else:
                    delay = 0.0 if link["subscriber"] else self.delay
                    held.put((time.monotonic() + delay, data))
        except OSError:
            pass
        if held is not None:
            held.put((0.0, b""))
        else:
            _shut(dst)

    @staticmethod
    def _release(held, dst: socket.socket) -> None:
        while True:
            due, data = held.get()
            if not data:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                dst.sendall(data)
            except OSError:
                break
        _shut(dst)

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            _shut(sock)
            sock.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def roundrobin_queue(url: str, port: int, queue: str) -> None:
    assert post(url, f"/p/{queue}", {"policy": "roundrobin"}) == 200
    client = redis_client(port)
    try:
        client("SET", f"queuestat::{queue}", "1")
    finally:
        client.close()


def numsub(port: int, queue: str) -> int:
    client = redis_client(port)
    try:
        return client("PUBSUB", "NUMSUB", f"{queue}:PUBSUB")[1]
    finally:
        client.close()


def keyed_stream(url: str, queue: str, **options) -> tuple[Stream, list[str]]:
    keys: list[str] = []
    stream = Stream(url, queue, lambda message: keys.append(message["key"]), **options)
    assert stream.status == 200
    stream.start()
    return stream, keys


# -- a later step of a stepped live pop -------------------------------------------------------

# One script (so that no pop runs in between): `first`, 1,500 dead entries, `second`, `third`.
DEAD_RUN = """
local q = ARGV[1]
local function push(value)
  local key = q .. ':' .. redis.call('INCR', q .. ':UUID')
  if value then redis.call('SET', key, value) end
  redis.call('LPUSH', q .. ':queue', key)
  return key
end
local keys = {push('first')}
for i = 1, 1500 do push(nil) end
keys[2] = push('second')
keys[3] = push('third')
redis.call('SADD', 'QUEUESET', q)
redis.call('PUBLISH', q .. ':PUBSUB', '{"type": "wake", "db": 0}')
return keys
"""


def test_a_live_pop_hands_out_what_a_late_later_step_popped(procs):
    """The pop skips the dead entries in two steps; the second step's reply comes 2.6 s
    after the first was sent, past the command timeout (2 s): no client waits for a live pop,
    so what that step popped (Redis deleted it) is still handed out."""
    queue = "lateq"
    redis = procs.redis()
    proxy = DelayProxy(redis.port)
    try:
        server = procs.server(proxy.port, *SHORT_TIMEOUT)
        roundrobin_queue(server.url, redis.port, queue)
        stream, delivered = keyed_stream(server.url, queue)
        wait_for(lambda: numsub(redis.port, queue) == 1, 10, message="the consumer registered")
        proxy.delay = 0.65 * REDIS_TIMEOUT  # below the command timeout, twice above it
        admin = redis_client(redis.port)
        try:
            keys = admin("EVAL", DEAD_RUN, 0, queue)
        finally:
            admin.close()
        wait_for(lambda: len(delivered) == 3 or "stopped early" in server.log(), 30,
                 message="the three messages delivered")
        assert delivered == keys, (delivered, pending_values(redis.port, queue), server.log())
        stream.close()
    finally:
        proxy.close()


# -- put-backs under trouble ----------------------------------------------------------------------

SIZE, COUNT = 200_000, 20  # the backlog: one pop takes 6 messages (the 6th passes 1 MiB)


def silent_stream(url: str, queue: str) -> Stream:
    """A consumer that reads its response head and nothing more: the second message handed to
    it fills its output, so the rest of a batch goes back to Redis."""
    return Stream(url, queue, stalled=True)


def pop_a_stopped_backlog(server, redis, proxy, queue: str,
                          delay: float = 1.5) -> tuple[list[str], Stream]:
    """A roundrobin backlog of COUNT messages and a silent consumer; then replies to commands
    are held for `delay` seconds and the queue is started: returns the keys once Redis ran the
    pop (the server has not heard of it yet), and the consumer."""
    assert post(server.url, f"/p/{queue}", {"policy": "roundrobin"}) == 200
    assert post(server.url, f"/control/{queue}", {"status": "stop"}) == 200
    keys = []
    for i in range(COUNT):
        assert post(server.url, f"/q/{queue}", {"value": f"{i:06d}" + "x" * (SIZE - 6)}) == 200
        keys.append(f"{queue}:{i + 1}")
    silent = silent_stream(server.url, queue)
    wait_for(lambda: numsub(redis.port, queue) == 1, 10, message="the consumer registered")
    # Redis knows the purge script from now on: the purge below runs at its first attempt.
    assert delete(server.url, "/q/other").status == 200
    proxy.delay = delay
    admin = redis_client(redis.port)
    try:
        admin("SET", f"queuestat::{queue}", "1")
        admin("PUBLISH", f"{queue}:PUBSUB", '{"type": "wake", "db": 0}')
        wait_for(lambda: admin("LLEN", f"{queue}:queue") < COUNT, 10, interval=0.01,
                 message="the pop ran")
    finally:
        admin.close()
    return keys, silent


def test_a_put_back_held_by_a_write_pause_past_its_deadline_is_retried(procs):
    """Redis pauses writes (CLIENT PAUSE WRITE, as FAILOVER does) just after the pop: the
    put-back waits past its deadline and is refused then; it is tried again. With the
    command timeout at 2 s, replies held for 1 s and a pause of 2.5 s, the put-back waits
    about 1.5 s: past its deadline (a second after it was sent), before the watchdog's 503."""
    queue = "pausedq"
    redis = procs.redis()
    proxy = DelayProxy(redis.port)
    try:
        server = procs.server(proxy.port, *SHORT_TIMEOUT)
        keys, silent = pop_a_stopped_backlog(server, redis, proxy, queue,
                                             delay=REDIS_TIMEOUT / 2)
        admin = redis_client(redis.port)
        try:
            admin("CLIENT", "PAUSE", str(int(1250 * REDIS_TIMEOUT)), "WRITE")
            # Two messages filled the silent consumer's output; three go back.
            wait_for(lambda: admin("LLEN", f"{queue}:queue") == COUNT - 2
                     or "could not be put back" in server.log(), 30, interval=0.1,
                     message="the put-back")
            assert "could not be put back" not in server.log()
            pending = admin("LRANGE", f"{queue}:queue", 0, -1)
        finally:
            admin.close()
        assert pending[::-1] == keys[2:], server.log()
        silent.close()
    finally:
        proxy.close()


def test_a_batch_popped_before_a_purge_is_not_put_back_after_it(procs):
    """The purge's notification arrives while the pop's reply is still on its way: the
    batch, which nobody can take any more (the purge ended the consumer), is dropped as
    purged instead of coming back after the purge."""
    queue = "purgedq"
    redis = procs.redis()
    proxy = DelayProxy(redis.port)
    try:
        server = procs.server(proxy.port)
        keys, silent = pop_a_stopped_backlog(server, redis, proxy, queue)
        assert delete(server.url, f"/q/{queue}").status == 200
        wait_for(lambda: "dropped as purged" in server.log()
                 or pending_values(redis.port, queue), 15, interval=0.1,
                 message="the batch dropped or put back")
        time.sleep(0.5)  # a put-back would be visible by now (its reply is held, not it)
        assert [v[:6] for v in pending_values(redis.port, queue)] == [], server.log()
        dropped = [line for line in server.log().splitlines() if "dropped as purged" in line]
        assert len(dropped) == 1 and ", ".join(keys[:6]) + " popped" in dropped[0], dropped
        silent.close()
    finally:
        proxy.close()


# -- SIGTERM while a consumer still has output buffered --------------------------------------------

class SlowReader(threading.Thread):
    """A comet consumer that reads 16 KiB every 50 ms until the server closes: `keys` is
    every message key it got."""

    def __init__(self, url: str, queue: str):
        super().__init__(daemon=True)
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        self.sock.settimeout(30)
        self.sock.connect((host, int(port)))
        self.sock.sendall(f"GET /c/{queue} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        self.data = bytearray()
        self.start()

    def run(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(16384)
                if not chunk:
                    break
                self.data += chunk
                time.sleep(0.05)
        except OSError:
            pass

    @property
    def keys(self) -> set[str]:
        return set(re.findall(rb'"key": "([^"]+)"', bytes(self.data)))


def test_sigterm_hands_out_what_a_slow_consumer_was_given_before_it_exits(procs):
    """Messages written for a consumer that reads slowly sit in the server's buffers: a
    normal stop waits until they are out (bounded) instead of throwing them away."""
    queue = "termq"
    redis = procs.redis()
    server = procs.server(redis.port)
    assert post(server.url, f"/p/{queue}", {"policy": "roundrobin"}) == 200
    reader = SlowReader(server.url, queue)
    wait_for(lambda: numsub(redis.port, queue) == 1, 10, message="the consumer registered")
    keys = []
    for i in range(400):
        assert post(server.url, f"/q/{queue}", {"value": f"{i:06d}" + "y" * 2000}) == 200
        keys.append(f"{queue}:{i + 1}".encode())
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(30)
    reader.join(30)
    admin = redis_client(redis.port)
    try:
        pending = set(k.encode() for k in admin("LRANGE", f"{queue}:queue", 0, -1))
    finally:
        admin.close()
    lost = [key for key in keys if key not in reader.keys and key not in pending]
    assert not lost, (len(lost), len(reader.keys), len(pending), server.log()[-3000:])
