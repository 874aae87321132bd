"""Reading and checking task files before anything is published.

A file contains one JSON object, a JSON array of objects, or JSON Lines. Every task
is checked against the task schema and Pub/Sub's limits; the first problem is
reported with its file and line, and then nothing is published.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskctl.errors import NotFoundError, UsageError

# Pub/Sub limits on one message, in bytes (UTF-8): data, attributes and their keys
# and values, and the ordering key.
MAX_DATA_BYTES = 10_000_000
# The whole message (data, attributes, ordering key) must leave room below the
# 10,000,000-byte request limit for the request's framing and for the attributes
# the worker adds when it dead-letters the task (a reason and a detail of up to
# 1,024 bytes each, and a few IDs), so a task that is accepted can also be
# dead-lettered with its reason. The margin is an estimate.
MAX_MESSAGE_BYTES = MAX_DATA_BYTES - 16 * 1024
# Task files larger than this are rejected before they are read.
MAX_FILE_BYTES = 256 * 1024 * 1024
# Keyword parameters of google-cloud-pubsub's PublisherClient.publish(); an
# attribute with one of these names cannot be passed through it.
CLIENT_RESERVED_ATTRIBUTES = {
    "topic",
    "data",
    "ordering_key",
    "retry",
    "timeout",
    "self",
}
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
    return len(_utf8(text, "a string"))


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # JSON can carry a lone surrogate escape (\\ud800) that has no UTF-8 form.
        raise UsageError(
            f"{what} contains a lone surrogate (an unpaired \\ud800-\\udfff escape), "
            "which is not valid UTF-8"
        ) from None


class _Lines:
    """Maps character offsets in a text to 1-based line numbers in O(log n)."""

    def __init__(self, text: str) -> None:
        self._starts = [
            index for index, character in enumerate(text) if character == "\n"
        ]

    def __call__(self, offset: int) -> int:
        return bisect.bisect_left(self._starts, offset) + 1


class _StrictValues:
    """JSON hooks that reject what the worker's decoder would reject later."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def constant(self, name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON (use a number or a string)")

    def number(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text[:40]} is out of range")
        return value

    def pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"the key {key!r} appears twice in one object")
            result[key] = value
        return result


def _skip_whitespace(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _decoder(path: Path) -> json.JSONDecoder:
    hooks = _StrictValues(path)
    return json.JSONDecoder(
        parse_constant=hooks.constant,
        parse_float=hooks.number,
        object_pairs_hook=hooks.pairs,
    )


def _decode(
    path: Path, text: str, index: int, decoder: json.JSONDecoder, line_of: _Lines
) -> tuple[Any, int]:
    """Decode one JSON value at ``index``, turning every failure into a UsageError."""
    try:
        return decoder.raw_decode(text, index)
    except json.JSONDecodeError as error:
        raise UsageError(
            f"{path}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno})"
        ) from None
    except RecursionError:
        raise UsageError(
            f"{path}:{line_of(index)}: invalid JSON: nested too deeply"
        ) from None
    except ValueError as error:
        # Raised by the strict hooks, and for integers with too many digits.
        raise UsageError(f"{path}:{line_of(index)}: invalid JSON: {error}") from None


def parse_documents(path: Path, text: str) -> list[tuple[int, Any]]:
    """Return (line, value) for each task in ``text``: an object, an array or JSON Lines."""
    decoder = _decoder(path)
    line_of = _Lines(text)
    if text.startswith("\ufeff"):
        raise UsageError(
            f"{path}:1: the file starts with a byte order mark",
            hint="save it as UTF-8 without a BOM",
        )
    start = _skip_whitespace(text, 0)
    if start == len(text):
        raise UsageError(f"{path}: the file is empty", hint="add at least one task")
    if text[start] == "[":
        return _parse_array(path, text, start, decoder, line_of)

    documents: list[tuple[int, Any]] = []
    index = start
    while index < len(text):
        line = line_of(index)
        value, end = _decode(path, text, index, decoder, line_of)
        documents.append((line, value))
        index = _skip_whitespace(text, end)
        if index < len(text) and line_of(index) == line_of(end):
            raise UsageError(
                f"{path}:{line_of(index)}: unexpected text after a JSON value",
                hint="put one task per line (JSON Lines) or wrap the tasks in an array",
            )
    return documents


def _parse_array(
    path: Path, text: str, start: int, decoder: json.JSONDecoder, line_of: _Lines
) -> list[tuple[int, Any]]:
    documents: list[tuple[int, Any]] = []
    index = _skip_whitespace(text, start + 1)
    if index < len(text) and text[index] == "]":
        raise UsageError(
            f"{path}: the array contains no tasks", hint="add at least one task"
        )
    while True:
        line = line_of(index)
        value, index = _decode(path, text, index, decoder, line_of)
        documents.append((line, value))
        index = _skip_whitespace(text, index)
        if index < len(text) and text[index] == ",":
            index = _skip_whitespace(text, index + 1)
            continue
        if index < len(text) and text[index] == "]":
            rest = _skip_whitespace(text, index + 1)
            if rest != len(text):
                raise UsageError(
                    f"{path}:{line_of(rest)}: unexpected text after the array"
                )
            return documents
        raise UsageError(
            f"{path}:{line_of(index)}: invalid JSON: expected ',' or ']' in the array"
        )


def _check_attribute(where: str, key: str, value: str) -> None:
    if not key:
        raise UsageError(f"{where}: an attribute key is empty")
    if key in CLIENT_RESERVED_ATTRIBUTES:
        raise UsageError(
            f"{where}: attribute key {key!r} cannot be published through "
            "google-cloud-pubsub, which takes it as a parameter name",
            hint="rename the attribute",
        )
    _utf8(key, f"{where}: attribute key {key[:40]!r}")
    _utf8(value, f"{where}: attribute {key[:40]!r}")
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
    data = _utf8(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        f"{where}: the task",
    )
    size = (
        len(data)
        + sum(
            _utf8_length(key) + _utf8_length(item) for key, item in attributes.items()
        )
        + _utf8_length(ordering_key)
    )
    if size > MAX_MESSAGE_BYTES:
        raise UsageError(
            f"{where}: the task is {size} bytes with its attributes, over the "
            f"{MAX_MESSAGE_BYTES}-byte limit taskctl keeps below Pub/Sub's "
            f"{MAX_DATA_BYTES} bytes, so the worker can still dead-letter it with its reason",
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


def _check_file(path: Path) -> None:
    """Reject what is not a regular file of a sensible size before reading it."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise NotFoundError(f"task file {path} not found") from None
    except OSError as error:
        raise UsageError(f"cannot read task file {path}: {error.strerror}") from None
    if stat.S_ISDIR(status.st_mode):
        raise UsageError(f"{path} is a directory, not a task file")
    if not stat.S_ISREG(status.st_mode):
        raise UsageError(
            f"{path} is not a regular file", hint="save the tasks to a file first"
        )
    if status.st_size > MAX_FILE_BYTES:
        raise UsageError(
            f"{path} is {status.st_size} bytes, over the {MAX_FILE_BYTES}-byte limit "
            "for a task file",
            hint="split it into several files",
        )


def load_files(
    paths: list[Path], extra_attributes: dict[str, str] | None = None
) -> list[Task]:
    """Read and check every task in ``paths``; raise on the first problem."""
    tasks: list[Task] = []
    seen_ids: dict[str, str] = {}
    for path in paths:
        _check_file(path)
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
