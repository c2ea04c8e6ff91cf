"""A TCP server endpoint with SO_REUSEPORT: several twistd processes listen on one port and
the kernel spreads new connections among them (Linux 3.9+), so all cores serve."""
from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, interfaces
from zope.interface import implementer


@implementer(interfaces.IStreamServerEndpoint)
class ReusePortEndpoint:
    def __init__(self, reactor: Any, port: int, interface: str = "127.0.0.1",
                 tls_options: Any = None, backlog: int = 511):
        self.reactor, self.port, self.interface = reactor, port, interface
        self.tls_options, self.backlog = tls_options, backlog

    def listen(self, factory):
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            if self.tls_options is not None:
                from twisted.protocols.tls import TLSMemoryBIOFactory
                factory = TLSMemoryBIOFactory(self.tls_options, False, factory)
            # adoptStreamPort duplicates the descriptor; ours is closed below.
            port = self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        except Exception:
            return defer.fail()
        finally:
            sock.close()
        return defer.succeed(port)
