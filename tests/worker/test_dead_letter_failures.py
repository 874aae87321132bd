"""Dead-lettering that fails must make the message retried (500), never dropped."""

from __future__ import annotations

from taskctl.localcloud.children import free_port
from tests.conftest import PROJECT
from tests.worker.conftest import (
    encode_task,
    push_body,
)

UNKNOWN_TASK = {"task_type": "no_such_task", "payload": {}}


def test_missing_topic_returns_500(worker_factory, unique: str) -> None:  # type: ignore[no-untyped-def]
    worker = worker_factory(f"projects/{PROJECT}/topics/never-created-{unique}")
    message_id = f"dlq-missing-topic-{unique}"

    response = worker.post_event(
        push_body(encode_task(UNKNOWN_TASK), message_id), message_id
    )

    assert response.status_code == 500
    final = worker.log_lines(message_id)[-1]
    assert final["outcome"] == "transient_failure"
    assert final["failure_reason"] == "unknown_task_type"
    assert final["error_type"] == "NotFound"


def test_unreachable_pubsub_returns_500(worker_factory, unique: str) -> None:  # type: ignore[no-untyped-def]
    # Nothing listens on this loopback port, so every publish attempt is refused.
    worker = worker_factory(
        f"projects/{PROJECT}/topics/dead-letter",
        PUBSUB_EMULATOR_HOST=f"127.0.0.1:{free_port()}",
        DEAD_LETTER_PUBLISH_TIMEOUT="1",
    )
    message_id = f"dlq-unreachable-{unique}"

    response = worker.post_event(
        push_body(encode_task(UNKNOWN_TASK), message_id), message_id
    )

    assert response.status_code == 500
    final = worker.log_lines(message_id)[-1]
    assert final["outcome"] == "transient_failure"
    assert final["error_type"] in {"RetryError", "ServiceUnavailable", "TimeoutError"}
    assert final["duration_ms"] < 30_000


def test_unset_topic_returns_500(worker_factory, unique: str) -> None:  # type: ignore[no-untyped-def]
    worker = worker_factory(None)
    message_id = f"dlq-unset-{unique}"

    response = worker.post_event(
        push_body(encode_task(UNKNOWN_TASK), message_id), message_id
    )

    assert response.status_code == 500
    final = worker.log_lines(message_id)[-1]
    assert final["outcome"] == "transient_failure"
    assert final["error_type"] == "ConfigurationError"
    assert "DEAD_LETTER_TOPIC is not set" in final["message"]


def test_malformed_topic_returns_500(worker_factory, unique: str) -> None:  # type: ignore[no-untyped-def]
    worker = worker_factory("dead-letter")
    message_id = f"dlq-malformed-{unique}"

    response = worker.post_event(
        push_body(encode_task(UNKNOWN_TASK), message_id), message_id
    )

    assert response.status_code == 500
    final = worker.log_lines(message_id)[-1]
    assert final["error_type"] == "ConfigurationError"
    assert "projects/P/topics/T" in final["error"]


def test_transient_failure_needs_no_topic(worker_factory, unique: str) -> None:  # type: ignore[no-untyped-def]
    # Only a permanent failure needs the topic, so a missing source stays transient.
    worker = worker_factory(None)
    message_id = f"dlq-not-needed-{unique}"
    task = {
        "task_type": "process_image",
        "payload": {"bucket": "no-such-bucket", "source": "a.jpg", "sizes": [[8, 8]]},
    }

    response = worker.post_event(push_body(encode_task(task), message_id), message_id)

    assert response.status_code == 500
    final = worker.log_lines(message_id)[-1]
    assert final["error_type"] == "TransientError"
