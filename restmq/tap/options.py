"""The command-line options the plugins share: Redis (RedisOptions), the listener
(ListenOptions: address, TLS, endpoint, SO_REUSEPORT) and the converters that check values."""
from __future__ import annotations

from twisted.python import usage


def int_at_least(minimum: int, name: str):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise usage.UsageError(f"--{name} must be an integer, not {text!r}") from None
        if value < minimum:
            raise usage.UsageError(f"--{name} must be at least {minimum}, not {value}")
        return value
    return convert


def int_within(minimum: int, maximum: int, name: str):
    at_least = int_at_least(minimum, name)

    def convert(text: str) -> int:
        value = at_least(text)
        if value > maximum:
            raise usage.UsageError(f"--{name} must be at most {maximum}, not {value}")
        return value
    return convert


def seconds(name: str, low: float = 0.1, high: float = 3600):
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of seconds, not {text!r}") from None
        if not low <= value <= high:
            raise usage.UsageError(f"--{name} must be between {low:g} and {high:g} seconds, "
                                   f"not {text}")
        return value
    return convert


def on_off(name: str):
    def convert(text: str) -> bool:
        if text not in ("on", "off"):
            raise usage.UsageError(f"--{name} must be on or off, not {text!r}")
        return text == "on"
    return convert


def port(name: str):
    return int_within(1, 65535, name)


class RedisOptions(usage.Options):
    """The Redis options every plugin shares (docs/options.md#options)."""

    optParameters = [
        ["redis-host", None, "127.0.0.1", "Redis host."],
        ["redis-port", None, 6379, "Redis port.", port("redis-port")],
        ["redis-unix-socket", None, None, "Redis Unix socket path; replaces host and port."],
        ["redis-password", None, None, "Password sent with AUTH on every connection."],
        ["redis-db", None, 0, "Redis database number (SELECT).", int_at_least(0, "redis-db")],
        ["redis-pool", None, 10, "Command connections per process (at least 1).",
         int_at_least(1, "redis-pool")],
        # At least 2: a write must reach Redis a second (DEADLINE_SLACK) before the timeout,
        # so that one answered 503 is never run later (restmq.redis.connection).
        ["redis-timeout", None, 5.0, "Seconds a Redis command may stay unanswered before it "
         "fails (HTTP: 503); 2 to 3600.", seconds("redis-timeout", low=2)],
    ]


class ListenOptions(usage.Options):
    optParameters = [
        ["listen", None, "127.0.0.1", "Interface to bind."],
        ["ssl-cert", None, None, "PEM certificate (chain); with --ssl-key the listener speaks TLS."],
        ["ssl-key", None, None, "PEM private key for --ssl-cert."],
        ["endpoint", None, None,
         "Twisted server endpoint string (e.g. tcp:8888:interface=0.0.0.0); "
         "replaces --port and --listen."],
    ]

    optFlags = [
        ["reuse-port", None, "Listen with SO_REUSEPORT, so that several processes share the "
         "port (the kernel spreads connections among them)."],
    ]

    def check_listen(self) -> None:
        if self["reuse-port"] and self["endpoint"]:
            raise usage.UsageError("--reuse-port works with --port/--listen, not --endpoint")
        if bool(self["ssl-cert"]) != bool(self["ssl-key"]):
            raise usage.UsageError("--ssl-cert and --ssl-key must be given together")
        if self["endpoint"] and self["ssl-cert"]:
            raise usage.UsageError("--endpoint cannot be combined with --ssl-cert/--ssl-key; "
                                   "put the certificate in the endpoint string")

    def server_endpoint(self, reactor):
        """The listening endpoint: --endpoint as given, else TCP or TLS on --listen:--port."""
        from twisted.internet import endpoints
        if self["endpoint"]:
            return endpoints.serverFromString(reactor, self["endpoint"])
        if self["reuse-port"]:
            from restmq.tap.reuseport import ReusePortEndpoint
            tls = self.tls_options() if self["ssl-cert"] else None
            return ReusePortEndpoint(reactor, self["port"], self["listen"], tls)
        if self["ssl-cert"]:
            return endpoints.SSL4ServerEndpoint(reactor, self["port"], self.tls_options(),
                                                interface=self["listen"])
        if ":" in self["listen"]:
            return endpoints.TCP6ServerEndpoint(reactor, self["port"], interface=self["listen"])
        return endpoints.TCP4ServerEndpoint(reactor, self["port"], interface=self["listen"])

    def tls_options(self):
        """TLS 1.2 or newer (Twisted's default floor), HTTP/1.1 offered by ALPN: clients such
        as curl offer h2 first, and an unanswered ALPN offer fails the handshake."""
        from OpenSSL import crypto
        from twisted.internet import ssl
        try:
            with open(self["ssl-cert"], "rb") as f:
                chain = f.read()
            with open(self["ssl-key"], "rb") as f:
                key = f.read()
            certs = [ssl.Certificate.loadPEM(block) for block in _pem_blocks(chain)]
            private = ssl.KeyPair.load(key, crypto.FILETYPE_PEM)
        except Exception as e:  # OpenSSL reports bad files with many types
            raise usage.UsageError(f"cannot load the TLS certificate or key: {e}") from None
        if not certs:
            raise usage.UsageError(f"no certificate in {self['ssl-cert']}")
        return ssl.CertificateOptions(
            privateKey=private.original, certificate=certs[0].original,
            extraCertChain=[c.original for c in certs[1:]],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2, acceptableProtocols=[b"http/1.1"])


def _pem_blocks(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part + marker for part in data.split(marker) if b"-----BEGIN CERTIFICATE" in part]
