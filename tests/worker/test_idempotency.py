"""Exactly-once effects: the Firestore claim around each task, under functions-framework.

send_email is the handler under test, because the SMTP sink counts its effects.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import importlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from google.cloud import firestore

from taskctl.localcloud.children import free_port
from taskctl.localcloud.server import RuntimeInfo
from taskctl.localcloud.smtp import SmtpSink, list_mail
from tests.conftest import PROJECT
from tests.worker.conftest import (
    FUNCTION_SOURCE,
    DeadLetterTopic,
    WorkerProcess,
    encode_task,
    mail_with_message_id,
    push_body,
)

COLLECTION = "taskctl_idempotency"
# Long enough that a second delivery posted at the same moment finds the lease.
SLOW_SMTP_SECONDS = 2.0


def email_task(task_id: str | None, **payload: Any) -> dict[str, Any]:
    fields = {"to": "alice@example.com", "subject": "Hello", "text": "Hi.\n"}
    fields.update(payload)
    task: dict[str, Any] = {"task_type": "send_email", "payload": fields}
    if task_id is not None:
        task["task_id"] = task_id
    return task


def message_id_header(key: str) -> str:
    digest = hashlib.sha256(f"taskctl:{key}".encode()).hexdigest()[:40]
    return f"<{digest}@taskctl.example>"


def deliver(
    worker: WorkerProcess, task: dict[str, Any], message_id: str
) -> tuple[int, list[dict[str, Any]]]:
    return worker.deliver(push_body(encode_task(task), message_id), message_id)


def outcomes(lines: list[dict[str, Any]]) -> list[str]:
    return [line["outcome"] for line in lines if "outcome" in line]


def record(
    firestore_client: firestore.Client, document_id: str, collection: str = COLLECTION
) -> dict[str, Any] | None:
    snapshot = firestore_client.collection(collection).document(document_id).get()
    return snapshot.to_dict() if snapshot.exists else None


class SlowHandler:
    """aiosmtpd hooks that take SLOW_SMTP_SECONDS to accept each message."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.started = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.started.set()
        await asyncio.sleep(SLOW_SMTP_SECONDS)
        self.received.append(envelope.original_content)
        return "250 OK"


@pytest.fixture
def slow_smtp() -> Iterator[tuple[int, SlowHandler]]:
    handler = SlowHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, handler
    controller.stop()


def test_same_event_twice_sends_once(
    worker: WorkerProcess,
    local_cloud: RuntimeInfo,
    firestore_client: firestore.Client,
    unique: str,
) -> None:
    task_id = f"idem-twice-{unique}"
    message_id = f"msg-{task_id}"
    task = email_task(task_id)

    first_status, first_lines = deliver(worker, task, message_id)
    second_status, second_lines = deliver(worker, task, message_id)

    assert first_status == 200
    assert second_status == 200
    assert outcomes(first_lines) == ["success"]
    assert outcomes(second_lines) == ["duplicate"]
    assert second_lines[-1]["severity"] == "INFO"
    # log_lines() returns every line for the message ID, from both deliveries.
    assert outcomes(worker.log_lines(message_id, min_outcomes=2)) == [
        "success",
        "duplicate",
    ]
    assert len(mail_with_message_id(local_cloud, message_id_header(task_id))) == 1
    stored = record(firestore_client, task_id)
    assert stored is not None
    assert stored["status"] == "done"
    assert stored["key"] == task_id
    assert stored["task_type"] == "send_email"
    assert "lease_expires_at" not in stored


def test_concurrent_deliveries_run_once(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    firestore_client: firestore.Client,
    slow_smtp: tuple[int, SlowHandler],
    unique: str,
) -> None:
    port, handler = slow_smtp
    worker = worker_factory(
        dead_letter_topic.topic, SMTP_PORT=str(port), FUNCTION_TIMEOUT_SECONDS="30"
    )
    task_id = f"idem-concurrent-{unique}"
    task = email_task(task_id)
    message_ids = [f"msg-{task_id}-a", f"msg-{task_id}-b"]

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(deliver, worker, task, message_ids[0])
        # The second is posted while the first is inside the handler.
        assert handler.started.wait(timeout=10)
        in_flight = record(firestore_client, task_id)
        second = pool.submit(deliver, worker, task, message_ids[1])
        results = [first.result(), second.result()]

    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 500]
    assert len(handler.received) == 1
    winner = next(lines for status, lines in results if status == 200)
    loser = next(lines for status, lines in results if status == 500)
    assert outcomes(winner) == ["success"]
    assert outcomes(loser) == ["transient_failure"]
    assert loser[-1]["error_type"] == "LeaseHeldError"
    assert not any(line.get("outcome") == "success" for line in loser)
    # The lease is the function timeout plus a 10 s margin.
    assert in_flight is not None
    assert in_flight["status"] == "processing"
    lease = in_flight["lease_expires_at"] - in_flight["claimed_at"]
    assert lease == datetime.timedelta(seconds=40)
    retention = in_flight["expire_at"] - in_flight["claimed_at"]
    assert retention == datetime.timedelta(days=7)
    final = record(firestore_client, task_id)
    assert final is not None
    assert final["status"] == "done"


