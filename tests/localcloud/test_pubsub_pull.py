"""Pub/Sub Pull, Acknowledge, ModifyAckDeadline and StreamingPull."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1

from tests.conftest import PROJECT

pytestmark = pytest.mark.filterwarnings("ignore:The return_immediately flag")


@pytest.fixture
def raw_subscriber(channel: grpc.Channel) -> Any:
    """The generated client, for StreamingPull requests written by hand."""
    from google.pubsub_v1.services.subscriber import SubscriberClient
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    return SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


@pytest.fixture
def subscription(subscriber: Any, topic: str, unique: str) -> Iterator[str]:
    name = f"projects/{PROJECT}/subscriptions/pull-{unique}"
    subscriber.create_subscription(name=name, topic=topic)
    yield name
    subscriber.delete_subscription(subscription=name)


def publish(publisher: Any, topic: str, *payloads: bytes) -> list[str]:
    return [
        publisher.publish(topic, payload).result(timeout=30) for payload in payloads
    ]


def pull_now(subscriber: Any, subscription: str, max_messages: int = 100) -> list[Any]:
    response = subscriber.pull(
        subscription=subscription, max_messages=max_messages, return_immediately=True
    )
    return list(response.received_messages)


def pull_until(
    subscriber: Any, subscription: str, count: int, timeout: float = 15.0
) -> list[Any]:
    received: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        received.extend(pull_now(subscriber, subscription))
        if len(received) < count:
            time.sleep(0.05)
    return received


def test_pull_returns_published(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    ids = publish(publisher, topic, b"a", b"b", b"c")

    received = pull_now(subscriber, subscription)

    assert sorted(m.message.message_id for m in received) == sorted(ids)
    assert len({m.ack_id for m in received}) == 3


def test_pull_honours_max_messages(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    publish(publisher, topic, *[b"%d" % n for n in range(5)])

    first = pull_now(subscriber, subscription, max_messages=2)
    rest = pull_now(subscriber, subscription, max_messages=10)

    assert len(first) == 2
    assert len(rest) == 3


def test_pull_zero_max_messages_rejected(subscriber: Any, subscription: str) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        subscriber.pull(subscription=subscription, max_messages=0)


def test_pull_missing_subscription_not_found(subscriber: Any, unique: str) -> None:
    with pytest.raises(exceptions.NotFound):
        subscriber.pull(
            subscription=f"projects/{PROJECT}/subscriptions/none-{unique}",
            max_messages=1,
        )


def test_pull_waits_for_publish(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    timer = threading.Timer(0.5, publish, args=(publisher, topic, b"late"))
    timer.start()
    started = time.monotonic()

    response = subscriber.pull(subscription=subscription, max_messages=1, timeout=10)
    elapsed = time.monotonic() - started
    timer.join()

    assert [m.message.data for m in response.received_messages] == [b"late"]
    assert 0.3 < elapsed < 5


def test_pull_empty_returns_immediately(subscriber: Any, subscription: str) -> None:
    started = time.monotonic()

    received = pull_now(subscriber, subscription)

    assert received == []
    assert time.monotonic() - started < 2


def test_ack_removes_message(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    publish(publisher, topic, b"x")
    [received] = pull_now(subscriber, subscription)

    subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[received.ack_id], ack_deadline_seconds=0
    )

    assert pull_now(subscriber, subscription) == []


def test_leased_message_not_redelivered(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    publish(publisher, topic, b"x")

    first = pull_now(subscriber, subscription)
    second = pull_now(subscriber, subscription)

    assert len(first) == 1
    assert second == []


def test_nack_redelivers_with_new_ack_id(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    [message_id] = publish(publisher, topic, b"x")
    [first] = pull_now(subscriber, subscription)

    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=0
    )
    [second] = pull_until(subscriber, subscription, 1)

    assert second.message.message_id == message_id
    assert second.ack_id != first.ack_id


def test_stale_ack_id_does_nothing(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    publish(publisher, topic, b"x")
    [first] = pull_now(subscriber, subscription)
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=0
    )
    [second] = pull_until(subscriber, subscription, 1)

    subscriber.acknowledge(subscription=subscription, ack_ids=[first.ack_id])
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[second.ack_id], ack_deadline_seconds=0
    )
    [third] = pull_until(subscriber, subscription, 1)

    assert third.message.message_id == first.message.message_id


def test_lease_expiry_redelivers(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    publish(publisher, topic, b"x")
    [first] = pull_now(subscriber, subscription)
    # A 1 s extension ends the lease sooner than the 10 s minimum ack deadline.
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=1
    )

    assert pull_now(subscriber, subscription) == []
    [second] = pull_until(subscriber, subscription, 1, timeout=10)

    assert second.message.message_id == first.message.message_id
    subscriber.acknowledge(subscription=subscription, ack_ids=[first.ack_id])
    assert pull_until(subscriber, subscription, 1, timeout=2) == []


def test_ack_after_expiry_ignored(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    publish(publisher, topic, b"x")
    [first] = pull_now(subscriber, subscription)
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=1
    )
    time.sleep(1.5)

    subscriber.acknowledge(subscription=subscription, ack_ids=[first.ack_id])
    redelivered = pull_until(subscriber, subscription, 1, timeout=5)

    assert len(redelivered) == 1


def test_modack_extends_lease(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    publish(publisher, topic, b"x")
    [first] = pull_now(subscriber, subscription)
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=1
    )
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=60
    )
    time.sleep(1.5)

    assert pull_now(subscriber, subscription) == []
    subscriber.acknowledge(subscription=subscription, ack_ids=[first.ack_id])


@pytest.mark.parametrize("seconds", [-1, 601])
def test_modack_out_of_range_rejected(
    publisher: Any, subscriber: Any, topic: str, subscription: str, seconds: int
) -> None:
    publish(publisher, topic, b"x")
    [first] = pull_now(subscriber, subscription)

    with pytest.raises(exceptions.InvalidArgument):
        subscriber.modify_ack_deadline(
            subscription=subscription,
            ack_ids=[first.ack_id],
            ack_deadline_seconds=seconds,
        )


def test_malformed_ack_id_rejected(subscriber: Any, subscription: str) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        subscriber.acknowledge(subscription=subscription, ack_ids=["not-an-ack-id!"])


def test_ack_id_of_other_subscription_ignored(
    publisher: Any, subscriber: Any, topic: str, subscription: str, unique: str
) -> None:
    other = f"projects/{PROJECT}/subscriptions/pull-other-{unique}"
    subscriber.create_subscription(name=other, topic=topic)
    try:
        publish(publisher, topic, b"x")
        [received] = pull_now(subscriber, subscription)

        subscriber.acknowledge(subscription=other, ack_ids=[received.ack_id])
        left_on_other = pull_now(subscriber, other)
    finally:
        subscriber.delete_subscription(subscription=other)

    assert len(left_on_other) == 1


def test_subscribe_receives_and_acks(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    payloads = {b"%d" % n for n in range(50)}
    publish(publisher, topic, *payloads)
    received: set[bytes] = set()
    done = threading.Event()

    def callback(message: Any) -> None:
        received.add(message.data)
        message.ack()
        if received == payloads:
            done.set()

    future = subscriber.subscribe(subscription, callback)
    try:
        assert done.wait(15)
    finally:
        future.cancel()
        future.result(timeout=10)

    time.sleep(0.5)
    assert received == payloads
    assert pull_now(subscriber, subscription) == []


def test_subscribe_nack_redelivers(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    publish(publisher, topic, b"retry-me")
    deliveries: list[float] = []
    done = threading.Event()

    def callback(message: Any) -> None:
        deliveries.append(time.monotonic())
        if len(deliveries) < 3:
            message.nack()
        else:
            message.ack()
            done.set()

    future = subscriber.subscribe(subscription, callback)
    try:
        assert done.wait(15)
    finally:
        future.cancel()
        future.result(timeout=10)

    assert len(deliveries) == 3


def test_subscribe_flow_control_one_outstanding(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    publish(publisher, topic, *[b"%d" % n for n in range(5)])
    in_callback = 0
    max_in_callback = 0
    count = 0
    lock = threading.Lock()
    done = threading.Event()

    def callback(message: Any) -> None:
        nonlocal in_callback, max_in_callback, count
        with lock:
            in_callback += 1
            max_in_callback = max(max_in_callback, in_callback)
        time.sleep(0.05)
        with lock:
            in_callback -= 1
            count += 1
        message.ack()
        if count == 5:
            done.set()

    future = subscriber.subscribe(
        subscription, callback, flow_control=pubsub_v1.types.FlowControl(max_messages=1)
    )
    try:
        assert done.wait(15)
    finally:
        future.cancel()
        future.result(timeout=10)

    assert max_in_callback == 1


def test_subscribe_missing_subscription_fails(subscriber: Any, unique: str) -> None:
    future = subscriber.subscribe(
        f"projects/{PROJECT}/subscriptions/none-{unique}", lambda message: None
    )

    with pytest.raises(exceptions.NotFound):
        future.result(timeout=15)


def test_streaming_pull_raw_ack_and_modack(
    publisher: Any, raw_subscriber: Any, topic: str, subscription: str
) -> None:
    publish(publisher, topic, b"one", b"two")
    requests: list[Any] = [
        {"subscription": subscription, "stream_ack_deadline_seconds": 10}
    ]
    sent = threading.Event()
    finish = threading.Event()

    def request_stream() -> Iterator[dict[str, Any]]:
        yield requests[0]
        sent.wait(10)
        yield requests[1]
        finish.wait(10)

    stream = raw_subscriber.streaming_pull(requests=request_stream())
    first = next(iter(stream))
    by_data = {m.message.data: m for m in first.received_messages}
    while len(by_data) < 2:
        more = next(iter(stream))
        by_data.update({m.message.data: m for m in more.received_messages})
    requests.append(
        {
            "ack_ids": [by_data[b"one"].ack_id],
            "modify_deadline_ack_ids": [by_data[b"two"].ack_id],
            "modify_deadline_seconds": [0],
        }
    )
    sent.set()
    redelivered = next(iter(stream))
    finish.set()
    stream.cancel()

    assert [m.message.data for m in redelivered.received_messages] == [b"two"]


def test_streaming_pull_invalid_deadline_rejected(
    raw_subscriber: Any, subscription: str
) -> None:
    requests = iter([{"subscription": subscription, "stream_ack_deadline_seconds": 5}])

    with pytest.raises(exceptions.InvalidArgument):
        next(iter(raw_subscriber.streaming_pull(requests=requests)))


def test_subscribe_extends_leases(
    publisher: Any, subscriber: Any, topic: str, subscription: str
) -> None:
    # The callback outlives the 10 s ack deadline, so only the client's lease
    # extensions keep the message from being redelivered.
    publish(publisher, topic, b"slow")
    deliveries: list[bytes] = []
    done = threading.Event()

    def callback(message: Any) -> None:
        deliveries.append(message.data)
        time.sleep(13)
        message.ack()
        done.set()

    future = subscriber.subscribe(subscription, callback)
    try:
        assert done.wait(30)
        time.sleep(1)
    finally:
        future.cancel()
        future.result(timeout=10)

    assert deliveries == [b"slow"]
    assert pull_now(subscriber, subscription) == []


def test_streaming_pull_max_outstanding_bytes(
    publisher: Any,
    subscriber: Any,
    raw_subscriber: Any,
    topic: str,
    subscription: str,
) -> None:
    publish(publisher, topic, b"a" * 1000, b"b" * 1000, b"c" * 1000)
    received: list[Any] = []
    finish = threading.Event()

    def request_stream() -> Iterator[dict[str, Any]]:
        yield {
            "subscription": subscription,
            "stream_ack_deadline_seconds": 60,
            "max_outstanding_bytes": 1500,
        }
        finish.wait(20)

    stream = raw_subscriber.streaming_pull(requests=request_stream())

    def read() -> None:
        try:
            for response in stream:
                received.extend(response.received_messages)
        except exceptions.GoogleAPICallError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1.0)
    held = len(received)
    subscriber.acknowledge(subscription=subscription, ack_ids=[received[0].ack_id])
    time.sleep(1.0)
    after_ack = len(received)
    finish.set()
    stream.cancel()
    reader.join(timeout=10)

    assert held == 1
    assert after_ack == 2


def test_subscribe_ends_when_deleted(
    publisher: Any, subscriber: Any, topic: str, unique: str
) -> None:
    name = f"projects/{PROJECT}/subscriptions/pull-deleted-{unique}"
    subscriber.create_subscription(name=name, topic=topic)
    future = subscriber.subscribe(name, lambda message: message.ack())
    time.sleep(0.5)

    subscriber.delete_subscription(subscription=name)
    subscriber.create_subscription(name=name, topic=topic)
    try:
        with pytest.raises(exceptions.NotFound):
            future.result(timeout=15)
    finally:
        future.cancel()
        subscriber.delete_subscription(subscription=name)
