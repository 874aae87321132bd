"""Pub/Sub push delivery to an HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport
from google.pubsub_v1.types import Subscription

from taskctl.localcloud.pubsub.service import PubSubService
from tests.conftest import PROJECT

pytestmark = pytest.mark.filterwarnings("ignore:The return_immediately flag")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class PushEndpoint:
    """A recording HTTP server; ``status`` picks each response's status code."""

    url: str
    requests: list[Received] = field(default_factory=list)
    status: Callable[[int], int] = lambda index: 204
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(
            f"expected {count} push requests within {timeout} s, got "
            f"{len(self.requests)}"
        )


@pytest.fixture
def endpoint() -> Iterator[PushEndpoint]:
    recorder = PushEndpoint(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with recorder.lock:
                index = len(recorder.requests)
                recorder.requests.append(
                    Received(
                        self.path,
                        {key.lower(): value for key, value in self.headers.items()},
                        body,
                        time.monotonic(),
                    )
                )
                recorder.in_flight += 1
                recorder.max_in_flight = max(recorder.max_in_flight, recorder.in_flight)
            time.sleep(recorder.delay)
            with recorder.lock:
                recorder.in_flight -= 1
            self.send_response(recorder.status(index))
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{server.server_port}/push"
    yield recorder
    server.shutdown()
    server.server_close()


def test_push_wrapped_body(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    subscription = make_subscription(push_config={"push_endpoint": endpoint.url})
    message_id = publisher.publish(topic, b"hello", kind="greeting").result(timeout=30)

    [request] = endpoint.wait_for(1)
    body = json.loads(request.body)

    assert request.path == "/push"
    assert request.headers["content-type"] == "application/json"
    assert body["subscription"] == subscription
    assert base64.b64decode(body["message"]["data"]) == b"hello"
    assert body["message"]["attributes"] == {"kind": "greeting"}
    assert body["message"]["messageId"] == message_id
    assert body["message"]["message_id"] == message_id
    assert body["message"]["publishTime"].endswith("Z")
    assert "orderingKey" not in body["message"]
    assert "deliveryAttempt" not in body


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_push_success_statuses_ack(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
    status: int,
) -> None:
    endpoint.status = lambda index: status
    make_subscription(push_config={"push_endpoint": endpoint.url})
    publisher.publish(topic, b"x").result(timeout=30)

    endpoint.wait_for(1)
    time.sleep(0.5)

    assert len(endpoint.requests) == 1


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
def test_push_failure_statuses_retry(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
    status: int,
) -> None:
    endpoint.status = lambda index: status if index == 0 else 204
    make_subscription(push_config={"push_endpoint": endpoint.url})
    message_id = publisher.publish(topic, b"x").result(timeout=30)

    requests = endpoint.wait_for(2)
    time.sleep(0.3)

    assert len(endpoint.requests) == 2
    for request in requests:
        assert json.loads(request.body)["message"]["messageId"] == message_id


def test_push_connection_refused_retries(
    publisher: Any, subscriber: Any, topic: str, make_subscription: Callable[..., str]
) -> None:
    subscription = make_subscription(
        push_config={"push_endpoint": "http://127.0.0.1:9/closed"},
        retry_policy={
            "minimum_backoff": {"seconds": 0},
            "maximum_backoff": {"seconds": 0},
        },
    )
    publisher.publish(topic, b"x").result(timeout=30)
    time.sleep(0.5)

    subscriber.modify_push_config(subscription=subscription, push_config={})
    time.sleep(0.2)
    pulled = subscriber.pull(
        subscription=subscription, max_messages=1, return_immediately=True
    )

    assert [m.message.data for m in pulled.received_messages] == [b"x"]


def test_push_retry_backoff_spacing(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    endpoint.status = lambda index: 500 if index < 3 else 204
    make_subscription(
        push_config={"push_endpoint": endpoint.url},
        retry_policy={
            "minimum_backoff": {"seconds": 1},
            "maximum_backoff": {"seconds": 2},
        },
    )
    publisher.publish(topic, b"x").result(timeout=30)

    requests = endpoint.wait_for(4, timeout=20)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(requests)]

    assert 0.9 <= gaps[0] <= 1.8
    assert 1.9 <= gaps[1] <= 3.0
    assert 1.9 <= gaps[2] <= 3.0


def test_push_dead_letters_with_attempts(
    publisher: Any,
    subscriber: Any,
    topic: str,
    unique: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    endpoint.status = lambda index: 500
    dead_letter_topic = f"projects/{PROJECT}/topics/push-dlq-{unique}"
    publisher.create_topic(name=dead_letter_topic)
    dead_letter_subscription = make_subscription(topic=dead_letter_topic)
    make_subscription(
        push_config={"push_endpoint": endpoint.url},
        retry_policy={
            "minimum_backoff": {"seconds": 0},
            "maximum_backoff": {"seconds": 0},
        },
        dead_letter_policy={
            "dead_letter_topic": dead_letter_topic,
            "max_delivery_attempts": 5,
        },
    )
    try:
        publisher.publish(topic, b"x").result(timeout=30)
        requests = endpoint.wait_for(5)
        time.sleep(0.5)
        forwarded = subscriber.pull(
            subscription=dead_letter_subscription, max_messages=5, timeout=10
        )
    finally:
        publisher.delete_topic(topic=dead_letter_topic)

    attempts = [json.loads(request.body)["deliveryAttempt"] for request in requests]
    assert attempts == [1, 2, 3, 4, 5]
    assert len(endpoint.requests) == 5
    [message] = forwarded.received_messages
    assert message.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"


def test_push_no_wrapper_with_metadata(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    subscription = make_subscription(
        push_config={
            "push_endpoint": endpoint.url,
            "no_wrapper": {"write_metadata": True},
        }
    )
    message_id = publisher.publish(topic, b"raw-bytes", color="blue").result(timeout=30)

    [request] = endpoint.wait_for(1)

    assert request.body == b"raw-bytes"
    assert request.headers["color"] == "blue"
    assert request.headers["x-goog-pubsub-message-id"] == message_id
    assert request.headers["x-goog-pubsub-subscription-name"] == subscription


def test_push_metadata_with_non_latin1_value(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    make_subscription(
        push_config={
            "push_endpoint": endpoint.url,
            "no_wrapper": {"write_metadata": True},
        }
    )
    for _ in range(20):
        publisher.publish(topic, b"priced", price="5\u20ac").result(timeout=30)
    publisher.publish(topic, b"last", price="5").result(timeout=30)

    requests = endpoint.wait_for(21)

    assert sorted(request.body for request in requests) == [b"last"] + [b"priced"] * 20


def test_push_no_wrapper_without_metadata(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    make_subscription(
        push_config={"push_endpoint": endpoint.url, "no_wrapper": {}},
    )
    publisher.publish(topic, b"raw-bytes", color="blue").result(timeout=30)

    [request] = endpoint.wait_for(1)

    assert request.body == b"raw-bytes"
    assert "color" not in request.headers
    assert "x-goog-pubsub-message-id" not in request.headers


def test_push_concurrency_bounded(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    endpoint.delay = 0.3
    make_subscription(push_config={"push_endpoint": endpoint.url})
    for future in [publisher.publish(topic, b"%d" % n) for n in range(40)]:
        future.result(timeout=30)

    endpoint.wait_for(40, timeout=30)

    assert 2 <= endpoint.max_in_flight <= 16


def test_push_latency_after_publish(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    make_subscription(push_config={"push_endpoint": endpoint.url})
    time.sleep(1.2)
    started = time.monotonic()

    publisher.publish(topic, b"x").result(timeout=30)
    [request] = endpoint.wait_for(1)

    assert request.at - started < 0.5


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[tuple[PubSubService, Any, Any]]:
    """A Pub/Sub service in this process, for the API other services call."""
    service = PubSubService(tmp_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    service.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    service.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    publisher = pubsub_v1.PublisherClient(
        transport=PublisherGrpcTransport(channel=channel)
    )
    subscriber = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=channel)
    )
    yield service, publisher, subscriber
    channel.close()
    server.stop(grace=1).wait()
    service.stop()


def test_push_cloud_event_binary_mode(
    in_process: tuple[PubSubService, Any, Any], endpoint: PushEndpoint
) -> None:
    service, publisher, _ = in_process
    topic = f"projects/{PROJECT}/topics/events"
    publisher.create_topic(name=topic)
    subscription = Subscription.pb()(
        name=f"projects/{PROJECT}/subscriptions/eventarc-sub",
        topic=topic,
    )
    subscription.push_config.push_endpoint = endpoint.url
    created = service.create_subscription(subscription, cloud_event=True)
    message_id = publisher.publish(topic, b'{"task_type": "x"}', source="test").result(
        timeout=30
    )

    [request] = endpoint.wait_for(1)
    body = json.loads(request.body)

    assert created.push_config.push_endpoint == endpoint.url
    assert request.headers["ce-id"] == message_id
    assert request.headers["ce-source"] == f"//pubsub.googleapis.com/{topic}"
    assert request.headers["ce-type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert request.headers["ce-specversion"] == "1.0"
    assert request.headers["ce-time"] == body["message"]["publishTime"]
    assert request.headers["content-type"] == "application/json"
    assert body["subscription"] == subscription.name
    assert base64.b64decode(body["message"]["data"]) == b'{"task_type": "x"}'
    assert body["message"]["attributes"] == {"source": "test"}
    assert "deliveryAttempt" not in body


def test_push_without_retry_drops_failures(
    in_process: tuple[PubSubService, Any, Any], endpoint: PushEndpoint
) -> None:
    service, publisher, subscriber = in_process
    endpoint.status = lambda index: 500
    topic = f"projects/{PROJECT}/topics/no-retry"
    publisher.create_topic(name=topic)
    subscription = Subscription.pb()(
        name=f"projects/{PROJECT}/subscriptions/no-retry-sub", topic=topic
    )
    subscription.push_config.push_endpoint = endpoint.url
    service.create_subscription(
        subscription, cloud_event=True, retry_failed_pushes=False
    )
    publisher.publish(topic, b"x").result(timeout=30)

    endpoint.wait_for(1)
    time.sleep(0.5)
    subscriber.modify_push_config(subscription=subscription.name, push_config={})
    left = subscriber.pull(
        subscription=subscription.name, max_messages=1, return_immediately=True
    )

    assert len(endpoint.requests) == 1
    assert list(left.received_messages) == []


def test_internal_api_get_and_delete(
    in_process: tuple[PubSubService, Any, Any],
) -> None:
    service, publisher, _ = in_process
    topic = f"projects/{PROJECT}/topics/internal"
    publisher.create_topic(name=topic)
    name = f"projects/{PROJECT}/subscriptions/internal-sub"
    service.create_subscription(Subscription.pb()(name=name, topic=topic))

    fetched = service.get_subscription(name)
    service.delete_subscription(name)

    assert fetched.ack_deadline_seconds == 10
    with pytest.raises(Exception, match="not found"):
        service.get_subscription(name)


def test_push_timeout_counts_as_nack(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    # The push request times out after the ack deadline (10 s, the minimum).
    endpoint.delay = 11.0
    make_subscription(push_config={"push_endpoint": endpoint.url})
    publisher.publish(topic, b"slow").result(timeout=30)
    [first] = endpoint.wait_for(1)
    endpoint.delay = 0.0

    requests = endpoint.wait_for(2, timeout=20)
    waited = requests[1].at - first.at

    assert 9.5 <= waited <= 15


def test_push_failures_pause_delivery(
    publisher: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    # Without a retry policy a nacked message is due again at once. The pause
    # after each failure (0.1 s, doubling) keeps the endpoint from a tight loop.
    endpoint.status = lambda index: 500
    make_subscription(push_config={"push_endpoint": endpoint.url})
    publisher.publish(topic, b"x").result(timeout=30)

    endpoint.wait_for(1)
    time.sleep(2.0)

    assert 3 <= len(endpoint.requests) <= 8


def test_push_ordering_one_per_key(
    channel: grpc.Channel,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    endpoint.delay = 0.05
    endpoint.status = lambda index: 500 if index == 0 else 204
    make_subscription(
        push_config={"push_endpoint": endpoint.url}, enable_message_ordering=True
    )
    ordered = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(
            enable_message_ordering=True
        ),
        transport=PublisherGrpcTransport(channel=channel),
    )
    for n in range(5):
        ordered.publish(topic, b"%d" % n, ordering_key="k")
    ordered.publish(topic, b"5", ordering_key="k").result(timeout=30)

    requests = endpoint.wait_for(7)
    data = [base64.b64decode(json.loads(r.body)["message"]["data"]) for r in requests]

    assert data == [b"0", b"0", b"1", b"2", b"3", b"4", b"5"]
    assert endpoint.max_in_flight == 1


def test_push_bad_header_attribute_nacked(
    publisher: Any,
    subscriber: Any,
    topic: str,
    endpoint: PushEndpoint,
    make_subscription: Callable[..., str],
) -> None:
    # An attribute key with a colon cannot be an HTTP header name.
    subscription = make_subscription(
        push_config={
            "push_endpoint": endpoint.url,
            "no_wrapper": {"write_metadata": True},
        },
        retry_policy={
            "minimum_backoff": {"seconds": 0},
            "maximum_backoff": {"seconds": 0},
        },
    )
    publisher.publish(topic, b"x", **{"bad:key": "v"}).result(timeout=30)
    time.sleep(0.5)

    subscriber.modify_push_config(subscription=subscription, push_config={})
    time.sleep(0.3)
    pulled = subscriber.pull(
        subscription=subscription, max_messages=1, return_immediately=True
    )

    assert endpoint.requests == []
    assert [m.message.data for m in pulled.received_messages] == [b"x"]