def test_transient_failure_then_success(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    firestore_client: firestore.Client,
    tmp_path: Path,
    unique: str,
) -> None:
    # Nothing listens on the port for the first delivery.
    port = free_port()
    worker = worker_factory(dead_letter_topic.topic, SMTP_PORT=str(port))
    task_id = f"idem-retry-{unique}"
    message_id = f"msg-{task_id}"
    task = email_task(task_id)

    first_status, first_lines = deliver(worker, task, message_id)
    released = record(firestore_client, task_id)
    sink = SmtpSink(tmp_path, "127.0.0.1", port)
    sink.start()
    try:
        second_status, _ = deliver(worker, task, message_id)
    finally:
        sink.stop()

    assert first_status == 500
    assert outcomes(first_lines) == ["transient_failure"]
    # The handler ran the first time: it tried the SMTP server.
    assert "connecting to SMTP server" in first_lines[-1]["error"]
    assert released is None
    assert second_status == 200
    assert outcomes(worker.log_lines(message_id, min_outcomes=2)) == [
        "transient_failure",
        "success",
    ]
    assert [mail.message_id for mail in list_mail(tmp_path)] == [
        message_id_header(task_id)
    ]
    stored = record(firestore_client, task_id)
    assert stored is not None
    assert stored["status"] == "done"


def test_replay_of_done_task_skipped(
    worker: WorkerProcess,
    local_cloud: RuntimeInfo,
    unique: str,
) -> None:
    task_id = f"idem-replay-{unique}"
    task = email_task(task_id)

    first_status, _ = deliver(worker, task, f"msg-{task_id}-original")
    # A replay republishes the task, so it arrives under a new message ID.
    replay_status, replay_lines = deliver(worker, task, f"msg-{task_id}-replayed")

    assert first_status == 200
    assert replay_status == 200
    assert outcomes(replay_lines) == ["duplicate"]
    assert len(mail_with_message_id(local_cloud, message_id_header(task_id))) == 1


def test_task_id_attribute_is_key(
    worker: WorkerProcess,
    local_cloud: RuntimeInfo,
    unique: str,
) -> None:
    # taskctl publish puts task_id in the attributes too; the body may lack it.
    task_id = f"idem-attribute-{unique}"
    task = email_task(None)
    bodies = [
        push_body(
            encode_task(task), f"msg-{task_id}-{n}", attributes={"task_id": task_id}
        )
        for n in (1, 2)
    ]

    statuses = [
        worker.post_event(body, body["message"]["messageId"]).status_code
        for body in bodies
    ]

    assert statuses == [200, 200]
    assert outcomes(worker.log_lines(f"msg-{task_id}-2")) == ["duplicate"]
    assert len(mail_with_message_id(local_cloud, message_id_header(task_id))) == 1


def test_message_id_is_key_without_task_id(
    worker: WorkerProcess,
    local_cloud: RuntimeInfo,
    firestore_client: firestore.Client,
    unique: str,
) -> None:
    message_id = f"msg-idem-no-task-id-{unique}"
    task = email_task(None)

    deliver(worker, task, message_id)
    status, _ = deliver(worker, task, message_id)

    assert status == 200
    assert outcomes(worker.log_lines(message_id, min_outcomes=2)) == [
        "success",
        "duplicate",
    ]
    assert len(mail_with_message_id(local_cloud, message_id_header(message_id))) == 1
    stored = record(firestore_client, message_id)
    assert stored is not None
    assert stored["status"] == "done"


def test_expired_lease_taken_over(
    worker: WorkerProcess,
    local_cloud: RuntimeInfo,
    firestore_client: firestore.Client,
    unique: str,
) -> None:
    # A run that the function timeout killed leaves its record "processing".
    task_id = f"idem-expired-{unique}"
    claimed_at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    firestore_client.collection(COLLECTION).document(task_id).create(
        {
            "key": task_id,
            "status": "processing",
            "claim_id": "killed-run",
            "claimed_at": claimed_at,
            "lease_expires_at": claimed_at + datetime.timedelta(seconds=70),
            "expire_at": claimed_at + datetime.timedelta(days=7),
            "attempts": 1,
        }
    )

    status, lines = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == 200
    assert outcomes(lines) == ["success"]
    assert len(mail_with_message_id(local_cloud, message_id_header(task_id))) == 1
    stored = record(firestore_client, task_id)
    assert stored is not None
    assert stored["status"] == "done"
    assert stored["taken_over_from"] == "killed-run"
    assert stored["attempts"] == 2


