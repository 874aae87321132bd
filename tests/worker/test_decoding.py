"""Strict decoding: every malformed message is dead-lettered once and acknowledged."""

from __future__ import annotations

import base64
import json
import zlib

import pytest

from tests.worker.conftest import (
    SUBSCRIPTION,
    DeadLetterTopic,
    WorkerProcess,
    encode_task,
    pull_dead_letters,
    push_body,
)

VALID_TASK = {"task_type": "no_such_task", "payload": {"to": "a@example.com"}}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


PERMANENT_CASES = [
    # (case id, message data as sent, expected reason)
    (
        "unquoted_json_value",
        "eyJ0YXNrX3R5cGUiOnNlbmRfZW1haWwsInBheWxvYWQiOnt9fQ==",
        "invalid_json",
    ),
    (
        "zlib_compressed",
        _b64(zlib.compress(json.dumps(VALID_TASK).encode())),
        "invalid_utf8",
    ),
    (
        "resize_video",
        encode_task({"task_type": "resize_video", "payload": {"id": 1}}),
        "unknown_task_type",
    ),
    ("stray_characters", "eyJ0YXNrX3R5cGUi!!OiJzZW5kX2VtYWlsIn0=", "invalid_base64"),
    ("unregistered_task_type", encode_task(VALID_TASK), "unknown_task_type"),
    ("json_array", encode_task([1, 2]), "not_an_object"),
    ("json_string", encode_task("process_image"), "not_an_object"),
    ("nan_constant", _b64(b'{"task_type": "process_image", "x": NaN}'), "invalid_json"),
    ("empty_data", "", "invalid_json"),
    ("missing_task_type", encode_task({"payload": {}}), "missing_task_type"),
    (
        "numeric_task_type",
        encode_task({"task_type": 7, "payload": {}}),
        "missing_task_type",
    ),
    (
        "payload_not_object",
        encode_task({"task_type": "process_image", "payload": "x"}),
        "invalid_payload",
    ),
    (
        "payload_missing",
        encode_task({"task_type": "process_image"}),
        "invalid_payload",
    ),
    (
        "numeric_task_id",
        encode_task({"task_type": "process_image", "payload": {}, "task_id": 5}),
        "invalid_task_id",
    ),
]


@pytest.mark.parametrize(
    ("case", "data", "reason"),
    PERMANENT_CASES,
    ids=[case[0] for case in PERMANENT_CASES],
)
def test_permanent_decoding_case_dead_lettered_once(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
    case: str,
    data: str,
    reason: str,
) -> None:
    message_id = f"decode-{case}-{unique}"
    body = push_body(
        data, message_id, attributes={"origin": "web", "task_id": f"t-{unique}"}
    )

    response = worker.post_event(body, message_id)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    copy = copies[0]
    attributes = dict(copy.attributes)
    assert attributes["taskctl_failure_reason"] == reason
    assert attributes["taskctl_failure_detail"]
    assert attributes["taskctl_source_subscription"] == SUBSCRIPTION
    assert attributes["taskctl_delivery_attempt"] == "1"
    assert attributes["origin"] == "web"
    assert attributes["task_id"] == f"t-{unique}"


def test_dead_lettered_copy_keeps_original_bytes(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    original = zlib.compress(json.dumps(VALID_TASK).encode())
    message_id = f"decode-bytes-{unique}"

    response = worker.post_event(push_body(_b64(original), message_id), message_id)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    assert copies[0].data == original


def test_invalid_base64_copy_keeps_received_text(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    received = "eyJ0YXNrX3R5cGUi!!OiJzZW5kX2VtYWlsIn0="
    message_id = f"decode-text-{unique}"

    response = worker.post_event(push_body(received, message_id), message_id)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    assert copies[0].data == received.encode("ascii")


def test_long_detail_truncated_on_utf8_boundary(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    # Each "é" is two UTF-8 bytes, so a cut at an odd byte count would split one.
    data = encode_task({"task_type": "é" * 1500, "payload": {}})
    message_id = f"decode-long-{unique}"

    response = worker.post_event(push_body(data, message_id), message_id)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    detail = copies[0].attributes["taskctl_failure_detail"]
    assert len(detail.encode("utf-8")) <= 1024
    assert detail.endswith("…")
    assert detail.startswith("unknown task_type")
    assert "\ufffd" not in detail


def test_stale_failure_attributes_replaced(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    message_id = f"decode-replayed-{unique}"
    earlier = {
        "taskctl_failure_reason": "invalid_json",
        "taskctl_failure_detail": "an earlier failure",
        "taskctl_source_message_id": "an-earlier-message",
    }
    body = push_body(encode_task([1]), message_id, attributes=earlier)

    response = worker.post_event(body, message_id)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    attributes = dict(copies[0].attributes)
    assert attributes["taskctl_failure_reason"] == "not_an_object"
    assert attributes["taskctl_failure_detail"] != "an earlier failure"
    assert attributes["taskctl_source_message_id"] == message_id


def test_event_without_message_dead_lettered(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    message_id = f"decode-no-message-{unique}"
    event_data = {"subscription": SUBSCRIPTION, "unexpected": True}

    response = worker.post_event(event_data, message_id)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    assert copies[0].attributes["taskctl_failure_reason"] == "invalid_event"
    assert json.loads(copies[0].data) == event_data


def test_attribute_limit_keeps_reason(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    # Pub/Sub allows 100 attributes, so only two failure attributes still fit.
    attributes = {f"key{index:02d}": "v" for index in range(98)}
    message_id = f"decode-crowded-{unique}"
    body = push_body(encode_task([1]), message_id, attributes=attributes)

    response = worker.post_event(body, message_id)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    copied = dict(copies[0].attributes)
    assert len(copied) == 100
    assert copied["taskctl_failure_reason"] == "not_an_object"
    assert all(copied[key] == "v" for key in attributes)
    assert "taskctl_failure_detail" not in copied
    warnings = [
        line for line in worker.log_lines(message_id) if line["severity"] == "WARNING"
    ]
    assert len(warnings) == 1
    assert "taskctl_failure_detail" in warnings[0]["message"]
