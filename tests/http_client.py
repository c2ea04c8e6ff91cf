"""A blocking HTTP helper for tests: the raw status, headers and body bytes of one request."""
from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(url: str, method: str = "GET", path: str = "/", body: bytes | str | None = None,
            headers: dict[str, str] | None = None, form: dict | None = None,
            timeout: float = 15.0) -> Reply:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = dict(headers or {})
    if form is not None:
        from urllib.parse import urlencode
        body = urlencode(form)
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def get(url, path, **kw):
    return request(url, "GET", path, **kw)


def post(url, path, form=None, **kw):
    return request(url, "POST", path, form=form, **kw)


def delete(url, path, **kw):
    return request(url, "DELETE", path, **kw)
