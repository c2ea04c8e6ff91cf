"""The ACL file (docs/access-control.md): per route category, address prefixes and Basic
credentials.

`AclFile` holds the rules in force and reloads them when the file changes; `client_address`
turns a request into the address the prefixes are matched against.
"""
from __future__ import annotations

import base64
import binascii
import configparser
import hashlib
import hmac
import ipaddress
import json
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

from twisted.logger import Logger

from restmq.errors import Unauthorized

CATEGORIES = ("rest:producer", "rest:consumer", "rest:admin", "comet:consumer",
              "websocket:consumer", "sse:consumer")
# A section a file may lack: its routes then follow another one's rules. `[rest:admin]` came
# after files were written whose `[rest:producer]` guards every write, the administrative
# ones included; without the fallback those files would leave the new writes open.
FALLBACK = {"rest:admin": "rest:producer"}
ALL = "all"


class AclError(Exception):
    """The ACL file cannot be found or parsed."""


@dataclass(frozen=True)
class Rule:
    allow: tuple[str, ...] | None  # None: no allow list
    deny: tuple[str, ...] | str | None  # ALL, a tuple of prefixes, or None
    username: str = ""
    password: str = ""

    @property
    def needs_credentials(self) -> bool:
        return bool(self.username) and bool(self.password)


def _prefixes(value: str | None, allow: bool):
    if value is None or not value.split():
        return None
    tokens = tuple(value.split())
    if tokens == (ALL,):
        return None if allow else ALL
    return tokens


def parse_rules(source: str) -> dict[str, Rule]:
    """Parse ACL text into one Rule per category it sets; raises AclError if it is not INI."""
    parser = configparser.ConfigParser(interpolation=None, strict=False,
                                       comment_prefixes=("#", ";"),
                                       inline_comment_prefixes=None,
                                       delimiters=("=", ":"), default_section="\0none")
    try:
        parser.read_string(source)
    except configparser.Error as e:
        raise AclError(str(e).splitlines()[0]) from None
    rules = {}
    for category in CATEGORIES:
        if not parser.has_section(category):
            continue
        section = parser[category]
        rules[category] = Rule(allow=_prefixes(section.get("hosts_allow"), True),
                               deny=_prefixes(section.get("hosts_deny"), False),
                               username=section.get("username", ""),
                               password=section.get("password", ""))
    return rules


def resolve_path(value: str) -> str:
    """--acl VALUE: an absolute or existing relative path, else the packaged file of that name."""
    if os.path.isabs(value) or os.path.exists(value):
        return os.path.abspath(value)
    packaged = resources.files("restmq") / os.path.basename(value)
    if value == os.path.basename(value) and packaged.is_file():
        return str(packaged)
    raise AclError(f"no such file: {value}")


def client_address(request: Any, trusted_proxy: bool) -> str:
    """The address the prefixes are matched against (docs/access-control.md#client-address):
    the TCP peer, or the proxy's header with --trusted-proxy."""
    if trusted_proxy:
        candidates = [request.headers.get("X-Real-IP", "")]
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            candidates.append(forwarded.split(",")[-1])
        for candidate in candidates:
            address = normal_ip(candidate.strip())
            if address:
                return address
    peer = request.connection.transport.getPeer()
    return normal_ip(getattr(peer, "host", "")) or getattr(peer, "host", "")


def normal_ip(text: str) -> str | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def _credentials(request: Any, cookie_ok: bool) -> tuple[bytes, bytes] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if header:
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(b":")
        return (user, password) if sep else None
    if cookie_ok and _same_origin(request):
        for part in request.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "auth":
                user, sep, password = value.partition(":")
                return (user.encode(), password.encode()) if sep else None
    return None


def _same_origin(request: Any) -> bool:
    """A browser sends the `auth` cookie with cross-site WebSocket and EventSource requests
    too; such a request (an Origin whose host is not the Host we were asked for) may not
    authenticate with it. Clients that send no Origin are not browsers."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    _, sep, rest = origin.partition("://")
    return bool(sep) and rest.rstrip("/").lower() == request.headers.get("Host", "").lower()


def decide(rule: Rule | None, address: str, request: Any, cookie_ok: bool = False) -> None:
    """The decision of docs/access-control.md#decision: returns when allowed, raises
    Unauthorized otherwise (with `challenge` set for credential failures)."""
    if rule is None:
        return
    matched_allow = False
    if rule.allow is not None:
        matched_allow = address.startswith(rule.allow)
        if not matched_allow and rule.deny is None:
            raise Unauthorized()
    if not matched_allow:
        if rule.deny == ALL or (rule.deny and address.startswith(rule.deny)):
            raise Unauthorized()
    if rule.needs_credentials:
        given = _credentials(request, cookie_ok)
        want = (rule.username.encode("utf-8"), rule.password.encode("utf-8"))
        # Compare both parts, always, in constant time.
        ok = given is not None
        user, password = given if given else (b"", b"")
        ok = hmac.compare_digest(user, want[0]) & hmac.compare_digest(password, want[1]) & ok
        if not ok:
            raise Unauthorized(challenge=True)


def judge_record(record: str | None, queue: str | None) -> str:
    """An auth key record (docs/access-control.md#auth-keys) judged for `queue` (None: a
    request on every queue): 'authorized', 'denied' (no grant, or no record) or 'invalid' (not
    a JSON object with list fields). `create` grants every queue and is the only grant for
    every-queue requests."""
    if record is None:
        return "denied"
    try:
        parsed = json.loads(record, parse_constant=_not_json)
    except (ValueError, RecursionError):  # nesting deeper than the decoder's recursion limit
        return "invalid"
    if not isinstance(parsed, dict):
        return "invalid"
    queues, privs = parsed.get("queues", []), parsed.get("privs", [])
    if not isinstance(queues, list) or not isinstance(privs, list):
        return "invalid"
    granted = "create" in privs or (queue is not None and queue in queues)
    return "authorized" if granted else "denied"


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


class AclFile:
    """The rules in force, reloaded by `check_for_change` when the file's content changes;
    a file that no longer parses is logged and the previous rules stay."""

    log = Logger()

    def __init__(self, value: str, trusted_proxy: bool = False):
        self.value = value
        self.trusted_proxy = trusted_proxy
        self.path = resolve_path(value)
        self._digest = b""
        self.rules: dict[str, Rule] = {}
        self._load(strict=True)

    def _load(self, strict: bool) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            if strict:
                raise AclError(str(e)) from None
            self.log.warn("cannot read ACL file {path}: {error}", path=self.path, error=e)
            return
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return
        try:
            rules = parse_rules(data.decode("utf-8", "replace"))
        except AclError as e:
            if strict:
                raise
            self.log.warn("ACL file {path} not reloaded, keeping the previous rules: {error}",
                          path=self.path, error=e)
            return
        if self._digest:
            self.log.info("ACL file {path} reloaded", path=self.path)
        self.rules, self._digest = rules, digest

    def check_for_change(self) -> None:
        self._load(strict=False)

    def check(self, category: str, request: Any) -> None:
        """Raise Unauthorized unless `request` may use `category` (or, when the file has no
        such section, the one it falls back to)."""
        rule = self.rules.get(category)
        if rule is None and category in FALLBACK:
            rule = self.rules.get(FALLBACK[category])
        if rule is None:
            return
        cookie_ok = category in ("websocket:consumer", "sse:consumer")
        decide(rule, client_address(request, self.trusted_proxy), request, cookie_ok)
