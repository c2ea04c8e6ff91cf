"""The dashboard and help page in a real headless Chromium against a live server."""
from __future__ import annotations

import html.parser
import shutil
import subprocess
import tempfile

import pytest

from tests.http_client import get, post


def chromium_dom(url: str) -> str:
    """The DOM of `url` after its scripts ran (virtual time lets the JSONP load finish)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is missing: `make test` installs it")
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


class _Rows(html.parser.HTMLParser):
    """Collects the text of every <tr data-queue> row and the #redis / #count texts."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.ids: dict[str, str] = {}
        self._row = None
        self._id = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-queue" in attrs:
            self._row = attrs["data-queue"]
            self.rows[self._row] = []
        if attrs.get("id") in ("redis", "count"):
            self._id = attrs["id"]
            self.ids[self._id] = ""

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        self._id = None

    def handle_data(self, data):
        if self._row is not None and data.strip():
            self.rows[self._row].append(data.strip())
        if self._id is not None:
            self.ids[self._id] += data


def test_dashboard_shows_queues_with_escaped_names(H):
    hostile = '<img/src=x/onerror=alert(1)>&q"'
    assert post(H, "/q/plain", {"value": "1"}).status == 200
    assert post(H, "/q/plain", {"value": "2"}).status == 200
    assert post(H, "/", {"queue": hostile, "value": "x"}).status == 200
    assert post(H, "/control/plain", {"status": "stop"}).status == 200
    assert post(H, "/p/plain", {"policy": "roundrobin"}).status == 200

    dom = chromium_dom(f"{H}/static/index.html")
    parsed = _Rows()
    parsed.feed(dom)
    assert set(parsed.rows) == {"plain", hostile}
    assert parsed.rows["plain"][:4] == ["plain", "2", "stopped", "roundrobin"]
    assert parsed.rows[hostile][:4] == [hostile, "1", "started", "broadcast"]
    assert "<img" not in dom  # the name was text, never markup
    assert parsed.ids["count"].strip() == "2"
    assert "Redis Connection" in parsed.ids["redis"]


def test_help_page_has_the_json_form(H):
    reply = get(H, "/static/help.html")
    assert reply.status == 200
    assert reply.header("Content-Type") == "text/html; charset=UTF-8"
    page = reply.body.decode()
    assert 'action="/queue"' in page and 'name="body"' in page
    for command in ("add", "get", "take", "del"):
        assert f'"cmd": "{command}"' in page or f'"cmd":"{command}"' in page
