"""Function output lines become Cloud Run style LogEntries (in-process service)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from taskctl.localcloud.logging.query import compile_filter
from taskctl.localcloud.logging.service import LoggingService

PROJECT = "demo-project"
READ_AT = 1_700_000_000.25


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LoggingService]:
    logging_service = LoggingService(tmp_path)
    logging_service.start()
    yield logging_service
    logging_service.stop()


def write_line(service: LoggingService, line: str, stream: str = "stdout") -> Any:
    """Write ``line`` and return the one entry it became."""
    service.write_container_line(
        project=PROJECT,
        service_name="worker",
        revision_name="worker-00001-abc",
        location="us-central1",
        stream=stream,
        line=line,
        timestamp=READ_AT,
    )
    entries, _ = service.store.list_entries(
        [PROJECT], compile_filter(""), descending=True, page_size=10, after=None
    )
    return entries[0]


def test_container_text_line(service: LoggingService) -> None:
    entry = write_line(service, "plain output\n", stream="stderr")

    assert entry.text_payload == "plain output"
    assert entry.severity == 0
    assert entry.log_name == f"projects/{PROJECT}/logs/run.googleapis.com%2Fstderr"
    assert entry.insert_id
    assert entry.receive_timestamp.seconds > 0
    assert entry.timestamp.ToNanoseconds() == 1_700_000_000_250_000_000


def test_container_resource_labels(service: LoggingService) -> None:
    entry = write_line(service, "hello")

    assert entry.resource.type == "cloud_run_revision"
    assert dict(entry.resource.labels) == {
        "project_id": PROJECT,
        "service_name": "worker",
        "revision_name": "worker-00001-abc",
        "location": "us-central1",
        "configuration_name": "worker",
    }
    assert entry.log_name == f"projects/{PROJECT}/logs/run.googleapis.com%2Fstdout"


def test_container_json_special_fields(service: LoggingService) -> None:
    line = json.dumps(
        {
            "severity": "warning",
            "message": "task failed",
            "task_id": "t-9",
            "time": "2024-05-01T12:00:00.5Z",
            "logging.googleapis.com/labels": {"task_type": "resize", "attempt": 3},
            "logging.googleapis.com/trace": f"projects/{PROJECT}/traces/abc",
            "logging.googleapis.com/spanId": "000000000000004a",
            "logging.googleapis.com/trace_sampled": True,
            "logging.googleapis.com/insertId": "custom-id",
            "logging.googleapis.com/sourceLocation": {
                "file": "main.py",
                "line": "42",
                "function": "handle",
            },
            "logging.googleapis.com/operation": {"id": "op-1", "first": True},
            "httpRequest": {"requestMethod": "POST", "status": 500},
        }
    )

    entry = write_line(service, line)

    assert entry.severity == 400
    assert json_format.MessageToDict(entry.json_payload) == {
        "message": "task failed",
        "task_id": "t-9",
    }
    assert entry.timestamp.ToJsonString() == "2024-05-01T12:00:00.500Z"
    assert dict(entry.labels) == {"task_type": "resize", "attempt": "3"}
    assert entry.trace == f"projects/{PROJECT}/traces/abc"
    assert entry.span_id == "000000000000004a"
    assert entry.trace_sampled is True
    assert entry.insert_id == "custom-id"
    assert entry.source_location.file == "main.py"
    assert entry.source_location.line == 42
    assert entry.source_location.function == "handle"
    assert entry.operation.id == "op-1"
    assert entry.operation.first is True
    assert entry.http_request.request_method == "POST"
    assert entry.http_request.status == 500


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        ("ERROR", 500),
        ("error", 500),
        ("Critical", 600),
        ("LOUD", 0),
        (300, 300),
        (7, 0),
    ],
)
def test_container_severity_names(
    service: LoggingService, severity: Any, expected: int
) -> None:
    entry = write_line(service, json.dumps({"severity": severity, "message": "m"}))

    assert entry.severity == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"timestamp": "2024-05-01T12:00:00.5Z"},
        {"timestamp": {"seconds": 1714564800, "nanos": 500_000_000}},
        {"timestampSeconds": 1714564800, "timestampNanos": 500_000_000},
    ],
    ids=["timestamp-string", "timestamp-object", "seconds-nanos"],
)
def test_container_timestamp_forms(
    service: LoggingService, fields: dict[str, Any]
) -> None:
    entry = write_line(service, json.dumps({"message": "m", **fields}))

    assert entry.timestamp.ToJsonString() == "2024-05-01T12:00:00.500Z"
    assert json_format.MessageToDict(entry.json_payload) == {"message": "m"}


@pytest.mark.parametrize(
    "line",
    ['prefix {"message": "m"}', "[1, 2]", '{"message": "cut', "42"],
    ids=["prefixed", "array", "truncated", "number"],
)
def test_container_non_object_is_text(service: LoggingService, line: str) -> None:
    entry = write_line(service, line)

    assert entry.text_payload == line
    assert not entry.HasField("json_payload")


def test_container_invalid_specials_stay(service: LoggingService) -> None:
    line = json.dumps(
        {
            "message": "m",
            "time": "not a time",
            "logging.googleapis.com/labels": "not a map",
            "httpRequest": {"status": "not a number"},
        }
    )

    entry = write_line(service, line)
    payload = json_format.MessageToDict(entry.json_payload)

    assert payload["time"] == "not a time"
    assert payload["logging.googleapis.com/labels"] == "not a map"
    assert payload["httpRequest"] == {"status": "not a number"}
    assert not entry.labels
    assert entry.timestamp.ToNanoseconds() == 1_700_000_000_250_000_000


def test_container_rejects_unknown_stream(service: LoggingService) -> None:
    with pytest.raises(ValueError):
        write_line(service, "x", stream="stdlog")
