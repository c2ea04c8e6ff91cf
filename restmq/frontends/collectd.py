"""The collectd frontend (docs/frontends.md#collectd): collectd's write_http bodies become
messages of the queues `collectd_data` and `collectd_event`, through the same core and
delivery.
"""
from __future__ import annotations

import json

from restmq.errors import BadRequest

DATA_QUEUE = "collectd_data"
EVENT_QUEUE = "collectd_event"
NOTIFICATION_FIELDS = ("Severity", "Time", "Host", "Plugin", "Type", "TypeInstance",
                       "DataSource", "CurrentValue", "WarningMin", "WarningMax", "FailureMin",
                       "FailureMax")
MALFORMED = "malformed collectd body"


def split_lines(body: str) -> list[str]:
    """LF-separated lines, one trailing CR dropped from each; a final LF ends the last line."""
    if not body:
        return []
    lines = body.split("\n")
    if body.endswith("\n"):
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def parse_line(line: str) -> dict[str, str] | None:
    """One PUTVAL or notification-header line as a dict, None for a line that is ignored;
    BadRequest for a recognized line that is malformed."""
    tokens = line.split(" ")
    head = tokens[0]
    if head == "PUTVAL":
        if len(tokens) < 4:
            raise BadRequest(MALFORMED)
        identifier = tokens[1]
        if len(identifier) >= 2 and identifier[0] == identifier[-1] == '"':
            identifier = identifier[1:-1]
        parts = identifier.split("/")
        if len(parts) != 3 or "=" not in tokens[2]:
            raise BadRequest(MALFORMED)
        return {"host": parts[0], "plugin_instance": parts[1], "type_instance": parts[2],
                "interval": tokens[2].split("=", 1)[1], "value": tokens[3]}
    name = head[:-1] if head.endswith(":") else head
    if name in NOTIFICATION_FIELDS:
        if len(tokens) < 2:
            raise BadRequest(MALFORMED)
        return {name.lower(): tokens[1]}
    return None


def parse_lines(lines: list[str]) -> list[dict[str, str]]:
    return [item for item in map(parse_line, lines) if item is not None]


def decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(MALFORMED) from None


def data_message(body: bytes, content_type: str | None) -> str | None:
    """The value stored for POST /collectd/data, or None when the media type is unexpected
    (the caller answers 503, docs/http-api.md#collectd-ingest)."""
    text = decode(body)
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        return text
    if media != "text/plain":
        return None
    return json.dumps(parse_lines(split_lines(text)), ensure_ascii=False)


def event_message(body: bytes) -> str:
    """The value stored for POST /collectd/event: header lines, then the event text."""
    lines = split_lines(decode(body))
    if not lines:
        raise BadRequest(MALFORMED)
    event_text = lines.pop()
    if lines:
        lines.pop()  # the blank separator before the text
    items = parse_lines(lines)
    items.append({"event_text": event_text})
    return json.dumps(items, ensure_ascii=False)
