"""Request arguments: query and form parsing (strict UTF-8, the last occurrence wins), the
queue name in the path and the JSONP callback. What a value may hold is checked by
restmq.core.arguments, for every route alike."""
from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from cyclone import httputil

from restmq.errors import InvalidArgument, InvalidName, MissingArgument

CALLBACK = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*\Z")


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(name) from None


def parse_urlencoded(raw: bytes, into: dict[str, str]) -> None:
    """Percent-decode, then strict UTF-8; the last occurrence of a name wins."""
    for part in raw.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        name_bytes = unquote_to_bytes(name.replace(b"+", b" "))
        name_text = _decode(name_bytes, name_bytes.decode("utf-8", "replace"))
        into[name_text] = _decode(unquote_to_bytes(value.replace(b"+", b" ")), name_text)


class ArgumentsMixin:
    """The argument parsing of BaseHandler. Uses the handler's `request`, `prefix`,
    `jsonp_methods`, `raw_body` and `log`; `_args` starts as None."""

    @property
    def args(self) -> dict[str, str]:
        """Query and form arguments (docs/http-api.md#arguments), parsed on first use;
        BadRequest when undecodable."""
        if self._args is None:
            args: dict[str, str] = {}
            parse_urlencoded(self.request.query.encode("latin-1"), args)
            if self.request.method == "POST" and self.request.body and not self.raw_body:
                self._parse_body(args)
            self._args = args
        return self._args

    def _parse_body(self, args: dict[str, str]) -> None:
        ctype = self.request.headers.get("Content-Type", "")
        media = ctype.split(";", 1)[0].strip().lower()
        if media == "application/x-www-form-urlencoded":
            parse_urlencoded(self.request.body, args)
        elif media == "multipart/form-data":
            for param in ctype.split(";")[1:]:
                name, _, value = param.strip().partition("=")
                if name.strip().lower() == "boundary" and value:
                    parts: dict[str, list[bytes]] = {}
                    try:
                        httputil.parse_multipart_form_data(
                            value.strip('"').encode("latin-1"), self.request.body, parts, {})
                    except (ValueError, LookupError, UnicodeError) as e:
                        # cyclone's parser raises on malformed part headers: such a body
                        # holds no arguments, as any other body we cannot read as a form.
                        self.log.info("unreadable multipart body ignored: {error}", error=e)
                        parts = {}
                    for key, values in parts.items():
                        name_text = key if isinstance(key, str) else _decode(key, "?")
                        args[name_text] = _decode(values[-1], name_text)
                    break

    def arg(self, name: str) -> str | None:
        """An argument, or None when absent or empty."""
        return self.args.get(name) or None

    def required(self, name: str) -> str:
        value = self.arg(name)
        if value is None:
            raise MissingArgument(name)
        return value

    def path_queue(self) -> str:
        """The queue name after the route prefix, percent-decoded, then UTF-8
        (docs/http-api.md#queue-names)."""
        raw = unquote_to_bytes(self.request.path[len(self.prefix):].encode("latin-1"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidName() from None

    def callback(self) -> str | None:
        if self.request.method not in self.jsonp_methods:
            return None
        name = self.arg("callback")
        if name is not None and (len(name) > 128 or not CALLBACK.match(name)):
            if self.request.method != "GET":
                # Only a GET can be loaded by a <script>, so only there is JSONP needed: a
                # POST or DELETE answers as without a callback (the original dashboard
                # POSTs `callback=?`).
                return None
            raise InvalidArgument("callback")
        return name
