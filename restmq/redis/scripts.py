"""The Lua scripts of restmq/scripts/, each with the shared prelude of scripts/lib/ in front (no
Twisted needed, so the restmq-engine CLI runs exactly the same scripts as the server)."""
from __future__ import annotations

import hashlib
from importlib import resources


class Script:
    """A Lua script run by EVALSHA, loaded again when Redis answers NOSCRIPT."""

    def __init__(self, name: str, source: str):
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


_NOT_COUNTING = "local COUNTING = false\n"


def load_script(name: str, counters: bool = False) -> Script:
    """`restmq/scripts/<name>.lua` after `scripts/lib/prelude.lua` (the deadline guard, the
    skipping of dead entries, retiring, and the derivation of value keys from KEYS). With
    `counters` the script keeps the queue counters (`count` of the prelude): the flag is part
    of the source, so the two variants have their own SHA and no script takes an argument
    more."""
    folder = resources.files("restmq") / "scripts"
    prelude = (folder / "lib" / "prelude.lua").read_text("utf-8")
    if _NOT_COUNTING not in prelude:
        raise RuntimeError("the prelude no longer declares COUNTING")
    if counters:
        prelude = prelude.replace(_NOT_COUNTING, "local COUNTING = true\n", 1)
    return Script(name, prelude + (folder / f"{name}.lua").read_text("utf-8"))


def script_command(script: Script, keys: tuple[str, ...] | list[str], args: tuple,
                   by_source: bool = False) -> tuple:
    """The EVALSHA (or, `by_source`, EVAL) command running `script` with `keys` as KEYS and
    `args` as ARGV."""
    if isinstance(keys, str):  # a lone name would be spread into its letters
        raise TypeError("keys must be a sequence of key names")
    head = ("EVAL", script.source) if by_source else ("EVALSHA", script.sha)
    return (*head, len(keys), *keys, *args)
