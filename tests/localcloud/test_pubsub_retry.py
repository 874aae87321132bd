"""Pub/Sub retry policy backoff, delivery attempts and dead-lettering."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import PROJECT

pytestmark = pytest.mark.filterwarnings("ignore:The return_immediately flag")

DEAD_LETTER_ATTRIBUTES = {
    "CloudPubSubDeadLetterSourceDeliveryCount",
    "CloudPubSubDeadLetterSourceSubscription",
    "CloudPubSubDeadLetterSourceSubscriptionProject",
    "CloudPubSubDeadLetterSourceTopicPublishTime",
}


@pytest.fixture
def dead_letter_topic(publisher: Any, unique: str) -> Iterator[str]:
    name = f"projects/{PROJECT}/topics/retry-dlq-{unique}"
    publisher.create_topic(name=name)
    yield name
    publisher.delete_topic(topic=name)


@pytest.fixture
def dead_letter_subscription(
    subscriber: Any, dead_letter_topic: str, unique: str
) -> Iterator[str]:
    name = f"projects/{PROJECT}/subscriptions/retry-dlq-{unique}"
    subscriber.create_subscription(name=name, topic=dead_letter_topic)
    yield name
    subscriber.delete_subscription(subscription=name)


def backoff(minimum: float, maximum: float) -> dict[str, Any]:
    return {
        "minimum_backoff": {"seconds": int(minimum), "nanos": int(minimum % 1 * 1e9)},
        "maximum_backoff": {"seconds": int(maximum), "nanos": int(maximum % 1 * 1e9)},
    }


def pull_one(subscriber: Any, subscription: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = subscriber.pull(
            subscription=subscription, max_messages=1, return_immediately=True
        )
        if response.received_messages:
            return response.received_messages[0]
        time.sleep(0.02)
    raise AssertionError(f"no message on {subscription} within {timeout} s")


def nack(subscriber: Any, subscription: str, received: Any) -> None:
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[received.ack_id], ack_deadline_seconds=0
    )


def test_backoff_doubles_up_to_maximum(
    publisher: Any, subscriber: Any, topic: str, make_subscription: Callable[..., str]
) -> None:
    subscription = make_subscription(retry_policy=backoff(1, 2))
    publisher.publish(topic, b"x").result(timeout=30)
    times = []

    for _ in range(4):
        received = pull_one(subscriber, subscription)
        times.append(time.monotonic())
        nack(subscriber, subscription, received)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]

    # Expected waits: 1 s, then 2 s, then 2 s (capped by maximum_backoff).
    assert 0.9 <= gaps[0] <= 1.8
    assert 1.9 <= gaps[1] <= 3.0
    assert 1.9 <= gaps[2] <= 3.0


def test_backoff_applies_after_expiry(
    publisher: Any, subscriber: Any, topic: str, make_subscription: Callable[..., str]
) -> None:
    subscription = make_subscription(retry_policy=backoff(1, 1))
    publisher.publish(topic, b"x").result(timeout=30)
    first = pull_one(subscriber, subscription)
    started = time.monotonic()
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=1
    )

    second = pull_one(subscriber, subscription)
    waited = time.monotonic() - started

    assert second.message.message_id == first.message.message_id
    assert 1.9 <= waited <= 4.0


def test_no_retry_policy_redelivers_at_once(
    publisher: Any, subscriber: Any, topic: str, make_subscription: Callable[..., str]
) -> None:
    subscription = make_subscription()
    publisher.publish(topic, b"x").result(timeout=30)
    first = pull_one(subscriber, subscription)
    started = time.monotonic()

    nack(subscriber, subscription, first)
    pull_one(subscriber, subscription)

    assert time.monotonic() - started < 0.9


def test_delivery_attempt_zero_without_policy(
    publisher: Any, subscriber: Any, topic: str, make_subscription: Callable[..., str]
) -> None:
    subscription = make_subscription()
    publisher.publish(topic, b"x").result(timeout=30)
    attempts = []

    for _ in range(3):
        received = pull_one(subscriber, subscription)
        attempts.append(received.delivery_attempt)
        nack(subscriber, subscription, received)

    assert attempts == [0, 0, 0]


def test_dead_letter_after_max_attempts(
    publisher: Any,
    subscriber: Any,
    topic: str,
    dead_letter_topic: str,
    dead_letter_subscription: str,
    make_subscription: Callable[..., str],
) -> None:
    subscription = make_subscription(
        dead_letter_policy={
            "dead_letter_topic": dead_letter_topic,
            "max_delivery_attempts": 5,
        },
        retry_policy=backoff(0, 0),
    )
    message_id = publisher.publish(
        topic, b"payload", ordering_key="", origin="test"
    ).result(timeout=30)
    attempts = []

    for _ in range(5):
        received = pull_one(subscriber, subscription)
        attempts.append(received.delivery_attempt)
        publish_time = received.message.publish_time
        nack(subscriber, subscription, received)
    forwarded = pull_one(subscriber, dead_letter_subscription)
    attributes = dict(forwarded.message.attributes)

    assert attempts == [1, 2, 3, 4, 5]
    assert forwarded.message.data == b"payload"
    assert forwarded.message.message_id != message_id
    assert attributes["origin"] == "test"
    assert set(attributes) >= DEAD_LETTER_ATTRIBUTES
    assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert (
        attributes["CloudPubSubDeadLetterSourceSubscription"]
        == (subscription.rsplit("/", 1)[1])
    )
    assert attributes["CloudPubSubDeadLetterSourceSubscriptionProject"] == PROJECT
    source_time = datetime.fromisoformat(
        attributes["CloudPubSubDeadLetterSourceTopicPublishTime"]
    )
    assert abs(source_time.timestamp() - publish_time.timestamp()) < 0.001
    time.sleep(0.3)
    leftover = subscriber.pull(
        subscription=subscription, max_messages=10, return_immediately=True
    )
    assert list(leftover.received_messages) == []


def test_dead_letter_after_lease_expiries(
    publisher: Any,
    subscriber: Any,
    topic: str,
    dead_letter_topic: str,
    dead_letter_subscription: str,
    make_subscription: Callable[..., str],
) -> None:
    subscription = make_subscription(
        dead_letter_policy={"dead_letter_topic": dead_letter_topic},
        retry_policy=backoff(0, 0),
    )
    publisher.publish(topic, b"expire-me").result(timeout=30)
    attempts = []

    for _ in range(5):
        received = pull_one(subscriber, subscription)
        attempts.append(received.delivery_attempt)
        subscriber.modify_ack_deadline(
            subscription=subscription, ack_ids=[received.ack_id], ack_deadline_seconds=1
        )
    forwarded = pull_one(subscriber, dead_letter_subscription, timeout=10)

    assert attempts == [1, 2, 3, 4, 5]
    assert forwarded.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == (
        "5"
    )


def test_dead_letter_policy_added_later(
    publisher: Any,
    subscriber: Any,
    topic: str,
    dead_letter_topic: str,
    make_subscription: Callable[..., str],
) -> None:
    subscription = make_subscription()
    publisher.publish(topic, b"x").result(timeout=30)
    before = pull_one(subscriber, subscription)
    nack(subscriber, subscription, before)

    subscriber.update_subscription(
        request={
            "subscription": {
                "name": subscription,
                "dead_letter_policy": {"dead_letter_topic": dead_letter_topic},
            },
            "update_mask": {"paths": ["dead_letter_policy"]},
        }
    )
    after = pull_one(subscriber, subscription)

    assert before.delivery_attempt == 0
    assert after.delivery_attempt == 2


def test_subscribe_sees_delivery_attempts(
    publisher: Any,
    subscriber: Any,
    topic: str,
    dead_letter_topic: str,
    dead_letter_subscription: str,
    make_subscription: Callable[..., str],
) -> None:
    subscription = make_subscription(
        dead_letter_policy={"dead_letter_topic": dead_letter_topic},
        retry_policy=backoff(0.1, 0.1),
    )
    publisher.publish(topic, b"x").result(timeout=30)
    attempts: list[int | None] = []
    lock = threading.Lock()

    def callback(message: Any) -> None:
        with lock:
            attempts.append(message.delivery_attempt)
        message.nack()

    future = subscriber.subscribe(subscription, callback)
    try:
        forwarded = pull_one(subscriber, dead_letter_subscription, timeout=20)
    finally:
        future.cancel()
        future.result(timeout=10)

    assert attempts == [1, 2, 3, 4, 5]
    assert forwarded.message.data == b"x"
