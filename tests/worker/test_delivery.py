"""Push body shapes: CloudEvents without attributes, and raw push bodies."""

from __future__ import annotations

import json

import requests

from tests.worker.conftest import (
    REQUEST_TIMEOUT_SECONDS,
    SUBSCRIPTION,
    DeadLetterTopic,
    WorkerProcess,
    encode_task,
    pull_dead_letters,
    push_body,
)

UNKNOWN_TASK = {"task_type": "no_such_task", "payload": {}}


def _post_raw_push(worker: WorkerProcess, body: dict[str, object]) -> requests.Response:
    # A Pub/Sub push subscription pointed straight at the function sends no
    # CloudEvent headers, only the JSON body.
    return requests.post(
        worker.url,
        data=json.dumps(body),
        headers={"content-type": "application/json"},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


def test_cloud_event_without_attributes(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    message_id = f"no-attributes-{unique}"
    body = push_body(encode_task(UNKNOWN_TASK), message_id, attributes=None)
    assert "attributes" not in body["message"]

    response = worker.post_event(body, message_id)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    assert copies[0].attributes["taskctl_failure_reason"] == "unknown_task_type"
    final = worker.log_lines(message_id)[-1]
    assert final["task_id"] == message_id


def test_raw_push_body_reaches_handler(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    message_id = f"raw-push-{unique}"
    body = push_body(
        encode_task(UNKNOWN_TASK),
        message_id,
        attributes={"task_id": f"task-{unique}"},
        delivery_attempt=3,
        ordering_key="customer-7",
    )

    response = _post_raw_push(worker, body)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    attributes = dict(copies[0].attributes)
    assert attributes["taskctl_failure_reason"] == "unknown_task_type"
    # functions-framework's conversion drops these; the worker reads them back.
    assert attributes["taskctl_source_subscription"] == SUBSCRIPTION
    assert attributes["taskctl_delivery_attempt"] == "3"
    assert attributes["taskctl_source_ordering_key"] == "customer-7"
    assert attributes["task_id"] == f"task-{unique}"
    final = worker.log_lines(message_id)[-1]
    assert final["task_id"] == f"task-{unique}"
    assert final["delivery_attempt"] == 3


def test_raw_push_without_attributes(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    message_id = f"raw-bare-{unique}"
    body = push_body(
        encode_task(UNKNOWN_TASK), message_id, attributes=None, delivery_attempt=None
    )

    response = _post_raw_push(worker, body)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    attributes = dict(copies[0].attributes)
    assert attributes["taskctl_failure_reason"] == "unknown_task_type"
    assert "taskctl_delivery_attempt" not in attributes
    assert worker.log_lines(message_id)[-1]["delivery_attempt"] is None


def test_task_id_prefers_body_over_attribute(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    message_id = f"task-id-{unique}"
    task = {**UNKNOWN_TASK, "task_id": f"body-{unique}"}
    body = push_body(
        encode_task(task), message_id, attributes={"task_id": f"attr-{unique}"}
    )

    response = worker.post_event(body, message_id)

    assert response.status_code == 200, response.text
    lines = worker.log_lines(message_id)
    assert lines[0]["task_id"] == f"attr-{unique}"
    assert lines[-1]["task_id"] == f"body-{unique}"
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1


def test_message_id_spelling_snake_case(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    message_id = f"snake-{unique}"
    body = push_body(encode_task(UNKNOWN_TASK), message_id)
    del body["message"]["messageId"]
    del body["message"]["publishTime"]

    # The CloudEvent id differs, so only message_id can supply the expected value.
    response = worker.post_event(body, f"ce-{unique}")

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
