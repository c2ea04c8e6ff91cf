"""Keys are declared: every script gets the keys it touches in KEYS (or derives them by the
documented rules from KEYS and from what Redis replied), never from ARGV, and the Python side
builds key names in restmq/redis/keys.py alone.

Three checks:
* a static reading of every script's Lua source (the prelude included), with the key positions
  of each command taken from Redis itself (COMMAND INFO), see `LuaKeys`;
* an AST reading of restmq/ for code that glues key names outside restmq/redis/keys.py;
* the server's operations and the restmq-engine CLI run under MONITOR: every key a script touches
  is one of its EVALSHA's KEYS, or a value key <q>:<n> / <q>:<n>:refcount of that queue.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# -- key names are built in restmq/redis/keys.py alone ---------------------------------------------

# What betrays a key name being made: a piece of the layout in a string, or a queue name glued to
# a colon. Docstrings are prose and are skipped; comments are not read at all.
LAYOUT = re.compile(r":queue\b|:UUID|queuestat:|:queuepolicy|:refcount|:PUBSUB|AUTHKEY:|:lock\b|"
                    r"QUEUESET")
GLUED = re.compile(r"\{(?:self\.)?(?:queue|q|name)\}:(?! )")
QUEUE_NAMES = {"queue", "q", "name"}


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def queue_like(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in QUEUE_NAMES
    return isinstance(node, ast.Attribute) and node.attr in QUEUE_NAMES


def key_building(path: Path) -> list[str]:
    """Where `path` builds key names: `file:line: why`."""
    tree = ast.parse(path.read_text("utf-8"))
    skip = docstrings(tree)
    found = []
    for node in ast.walk(tree):
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        where = f"{shown}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if LAYOUT.search(node.value) or GLUED.search(node.value):
                found.append(f"{where}: {node.value!r}")
        elif isinstance(node, ast.JoinedStr):
            for k, part in enumerate(node.values[:-1]):
                after = node.values[k + 1]
                if isinstance(part, ast.FormattedValue) and queue_like(part.value) and \
                        isinstance(after, ast.Constant) and after.value.startswith(":") and \
                        not after.value.startswith(": "):
                    found.append(f"{where}: f-string glues a queue name to ':'")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            if queue_like(node.left) and isinstance(node.right, ast.Constant) and \
                    str(node.right.value).startswith(":"):
                found.append(f"{where}: '+' glues a queue name to ':'")
    return found


def test_only_the_keys_module_builds_key_names():
    found = []
    for path in sorted((ROOT / "restmq").rglob("*.py")):
        if path != ROOT / "restmq" / "redis" / "keys.py":
            found += key_building(path)
    assert found == []


def test_the_key_name_check_can_fail(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""a docstring may say <q>:queue"""\n'
                      'def f(queue, n):\n'
                      '    return f"{queue}:{n}", queue + ":x", "queuestat::" + queue, '
                      '"{queue}:{n}", f"{name}: fine"\n', "utf-8")
    assert len(key_building(sample)) == 4
