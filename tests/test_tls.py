"""TLS listener (--ssl-cert / --ssl-key, and --endpoint): a round trip with a certificate the
test makes with openssl, TLS older than 1.2 refused, and replies whose going out is watched
(pops, claims) through the TLS layer."""
from __future__ import annotations

import socket
import ssl
import subprocess
import warnings

import pytest

from tests.conftest import RedisProcess, ServerProcess, free_port
from tests.test_pipelining import claim_with_a_request_behind_its_redis_reply
from tests.util import wait_until


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def tls_server(redis_proc, *args):
    server = ServerProcess(redis_proc.port, *args)
    server.url = f"https://127.0.0.1:{server.port}"
    return server.start()


def test_tls_round_trip_with_curl(redis_proc, redis, certificate):
    cert, key = certificate
    server = tls_server(redis_proc, "--ssl-cert", str(cert), "--ssl-key", str(key))
    try:
        add = subprocess.run(["curl", "-s", "--cacert", str(cert), "-d", "value=secret",
                              f"{server.url}/q/tls"], capture_output=True, timeout=30)
        assert add.stdout == b"tls:1\r\n"
        get = subprocess.run(["curl", "-s", "--tlsv1.2", "--cacert", str(cert),
                              f"{server.url}/q/tls"], capture_output=True, timeout=30)
        assert b'"value": "secret"' in get.stdout
    finally:
        server.stop()


def test_tls_older_than_1_2_is_refused(redis_proc, certificate):
    cert, key = certificate
    server = tls_server(redis_proc, "--ssl-cert", str(cert), "--ssl-key", str(key))
    try:
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # the old versions are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                with old.wrap_socket(raw, server_hostname="127.0.0.1"):
                    pass
        modern = ssl.create_default_context(cafile=str(cert))
        modern.minimum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            with modern.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        server.stop()


def test_endpoint_string_replaces_port_and_listen(redis_proc, redis):
    port = free_port()
    server = ServerProcess(redis_proc.port, "--endpoint", f"tcp:{port}:interface=127.0.0.1")
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    server.start()
    try:
        out = subprocess.run(["curl", "-s", "-d", "value=x", f"{server.url}/q/ep"],
                             capture_output=True, timeout=30)
        assert out.stdout == b"ep:1\r\n"
    finally:
        server.stop()


def test_pop_over_tls_acks_what_went_out(redis_proc, redis, certificate):
    """The pop's ack waits for its reply to leave through the TLS layer, on a connection that
    stays open and on one that closes after the reply."""
    cert, key = certificate
    server = tls_server(redis_proc, "--ssl-cert", str(cert), "--ssl-key", str(key))
    try:
        for value in ("a", "b"):
            subprocess.run(["curl", "-s", "--cacert", str(cert), "-d", f"value={value}",
                            f"{server.url}/q/tlspop"], capture_output=True, timeout=30,
                           check=True)
        for key_, extra in (("tlspop:1", []), ("tlspop:2", ["-H", "Connection: close"])):
            pop = subprocess.run(["curl", "-s", "--cacert", str(cert), "-X", "POST", *extra,
                                  f"{server.url}/pop/tlspop"], capture_output=True, timeout=30)
            value = {"tlspop:1": "a", "tlspop:2": "b"}[key_]
            assert pop.stdout == (b'{"queue": "tlspop", "messages": [{"key": "%s", "value": '
                                  b'"%s"}]}' % (key_.encode(), value.encode()))
            wait_until(lambda: redis("ZCARD", "tlspop:inflight") == 0, 10, "the ack")
            assert 0 < redis("TTL", key_) <= 3600
        assert redis("EXISTS", "tlspop:queue") == 0
    finally:
        server.stop()
    assert "Traceback" not in server.final_log


def test_a_request_that_arrives_with_the_redis_reply_of_a_claim_does_not_end_a_tls_connection(
        certificate):
    """As test_pipelining's test of that name, through TLS, where the reply reaches the socket
    one reactor turn after it was written (Twisted gathers small TLS writes): the lowered
    bufferSize lasts that turn, and must not be 0 then."""
    cert, key = certificate
    redis_proc = RedisProcess().start()
    server = tls_server(redis_proc, "--ssl-cert", str(cert), "--ssl-key", str(key))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                claim_with_a_request_behind_its_redis_reply(redis_proc, server, sock)
    finally:
        server.stop()
        redis_proc.stop()
