"""Turning a container's stdout or stderr line into a LogEntry, as Cloud Run does.

A line that is one JSON object becomes ``jsonPayload``, with the keys the
Logging agent treats specially moved into LogEntry fields. Any other line
becomes ``textPayload``. Key spellings follow the Logging agent's list of
special fields; ``traceSampled`` is accepted beside
``logging.googleapis.com/trace_sampled`` because both spellings are in use.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

from google.cloud.logging_v2.types import log_entry
from google.logging.type import http_request_pb2
from google.protobuf import json_format, timestamp_pb2

from taskctl.localcloud.logging.query import parse_timestamp
from taskctl.localcloud.logging.values import SEVERITY_LEVELS

log = logging.getLogger("taskctl.localcloud.logging")

LogEntry = log_entry.LogEntry.pb()
RESOURCE_TYPE = "cloud_run_revision"
STREAMS = ("stdout", "stderr")

LABELS_KEY = "logging.googleapis.com/labels"
TRACE_KEY = "logging.googleapis.com/trace"
SPAN_ID_KEY = "logging.googleapis.com/spanId"
TRACE_SAMPLED_KEYS = ("logging.googleapis.com/trace_sampled", "traceSampled")
INSERT_ID_KEY = "logging.googleapis.com/insertId"
SOURCE_LOCATION_KEY = "logging.googleapis.com/sourceLocation"
OPERATION_KEY = "logging.googleapis.com/operation"


def container_log_name(project: str, stream: str) -> str:
    return f"projects/{project}/logs/{quote(f'run.googleapis.com/{stream}', safe='')}"


def container_line_entry(
    *,
    project: str,
    service_name: str,
    revision_name: str,
    location: str,
    stream: str,
    line: str,
    timestamp: float,
) -> Any:
    """Build the raw LogEntry for one output line read at ``timestamp`` (epoch seconds).

    The caller sets ``receive_timestamp``, and ``insert_id`` unless the line set it.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
    entry = LogEntry(log_name=container_log_name(project, stream))
    entry.resource.type = RESOURCE_TYPE
    entry.resource.labels.update(
        {
            "project_id": project,
            "service_name": service_name,
            "revision_name": revision_name,
            "location": location,
            "configuration_name": service_name,
        }
    )
    # Split before scaling: a float holds epoch seconds to about 0.2 microseconds.
    seconds = int(timestamp)
    entry.timestamp.seconds = seconds
    entry.timestamp.nanos = min(999_999_999, round((timestamp - seconds) * 1e9))

    text = line.rstrip("\r\n")
    payload = _json_object(text)
    if payload is None:
        entry.text_payload = text
    else:
        _lift_special_fields(entry, payload)
        entry.json_payload.update(payload)
    return entry


def _json_object(text: str) -> dict[str, Any] | None:
    # Anything before the opening brace stops Cloud Run from parsing the line.
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _lift_special_fields(entry: Any, payload: dict[str, Any]) -> None:
    """Move the special keys out of ``payload`` into ``entry``, leaving ``message``."""
    severity = payload.pop("severity", None)
    if severity is not None:
        entry.severity = _severity(severity)

    timestamp = _payload_timestamp(payload)
    if timestamp is not None:
        entry.timestamp.CopyFrom(timestamp)

    labels = payload.pop(LABELS_KEY, None)
    if isinstance(labels, dict):
        entry.labels.update(
            {str(key): _label_text(value) for key, value in labels.items()}
        )
    elif labels is not None:
        payload[LABELS_KEY] = labels

    for key, field_name in ((TRACE_KEY, "trace"), (SPAN_ID_KEY, "span_id")):
        value = payload.pop(key, None)
        if isinstance(value, str):
            setattr(entry, field_name, value)
    for key in TRACE_SAMPLED_KEYS:
        value = payload.pop(key, None)
        if isinstance(value, bool):
            entry.trace_sampled = value
    insert_id = payload.pop(INSERT_ID_KEY, None)
    if isinstance(insert_id, str):
        entry.insert_id = insert_id

    _lift_message(payload, SOURCE_LOCATION_KEY, entry.source_location)
    _lift_message(payload, OPERATION_KEY, entry.operation)
    http_request = payload.get("httpRequest")
    if isinstance(http_request, dict) and _parse_into(
        http_request, http_request_pb2.HttpRequest(), entry.http_request
    ):
        del payload["httpRequest"]


def _severity(value: Any) -> int:
    """Map a severity name (any case) or number to its number, or to DEFAULT (0)."""
    if isinstance(value, str):
        return SEVERITY_LEVELS.get(value.strip().upper(), 0)
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value in (SEVERITY_LEVELS.values())
    ):
        return value
    return 0


def _payload_timestamp(payload: dict[str, Any]) -> Any | None:
    """Pop ``time``, ``timestamp`` or ``timestampSeconds``/``timestampNanos``."""
    result = timestamp_pb2.Timestamp()
    for key in ("time", "timestamp"):
        value = payload.get(key)
        if isinstance(value, str) and (nanos := parse_timestamp(value)) is not None:
            del payload[key]
            result.FromNanoseconds(nanos)
            return result
        if isinstance(value, dict) and isinstance(value.get("seconds"), int):
            del payload[key]
            result.seconds = value["seconds"]
            result.nanos = int(value.get("nanos", 0))
            return result
    seconds = payload.get("timestampSeconds")
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        del payload["timestampSeconds"]
        result.seconds = seconds
        nanos_value = payload.pop("timestampNanos", 0)
        result.nanos = nanos_value if isinstance(nanos_value, int) else 0
        return result
    return None


def _label_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _lift_message(payload: dict[str, Any], key: str, target: Any) -> None:
    value = payload.get(key)
    if isinstance(value, dict) and _parse_into(value, type(target)(), target):
        del payload[key]


def _parse_into(value: dict[str, Any], scratch: Any, target: Any) -> bool:
    """Parse the JSON object ``value`` into ``target`` unless it is invalid."""
    try:
        json_format.ParseDict(value, scratch, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        log.debug("kept %s in the payload: %s", type(target).__name__, error)
        return False
    target.CopyFrom(scratch)
    return True
