"""The Lua scripts of docs/redis-layout.md#operations, read from restmq/scripts/ (no Twisted
needed, so the restmq-engine CLI runs exactly the same scripts as the server)."""
from __future__ import annotations

import hashlib
from importlib import resources


class Script:
    """A Lua script run by EVALSHA, loaded again when Redis answers NOSCRIPT."""

    def __init__(self, name: str, source: str):
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


def load_script(name: str) -> Script:
    """Read `restmq/scripts/<name>.lua` with the shared preludes of scripts/lib/ it uses."""
    folder = resources.files("restmq") / "scripts"
    source = (folder / f"{name}.lua").read_text("utf-8")
    for prelude, use in (("retire", "retire("), ("deadline", "expired(")):
        if use in source:
            source = (folder / "lib" / f"{prelude}.lua").read_text("utf-8") + source
    return Script(name, source)
