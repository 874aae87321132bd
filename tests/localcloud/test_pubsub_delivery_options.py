"""Pub/Sub ordering keys, attribute filters, seek and message retention."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.protobuf import timestamp_pb2
from google.pubsub_v1.types import PubsubMessage, Subscription, Topic

from taskctl.localcloud.pubsub import filters
from taskctl.localcloud.pubsub.store import Store
from tests.conftest import PROJECT

pytestmark = pytest.mark.filterwarnings("ignore:The return_immediately flag")


@pytest.fixture
def ordered_publisher(channel: Any) -> Any:
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    return pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(
            enable_message_ordering=True
        ),
        transport=PublisherGrpcTransport(channel=channel),
    )


def pull_now(subscriber: Any, subscription: str, max_messages: int = 100) -> list[Any]:
    response = subscriber.pull(
        subscription=subscription, max_messages=max_messages, return_immediately=True
    )
    return list(response.received_messages)


def test_ordering_key_in_order(
    ordered_publisher: Any,
    subscriber: Any,
    topic: str,
    make_subscription: Callable[..., str],
) -> None:
    subscription = make_subscription(enable_message_ordering=True)
    for n in range(10):
        ordered_publisher.publish(topic, b"%d" % n, ordering_key="k")
    ordered_publisher.publish(topic, b"x", ordering_key="k").result(timeout=30)

    received = pull_now(subscriber, subscription)

    assert [m.message.data for m in received] == [b"%d" % n for n in range(10)] + [b"x"]
    assert {m.message.ordering_key for m in received} == {"k"}


def test_ordering_nack_redelivers_in_order(
    ordered_publisher: Any,
    subscriber: Any,
    topic: str,
    make_subscription: Callable[..., str],
) -> None:
    subscription = make_subscription(enable_message_ordering=True)
    ordered_publisher.publish(topic, b"first", ordering_key="k").result(timeout=30)
    [first] = pull_now(subscriber, subscription)
    ordered_publisher.publish(topic, b"second", ordering_key="k").result(timeout=30)
    ordered_publisher.publish(topic, b"other", ordering_key="j").result(timeout=30)

    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=0
    )
    batch = pull_now(subscriber, subscription)

    assert [m.message.data for m in batch] == [b"first", b"second", b"other"]


def test_ordering_backoff_holds_back_key(
    ordered_publisher: Any,
    subscriber: Any,
    topic: str,
    make_subscription: Callable[..., str],
) -> None:
    subscription = make_subscription(
        enable_message_ordering=True,
        retry_policy={
            "minimum_backoff": {"seconds": 5},
            "maximum_backoff": {"seconds": 5},
        },
    )
    ordered_publisher.publish(topic, b"first", ordering_key="k").result(timeout=30)
    [first] = pull_now(subscriber, subscription)
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=0
    )
    ordered_publisher.publish(topic, b"second", ordering_key="k").result(timeout=30)

    during_backoff = pull_now(subscriber, subscription)

    assert during_backoff == []


def test_unordered_subscription_ignores_keys(
    ordered_publisher: Any,
    subscriber: Any,
    topic: str,
    make_subscription: Callable[..., str],
) -> None:
    subscription = make_subscription()
    ordered_publisher.publish(topic, b"first", ordering_key="k").result(timeout=30)
    [first] = pull_now(subscriber, subscription)
    subscriber.modify_ack_deadline(
        subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=0
    )
    ordered_publisher.publish(topic, b"second", ordering_key="k").result(timeout=30)

    batch = pull_now(subscriber, subscription)

    assert sorted(m.message.data for m in batch) == [b"first", b"second"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('attributes.kind = "a"', [b"a"]),
        ('attributes.kind != "a"', [b"b", b"none"]),
        ("attributes:kind", [b"a", b"b"]),
        ("NOT attributes:kind", [b"none"]),
        ('-attributes.kind = "a"', [b"b", b"none"]),
        ('hasPrefix(attributes.kind, "b")', [b"b"]),
        ('attributes.kind = "a" OR attributes.kind = "b"', [b"a", b"b"]),
        ('attributes:kind AND attributes.extra = "1"', [b"b"]),
        (
            '(attributes.kind = "a" OR attributes.extra = "1") AND attributes:kind',
            [
                b"a",
                b"b",
            ],
        ),
    ],
)
def test_filter_delivers_matching(
    publisher: Any,
    subscriber: Any,
    topic: str,
    make_subscription: Callable[..., str],
    expression: str,
    expected: list[bytes],
) -> None:
    subscription = make_subscription(filter=expression)
    publisher.publish(topic, b"a", kind="a").result(timeout=30)
    publisher.publish(topic, b"b", kind="b", extra="1").result(timeout=30)
    publisher.publish(topic, b"none", other="x").result(timeout=30)

    received = pull_now(subscriber, subscription)

    assert sorted(m.message.data for m in received) == expected


@pytest.mark.parametrize(
    "expression",
    [
        'attributes.a = "1" AND attributes.b = "2" OR attributes.c = "3"',
        "attributes.a = 1",
        'data = "x"',
        "attributes.",
        'hasPrefix(attributes.a "x")',
        "x" * 257,
    ],
)
def test_filter_invalid_rejected(
    subscriber: Any, topic: str, unique: str, expression: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        subscriber.create_subscription(
            request={
                "name": f"projects/{PROJECT}/subscriptions/bad-filter-{unique}",
                "topic": topic,
                "filter": expression,
            }
        )


def test_filter_parser_quoted_key() -> None:
    parsed = filters.parse('attributes."my key" = "v\\"q"')

    assert parsed.matches({"my key": 'v"q'})
    assert not parsed.matches({"my key": "v"})


def test_seek_to_time_acks_older(
    publisher: Any, subscriber: Any, topic: str, make_subscription: Callable[..., str]
) -> None:
    subscription = make_subscription()
    publisher.publish(topic, b"old").result(timeout=30)
    time.sleep(0.05)
    boundary = timestamp_pb2.Timestamp()
    boundary.GetCurrentTime()
    time.sleep(0.05)
    publisher.publish(topic, b"new").result(timeout=30)
    [leased] = [
        m for m in pull_now(subscriber, subscription) if m.message.data == b"new"
    ]

    subscriber.seek(request={"subscription": subscription, "time": boundary})
    received = pull_now(subscriber, subscription)

    assert [m.message.data for m in received] == [b"new"]
    assert received[0].ack_id != leased.ack_id


def test_seek_to_snapshot_unimplemented(
    subscriber: Any, make_subscription: Callable[..., str]
) -> None:
    subscription = make_subscription()

    with pytest.raises(exceptions.MethodNotImplemented):
        subscriber.seek(
            request={
                "subscription": subscription,
                "snapshot": f"projects/{PROJECT}/snapshots/nothing",
            }
        )


def test_retention_drops_old_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "pubsub.sqlite3")
    topic = f"projects/{PROJECT}/topics/kept"
    store.put_topic(Topic.pb()(name=topic), create=True)
    subscription = Subscription.pb()(
        name=f"projects/{PROJECT}/subscriptions/kept", topic=topic
    )
    subscription.message_retention_duration.FromSeconds(600)
    state = store.create_subscription(
        subscription, cloud_event=False, retry_failed_pushes=True
    )
    real_time = time.time
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: real_time() - 601)
        store.publish(topic, [PubsubMessage.pb()(data=b"old")])
    store.publish(topic, [PubsubMessage.pb()(data=b"young")])

    store.sweep()
    leases = store.lease(state, 10, 10)
    store.close()

    assert [lease.received.message.data for lease in leases] == [b"young"]
