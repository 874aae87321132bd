"""Pub/Sub Publish: limits in bytes, server-assigned IDs, fan-out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.api_core import exceptions

from tests.conftest import PROJECT

MB = 1024 * 1024

# return_immediately is deprecated in the client but still part of the API, and
# it keeps checks for an empty backlog fast.
pytestmark = pytest.mark.filterwarnings("ignore:The return_immediately flag")


@pytest.fixture
def raw_publisher(channel: grpc.Channel) -> Any:
    """The generated client, whose publish sends exactly one request."""
    from google.pubsub_v1.services.publisher import PublisherClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    return PublisherClient(transport=PublisherGrpcTransport(channel=channel))


@pytest.fixture
def subscription(subscriber: Any, topic: str, unique: str) -> Iterator[str]:
    name = f"projects/{PROJECT}/subscriptions/publish-{unique}"
    subscriber.create_subscription(name=name, topic=topic)
    yield name
    subscriber.delete_subscription(subscription=name)


def publish_raw(
    publisher: Any, topic: str, messages: list[dict[str, Any]]
) -> list[str]:
    response = publisher.publish(request={"topic": topic, "messages": messages})
    return list(response.message_ids)


def pull_all(subscriber: Any, subscription: str, expected: int) -> list[Any]:
    received: list[Any] = []
    for _ in range(50):
        response = subscriber.pull(
            subscription=subscription, max_messages=1000, return_immediately=True
        )
        received.extend(response.received_messages)
        if len(received) >= expected:
            break
    return received


def test_publish_assigns_unique_ids(
    raw_publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    first = publish_raw(raw_publisher, topic, [{"data": b"%d" % n} for n in range(20)])
    second = publish_raw(raw_publisher, topic, [{"data": b"again"}])

    received = pull_all(subscriber, subscription, 21)

    assert len(set(first + second)) == 21
    assert sorted(m.message.message_id for m in received) == sorted(first + second)


def test_publish_sets_publish_time_and_id(
    raw_publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    [message_id] = publish_raw(
        raw_publisher, topic, [{"data": b"x", "attributes": {"k": "v"}}]
    )

    [received] = pull_all(subscriber, subscription, 1)

    assert received.message.message_id == message_id
    assert received.message.publish_time.timestamp() > 0
    assert received.message.data == b"x"
    assert dict(received.message.attributes) == {"k": "v"}
    assert received.delivery_attempt == 0


def test_publish_fans_out_to_every_subscription(
    raw_publisher: Any, subscriber: Any, topic: str, subscription: str, unique: str
) -> None:
    second = f"projects/{PROJECT}/subscriptions/publish-second-{unique}"
    subscriber.create_subscription(name=second, topic=topic)
    try:
        publish_raw(raw_publisher, topic, [{"data": b"one"}, {"data": b"two"}])

        first_data = sorted(
            m.message.data for m in pull_all(subscriber, subscription, 2)
        )
        second_data = sorted(m.message.data for m in pull_all(subscriber, second, 2))
    finally:
        subscriber.delete_subscription(subscription=second)

    assert first_data == [b"one", b"two"]
    assert second_data == [b"one", b"two"]


def test_publish_before_subscription_not_delivered(
    raw_publisher: Any, subscriber: Any, topic: str, unique: str
) -> None:
    publish_raw(raw_publisher, topic, [{"data": b"early"}])
    late = f"projects/{PROJECT}/subscriptions/publish-late-{unique}"
    subscriber.create_subscription(name=late, topic=topic)
    try:
        response = subscriber.pull(
            subscription=late, max_messages=10, return_immediately=True
        )
    finally:
        subscriber.delete_subscription(subscription=late)

    assert list(response.received_messages) == []


def test_publish_missing_topic_not_found(raw_publisher: Any, unique: str) -> None:
    with pytest.raises(exceptions.NotFound):
        publish_raw(
            raw_publisher, f"projects/{PROJECT}/topics/nope-{unique}", [{"data": b"x"}]
        )


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({}, "neither data nor attributes"),
        ({"data": b"x", "attributes": {"goog-key": "v"}}, "goog"),
        ({"data": b"x", "attributes": {"k" * 257: "v"}}, "key"),
        ({"data": b"x", "attributes": {"k": "v" * 1025}}, "value"),
        ({"data": b"x", "attributes": {"k": "é" * 513}}, "value"),
        (
            {"data": b"x", "attributes": {f"k{n}": "v" for n in range(101)}},
            "attributes",
        ),
        ({"data": b"x", "ordering_key": "o" * 1025}, "ordering key"),
        ({"data": b"x", "message_id": "123"}, "server assigns"),
    ],
)
def test_publish_message_limits(
    raw_publisher: Any, topic: str, message: dict[str, Any], reason: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=reason):
        publish_raw(raw_publisher, topic, [message])


def test_publish_limits_at_boundary_accepted(raw_publisher: Any, topic: str) -> None:
    message = {
        "data": b"x",
        "attributes": {"k" * 256: "v" * 1024, **{f"a{n}": "v" for n in range(99)}},
        "ordering_key": "o" * 1024,
    }

    ids = publish_raw(raw_publisher, topic, [message])

    assert len(ids) == 1


def test_publish_data_over_10_mb_rejected(raw_publisher: Any, topic: str) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="bytes"):
        publish_raw(raw_publisher, topic, [{"data": b"x" * (10 * MB + 1)}])


def test_publish_request_over_10_mb_rejected(raw_publisher: Any, topic: str) -> None:
    messages = [{"data": b"x" * (4 * MB)} for _ in range(3)]

    with pytest.raises(exceptions.InvalidArgument, match="publish request"):
        publish_raw(raw_publisher, topic, messages)


def test_publish_data_over_10_000_000_rejected(raw_publisher: Any, topic: str) -> None:
    # Google's 10 MB is decimal, so 10,000,001 bytes is over it and under 10 MiB.
    with pytest.raises(exceptions.InvalidArgument, match="10000000 bytes"):
        publish_raw(raw_publisher, topic, [{"data": b"x" * 10_000_001}])


def test_publish_request_over_10_000_000_rejected(
    raw_publisher: Any, topic: str
) -> None:
    messages = [{"data": b"x" * 3_340_000} for _ in range(3)]

    with pytest.raises(exceptions.InvalidArgument, match="publish request") as raised:
        publish_raw(raw_publisher, topic, messages)

    assert "10000000 bytes" in raised.value.message


def test_publish_request_under_10_000_000_accepted(
    raw_publisher: Any, topic: str
) -> None:
    messages = [{"data": b"x" * 4_990_000} for _ in range(2)]

    ids = publish_raw(raw_publisher, topic, messages)

    assert len(ids) == 2


def test_publish_over_1000_messages_rejected(raw_publisher: Any, topic: str) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="1000"):
        publish_raw(raw_publisher, topic, [{"data": b"x"}] * 1001)


def test_publish_empty_request_rejected(raw_publisher: Any, topic: str) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        publish_raw(raw_publisher, topic, [])


def test_publish_client_batches_delivered(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    futures = [publisher.publish(topic, b"%d" % n, n=str(n)) for n in range(300)]
    ids = [future.result(timeout=30) for future in futures]

    received = pull_all(subscriber, subscription, 300)

    assert len(set(ids)) == 300
    assert sorted(int(m.message.data) for m in received) == list(range(300))


def test_publish_mixed_ordering_keys_rejected(raw_publisher: Any, topic: str) -> None:
    messages = [
        {"data": b"a", "ordering_key": "k1"},
        {"data": b"b", "ordering_key": "k2"},
    ]

    with pytest.raises(exceptions.InvalidArgument, match="ordering_key"):
        publish_raw(raw_publisher, topic, messages)
