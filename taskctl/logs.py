"""Reading the worker's log entries from Cloud Logging."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from taskctl.errors import UsageError
from taskctl.gcp.clients import Clients, api_errors
from taskctl.settings import Settings, parse_duration

SEVERITIES = (
    "DEFAULT",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "ALERT",
    "EMERGENCY",
)
MAX_LIMIT = 1000  # ListLogEntries returns at most 1,000 entries a page


@dataclass(frozen=True)
class LogQuery:
    task_id: str | None = None
    task_type: str | None = None
    message_id: str | None = None
    severity: str | None = None  # the minimum severity
    since: datetime.datetime | None = None
    limit: int = 100


@dataclass(frozen=True)
class LogRecord:
    """One log entry, with the worker's fields pulled out of its JSON payload."""

    timestamp: datetime.datetime
    severity: str
    message: str
    insert_id: str
    labels: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def structured(self) -> bool:
        """True for entries written as a JSON line (the worker's own)."""
        return bool(self.fields) or bool(self.labels)

    @property
    def task_id(self) -> str | None:
        value = self.labels.get("task_id") or self.fields.get("task_id")
        return str(value) if value is not None else None

    @property
    def outcome(self) -> str | None:
        value = self.fields.get("outcome")
        return str(value) if value is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp.isoformat(),
            "severity": self.severity,
            "message": self.message,
            "insert_id": self.insert_id,
            "labels": self.labels,
            "fields": self.fields,
        }


def parse_since(value: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """Parse ``--since``: a duration back from now (``10m``, ``2h``, ``1d``) or an
    RFC 3339 timestamp."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        return now - datetime.timedelta(seconds=parse_duration(value, "--since"))
    except UsageError:
        pass
    except OverflowError:
        raise UsageError(
            f"invalid --since {value!r}: the duration reaches back before year 1"
        ) from None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"invalid --since {value!r}: expected a duration such as 10m or 2h, or an "
            "RFC 3339 time such as 2026-01-31T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment


def normalise_severity(value: str) -> str:
    upper = value.strip().upper()
    if upper not in SEVERITIES:
        raise UsageError(
            f"invalid --severity {value!r}", hint=f"use one of {', '.join(SEVERITIES)}"
        )
    return upper


def _quote(value: str) -> str:
    # ensure_ascii=False keeps non-ASCII characters as they are, because the
    # Logging query language has no \\u escapes.
    return json.dumps(value, ensure_ascii=False)


def build_filter(settings: Settings, query: LogQuery) -> str:
    """Return a Logging query selecting the worker's entries that match ``query``."""
    clauses = [
        'resource.type="cloud_run_revision"',
        f"resource.labels.service_name={_quote(settings.function.name)}",
    ]
    # Without a timestamp clause the client library would add "the last 24 hours".
    since = query.since or datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    clauses.append(
        f'timestamp>="{since.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")}"'
    )
    if query.task_id:
        clauses.append(f"labels.task_id={_quote(query.task_id)}")
    if query.task_type:
        clauses.append(f"labels.task_type={_quote(query.task_type)}")
    if query.message_id:
        clauses.append(f"labels.message_id={_quote(query.message_id)}")
    if query.severity:
        clauses.append(f"severity>={query.severity}")
    return " AND ".join(clauses)


def _to_record(entry: Any) -> LogRecord:
    payload: dict[str, Any] = {}
    message = entry.text_payload
    if "json_payload" in entry:
        from google.protobuf.json_format import MessageToDict

        payload = MessageToDict(type(entry).pb(entry).json_payload)
        message = str(payload.get("message", ""))
    timestamp = entry.timestamp
    if isinstance(timestamp, datetime.datetime) and timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=datetime.UTC)
    return LogRecord(
        timestamp=timestamp,
        severity=_severity_name(entry.severity),
        message=message,
        insert_id=entry.insert_id,
        labels=dict(entry.labels),
        fields={
            key: _whole_numbers(value)
            for key, value in payload.items()
            if key != "message"
        },
    )


def _whole_numbers(value: Any) -> Any:
    """Turn the floats a protobuf Struct stores for every number back into ints
    where they are whole (delivery_attempt 3.0 -> 3)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    return value


def _severity_name(value: Any) -> str:
    from google.logging.type import log_severity_pb2

    try:
        return str(log_severity_pb2.LogSeverity.Name(int(value)))
    except ValueError:
        return "DEFAULT"


def read(settings: Settings, clients: Clients, query: LogQuery) -> list[LogRecord]:
    """Return the newest ``query.limit`` matching entries, oldest first."""
    if not 1 <= query.limit <= MAX_LIMIT:
        raise UsageError(
            f"--limit is {query.limit}, outside the allowed range 1 to {MAX_LIMIT}"
        )
    request = {
        "resource_names": [f"projects/{settings.project}"],
        "filter": build_filter(settings, query),
        "order_by": "timestamp desc",
        "page_size": query.limit,
    }
    records: list[LogRecord] = []
    with api_errors("listing log entries"):
        for entry in clients.logging.list_log_entries(request=request):
            records.append(_to_record(entry))
            if len(records) >= query.limit:
                break
    records.reverse()
    return records


def follow(
    settings: Settings,
    clients: Clients,
    query: LogQuery,
    *,
    buffer_window: float = 2.0,
) -> Iterator[LogRecord]:
    """Yield entries as they are written, until the caller stops iterating."""
    from google.cloud.logging_v2.types import TailLogEntriesRequest

    request = TailLogEntriesRequest(
        resource_names=[f"projects/{settings.project}"],
        filter=build_filter(settings, query),
        buffer_window={
            "seconds": int(buffer_window),
            "nanos": int(buffer_window % 1 * 1e9),
        },
    )
    with api_errors("tailing log entries"):
        stream = clients.logging.tail_log_entries(requests=iter([request]))
        try:
            for response in stream:
                for entry in response.entries:
                    yield _to_record(entry)
        finally:
            cancel = getattr(stream, "cancel", None)
            if cancel:
                cancel()
