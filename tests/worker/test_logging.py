"""The worker's stdout: one JSON object per line with Cloud Logging's special keys."""

from __future__ import annotations

import json

from tests.worker.conftest import WorkerProcess, encode_task, push_body

REQUIRED_FIELDS = (
    "severity",
    "message",
    "task_id",
    "task_type",
    "message_id",
    "delivery_attempt",
    "logging.googleapis.com/labels",
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_every_stdout_line_is_json(worker: WorkerProcess, unique: str) -> None:
    message_id = f"log-json-{unique}"
    body = push_body(encode_task({"task_type": "x", "payload": {}}), message_id)
    worker.post_event(body, message_id)

    for line in worker.stdout():
        entry = json.loads(line)
        assert isinstance(entry, dict)
        assert entry["severity"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def test_log_lines_have_required_fields(worker: WorkerProcess, unique: str) -> None:
    message_id = f"log-fields-{unique}"
    task = {"task_type": "no_such_task", "payload": {}, "task_id": f"t-{unique}"}
    body = push_body(encode_task(task), message_id, delivery_attempt=4)

    response = worker.post_event(body, message_id)

    assert response.status_code == 200, response.text
    lines = worker.log_lines(message_id)
    assert lines[0]["message"] == "task received"
    for line in lines:
        for field in REQUIRED_FIELDS:
            assert field in line, f"{field} missing from {line}"
        assert line["delivery_attempt"] == 4
        labels = line["logging.googleapis.com/labels"]
        assert all(isinstance(value, str) for value in labels.values())
        assert labels["message_id"] == message_id
    final = lines[-1]
    assert final["outcome"] == "permanent_failure"
    assert final["severity"] == "ERROR"
    assert final["task_id"] == f"t-{unique}"
    assert final["task_type"] == "no_such_task"
    assert final["failure_reason"] == "unknown_task_type"
    assert isinstance(final["duration_ms"], int)
    assert final["duration_ms"] >= 0
    assert final["logging.googleapis.com/labels"] == {
        "task_id": f"t-{unique}",
        "task_type": "no_such_task",
        "message_id": message_id,
    }
    assert all("outcome" not in line for line in lines[:-1])


def test_trace_from_traceparent(worker: WorkerProcess, unique: str) -> None:
    message_id = f"log-traceparent-{unique}"
    body = push_body(encode_task({"task_type": "x", "payload": {}}), message_id)
    headers = {
        "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
        "X-Cloud-Trace-Context": "0" * 31 + "1/1;o=1",
    }

    worker.post_event(body, message_id, extra_headers=headers)

    for line in worker.log_lines(message_id):
        trace = line["logging.googleapis.com/trace"]
        assert trace == f"projects/taskctl-test/traces/{TRACE_ID}"
        assert line["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
        assert line["logging.googleapis.com/trace_sampled"] is True


def test_trace_from_cloud_trace_context(worker: WorkerProcess, unique: str) -> None:
    message_id = f"log-cloudtrace-{unique}"
    body = push_body(encode_task({"task_type": "x", "payload": {}}), message_id)
    headers = {"X-Cloud-Trace-Context": f"{TRACE_ID}/255;o=0"}

    worker.post_event(body, message_id, extra_headers=headers)

    line = worker.log_lines(message_id)[-1]
    trace = line["logging.googleapis.com/trace"]
    assert trace == f"projects/taskctl-test/traces/{TRACE_ID}"
    assert line["logging.googleapis.com/spanId"] == "00000000000000ff"
    assert line["logging.googleapis.com/trace_sampled"] is False


def test_no_trace_without_header(worker: WorkerProcess, unique: str) -> None:
    message_id = f"log-notrace-{unique}"
    body = push_body(encode_task({"task_type": "x", "payload": {}}), message_id)

    worker.post_event(body, message_id)

    line = worker.log_lines(message_id)[-1]
    assert "logging.googleapis.com/trace" not in line


def test_payload_values_never_logged(worker: WorkerProcess, unique: str) -> None:
    secret = f"hunter2-{unique}"
    message_id = f"log-secret-{unique}"
    task = {
        "task_type": "process_image",
        "payload": {
            "bucket": "b-b-b",
            "source": "a.jpg",
            "sizes": [[8, 8]],
            "token": secret,
        },
    }
    body = push_body(encode_task(task), message_id)

    response = worker.post_event(body, message_id)

    assert response.status_code == 200, response.text
    assert worker.log_lines(message_id)[-1]["failure_reason"] == "invalid_payload"
    assert all(secret not in line for line in worker.stdout())
    assert all(secret not in line for line in worker.stderr())
