"""Bytes to and from Redis: commands encoded in RESP (cheaper than txredisapi's builder, and
kept encoded by a caller that sends the same arguments again), and replies decoded as text."""
from __future__ import annotations

from typing import Any, Sequence


def text(value: Any) -> Any:
    """Values that are not valid UTF-8 arrive as bytes: decode them with U+FFFD replacement."""
    kind = type(value)
    if kind is list:
        # A reply of hundreds of strings (a pop's) is mostly text already: no call for those.
        return [v if type(v) is str else text(v) for v in value]
    if kind is bytes or isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [text(v) for v in value]
    return value


def decoded(data: Any) -> Any:
    """txredisapi's conversion of a reply on a connection without number conversion and with
    the UTF-8 charset: text decoded, bytes that are not UTF-8 left as they are."""
    kind = type(data)
    if kind is bytes:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data
    if kind is list:
        return [decoded(x) for x in data]
    return data


EMPTY_ARG = b"$0\r\n\r\n"


def encode_command(args: tuple) -> bytes:
    """One command in RESP: what txredisapi's _build_command does, at a fifth of the cost. An
    empty string, the usual filler of a script's optional arguments (four of the five of each
    item of a batch), is one constant."""
    return b"*%d\r\n%s" % (len(args), encode_args(args))


def encode_args(args: Sequence[Any]) -> bytes:
    """The arguments of a command in RESP, without the count that heads it: a caller that
    sends the same arguments at every call (the keys of /metrics) keeps them encoded."""
    out = []
    append = out.append
    for arg in args:
        kind = type(arg)
        if kind is str:
            if not arg:
                append(EMPTY_ARG)
                continue
            data = arg.encode("utf-8")
        elif kind is bytes or isinstance(arg, bytes):
            data = arg
        elif arg == "":  # a str subclass
            append(EMPTY_ARG)
            continue
        else:
            data = str(arg).encode("utf-8")
        append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
