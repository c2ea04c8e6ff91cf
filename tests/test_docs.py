"""docs/ kept in step with the code: routes, methods and ACL sections, error reasons, twistd
options, limits, and every link or cited anchor. Pure reading: no Redis, no sockets."""
from __future__ import annotations

import ast
import importlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from twisted.python.reflect import accumulateClassList

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

METHODS = ("get", "post", "delete", "head", "put", "patch", "options")
PLACEHOLDERS = {"<q>": "jobs", "<kind>": "data", "<path>": "index.html"}


# -- reading markdown ----------------------------------------------------------------------------

def page(name: str) -> str:
    return (DOCS / name).read_text("utf-8")


def without_code_blocks(text: str) -> str:
    """Fenced blocks hold shell sessions and wire bytes: no headings or links in there."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def section(text: str, title: str) -> str:
    """From the heading `title` (any level) to the next heading of the same or a higher level."""
    text = without_code_blocks(text)
    match = re.search(rf"^(#+) {re.escape(title)}\s*$", text, re.M)
    assert match, f"no heading {title!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, match.end())
    return text[match.end():end.start() if end else len(text)]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every table in `text` as (header cells, rows of cells); `\\|` is a literal bar."""
    found, header, rows = [], None, []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|")
                     for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if header is None:
                header = cells
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif header is not None:
            found.append((header, rows))
            header, rows = None, []
    return found


def spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation (backticks too) dropped, spaces
    become hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = without_code_blocks(path.read_text("utf-8"))
    seen: dict[str, int] = {}
    result = set(re.findall(r'<a (?:id|name)="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+?)\s*$", text, re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def route_table() -> dict[str, dict]:
    """The route table of http-api.md by path: methods and ACL sections per method."""
    header, rows = tables(section(page("http-api.md"), "Route table"))[0]
    assert header[:3] == ["path", "methods", "ACL section"]
    table = {}
    for cells in rows:
        [path] = spans(cells[0])
        methods = {m.strip() for m in cells[1].split(",")}
        acl = dict(re.findall(r"\b([A-Z]+): ([a-z]+:[a-z]+)", cells[2]))
        table[path] = {"methods": methods, "acl": acl}
    return table


# -- the code ------------------------------------------------------------------------------------

def app_routes():
    from restmq.http import Context, routes
    return [(spec[0], spec[1]) for spec in routes(Context(core=None), collectd_frontend=True)]


def handler_for(path: str):
    for pattern, handler in app_routes():
        if re.fullmatch(pattern, path):
            return pattern, handler
    raise AssertionError(f"no route for {path}")


def example(path: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        path = path.replace(placeholder, value)
    return path


# -- routes --------------------------------------------------------------------------------------

def test_every_openapi_path_is_in_the_route_table_with_the_same_methods():
    spec = yaml.safe_load((ROOT / "restmq" / "openapi.yaml").read_text("utf-8"))
    table = route_table()
    for path, item in spec["paths"].items():
        documented = re.sub(r"\{(\w+)\}", r"<\1>", path)
        assert documented in table, f"openapi path {path} missing from docs/http-api.md"
        methods = {m.upper() for m in item if m in METHODS}
        assert table[documented]["methods"] == methods, path


def test_route_table_rows_are_in_openapi_unless_the_collectd_plugin_serves_them():
    spec = yaml.safe_load((ROOT / "restmq" / "openapi.yaml").read_text("utf-8"))
    in_openapi = {re.sub(r"\{(\w+)\}", r"<\1>", p) for p in spec["paths"]}
    for path in set(route_table()) - in_openapi:
        pattern, _ = handler_for(example(path))
        assert pattern.startswith("/collectd/"), f"{path} is documented but not in openapi.yaml"


def test_route_table_matches_the_handlers_methods_and_acl_sections():
    from restmq.http.pages import NotFoundHandler
    reached = set()
    for path, row in route_table().items():
        pattern, handler = handler_for(example(path))
        reached.add(pattern)
        assert handler is not NotFoundHandler, f"{path} is documented but answers 404"
        assert row["methods"] == set(handler.methods), path
        assert row["acl"] == dict(handler.sections), f"ACL sections of {path}"
    unreached = {p for p, _ in app_routes() if p != ".*"} - reached
    assert not unreached, f"routes missing from the route table: {unreached}"


def test_route_patterns_table_lists_every_pattern_in_order():
    [(header, rows)] = tables(section(page("http-api.md"), "Route patterns"))
    documented = [(spans(c[0])[0], spans(c[1])[0]) for c in rows]
    assert documented == [(p, h.__name__) for p, h in app_routes()]


# -- error reasons -------------------------------------------------------------------------------

REASON_ARGUMENT = {"BadRequest": 0, "RestMQError": 0, "Reject": 1, "_stop": 1, "Fault": 1,
                   "with_status": 1}
NAMED_ARGUMENT = {"MissingArgument": "missing argument: ", "InvalidArgument": "invalid argument: ",
                  "required": "missing argument: "}
# The checks of restmq.core.arguments that take the argument's name second: integer(text, name,
# low, high) raises `invalid argument: <name>`.
SECOND_NAMED_ARGUMENT = {"integer": "invalid argument: ", "decimal": "invalid argument: ",
                         "queue_other_than": "invalid argument: "}


def _text(node: ast.AST, constants: dict[str, str]) -> tuple[str, bool] | None:
    """(text, complete) for a literal, a module constant or an f-string's literal prefix."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, True
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id], True
    if isinstance(node, ast.JoinedStr):
        prefix = ""
        for part in node.values:
            if not isinstance(part, ast.Constant):
                return prefix, False
            prefix += part.value
        return prefix, True
    return None


def code_reasons() -> tuple[set[str], set[str]]:
    """Every error reason restmq/ can produce: (complete texts, prefixes of variable texts).

    Sources: `reason = "..."` in a class, the reason argument of BadRequest, RestMQError,
    RestMQError.with_status, Reject, _stop and Fault, MissingArgument/InvalidArgument/required(name),
    `{"error": ...}` and `{"stat": ...}` literals, and strings returned by functions named
    `*error*` (the JSON protocol's field checks)."""
    literals, prefixes = set(), set()

    def add(found):
        if found:
            (literals if found[1] else prefixes).add(found[0])

    for path in sorted((ROOT / "restmq").rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                     and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                     for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.Assign) and any(
                            isinstance(t, ast.Name) and t.id == "reason" for t in item.targets):
                        add(_text(item.value, constants))
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if name in REASON_ARGUMENT and len(node.args) > REASON_ARGUMENT[name]:
                    add(_text(node.args[REASON_ARGUMENT[name]], constants))
                elif name in NAMED_ARGUMENT and node.args:
                    found = _text(node.args[0], constants)
                    if found and found[1]:
                        literals.add(NAMED_ARGUMENT[name] + found[0])
                    else:
                        prefixes.add(NAMED_ARGUMENT[name])
                elif name in SECOND_NAMED_ARGUMENT and len(node.args) > 1:
                    found = _text(node.args[1], constants)
                    if found and found[1]:
                        literals.add(SECOND_NAMED_ARGUMENT[name] + found[0])
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value in ("error", "stat"):
                        add(_text(value, constants))
            elif isinstance(node, ast.FunctionDef) and "error" in node.name:
                for item in ast.walk(node):
                    if isinstance(item, ast.Return) and item.value is not None:
                        add(_text(item.value, constants))
    return literals, prefixes


def error_pages() -> str:
    text = page("http-api.md")
    return section(text, "Errors") + section(text, "Connection-level rules")


def documented_spans() -> set[str]:
    """Every code span of the error sections, and the reason inside `{"error": ...}` spans."""
    found = set()
    for span in spans(error_pages()):
        found.add(span)
        try:
            obj = json.loads(span)
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.update(v for k, v in obj.items() if k in ("error", "stat"))
    return found


def documented_reasons() -> set[str]:
    """The reason column of every table of the error sections."""
    reasons = set()
    for header, rows in tables(error_pages()):
        for column in ("reason", "object", "fault string"):
            if column in header:
                for cells in rows:
                    span = spans(cells[header.index(column)])[0]
                    reasons.add(json.loads(span)["error"] if span.startswith("{") else span)
    return reasons


def test_code_reasons_are_found():
    literals, prefixes = code_reasons()
    # The collector itself: a reason of each kind of source, so that a refactoring that hides
    # them from it shows up here rather than as a silently empty check.
    for reason in ("empty queue", "invalid WebSocket handshake", "request line too long",
                   "malformed collectd body", "invalid arguments", "null resultset",
                   "missing argument: policy", "invalid argument: ttl", "invalid argument: key"):
        assert reason in literals, reason
    assert {"missing argument: ", "invalid argument: ", "method not found: ",
            "invalid status: "} <= prefixes


def test_every_error_reason_of_the_code_is_documented():
    literals, prefixes = code_reasons()
    documented = documented_spans()
    missing = sorted(r for r in literals if r not in documented)
    assert not missing, f"reasons missing from docs/http-api.md#errors: {missing}"
    for prefix in prefixes:
        assert any(s.startswith(prefix) and "<" in s for s in documented), \
            f"no generic form `{prefix}<...>` in docs/http-api.md#errors"


def test_every_documented_error_reason_is_produced_by_the_code():
    literals, prefixes = code_reasons()
    for reason in documented_reasons():
        base = reason.split("<", 1)[0]
        assert reason in literals or ("<" in reason and base in prefixes) or \
            any(reason.startswith(p) for p in prefixes), \
            f"docs/http-api.md documents {reason!r}, which no code produces"


# -- options -------------------------------------------------------------------------------------

def plugin_options() -> dict[str, dict[str, object]]:
    """{"--option": {plugin: default}} over the plugins declared in twisted/plugins/;
    flags default to "off", opt_ methods of our own classes to None."""
    from twisted.plugins import restmq_plugins
    options: dict[str, dict[str, object]] = {}
    makers = [m for m in vars(restmq_plugins).values() if hasattr(m, "tapname")]
    assert {m.tapname for m in makers} == {"restmq", "collectd", "syslogd"}
    for maker in makers:
        cls = importlib.import_module(maker.module).Options
        params: list = []
        accumulateClassList(cls, "optParameters", params)
        flags: list = []
        accumulateClassList(cls, "optFlags", flags)
        found = {p[0]: ("none" if p[2] is None else str(p[2])) for p in params}
        found.update({f[0]: "off" for f in flags})
        for klass in cls.__mro__:
            if klass.__module__.startswith("restmq"):
                found.update({n[4:].replace("_", "-"): None for n in vars(klass)
                              if n.startswith("opt_")})
        for name, default in found.items():
            options.setdefault(f"--{name}", {})[maker.tapname] = default
    return options


def options_table() -> dict[str, list[str]]:
    [(header, rows)] = tables(section(page("options.md"), "Options"))
    assert header[:3] == ["option", "default", "plugins"]
    return {spans(c[0])[0]: c for c in rows}


def test_every_option_is_documented_with_its_default_and_plugins():
    table = options_table()
    for option, defaults in plugin_options().items():
        assert option in table, f"{option} missing from docs/options.md#options"
        _, default_cell, plugins_cell, *_ = table[option]
        assert {p.strip() for p in plugins_cell.split(",")} == set(defaults), option
        for default in defaults.values():
            if default in ("none", "off"):
                assert default in default_cell, option
            elif default is not None:
                assert any(f"`{form}`" in default_cell for form in written_forms(default)), \
                    f"default of {option}"


def written_forms(default: str) -> set[str]:
    """A default as the table may write it: a float default with no fraction (5.0) also as
    the whole number (5)."""
    forms = {default}
    try:
        number = float(default)
    except ValueError:
        return forms
    if number.is_integer():
        forms.add(str(int(number)))
    return forms


def test_every_documented_option_exists():
    code = plugin_options()
    for option in options_table():
        assert option in code, f"docs/options.md documents {option}, which no plugin has"


def test_restmq_engine_options_are_documented():
    from restmq.engine import parser
    text = section(page("frontends.md"), "restmq-engine")
    for action in parser()._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help"):
                assert f"`{flag}`" in text, f"restmq-engine {flag} missing from docs/frontends.md"


# -- limits --------------------------------------------------------------------------------------

UNITS = {"KiB": 1024, "MiB": 1024 * 1024, "s": 1, "bytes": 1, None: 1}


def resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise AssertionError(f"cannot import {dotted}")


def test_limits_match_the_constants_that_set_them():
    checked = 0
    for header, rows in tables(page("limits.md")):
        assert header == ["item", "value", "set by"]
        for item, value, where in rows:
            if where == "option":
                continue
            [name] = spans(where)
            if "/" in name:
                assert (ROOT / name).exists(), name
                continue
            obj = resolve(name)
            if isinstance(obj, (int, float)) and not isinstance(obj, bool):
                number, unit = re.search(r"(\d+(?:,\d{3})*(?:\.\d+)?)\s*(KiB|MiB|s\b|bytes)?",
                                         value).groups()
                assert float(number.replace(",", "")) * UNITS[unit] == obj, f"{item}: {name}"
                checked += 1
    assert checked >= 15


# -- links and citations -------------------------------------------------------------------------

def check_target(source: Path, target: str) -> str | None:
    """None when `target` (a relative path with an optional #anchor) resolves from `source`."""
    path, _, anchor = target.partition("#")
    file = (source.parent / path).resolve() if path else source
    if not file.exists():
        return f"{target}: no such file"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{target}: no such anchor"
    return None


def test_links_in_docs_resolve():
    broken = []
    for source in sorted(DOCS.glob("*.md")):
        text = without_code_blocks(source.read_text("utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            problem = None if re.match(r"[a-z]+:", target) else check_target(source, target)
            if problem:
                broken.append(f"{source.name} links to {problem}")
    assert not broken, broken


def readme_titles() -> dict[str, str]:
    """README.rst's section titles, each with the line under it."""
    lines = (ROOT / "README.rst").read_text("utf-8").split("\n")
    return {title.strip(): under for title, under in zip(lines, lines[1:])
            if title.strip() and under and len(set(under)) == 1 and under[0] in "=-~^"
            and not set(title) <= set("=-~^ ")}


def test_readme_sections_are_whole_and_every_section_it_refers_to_exists():
    """A merge that keeps a title and drops its section leaves references to nothing, and a
    title whose underline is short is no title to docutils."""
    titles = readme_titles()
    short = [title for title, under in titles.items() if len(under) < len(title)]
    assert not short, short
    text = (ROOT / "README.rst").read_text("utf-8")
    referred = {" ".join(name.split()) for name in re.findall(r"`([^`<]+)`_", text)}
    assert not referred - set(titles), sorted(referred - set(titles))
    for feature in ("Delayed and scheduled messages", "Priorities", "Idempotent adds",
                    "Batches", "Peek", "Long polls", "Batch pop"):
        assert feature in titles, feature


def test_tests_cited_by_the_readme_exist():
    text = (ROOT / "README.rst").read_text("utf-8")
    cited = re.findall(r"((?:tests/)?[\w/]+\.py)::(\w+)", text)
    missing = [f"{path}::{name}" for path, name in cited
               if not (ROOT / "tests" / path.removeprefix("tests/")).is_file()
               or f"def {name}(" not in (ROOT / "tests" / path.removeprefix("tests/")).read_text()]
    assert cited and not missing, missing


TEXT_SUFFIXES = {".py", ".lua", ".yaml", ".md", ".rst", ".conf", ".sh", ".html", ".service",
                 ".txt", ".ini", ""}


def repository_files():
    """Text files of the checkout, without hidden directories (.venv, .git ...) and caches."""
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and "egg-info" not in d
                         and d not in ("__pycache__", "build", "dist", "out")]
        for name in files:
            path = Path(folder) / name
            if path.suffix in TEXT_SUFFIXES:
                yield path


def test_docs_cited_anywhere_in_the_repository_resolve():
    broken, cited = [], 0
    for path in sorted(repository_files()):
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            continue
        for target in re.findall(r"\bdocs/[\w-]+\.md(?:#[\w-]+)?", text):
            cited += 1
            problem = check_target(ROOT / "citing-file", target)
            if problem:
                broken.append(f"{path.relative_to(ROOT)} cites {problem}")
    assert not broken, broken
    assert cited


def test_docs_hold_no_landing_markers():
    """`<!-- landing: ... -->` marked behaviour still on its way from another branch; once it
    has landed the page says what the code does and the marker goes."""
    for source in DOCS.glob("*.md"):
        assert "landing:" not in source.read_text("utf-8"), source.name


def test_docs_do_not_send_readers_to_the_private_specification():
    for source in DOCS.glob("*.md"):
        text = source.read_text("utf-8")
        assert "PROTOCOL.md" not in text and "STACK.md" not in text, source.name


# A citation of the private specification: its files by name, or one of its sections by number
# (`§4.9`, "the spec's §1.1"). Sections of RFCs (`RFC 9110 §8.6`) are public and allowed.
SPEC_FILE = re.compile(r"\b(?:PROTOCOL(?:-v2)?|STACK)\.md\b")
SPEC_SECTION = re.compile(r"§\s*\d")
RFC_SECTION = re.compile(r"\bRFC\s*\d+,?\s*§\s*\d")


def spec_citations(text: str) -> list[str]:
    """The lines of `text` that cite the private specification."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if SPEC_FILE.search(line) or SPEC_SECTION.search(RFC_SECTION.sub("", line)):
            found.append(f"{number}: {line.strip()}")
    return found


def test_spec_citations_are_recognised():
    assert spec_citations("See ../shared/spec/STACK.md §2: cyclone's leftovers")
    assert spec_citations('"""The JSON protocol (PROTOCOL.md §5)."""')
    assert spec_citations("-- the spec's §8.3 asks for it")
    assert spec_citations("`/j/<q>`: an HTML page (§4.9).")
    assert spec_citations("later features (PROTOCOL-v2.md)")
    assert not spec_citations('# cyclone would add "Content-Length: 0" (RFC 9110 §8.6)')
    assert not spec_citations("see docs/http-api.md#legacy-names")


CITING_PLACES = ("restmq", "README.rst", "bench", "examples", "contrib")


def test_package_does_not_cite_the_private_specification():
    """A reader of the repository cannot open the specification: code, Lua scripts, HTML and
    YAML under restmq/, README.rst, the benchmarks, examples and contrib cite docs/ instead."""
    citing = []
    files = []
    for place in CITING_PLACES:
        path = ROOT / place
        files += [path] if path.is_file() else sorted(path.rglob("*"))
    assert ROOT / "README.rst" in files
    for path in files:
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:  # favicon.ico
            continue
        citing += [f"{path.relative_to(ROOT)}:{line}" for line in spec_citations(text)]
    assert not citing, "\n".join(citing)


def test_slug_follows_githubs_rule():
    assert slug("Connection-level rules") == "connection-level-rules"
    assert slug("Pub/sub") == "pubsub"
    assert slug("cyclone on Python 3") == "cyclone-on-python-3"
    assert slug("`restmq-engine`") == "restmq-engine"
