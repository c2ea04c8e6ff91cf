"""Options and makeService of the `restmq` twistd plugin: only wiring, no queue logic."""
from __future__ import annotations

from twisted.application import internet, service
from twisted.internet import defer
from twisted.python import usage

from restmq import __version__


def _int_at_least(minimum: int, name: str):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise usage.UsageError(f"--{name} must be an integer, not {text!r}") from None
        if value < minimum:
            raise usage.UsageError(f"--{name} must be at least {minimum}, not {value}")
        return value
    return convert


def _seconds(name: str):
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of seconds, not {text!r}") from None
        if not 0.1 <= value <= 3600:
            raise usage.UsageError(f"--{name} must be between 0.1 and 3600 seconds, not {text}")
        return value
    return convert


def _on_off(name: str):
    def convert(text: str) -> bool:
        if text not in ("on", "off"):
            raise usage.UsageError(f"--{name} must be on or off, not {text!r}")
        return text == "on"
    return convert


def _port(name: str):
    convert = _int_at_least(1, name)

    def port(text: str) -> int:
        value = convert(text)
        if value > 65535:
            raise usage.UsageError(f"--{name} must be at most 65535, not {value}")
        return value
    return port


class RedisOptions(usage.Options):
    """The Redis options every plugin shares (PROTOCOL.md §2)."""

    optParameters = [
        ["redis-host", None, "127.0.0.1", "Redis host."],
        ["redis-port", None, 6379, "Redis port.", _port("redis-port")],
        ["redis-unix-socket", None, None, "Redis Unix socket path; replaces host and port."],
        ["redis-password", None, None, "Password sent with AUTH on every connection."],
        ["redis-db", None, 0, "Redis database number (SELECT).", _int_at_least(0, "redis-db")],
        ["redis-pool", None, 10, "Command connections per process (at least 1).",
         _int_at_least(1, "redis-pool")],
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
            from restmq.reuseport import ReusePortEndpoint
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


class Options(RedisOptions, ListenOptions):
    """twistd restmq [options]"""

    synopsis = "[options]"
    longdesc = "RestMQ: a message queue over HTTP, kept in Redis."
    optParameters = [
        ["port", None, 8888, "TCP port to listen on.", _port("port")],
        ["acl", None, "acl.conf",
         "ACL file: a path, else the packaged file of that name."],
        ["consumed-ttl", None, 3600,
         "Seconds a consumed value stays readable (0 deletes at once).",
         _int_at_least(0, "consumed-ttl")],
        ["max-body", None, 1048576, "Largest request body and WebSocket message, in bytes.",
         _int_at_least(1, "max-body")],
        ["access-log", None, "on", "on: log every request (buffered, one write a second); "
         "off: no access log (when a proxy in front logs).", _on_off("access-log")],
        ["pubsub-timeout", None, 5.0, "Seconds the pub/sub connection may leave a PING "
         "unanswered before it is replaced (live delivery pauses meanwhile).",
         _seconds("pubsub-timeout")],
        ["live-stall-timeout", None, 20,
         "Seconds a live consumer may leave its output unread (or its peer stay silent to "
         "TCP) before it is disconnected.", _int_at_least(1, "live-stall-timeout")],
    ]
    optFlags = [
        ["trusted-proxy", None, "Take the client address from X-Real-IP / X-Forwarded-For."],
    ]

    def opt_version(self):
        print(f"restmq {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        from restmq.acl import AclError, AclFile
        self.check_listen()
        self["access-log"] = self["access-log"] in (True, "on")  # the default is not coerced
        if self["ssl-cert"]:
            self.tls_options()  # a bad certificate is a usage error, not a crash at start
        try:
            self.acl = AclFile(self["acl"], trusted_proxy=self["trusted-proxy"])
        except AclError:
            raise usage.UsageError(f"Cannot load ACL file: {self['acl']}") from None


def redis_service(options: usage.Options):
    from restmq.redis import RedisService
    return RedisService(host=options["redis-host"], port=options["redis-port"],
                        unix_socket=options["redis-unix-socket"],
                        password=options["redis-password"], db=options["redis-db"],
                        poolsize=options["redis-pool"])


def makeService(options: Options, collectd_frontend: bool = False) -> service.IService:
    from twisted.internet import reactor

    from restmq.core import Core
    from restmq.delivery import Delivery
    from restmq.redis import PubSubService
    from restmq.http import AccessLog, Context, load_static, make_application

    top = _StopInOrder()
    redis = redis_service(options)
    redis.setServiceParent(top)
    core = Core(redis, consumed_ttl=options["consumed-ttl"])
    pubsub = PubSubService(redis, timeout=options["pubsub-timeout"])
    delivery = Delivery(core, pubsub, db=options["redis-db"],
                        stall_timeout=options["live-stall-timeout"])
    pubsub.listener = delivery
    pubsub.setServiceParent(top)
    delivery.setServiceParent(top)
    acl = options.acl
    ctx = Context(core=core, acl=acl, delivery=delivery, redis_description=redis.description,
                  static=load_static())
    access_log = AccessLog() if options["access-log"] else None
    app = make_application(ctx, max_body=options["max-body"], access_log=access_log,
                           collectd_frontend=collectd_frontend)
    if access_log is not None:
        top.addService(_OnStop(access_log.flush))
    internet.TimerService(5, acl.check_for_change).setServiceParent(top)
    internet.StreamServerEndpointService(options.server_endpoint(reactor), app).setServiceParent(
        top)
    return top


class _StopInOrder(service.MultiService):
    """Stops its services one after the other, the last added first: live delivery must be
    done with what it popped before the Redis connections close under it."""

    @defer.inlineCallbacks
    def stopService(self):
        from twisted.logger import Logger
        service.Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:  # the others must still stop
                Logger().failure("stopping {service} failed", service=child)


class _OnStop(service.Service):
    """Calls `function` at shutdown (flushes the buffered access log)."""

    def __init__(self, function):
        self.function = function

    def stopService(self):
        super().stopService()
        self.function()


class CollectdOptions(Options):
    """twistd collectd [options]: every restmq route plus /collectd/<kind>."""

    longdesc = "RestMQ with the collectd write_http frontend at /collectd/data and /collectd/event."


def makeCollectdService(options: CollectdOptions) -> service.IService:
    return makeService(options, collectd_frontend=True)


class SyslogdOptions(RedisOptions, ListenOptions):
    """twistd syslogd [options]"""

    synopsis = "[options]"
    longdesc = "RestMQ's syslog receiver: TCP syslog messages become messages of syslogd:<ip>."
    optParameters = [
        ["port", None, 25000, "TCP port to listen on.", _port("port")],
        ["max-line", None, 16384, "Largest syslog message in bytes; longer ones are discarded.",
         _int_at_least(1, "max-line")],
    ]

    def postOptions(self) -> None:
        self.check_listen()
        if self["ssl-cert"]:
            self.tls_options()


def makeSyslogdService(options: SyslogdOptions) -> service.IService:
    from twisted.internet import reactor

    from restmq.core import Core
    from restmq.frontends.syslogd import SyslogFactory

    top = service.MultiService()
    redis = redis_service(options)
    redis.setServiceParent(top)
    factory = SyslogFactory(Core(redis), options["max-line"])
    internet.StreamServerEndpointService(options.server_endpoint(reactor),
                                         factory).setServiceParent(top)
    return top
