"""Structured logging: one JSON object per line on stdout, as Cloud Run expects.

Cloud Run turns each such line into a LogEntry whose ``jsonPayload`` is the object,
and lifts the special keys ``severity``, ``time``, ``logging.googleapis.com/labels``,
``logging.googleapis.com/trace``, ``logging.googleapis.com/spanId`` and
``logging.googleapis.com/trace_sampled`` into the entry itself.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import flask

LOGGER_NAME = "taskworker"
LABELS_KEY = "logging.googleapis.com/labels"
TRACE_KEY = "logging.googleapis.com/trace"
SPAN_KEY = "logging.googleapis.com/spanId"
TRACE_SAMPLED_KEY = "logging.googleapis.com/trace_sampled"
SOURCE_LOCATION_KEY = "logging.googleapis.com/sourceLocation"

# Fields that identify the task; they are also copied into the entry's labels.
LABEL_FIELDS = ("task_id", "task_type", "message_id")

# W3C Trace Context: version-traceid-parentid-flags, lowercase hex.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# Google's own header: TRACE_ID/SPAN_ID;o=OPTIONS, with a decimal span id.
_CLOUD_TRACE_CONTEXT = re.compile(r"^([0-9a-fA-F]{32})(?:/(\d+))?(?:;o=(\d+))?$")

_SEVERITIES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


class JsonLineFormatter(logging.Formatter):
    """Format a record as one JSON object, merging the fields bound to its adapter."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITIES.get(record.levelno, "DEFAULT"),
            "message": record.getMessage(),
            "time": _rfc3339(record.created),
        }
        if record.exc_info and getattr(record, "with_stack_trace", False):
            # Error Reporting finds a Python stack trace inside ``message``.
            entry["message"] += "\n" + self.formatException(record.exc_info)
        fields: Mapping[str, Any] = getattr(record, "fields", {})
        entry.update(fields)
        labels = {name: str(fields[name]) for name in LABEL_FIELDS if fields.get(name)}
        if labels:
            entry[LABELS_KEY] = labels
        entry[SOURCE_LOCATION_KEY] = {
            "file": record.pathname,
            "line": str(record.lineno),
            "function": record.funcName,
        }
        return json.dumps(entry, default=str, ensure_ascii=False)


class TaskLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger bound to one invocation's fields (task_id, message_id, trace, ...).

    Keyword fields given to a call (``log.info("...", outcome="success")``) are added
    to that line only.
    """

    def __init__(self, logger: logging.Logger, fields: dict[str, Any]) -> None:
        super().__init__(logger, fields)
        self.fields = fields

    def bind(self, **fields: Any) -> TaskLogger:
        """Return a logger with ``fields`` added to every line."""
        return TaskLogger(self.logger, {**self.fields, **fields})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        standard = {"exc_info", "stack_info", "stacklevel", "extra"}
        line_fields = {
            key: kwargs.pop(key) for key in list(kwargs) if key not in standard
        }
        with_stack_trace = line_fields.pop("with_stack_trace", False)
        kwargs["extra"] = {
            "fields": {**self.fields, **line_fields},
            "with_stack_trace": with_stack_trace,
        }
        return msg, kwargs


def configure() -> logging.Logger:
    """Send the worker's log records to stdout as JSON lines; safe to call twice."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(getattr(h, "_taskworker", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonLineFormatter())
        handler._taskworker = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    # Lines must not reach the root logger too, or functions-framework's own
    # handlers would print them a second time, as text.
    logger.propagate = False
    return logger


def trace_fields(project: str | None) -> dict[str, Any]:
    """Return the trace keys for the current request's trace header, if any.

    ``traceparent`` (W3C) wins over ``X-Cloud-Trace-Context``. Without a project the
    trace cannot be named, so no keys are returned.
    """
    if not project or not flask.has_request_context():
        return {}
    headers = flask.request.headers

    traceparent = _TRACEPARENT.match(headers.get("traceparent", "").strip())
    if traceparent and traceparent.group(1) != "0" * 32:
        trace_id, span_id, flags = traceparent.groups()
        return {
            TRACE_KEY: f"projects/{project}/traces/{trace_id}",
            SPAN_KEY: span_id,
            TRACE_SAMPLED_KEY: bool(int(flags, 16) & 1),
        }

    cloud = _CLOUD_TRACE_CONTEXT.match(headers.get("X-Cloud-Trace-Context", "").strip())
    if cloud:
        trace_id, span, options = cloud.groups()
        fields: dict[str, Any] = {
            TRACE_KEY: f"projects/{project}/traces/{trace_id.lower()}"
        }
        if span and 0 < int(span) < 2**64:
            # Cloud Logging wants the span id as 16 hex digits.
            fields[SPAN_KEY] = f"{int(span):016x}"
        if options is not None:
            fields[TRACE_SAMPLED_KEY] = options == "1"
        return fields
    return {}


def _rfc3339(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