def test_live_lease_returns_500(
    worker: WorkerProcess,
    local_cloud: RuntimeInfo,
    firestore_client: firestore.Client,
    unique: str,
) -> None:
    task_id = f"idem-live-{unique}"
    claimed_at = datetime.datetime.now(datetime.UTC)
    firestore_client.collection(COLLECTION).document(task_id).create(
        {
            "key": task_id,
            "status": "processing",
            "claim_id": "running-run",
            "message_id": "msg-other",
            "claimed_at": claimed_at,
            "lease_expires_at": claimed_at + datetime.timedelta(minutes=5),
            "attempts": 1,
        }
    )

    status, lines = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == 500
    assert outcomes(lines) == ["transient_failure"]
    assert lines[-1]["error_type"] == "LeaseHeldError"
    assert "msg-other" in lines[-1]["error"]
    assert mail_with_message_id(local_cloud, message_id_header(task_id)) == []
    stored = record(firestore_client, task_id)
    assert stored is not None
    assert stored["claim_id"] == "running-run"


def test_permanent_failure_releases_claim(
    worker: WorkerProcess,
    firestore_client: firestore.Client,
    unique: str,
) -> None:
    task_id = f"idem-permanent-{unique}"
    task = email_task(task_id, to="nobody@refused.invalid")

    status, lines = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    assert outcomes(lines) == ["permanent_failure"]
    # Released, so a replay after the cause is fixed runs the handler again.
    assert record(firestore_client, task_id) is None


def test_invalid_payload_claims_nothing(
    worker: WorkerProcess,
    firestore_client: firestore.Client,
    unique: str,
) -> None:
    task_id = f"idem-invalid-{unique}"
    task = email_task(task_id, to="not an address")

    status, lines = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    assert outcomes(lines) == ["permanent_failure"]
    assert record(firestore_client, task_id) is None


def test_unsafe_key_hashed_document_id(
    worker: WorkerProcess,
    firestore_client: firestore.Client,
    unique: str,
) -> None:
    task_id = f"orders/{unique}/__confirm__"
    document_id = "sha256-" + hashlib.sha256(task_id.encode()).hexdigest()

    status, _ = deliver(worker, email_task(task_id), f"msg-idem-unsafe-{unique}")

    assert status == 200
    stored = record(firestore_client, document_id)
    assert stored is not None
    assert stored["key"] == task_id
    assert stored["status"] == "done"


def test_collection_from_environment(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    firestore_client: firestore.Client,
    unique: str,
) -> None:
    collection = f"custom_idempotency_{unique}"
    worker = worker_factory(dead_letter_topic.topic, IDEMPOTENCY_COLLECTION=collection)
    task_id = f"idem-collection-{unique}"

    status, _ = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == 200
    assert record(firestore_client, task_id, collection) is not None
    assert record(firestore_client, task_id) is None


@pytest.fixture
def idempotency_module(
    local_cloud: RuntimeInfo, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The worker's idempotency module, imported into this process."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", local_cloud.grpc_endpoint)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.syspath_prepend(str(FUNCTION_SOURCE))
    module = importlib.import_module("taskworker.idempotency")
    firestore_db = importlib.import_module("taskworker.firestore_db")
    # A fresh client, so it reads the variables set above.
    monkeypatch.setattr(firestore_db, "_client", None)
    yield module
    if firestore_db._client is not None:
        firestore_db._client.close()


def claim_concurrently(module: Any, key: str, count: int) -> list[Any]:
    barrier = threading.Barrier(count)

    def attempt(number: int) -> Any:
        barrier.wait()
        try:
            return module.claim(key, task_type="send_email", message_id=f"m{number}")
        except Exception as error:
            return error

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(attempt, range(count)))


def test_simultaneous_creates_claim_once(idempotency_module: Any, unique: str) -> None:
    results = claim_concurrently(idempotency_module, f"idem-race-{unique}", 8)

    claims = [
        result for result in results if isinstance(result, idempotency_module.Claim)
    ]
    errors = [result for result in results if isinstance(result, Exception)]
    assert len(claims) == 1
    assert claims[0].duplicate is False
    assert len(errors) == 7
    assert all(isinstance(error, idempotency_module.TransientError) for error in errors)


def test_simultaneous_takeovers_claim_once(
    idempotency_module: Any, firestore_client: firestore.Client, unique: str
) -> None:
    key = f"idem-takeover-race-{unique}"
    claimed_at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    firestore_client.collection(COLLECTION).document(key).create(
        {
            "key": key,
            "status": "processing",
            "claim_id": "killed-run",
            "claimed_at": claimed_at,
            "lease_expires_at": claimed_at + datetime.timedelta(seconds=70),
            "attempts": 1,
        }
    )

    results = claim_concurrently(idempotency_module, key, 6)

    claims = [
        result for result in results if isinstance(result, idempotency_module.Claim)
    ]
    errors = [result for result in results if isinstance(result, Exception)]
    assert len(claims) == 1
    assert claims[0].duplicate is False
    assert len(errors) == 5
    # Losers either saw the winner's fresh lease or lost the commit race.
    assert all(isinstance(error, idempotency_module.TransientError) for error in errors)
    stored = record(firestore_client, key)
    assert stored is not None
    assert stored["claim_id"] == claims[0].claim_id
    assert stored["attempts"] == 2
