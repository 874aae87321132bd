"""LogEntry values as filters see them: severities, log names and field lookups."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

from google.logging.type import log_severity_pb2
from google.protobuf import json_format

# LogSeverity names and their numbers (google/logging/type/log_severity.proto).
SEVERITY_LEVELS: dict[str, int] = {
    name: number for name, number in log_severity_pb2.LogSeverity.items()
}


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def severity_level(text: str) -> int | None:
    """Return the number of a severity given by name (any case) or number."""
    name = text.strip().upper()
    if name in SEVERITY_LEVELS:
        return SEVERITY_LEVELS[name]
    try:
        return int(name)
    except ValueError:
        return None


def normalize_log_name(log_name: str) -> str:
    """Return ``projects/P/logs/ID`` with the log ID URL-encoded, as the API stores it.

    Filters may spell ``run.googleapis.com/stdout`` with a slash or as ``%2F``.
    """
    prefix, separator, log_id = log_name.partition("/logs/")
    if not separator:
        return log_name
    return f"{prefix}/logs/{quote(unquote(log_id), safe='')}"


def entry_to_dict(entry: Any) -> dict[str, Any]:
    """Return the JSON form of a raw LogEntry message, with ``severity`` always set.

    ``MessageToDict`` leaves out fields at their default, so a DEFAULT severity
    would otherwise look like a missing field.
    """
    data: dict[str, Any] = json_format.MessageToDict(entry)
    data.setdefault("severity", "DEFAULT")
    return data


def field_leaves(entry: dict[str, Any], path: tuple[str, ...]) -> Any:
    """Return the values at ``path`` (lists flattened), or MISSING if there are none."""
    current: list[Any] = [entry]
    for segment in path:
        following: list[Any] = []
        for value in current:
            if isinstance(value, dict) and segment in value:
                child = value[segment]
                if isinstance(child, list):
                    following.extend(child)
                else:
                    following.append(child)
        if not following:
            return MISSING
        current = following
    return current


def string_leaves(value: Any) -> Iterator[str]:
    """Yield every scalar inside ``value`` as text, for substring searches."""
    if isinstance(value, dict):
        for child in value.values():
            yield from string_leaves(child)
    elif isinstance(value, list):
        for child in value:
            yield from string_leaves(child)
    elif isinstance(value, bool):
        yield "true" if value else "false"
    elif value is not None:
        yield str(value)
