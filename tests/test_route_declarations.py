"""Authorization is declared, not remembered: every route's handler declares, for each of its
methods, the ACL section and where the queue comes from, and only the base handler applies them
(docs/http-api.md#processing-order). Pure reading of the code: no Redis, no sockets."""
from __future__ import annotations

import ast
from pathlib import Path

from restmq import acl
from restmq.http import Context, routes
from restmq.http.base import BaseHandler, QueueSource

ROOT = Path(__file__).resolve().parent.parent


def route_handlers() -> list[type]:
    """Every handler class the application routes to, the collectd plugin's included."""
    return [spec[1] for spec in routes(Context(core=None), collectd_frontend=True)]


def undeclared(handler: type) -> list[str]:
    """What `handler` fails to declare; empty when the base handler can authorize each of its
    methods from the declarations alone."""
    name = handler.__name__
    sections, sources = handler.sections, getattr(handler, "queue_from", None)
    if not isinstance(sections, dict) or not isinstance(sources, dict):
        return [f"{name}: declares no `sections` and `queue_from`"]
    problems = []
    for method in handler.methods:
        source = sources.get(method)
        if not isinstance(source, QueueSource):
            problems.append(f"{name} {method}: no queue source")
        elif source.names_queue and method not in sections and not source.checks_acl:
            problems.append(f"{name} {method}: touches a queue with no ACL section")
    for method in set(sections) | set(sources):
        if method not in handler.methods:
            problems.append(f"{name} {method}: declared for a method it does not have")
    for method, section in sections.items():
        if section not in acl.CATEGORIES:
            problems.append(f"{name} {method}: unknown ACL section {section!r}")
    return problems


def test_every_route_declares_sections_and_queue_sources():
    handlers = route_handlers()
    assert len(handlers) >= 14
    problems = [problem for handler in handlers for problem in undeclared(handler)]
    assert not problems, problems


def test_a_route_added_without_declarations_is_caught():
    class Forgotten(BaseHandler):
        methods = ("GET",)
        prefix = "/forgotten/"

    class HalfDone(BaseHandler):
        methods = ("GET", "POST")
        sections = {"GET": "rest:consumer", "POST": "rest:producer"}
        queue_from = {"GET": Forgotten.queue_from}  # None: not a source

    assert undeclared(Forgotten) == ["Forgotten: declares no `sections` and `queue_from`"]
    assert undeclared(HalfDone) == ["HalfDone GET: no queue source",
                                    "HalfDone POST: no queue source"]


def calls_to(name: str, path: Path) -> list[int]:
    tree = ast.parse(path.read_text("utf-8"))
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == name]


def test_only_the_base_handler_judges_auth_keys():
    """A handler that calls `grant` itself is back to remembering; the frontends take no
    authorize callback either."""
    callers = {}
    for path in sorted((ROOT / "restmq").rglob("*.py")):
        lines = calls_to("grant", path)
        if lines:
            callers[str(path.relative_to(ROOT))] = lines
    assert list(callers) == ["restmq/http/base.py"], callers
    assert len(callers["restmq/http/base.py"]) == 1
