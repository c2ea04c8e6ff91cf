"""Push and hook targets: which URLs a queue may push to, and which addresses a dispatcher may
connect to. Pure functions (no Redis, no network).

Without `--push-private`, a target on this host or on a private network is refused: anyone
allowed to configure a queue could otherwise make the server POST to services that trust
their neighbours (a metadata service, an admin port on loopback). The check runs twice: on
the literal host when the URL is configured, and on every address the name resolves to when
a dispatcher connects (restmq.delivery.push), so a name whose DNS answer changes later is
caught too."""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from restmq.errors import InvalidArgument

URL_MAX = 2048  # bytes of a push_url, pre_hook or post_hook
_PRINTABLE = re.compile(r"[\x21-\x7e]+\Z")
# One part of an IPv4 address as inet_aton reads it: decimal, octal (leading 0) or hex (0x).
_NUMBER_PART = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)\Z")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def forbidden_address(address: Address) -> bool:
    """Whether `address` is loopback, private (RFC 1918, RFC 4193), link-local, CGNAT,
    unspecified, or otherwise not a public unicast address; an IPv6 address that carries an
    IPv4 one (mapped, 6to4, Teredo, NAT64) is judged by that one as well."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = [address.ipv4_mapped, address.sixtofour]
        if address.teredo:
            inner += list(address.teredo)
        if address in _NAT64:
            inner.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(a is not None and forbidden_address(a) for a in inner):
            return True
    if address.version == 4 and address in _CGNAT:
        return True
    return (not address.is_global or address.is_multicast or address.is_reserved
            or address.is_loopback or address.is_link_local or address.is_unspecified)


def numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address a resolver's inet_aton makes of `host` when it is written as numbers
    (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`), else None; ValueError when it is written
    as numbers but is no address (the caller refuses it)."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER_PART.match(p) for p in parts):
        return None
    numbers = []
    for part in parts:
        if part[:2].lower() == "0x":
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part[0] == "0":
            numbers.append(int(part, 8))  # ValueError for 8 or 9: no address
        else:
            numbers.append(int(part))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        raise ValueError(host)
    value = 0
    for n in head:
        value = value * 256 + n
    return ipaddress.IPv4Address(value * 256 ** (4 - len(head)) + last)


def literal_host_forbidden(host: str) -> bool:
    """Whether the host part of a URL names this host or a private network without asking
    DNS: `localhost` and any name under it, an IPv4 or IPv6 literal (bracketed, with a zone,
    IPv4 inside IPv6) or a numeric IPv4 form that resolvers accept. Hosts that look numeric
    but are no address are refused too (no registered name is all digits)."""
    host = host.lower().rstrip(".") if host not in (".", "") else host
    if host in ("", ".") or host == "localhost" or host.endswith(".localhost"):
        return True
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1] if host.endswith("]") else "bad")
        except ValueError:
            return True
        return forbidden_address(address)
    try:
        address = numeric_ipv4(host)
    except ValueError:
        return True
    return address is not None and forbidden_address(address)


def check_url(text: str, name: str, private: bool = False) -> str:
    """`text` when it is an absolute http or https URL of at most 2048 printable ASCII bytes,
    with a host and no userinfo, whose host (unless `private`) is not a literal loopback,
    private, link-local, CGNAT or unspecified address nor `localhost`; else
    InvalidArgument(name)."""
    if len(text) > URL_MAX or not _PRINTABLE.match(text):
        raise InvalidArgument(name)
    try:
        parts = urlsplit(text)
        port = parts.port  # ValueError for a port out of range or not a number
    except ValueError:
        raise InvalidArgument(name) from None
    netloc = parts.netloc
    host = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") and ":" in netloc else netloc
    if (parts.scheme not in ("http", "https") or not netloc or "@" in netloc or "%" in netloc
            or port == 0 or not host or "\\" in text):
        raise InvalidArgument(name)
    if not private and literal_host_forbidden(host):
        raise InvalidArgument(name)
    return text
