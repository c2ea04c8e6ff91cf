"""JSON text as it goes on the wire: ASCII only, markup characters escaped
(docs/http-api.md#replies)."""
from __future__ import annotations

import json
from typing import Any

_dumps = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": ")).encode


def json_text(obj: Any) -> str:
    """ASCII only (non-ASCII as \\uXXXX), with <, > and & escaped as \\u003c, \\u003e, \\u0026."""
    text = _dumps(obj)
    if "<" in text or ">" in text or "&" in text:
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text


def encodable(text: str) -> bool:
    """Whether a string can be stored: JSON may spell lone surrogates (\\ud800), which no UTF-8
    value can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
