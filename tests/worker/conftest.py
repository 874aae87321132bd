"""Fixtures for the worker: functions-framework running function_src/ as a subprocess.

The worker talks to the session's local cloud: Pub/Sub for its dead-letter topic and
the Cloud Storage emulator for images. Tests post binary-mode CloudEvents to it the
way Eventarc does, and read its stdout back as JSON lines.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from taskctl.localcloud.children import free_port
from taskctl.localcloud.server import RuntimeInfo
from taskctl.localcloud.smtp import ReceivedMail, list_mail
from tests.conftest import PROJECT

FUNCTION_SOURCE = Path(__file__).resolve().parents[2] / "function_src"
TOPIC = f"projects/{PROJECT}/topics/tasks"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/tasks-push"
SENDER = "Task Worker <worker@taskctl.example>"
STARTUP_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 60.0


class WorkerProcess:
    """functions-framework serving ``handle_task`` on a free loopback port."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}/"
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "functions_framework",
                "--target",
                "handle_task",
                "--signature-type",
                "cloudevent",
                "--source",
                str(FUNCTION_SOURCE / "main.py"),
                "--port",
                str(self.port),
                "--host",
                "127.0.0.1",
            ],
            env={**os.environ, **environment},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for stream, lines in (
            (self.process.stdout, self._stdout),
            (self.process.stderr, self._stderr),
        ):
            threading.Thread(
                target=self._collect, args=(stream, lines), daemon=True
            ).start()
        self._wait_ready()

    def _collect(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._lock:
                lines.append(line.rstrip("\n"))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the worker exited with code {self.process.returncode}:\n"
                    + "\n".join(self.stderr())
                )
            try:
                requests.get(self.url, timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(
            f"the worker did not start within {STARTUP_TIMEOUT_SECONDS} s"
        )

    def stdout(self) -> list[str]:
        with self._lock:
            return list(self._stdout)

    def stderr(self) -> list[str]:
        with self._lock:
            return list(self._stderr)

    def log_lines(
        self, message_id: str, timeout: float = 5.0, min_outcomes: int = 1
    ) -> list[dict[str, Any]]:
        """Return the JSON log lines for ``message_id``, up to its outcome line.

        The worker writes its lines before it responds, but the reader thread may
        not have read them yet, so this waits up to ``timeout`` for at least
        ``min_outcomes`` outcome lines (one per delivery of the message).
        """
        deadline = time.monotonic() + timeout
        while True:
            entries = [
                json.loads(line) for line in self.stdout() if line.startswith("{")
            ]
            lines = [
                entry for entry in entries if entry.get("message_id") == message_id
            ]
            outcomes = sum(1 for line in lines if "outcome" in line)
            if outcomes >= min_outcomes or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def deliver(
        self, body: dict[str, Any], message_id: str
    ) -> tuple[int, list[dict[str, Any]]]:
        """POST ``body`` as a CloudEvent; return the status and this delivery's lines.

        Earlier deliveries of the same message ID must have finished.
        """
        earlier = self.log_lines(message_id, timeout=0, min_outcomes=0)
        done_before = sum(1 for line in earlier if "outcome" in line)
        response = self.post_event(body, message_id)
        lines = self.log_lines(message_id, min_outcomes=done_before + 1)
        return response.status_code, lines[len(earlier) :]

    def post_event(
        self,
        body: dict[str, Any],
        message_id: str,
        extra_headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """POST ``body`` as a binary-mode CloudEvent, the way Eventarc does."""
        headers = {
            "ce-id": message_id,
            "ce-source": f"//pubsub.googleapis.com/{TOPIC}",
            "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
            "ce-specversion": "1.0",
            "ce-time": "2024-05-01T12:00:00.000Z",
            "content-type": "application/json",
            **(extra_headers or {}),
        }
        return requests.post(
            self.url,
            data=json.dumps(body),
            headers=headers,
            timeout=REQUEST_TIMEOUT_SECONDS,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass(frozen=True)
class DeadLetterTopic:
    """A dead-letter topic and the pull subscription tests read it with."""

    topic: str
    subscription: str


def encode_task(task: Any) -> str:
    """Return the base64 text of ``task`` as UTF-8 JSON, as Pub/Sub push sends it."""
    return base64.b64encode(json.dumps(task).encode("utf-8")).decode("ascii")


def push_body(
    data: str,
    message_id: str,
    *,
    attributes: dict[str, str] | None = None,
    delivery_attempt: int | None = 1,
    ordering_key: str | None = None,
) -> dict[str, Any]:
    """Build a push body like Pub/Sub's, leaving out ``attributes`` when None."""
    message: dict[str, Any] = {
        "data": data,
        "messageId": message_id,
        "message_id": message_id,
        "publishTime": "2024-05-01T12:00:00.000Z",
        "publish_time": "2024-05-01T12:00:00.000Z",
    }
    if attributes is not None:
        message["attributes"] = attributes
    if ordering_key is not None:
        message["orderingKey"] = ordering_key
    body: dict[str, Any] = {"message": message, "subscription": SUBSCRIPTION}
    if delivery_attempt is not None:
        body["deliveryAttempt"] = delivery_attempt
    return body


def pull_dead_letters(
    subscriber: pubsub_v1.SubscriberClient,
    subscription: str,
    source_message_id: str,
    *,
    wait_seconds: float = 10.0,
    settle_seconds: float = 0.5,
) -> list[Any]:
    """Pull and ack the dead-lettered copies of ``source_message_id``.

    Pulls until one copy arrived (or ``wait_seconds`` passed), then for
    ``settle_seconds`` more, so that a second copy would be seen too.
    """
    copies: list[Any] = []
    deadline = time.monotonic() + wait_seconds
    settle_deadline: float | None = None
    while time.monotonic() < (settle_deadline or deadline):
        try:
            response = subscriber.pull(
                subscription=subscription, max_messages=100, timeout=1.0
            )
        except api_exceptions.DeadlineExceeded:
            continue
        if response.received_messages:
            subscriber.acknowledge(
                subscription=subscription,
                ack_ids=[received.ack_id for received in response.received_messages],
            )
        for received in response.received_messages:
            attributes = received.message.attributes
            if attributes.get("taskctl_source_message_id") == source_message_id:
                copies.append(received.message)
        if copies and settle_deadline is None:
            settle_deadline = time.monotonic() + settle_seconds
    return copies


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    # Kept on the item so the worker_output fixture can tell whether the test failed.
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def worker_output(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the session worker's last output lines when a test fails."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed or "worker" not in request.fixturenames:
        return
    worker = request.getfixturevalue("worker")
    print("--- worker stdout (last 20 lines) ---")
    print("\n".join(worker.stdout()[-20:]))
    print("--- worker stderr (last 40 lines) ---")
    print("\n".join(worker.stderr()[-40:]))


@pytest.fixture(scope="session")
def session_publisher(channel: grpc.Channel) -> pubsub_v1.PublisherClient:
    return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))


@pytest.fixture(scope="session")
def session_subscriber(channel: grpc.Channel) -> pubsub_v1.SubscriberClient:
    return pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=channel)
    )


