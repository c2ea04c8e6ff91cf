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
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from restmq.core import Core, Item, Message
from restmq.redis import RedisService
from restmq.redis.scripts import load_script
from tests.conftest import RedisProcess
from tests.util import Monitor

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in (ROOT / "restmq" / "scripts").glob("*.lua"))

# -- a small reader of the Lua the scripts are written in ------------------------------------------

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--\[(?P<eq>=*)\[.*?\](?P=eq)\]|--[^\n]*)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<number>0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_]\w*)
  | (?P<op>\.\.\.|\.\.|==|~=|<=|>=|[-+*/%^\#<>=(){}\[\];:,.])
""", re.X | re.S)
MEMBER_READS = {"LRANGE", "ZRANGE", "ZRANGEBYSCORE", "ZPOPMIN", "RPOP"}
BINARY = {"+", "-", "*", "/", "%", "^", "..", "==", "~=", "<", "<=", ">", ">=", "and", "or"}
UNARY = {"not", "-", "#"}


def tokens(source: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(source):
        m = TOKEN.match(source, pos)
        assert m, f"cannot read Lua at {source[pos:pos + 40]!r}"
        pos = m.end()
        if m.lastgroup == "string":
            out.append(("str", m.group()[1:-1]))
        elif m.lastgroup not in ("space", "comment"):
            out.append((m.lastgroup, m.group()))
    return out


class LuaKeys:
    """Reads a script (the subset of Lua the scripts use) and judges its key arguments.

    The rules, as docs/redis-layout.md#scripts states them:
    * a key argument of `redis.call` (the positions COMMAND INFO gives for the command) is
      declared when it is `KEYS[...]`; or `value_key(K, n)` / `refcount_of(K)` with K declared
      (the prelude's two derivation helpers, the only code that appends to a key name); or an
      entry read from a declared list (`RPOP`, `LPOP`, `LINDEX`, an element of `LRANGE`); or a
      name every assignment of which is declared (`nil` aside), a function parameter every call
      of which passes a declared key, a function result every `return` of which is declared;
      or `unpack(t)` of a local table `t` only ever made by a constructor and filled by
      `t[...] = e`, each of its entries and every such `e` declared;
    * so ARGV, string literals and concatenations never name a key; PUBLISH's channel is no key.
    Names are judged per script, not per scope: a name that holds a key in one place and
    something else in another fails, which only ever makes the check stricter.
    """

    def __init__(self, source: str):
        self.toks = tokens(source)
        self.i = 0
        self.calls = []  # (command, [args]) of every redis.call / redis.pcall
        self.sources: dict[str, list] = {}  # name -> [(expr, result index)]
        self.entries: dict[str, list] = {}  # name -> [expr of each `name[...] = expr`]
        self.params: dict[str, list[str]] = {}  # local function -> parameters
        self.returns: dict[str, list[list]] = {}  # local function -> [explist of each return]
        self.sites: dict[str, list[list]] = {}  # local function -> [args of each call]
        self.functions: list[str] = []
        self.block(())
        assert self.i == len(self.toks)

    # parsing ------------------------------------------------------------------------------------

    def peek(self, k: int = 0):
        return self.toks[self.i + k] if self.i + k < len(self.toks) else (None, None)

    def take(self, value: str | None = None):
        tok = self.peek()
        assert tok[0] is not None, "unexpected end of script"
        assert value is None or tok[1] == value, f"expected {value!r}, read {tok}"
        self.i += 1
        return tok

    def at(self, *values: str) -> bool:
        return self.peek()[0] in ("name", "op") and self.peek()[1] in values

    def block(self, ends: tuple[str, ...]) -> None:
        while self.peek()[0] is not None and not self.at(*ends):
            self.statement()

    def statement(self) -> None:
        if self.at(";"):
            self.take()
        elif self.at("local"):
            self.take()
            if self.at("function"):
                self.take()
                self.function(self.take()[1])
            else:
                names = [self.take()[1]]
                while self.at(","):
                    self.take()
                    names.append(self.take()[1])
                if self.at("="):
                    self.take()
                    self.assign(names, self.explist())
        elif self.at("if"):
            self.take()
            self.exp()
            self.take("then")
            self.block(("elseif", "else", "end"))
            while self.at("elseif"):
                self.take()
                self.exp()
                self.take("then")
                self.block(("elseif", "else", "end"))
            if self.at("else"):
                self.take()
                self.block(("end",))
            self.take("end")
        elif self.at("for"):
            self.take()
            names = [self.take()[1]]
            if self.at("="):
                self.take()
                self.explist()
                self.assign(names, [("num",)])
            else:
                while self.at(","):
                    self.take()
                    names.append(self.take()[1])
                self.take("in")
                iterator = self.explist()
                self.assign(names, [("num",), ("elem", iterator[0])])
            self.take("do")
            self.block(("end",))
            self.take("end")
        elif self.at("while"):
            self.take()
            self.exp()
            self.take("do")
            self.block(("end",))
            self.take("end")
        elif self.at("do"):
            self.take()
            self.block(("end",))
            self.take("end")
        elif self.at("return"):
            self.take()
            explist = [] if self.at("end", "else", "elseif") or self.peek()[0] is None \
                else self.explist()
            if self.functions:
                self.returns[self.functions[-1]].append(explist)
        elif self.at("break"):
            self.take()
        else:
            targets = [self.suffixed()]
            while self.at(","):
                self.take()
                targets.append(self.suffixed())
            if self.at("="):
                self.take()
                names = [t[1] if t[0] == "name" else None for t in targets]
                exprs = self.explist()
                for k, t in enumerate(targets):
                    if t[0] == "index" and t[1][0] == "name":
                        self.entries.setdefault(t[1][1], []).append(
                            exprs[k] if k < len(exprs) else ("nil",))
                self.assign(names, exprs)

    def function(self, name: str) -> None:
        self.take("(")
        params = []
        while not self.at(")"):
            params.append(self.take()[1])
            if self.at(","):
                self.take()
        self.take(")")
        self.params[name], self.returns[name] = params, []
        self.functions.append(name)
        self.block(("end",))
        self.take("end")
        self.functions.pop()

    def assign(self, names: list, exprs: list) -> None:
        for k, name in enumerate(names):
            if name is None:
                continue
            if k < len(exprs):
                source = (exprs[k], 0)
            elif exprs and exprs[-1][0] == "call":
                source = (exprs[-1], k - len(exprs) + 1)
            else:
                source = (("nil",), 0)
            self.sources.setdefault(name, []).append(source)

    def explist(self) -> list:
        exprs = [self.exp()]
        while self.at(","):
            self.take()
            exprs.append(self.exp())
        return exprs

    def exp(self):
        parts = []
        while True:
            while self.at(*UNARY):
                self.take()
                parts.append(None)
            parts.append(self.simple())
            if not self.at(*BINARY):
                break
            self.take()
        return parts[0] if len(parts) == 1 else ("op", parts)

    def simple(self):
        kind, value = self.peek()
        if kind == "number":
            self.take()
            return ("num",)
        if kind == "str":
            self.take()
            return ("str", value)
        if self.at("nil", "false", "true", "..."):
            self.take()
            return ("nil",) if value in ("nil", "false") else ("lit",)
        if self.at("{"):
            return self.table()
        if self.at("function"):
            self.take()
            self.function(f"<anonymous {self.i}>")
            return ("lit",)
        return self.suffixed()

    def table(self):
        self.take("{")
        fields, entries = {}, []
        while not self.at("}"):
            name = None
            if self.at("["):
                self.take()
                self.exp()
                self.take("]")
                self.take("=")
                name = ""  # a computed field: an entry of the table, unnamed
            elif self.peek()[0] == "name" and self.peek(1)[1] == "=":
                name = self.take()[1]
                self.take("=")
            expr = self.exp()
            if name:
                fields[name] = expr
            else:
                entries.append(expr)
            if self.at(",", ";"):
                self.take()
        self.take("}")
        return ("table", fields, entries)

    def suffixed(self):
        if self.at("("):
            self.take()
            expr = self.exp()
            self.take(")")
        else:
            expr = ("name", self.take()[1])
        while True:
            if self.at("."):
                self.take()
                expr = ("field", expr, self.take()[1])
            elif self.at("["):
                self.take()
                expr = ("index", expr, self.exp())
                self.take("]")
            elif self.at(":"):
                self.take()
                method = self.take()[1]
                expr = ("method", expr, method, self.args())
            elif self.at("(") or self.at("{") or self.peek()[0] == "str":
                expr = ("call", expr, self.args())
                self.note_call(expr)
            else:
                return expr

    def args(self) -> list:
        if self.peek()[0] == "str":
            return [("str", self.take()[1])]
        if self.at("{"):
            return [self.table()]
        self.take("(")
        args = [] if self.at(")") else self.explist()
        self.take(")")
        return args

    def note_call(self, expr) -> None:
        fn, args = expr[1], expr[2]
        if fn in (("field", ("name", "redis"), "call"), ("field", ("name", "redis"), "pcall")):
            assert args and args[0][0] == "str", "a redis.call whose command is not a literal"
            self.calls.append((args[0][1].upper(), args[1:]))
        elif fn[0] == "name":
            self.sites.setdefault(fn[1], []).append(args)

    # judging ------------------------------------------------------------------------------------

    def declared(self, expr, index: int = 0, seen=frozenset()) -> bool:
        if expr[0] == "nil":
            return True
        if expr[0] == "index" and expr[1] == ("name", "KEYS"):
            return True
        if expr[0] == "index":
            return self.listy(expr[1], seen)
        if expr[0] == "field":
            return self.field_declared(expr[1], expr[2], seen)
        if expr[0] == "name":
            return self.declared_name(expr[1], seen)
        if expr[0] == "elem":
            return self.listy(expr[1], seen)
        if expr[0] != "call":
            return False
        fn, args = expr[1], expr[2]
        if fn in (("name", "value_key"), ("name", "refcount_of")):
            return index == 0 and bool(args) and self.declared(args[0], 0, seen)
        if fn == ("field", ("name", "redis"), "call"):
            return index == 0 and args[0][1].upper() in ("RPOP", "LPOP", "LINDEX") and \
                self.declared(args[1], 0, seen)
        if fn == ("name", "unpack"):
            return len(args) == 1 and args[0][0] == "name" and self.spread(args[0][1], seen)
        if fn[0] == "name" and fn[1] in self.returns:
            return all(len(r) <= index or self.declared(r[index], 0, seen)
                       for r in self.returns[fn[1]])
        return False

    def declared_name(self, name: str, seen) -> bool:
        if name in seen:
            return True  # judged further up: a cycle adds nothing
        seen = seen | {name}
        return self.every_role(name, lambda e, i: self.declared(e, i, seen))

    def spread(self, name: str, seen) -> bool:
        """`unpack(name)` gives declared keys only: `name` is only ever a table constructor
        whose entries are declared, and whatever is stored into it (`name[...] = e`) is."""
        if ("spread", name) in seen:
            return True
        seen = seen | {("spread", name)}
        roles = self.sources.get(name, [])
        return bool(roles) and all(
            e[0] == "table" and not e[1] and all(self.declared(x, 0, seen) for x in e[2])
            for e, _ in roles) and \
            all(self.declared(e, 0, seen) for e in self.entries.get(name, []))

    def every_role(self, name: str, judge) -> bool:
        """Whether `judge(expr, result index)` holds for everything `name` may hold: what each
        assignment gives it and, for a parameter, what each call passes. False for a name that
        is given nothing, unless it is only a parameter of functions never called (a prelude
        function a script does not use)."""
        roles = list(self.sources.get(name, []))
        unused = False
        for function, params in self.params.items():
            if name in params:
                k = params.index(name)
                sites = self.sites.get(function, [])
                unused = unused or not sites
                roles += [(args[k] if len(args) > k else ("nil",), 0) for args in sites]
        return (bool(roles) or unused) and all(judge(e, i) for e, i in roles)

    def listy(self, expr, seen) -> bool:
        """A reply listing the entries of a declared list or sorted set (LRANGE, RPOP with a
        count, ZRANGE, ZRANGEBYSCORE, ZPOPMIN; lenient: the scores of a WITHSCORES reply pass too), a local
        function returning only such replies, or a name only ever holding one."""
        if expr[0] == "call" and expr[1] == ("name", "ipairs"):
            return self.listy(expr[2][0], seen)
        if expr[0] == "call" and expr[1] == ("field", ("name", "redis"), "call"):
            return expr[2][0][1].upper() in MEMBER_READS and self.declared(expr[2][1], 0, seen)
        if expr[0] == "call" and expr[1][0] == "name" and expr[1][1] in self.returns:
            returns = self.returns[expr[1][1]]
            return bool(returns) and all(r and self.listy(r[0], seen) for r in returns)
        if expr[0] == "name":
            return self.every_role(expr[1], lambda e, i: i == 0 and self.listy(e, seen))
        return False

    def field_declared(self, base, field: str, seen) -> bool:
        """`base.field` is declared: base is a table constructor whose `field` is, or a name
        (a local, a parameter) or a local function's result only ever holding such tables."""
        if base[0] == "table":
            return field in base[1] and self.declared(base[1][field], 0, seen)
        if base[0] == "name":
            if ("field", base[1], field) in seen:
                return True
            inner = seen | {("field", base[1], field)}
            return self.every_role(base[1], lambda e, i: i == 0 and
                                   self.field_declared(e, field, inner))
        if base[0] == "call" and base[1][0] == "name" and base[1][1] in self.returns:
            returns = self.returns[base[1][1]]
            return bool(returns) and all(r and self.field_declared(r[0], field, seen)
                                         for r in returns)
        return False


@pytest.fixture(scope="module")
def key_positions(redis_proc):
    """Which arguments of a command are keys, as Redis itself says (first, last, step)."""
    client = redis_proc.client()
    cache = {}

    def positions(command: str, count: int) -> list[int]:
        if command not in cache:
            info = client("COMMAND", "INFO", command)[0]
            assert info is not None, f"{command}: not a Redis command"
            cache[command] = info[3:6]
        first, last, step = cache[command]
        if first == 0:
            return []
        last = count if last < 0 else last
        return list(range(first, last + 1, step))

    yield positions
    client.close()


def script_calls(name: str):
    reader = LuaKeys(load_script(name).source)
    return reader, reader.calls


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_key_a_script_names_comes_from_keys(name, key_positions):
    reader, calls = script_calls(name)
    assert calls
    for command, args in calls:
        for position in key_positions(command, len(args)):
            assert reader.declared(args[position - 1]), \
                f"{name}.lua: {command} argument {position} is not declared in KEYS"


def test_the_reader_refuses_what_the_rules_refuse(key_positions):
    """The check can fail: keys from ARGV, literals, concatenations and their locals."""
    prelude = "".join(p.read_text("utf-8")
                      for p in sorted((ROOT / "restmq" / "scripts" / "lib").glob("*.lua")))
    for body in ("redis.call('GET', ARGV[1])",
                 "redis.call('SADD', 'QUEUESET', KEYS[1])",
                 "redis.call('GET', KEYS[1] .. ':queue')",
                 "local k = KEYS[1] if x then k = ARGV[1] end redis.call('DEL', k)",
                 "local function f(k) redis.call('DEL', 'x', k) end f(KEYS[1]) f(ARGV[2])",
                 "local p = 'q:' redis.call('DEL', value_key(p, 1))",
                 "for _, k in ipairs(ARGV) do redis.call('DEL', k) end",
                 "local T = {k = ARGV[1]} redis.call('DEL', T.k)",
                 "local T = {k = KEYS[1]} redis.call('DEL', T.j)",
                 "local function f() return {k = ARGV[1]} end redis.call('DEL', f().k)",
                 "local r = redis.call('HGETALL', KEYS[1]) redis.call('DEL', r[1])",
                 "local r = redis.call('ZRANGE', ARGV[1], 0, 0) redis.call('DEL', r[1])",
                 "local ks = {} ks[1] = ARGV[1] redis.call('DEL', unpack(ks))",
                 "local ks = {KEYS[1], ARGV[1]} redis.call('DEL', unpack(ks))",
                 "local ks = {[2] = ARGV[1]} redis.call('DEL', unpack(ks))",
                 "local ks = ARGV redis.call('DEL', unpack(ks))",
                 "local ks = {} ks[1] = KEYS[1] ks = ARGV redis.call('DEL', unpack(ks))",
                 "local ks = {} ks[1] = KEYS[1] redis.call('DEL', unpack(ks, 1))",
                 "redis.call('DEL', unpack(ARGV))"):
        reader = LuaKeys(prelude + body)
        assert not all(reader.declared(args[p - 1]) for command, args in reader.calls
                       for p in key_positions(command, len(args))), body
    for ok in ("local k = KEYS[2] for _, v in ipairs(redis.call('LRANGE', k, 0, 1)) do "
               "redis.call('DEL', v, refcount_of(v)) end redis.call('PUBLISH', ARGV[1], 'x')",
               "local Q = queue_keys(1) local top = redis.call('ZPOPMIN', Q.priority) "
               "redis.call('DEL', Q.pending, top[1])",
               "local Q = queue_keys(1) local ks = {KEYS[2]} "
               "for i, k in ipairs(redis.call('LRANGE', Q.pending, 0, 9)) do ks[i + 1] = k end "
               "ks[#ks + 1] = value_key(Q.counter, 7) redis.call('DEL', unpack(ks))"):
        reader = LuaKeys(prelude + ok)
        assert all(reader.declared(args[p - 1]) for command, args in reader.calls
                   for p in key_positions(command, len(args))), ok


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


# -- the scripts under MONITOR ---------------------------------------------------------------

def undeclared(commands, getkeys) -> list[str]:
    """The keys touched by scripts that their EVALSHA/EVAL did not declare and that are no value
    key of a declared queue (<q>:<digits>[:refcount], with <q>: the declared `<q>:queue` or
    `<q>:UUID` less its last word)."""
    declared, prefixes, bad = set(), set(), []
    for client, args in commands:
        if args and args[0].upper() in ("EVALSHA", "EVAL"):
            count = int(args[2])
            for key in args[3:3 + count]:
                declared.add(key)
                for suffix in ("queue", "UUID"):
                    if key.endswith(":" + suffix):
                        prefixes.add(key[:-len(suffix)])
        elif client == "lua":
            for key in getkeys(args):
                value = re.fullmatch(r"(.*:)\d+(?::refcount)?", key)
                if key not in declared and not (value and value.group(1) in prefixes):
                    bad.append(f"{' '.join(args)}: {key}")
    return bad


@pytest.fixture(scope="module")
def private_redis():
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture
def watched(private_redis):
    client = private_redis.client()
    client("FLUSHALL")
    monitor = Monitor(private_redis)
    marks = iter(range(1_000_000))

    def getkeys(args):
        try:
            return client("COMMAND", "GETKEYS", *args)
        except RuntimeError:  # no key arguments (TIME, PUBLISH)
            return []

    def check(what: str) -> None:
        marker = f"mark-{next(marks)}"
        client("ECHO", marker)
        commands = monitor.until(marker)
        assert any(client == "lua" for client, _ in commands), f"{what}: no script ran"
        assert undeclared(commands, getkeys) == [], what

    yield client, check
    monitor.client.close()
    client.close()


@pytest_twisted.ensureDeferred
async def test_server_operations_touch_only_declared_keys(private_redis, watched):
    redis, check = watched
    svc = RedisService(port=private_redis.port)
    svc.startService()
    try:
        core = Core(svc, consumed_ttl=60)
        await svc.execute("PING")
        for n in range(5):
            await core.add("w", f"v{n}", ttl=600 if n == 1 else None)
        check("add")
        await core.add_once("w", "v4")
        await core.add_once("w", "new")
        check("add_once")
        redis("DEL", "w:1")  # a dead entry at the tail
        assert (await core.soft_get("w")).key == "w:2"
        check("soft_get")
        assert (await core.hard_get("w")).key == "w:2"
        check("hard_get")
        assert (await core.take("w")).key == "w:3"
        check("take")
        assert await core.delete("w", "w:4")
        check("del")
        await core.set_policy("w", "roundrobin")
        check("set policy")
        await core.set_status("w", True)
        check("set status")
        policy, messages = await core.pop_batch("w")
        assert policy == "roundrobin" and messages
        check("pop_batch")
        assert await core.requeue("w", messages) == len(messages)
        check("requeue")
        await core.set_policy("w", "broadcast")
        listener = private_redis.client()  # broadcast pops only while someone listens
        listener("SUBSCRIBE", "w:PUBSUB")
        policy, messages = await core.pop_batch("w")
        listener.close()
        assert policy == "broadcast" and messages
        check("pop_batch broadcast")
        await core.add("w", "again")
        assert len(await core.stats()) == 1
        check("stats")
        assert await core.purge("w") == 1
        check("purge")
        for n in range(2000):  # a long list: purged by number, retired in steps
            await core.add("long", str(n))
        check("add many")
        assert await core.purge("long") == 1
        check("purge by number")
        assert await core.requeue("w", [Message("w:1", "back")]) == 1
        check("requeue one")
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_lease_operations_touch_only_declared_keys(private_redis, watched):
    redis, check = watched
    svc = RedisService(port=private_redis.port)
    svc.startService()
    try:
        core = Core(svc, consumed_ttl=60)
        await svc.execute("PING")
        await core.config_set("v", {"max_attempts": "1", "dead_letter": "v.dead", "lease": "1"})
        check("config_set")
        await core.add_items("v", [Item("a", priority=4), Item("b", delay=1), Item("c")],
                             idempotency=("k", "fp"))
        check("add with priority, delay, idempotency key")
        one, two = (await core.claim("v", limit=2)).messages
        check("claim")
        await core.extend("v", [one.receipt], 1)
        check("extend")
        await core.ack("v", [one.receipt])
        check("ack")
        await core.release("v", [two.receipt])
        check("release to the dead-letter queue")
        await core.info("v")
        check("info")
        page = await core.peek("v.dead", 10)
        assert [m.key for m in page.messages] == ["v.dead:1"]
        await core.peek("v.dead", 1, after="v.dead:1")
        check("peek")
        await core.redrive("v.dead")
        check("redrive")
        await core.claim("v")
        redis("PEXPIRE", "v:2", 1)  # a delayed message gone when due
        await core.config_set("v", {"max_attempts": "0"})
        while redis("ZCARD", "v:inflight") or redis("ZCARD", "v:delayed"):
            await deferLater(reactor, 0.05, lambda: None)
            for queue in (await core.due()).queues:
                await core.tick(queue)
        check("due and tick")
        await core.add("v", "d")
        assert await core.purge("v") == 1
        check("purge")
        await core.config_clear("v")
        check("config clear")
    finally:
        await svc.stopService()


def test_the_engine_touches_only_declared_keys(private_redis, watched):
    redis, check = watched
    engine = str(Path(sys.executable).with_name("restmq-engine"))

    def run(*args: str) -> str:
        out = subprocess.run([engine, "--redis-port", str(private_redis.port), "--queue", "e",
                              *args], capture_output=True, text=True, timeout=60, check=True)
        return out.stdout

    for flag in ("-p", "-p", "-g", "-c", "-k", "-s", "-j"):
        run(flag)
        check(f"restmq-engine {flag}")
