"""Reading and checking task files before anything is published.

A file holds one JSON object, a JSON array of objects, or JSON Lines. Every task
is checked against the task schema and Pub/Sub's limits; the first problem is
reported with its file and line, and then nothing is published.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskctl.errors import NotFoundError, UsageError

# Pub/Sub limits on one message, in bytes (UTF-8): data, attributes and their keys
# and values, and the ordering key.
MAX_DATA_BYTES = 10_000_000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024
TASK_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
_TASK_FIELDS = {"task_type", "payload", "task_id", "attributes", "ordering_key"}
# Attributes taskctl sets itself on every task message.
RESERVED_ATTRIBUTES = {"task_type", "task_id"}


@dataclass(frozen=True)
class Task:
    """One task ready to publish: message data, attributes and where it came from."""

    task_type: str
    task_id: str
    data: bytes
    attributes: dict[str, str]
    ordering_key: str
    source: str  # "file:line"


@dataclass
class TaskFile:
    path: Path
    tasks: list[Task] = field(default_factory=list)


def _utf8_length(text: str) -> int:
    return len(text.encode("utf-8"))


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _skip_whitespace(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def parse_documents(path: Path, text: str) -> list[tuple[int, Any]]:
    """Return (line, value) for each task in ``text``: an object, an array or JSON Lines."""
    decoder = json.JSONDecoder()
    start = _skip_whitespace(text, 0)
    if start == len(text):
        raise UsageError(f"{path}: the file is empty", hint="add at least one task")
    if text[start] == "[":
        return _parse_array(path, text, start, decoder)

    documents: list[tuple[int, Any]] = []
    index = start
    while index < len(text):
        line = _line_of(text, index)
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError as error:
            raise UsageError(
                f"{path}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno})"
            ) from None
        documents.append((line, value))
        index = _skip_whitespace(text, end)
        if (
            index < len(text)
            and _line_of(text, index) == _line_of(text, end)
            and end < len(text)
        ):
            raise UsageError(
                f"{path}:{_line_of(text, index)}: unexpected text after a JSON value",
                hint="put one task per line (JSON Lines) or wrap the tasks in an array",
            )
    return documents


def _parse_array(
    path: Path, text: str, start: int, decoder: json.JSONDecoder
) -> list[tuple[int, Any]]:
    documents: list[tuple[int, Any]] = []
    index = _skip_whitespace(text, start + 1)
    if index < len(text) and text[index] == "]":
        raise UsageError(
            f"{path}: the array holds no tasks", hint="add at least one task"
        )
    while True:
        line = _line_of(text, index)
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as error:
            raise UsageError(
                f"{path}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno})"
            ) from None
        documents.append((line, value))
        index = _skip_whitespace(text, index)
        if index < len(text) and text[index] == ",":
            index = _skip_whitespace(text, index + 1)
            continue
        if index < len(text) and text[index] == "]":
            rest = _skip_whitespace(text, index + 1)
            if rest != len(text):
                raise UsageError(
                    f"{path}:{_line_of(text, rest)}: unexpected text after the array"
                )
            return documents
        raise UsageError(
            f"{path}:{_line_of(text, index)}: invalid JSON: expected ',' or ']' in the array"
        )


def _check_attribute(where: str, key: str, value: str) -> None:
    if not key:
        raise UsageError(f"{where}: an attribute key is empty")
    if key.lower().startswith("goog"):
        raise UsageError(
            f"{where}: attribute key {key!r} starts with 'goog', which Pub/Sub reserves"
        )
    if _utf8_length(key) > MAX_ATTRIBUTE_KEY_BYTES:
        raise UsageError(
            f"{where}: attribute key {key[:40]!r}... is {_utf8_length(key)} bytes, over "
            f"Pub/Sub's limit of {MAX_ATTRIBUTE_KEY_BYTES}"
        )
    if _utf8_length(value) > MAX_ATTRIBUTE_VALUE_BYTES:
        raise UsageError(
            f"{where}: attribute {key!r} is {_utf8_length(value)} bytes, over "
            f"Pub/Sub's limit of {MAX_ATTRIBUTE_VALUE_BYTES}"
        )


def check_task(value: Any, where: str, extra_attributes: dict[str, str]) -> Task:
    """Validate one task document and build its message."""
    if not isinstance(value, dict):
        raise UsageError(
            f"{where}: a task must be a JSON object, not {type(value).__name__}"
        )
    unknown = sorted(set(value) - _TASK_FIELDS)
    if unknown:
        raise UsageError(
            f"{where}: unknown task field {unknown[0]!r}",
            hint=f"a task has {', '.join(sorted(_TASK_FIELDS))}",
        )
    task_type = value.get("task_type")
    if task_type is None:
        raise UsageError(f"{where}: missing task_type")
    if not isinstance(task_type, str) or not TASK_TYPE.match(task_type):
        raise UsageError(
            f"{where}: invalid task_type {task_type!r}",
            hint="use a name such as process_image (letters, digits, _ . -)",
        )
    payload = value.get("payload")
    if not isinstance(payload, dict):
        found = "missing" if payload is None else f"a {type(payload).__name__}"
        raise UsageError(f"{where}: payload must be a JSON object ({found})")
    task_id = value.get("task_id")
    if task_id is None:
        task_id = str(uuid.uuid4())
    elif not isinstance(task_id, str) or not task_id.strip():
        raise UsageError(f"{where}: task_id must be a non-empty string")

    attributes = dict(extra_attributes)
    own_attributes = value.get("attributes", {})
    if not isinstance(own_attributes, dict) or not all(
        isinstance(item, str) for item in own_attributes.values()
    ):
        raise UsageError(f"{where}: attributes must be an object of strings")
    for key in own_attributes:
        if key in RESERVED_ATTRIBUTES:
            raise UsageError(
                f"{where}: attribute {key!r} is set by taskctl from the task's own field"
            )
    attributes.update(own_attributes)
    attributes["task_type"] = task_type
    attributes["task_id"] = task_id
    if len(attributes) > MAX_ATTRIBUTES:
        raise UsageError(
            f"{where}: {len(attributes)} attributes, over Pub/Sub's limit of {MAX_ATTRIBUTES}"
        )
    for key, item in attributes.items():
        _check_attribute(where, key, item)

    ordering_key = value.get("ordering_key", "")
    if not isinstance(ordering_key, str):
        raise UsageError(f"{where}: ordering_key must be a string")
    if _utf8_length(ordering_key) > MAX_ORDERING_KEY_BYTES:
        raise UsageError(
            f"{where}: ordering_key is {_utf8_length(ordering_key)} bytes, over Pub/Sub's "
            f"limit of {MAX_ORDERING_KEY_BYTES}"
        )

    body = {"task_type": task_type, "task_id": task_id, "payload": payload}
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_DATA_BYTES:
        raise UsageError(
            f"{where}: the task is {len(data)} bytes as JSON, over Pub/Sub's limit of "
            f"{MAX_DATA_BYTES} bytes per message",
            hint="store large inputs in Cloud Storage and pass their names",
        )
    return Task(task_type, task_id, data, attributes, ordering_key, where)


def parse_attribute_options(options: list[str]) -> dict[str, str]:
    """Parse ``--attribute KEY=VALUE`` options."""
    attributes: dict[str, str] = {}
    for option in options:
        key, separator, value = option.partition("=")
        if not separator or not key:
            raise UsageError(f"invalid --attribute {option!r}: expected KEY=VALUE")
        if key in RESERVED_ATTRIBUTES:
            raise UsageError(
                f"invalid --attribute {option!r}: {key} is set from the task"
            )
        _check_attribute("--attribute", key, value)
        attributes[key] = value
    return attributes


def load_files(
    paths: list[Path], extra_attributes: dict[str, str] | None = None
) -> list[Task]:
    """Read and check every task in ``paths``; raise on the first problem."""
    tasks: list[Task] = []
    seen_ids: dict[str, str] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFoundError(f"task file {path} not found") from None
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory, not a task file") from None
        except UnicodeDecodeError as error:
            raise UsageError(f"{path}: not UTF-8 text (byte {error.start})") from None
        for line, value in parse_documents(path, text):
            task = check_task(value, f"{path}:{line}", extra_attributes or {})
            if task.task_id in seen_ids:
                raise UsageError(
                    f"{task.source}: task_id {task.task_id!r} repeats the task at "
                    f"{seen_ids[task.task_id]}",
                    hint="give each task its own task_id",
                )
            seen_ids[task.task_id] = task.source
            tasks.append(task)
    return tasks