@pytest.fixture(scope="session")
def dead_letter_topic(
    session_publisher: pubsub_v1.PublisherClient,
    session_subscriber: pubsub_v1.SubscriberClient,
) -> Iterator[DeadLetterTopic]:
    suffix = os.urandom(4).hex()
    topic = f"projects/{PROJECT}/topics/worker-dead-letter-{suffix}"
    subscription = f"projects/{PROJECT}/subscriptions/worker-dead-letter-{suffix}"
    session_publisher.create_topic(name=topic)
    session_subscriber.create_subscription(
        name=subscription, topic=topic, ack_deadline_seconds=10
    )
    yield DeadLetterTopic(topic=topic, subscription=subscription)
    session_subscriber.delete_subscription(subscription=subscription)
    session_publisher.delete_topic(topic=topic)


def worker_environment(
    local_cloud: RuntimeInfo, dead_letter_topic: str | None
) -> dict[str, str]:
    """Return the environment the local cloud gives a function instance."""
    environment = {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "PUBSUB_EMULATOR_HOST": local_cloud.grpc_endpoint,
        "STORAGE_EMULATOR_HOST": local_cloud.storage_endpoint,
        "FIRESTORE_EMULATOR_HOST": local_cloud.grpc_endpoint,
        "K_SERVICE": "task-worker",
        "K_REVISION": "task-worker-00001",
        "FUNCTION_TARGET": "handle_task",
        "FUNCTION_SIGNATURE_TYPE": "cloudevent",
        "PYTHONUNBUFFERED": "1",
        "DEAD_LETTER_PUBLISH_TIMEOUT": "5",
        "SMTP_HOST": local_cloud.host,
        "SMTP_PORT": str(local_cloud.smtp_port),
        "SMTP_TLS": "none",
        "SMTP_TIMEOUT_SECONDS": "5",
        "MAIL_FROM": SENDER,
    }
    if dead_letter_topic is not None:
        environment["DEAD_LETTER_TOPIC"] = dead_letter_topic
    return environment


@pytest.fixture(scope="session")
def worker(
    local_cloud: RuntimeInfo, dead_letter_topic: DeadLetterTopic
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(worker_environment(local_cloud, dead_letter_topic.topic))
    yield process
    process.stop()


@pytest.fixture
def worker_factory(local_cloud: RuntimeInfo) -> Iterator[Any]:
    """Start workers with their own environment: ``start(dead_letter_topic, **env)``."""
    started: list[WorkerProcess] = []

    def start(dead_letter_topic: str | None, **overrides: str) -> WorkerProcess:
        environment = worker_environment(local_cloud, dead_letter_topic)
        environment.update(overrides)
        process = WorkerProcess(environment)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def firestore_client(local_cloud: RuntimeInfo) -> Iterator[firestore.Client]:
    """A Firestore client on the local cloud, as the worker builds its own."""
    with pytest.MonkeyPatch.context() as patch:
        # The client reads the variable once, when it is constructed.
        patch.setenv("FIRESTORE_EMULATOR_HOST", local_cloud.grpc_endpoint)
        client = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
    yield client
    client.close()


@pytest.fixture(scope="session")
def storage_client(local_cloud: RuntimeInfo) -> storage.Client:
    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": local_cloud.storage_endpoint},
    )


@pytest.fixture(scope="session")
def bucket(storage_client: storage.Client) -> Iterator[storage.Bucket]:
    created = storage_client.create_bucket(f"worker-images-{os.urandom(4).hex()}")
    yield created
    for blob in storage_client.list_blobs(created.name):
        blob.delete()
    created.delete()


def mail_with_message_id(
    local_cloud: RuntimeInfo, message_id: str, *, settle_seconds: float = 0.0
) -> list[ReceivedMail]:
    """Return the mail in the local cloud's SMTP sink with this Message-ID.

    With ``settle_seconds`` it waits that long first, so a late second copy counts.
    """
    if settle_seconds:
        time.sleep(settle_seconds)
    return [
        mail
        for mail in list_mail(Path(local_cloud.state_dir), limit=100_000)
        if mail.message_id == message_id
    ]
