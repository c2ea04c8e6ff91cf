"""The HTML pages and files: the queue list of `/q/`, the jobs page `/j/<q>`, the packaged
static files, and the 404 of every path no route takes.
"""
from __future__ import annotations

import html
import mimetypes
from urllib.parse import quote, unquote_to_bytes

from restmq.errors import NotFound
from restmq.http.base import NO_QUEUE, PATH, BaseHandler


def queue_list_page(names: list[str]) -> str:
    items = "".join(
        f'<li><a href="/q/{quote(name, safe="/:@-._~")}">/q/{html.escape(name)}</a></li>\n'
        for name in names)
    return ("<html><head><title>avaliable queue for REST</title></head><body><ul>\n"
            f"{items}</ul></body></html>\n")


class JobsHandler(BaseHandler):
    """`/j/<q>`: an HTML page of a queue's newest pending keys (docs/http-api.md#jobs-page). It
    shows pending keys and scans the keyspace, so it is a consumer's read like the others (the
    original RestMQ checked no ACL here)."""

    methods = ("GET",)
    sections = {"GET": "rest:consumer"}
    queue_from = {"GET": PATH}
    prefix = "/j/"

    async def get(self):
        objects, length, latest, complete = await self.ctx.core.jobs(self.target)
        self.reply(jobs_page(self.target, objects, length, latest, complete), crlf=False)


def jobs_page(name: str, objects: int, length: int, latest: list[str],
              complete: bool = True) -> str:
    e = html.escape
    items = "".join(f"<li>{e(key)}</li>\n" for key in latest)
    count = objects if complete else f"at least {objects}"
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>jobs in queue {e(name)}</title></head><body>\n"
            f"<h1>jobs in queue {e(name)}</h1>\n"
            f"<p>queue name: {e(name)}</p>\n<p>queue objects: {count}</p>\n"
            f"<p>job count: {length}</p>\n<h2>latest 10 jobs</h2>\n<ul>\n{items}</ul>\n"
            "</body></html>\n")


class StaticHandler(BaseHandler):
    """The packaged static/ files, served from memory; `/favicon.ico` and `/robots.txt` too."""

    methods = ("GET", "HEAD")
    sections: dict[str, str] = {}
    queue_from = {"GET": NO_QUEUE, "HEAD": NO_QUEUE}
    api = False

    def get(self):
        path = self.request.path
        relative = path[len("/static/"):] if path.startswith("/static/") else path.lstrip("/")
        try:
            relative = unquote_to_bytes(relative.encode("latin-1")).decode("utf-8")
        except UnicodeDecodeError:
            raise NotFound() from None
        body = self.ctx.static.get(relative)
        if body is None:
            raise NotFound()
        ctype = mimetypes.guess_type(relative)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript",):
            ctype += "; charset=UTF-8"
        self.set_header("Content-Type", ctype)
        self.finish(body)

    head = get


class NotFoundHandler(BaseHandler):
    methods = ()
    sections: dict[str, str] = {}
    queue_from: dict = {}

    def prepare(self):
        raise NotFound()
