"""Pub/Sub topics and subscriptions: create, get, update, list, delete, validation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions
from google.protobuf import field_mask_pb2

from tests.conftest import PROJECT

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600


@pytest.fixture
def topic(publisher: Any, unique: str) -> Iterator[str]:
    name = f"projects/{PROJECT}/topics/admin-{unique}"
    publisher.create_topic(name=name)
    yield name
    with contextlib.suppress(exceptions.NotFound):
        publisher.delete_topic(topic=name)


@pytest.fixture
def dead_letter_topic(publisher: Any, unique: str) -> Iterator[str]:
    name = f"projects/{PROJECT}/topics/admin-dlq-{unique}"
    publisher.create_topic(name=name)
    yield name
    publisher.delete_topic(topic=name)


@pytest.fixture
def subscription_name(subscriber: Any, unique: str) -> Iterator[str]:
    name = f"projects/{PROJECT}/subscriptions/admin-{unique}"
    yield name
    with contextlib.suppress(exceptions.NotFound):
        subscriber.delete_subscription(subscription=name)


def test_topic_create_get_roundtrip(publisher: Any, topic: str) -> None:
    fetched = publisher.get_topic(topic=topic)

    assert fetched.name == topic


def test_topic_create_twice_already_exists(publisher: Any, topic: str) -> None:
    with pytest.raises(exceptions.AlreadyExists):
        publisher.create_topic(name=topic)


def test_topic_get_missing_not_found(publisher: Any, unique: str) -> None:
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=f"projects/{PROJECT}/topics/missing-{unique}")


@pytest.mark.parametrize(
    "topic_id",
    ["ab", "1abc", "goog-topic", "has space", "a" * 256, "bad/slash", "é-topic"],
)
def test_topic_invalid_id_rejected(publisher: Any, topic_id: str) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        publisher.create_topic(name=f"projects/{PROJECT}/topics/{topic_id}")


@pytest.mark.parametrize(
    "project",
    ["a", "abcde", "Taskctl-test", "1taskctl", "taskctl-", "t" * 31, "my_project"],
)
def test_topic_invalid_project_rejected(
    publisher: Any, subscriber: Any, project: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="6 to 30") as created:
        publisher.create_topic(name=f"projects/{project}/topics/valid-topic")
    with pytest.raises(exceptions.InvalidArgument, match="6 to 30") as listed:
        list(publisher.list_topics(project=f"projects/{project}"))
    with pytest.raises(exceptions.InvalidArgument, match="6 to 30") as subscribed:
        subscriber.create_subscription(
            name=f"projects/{project}/subscriptions/valid-sub",
            topic=f"projects/{PROJECT}/topics/valid-topic",
        )

    assert project in created.value.message
    assert project in listed.value.message
    assert project in subscribed.value.message


@pytest.mark.parametrize("project", ["abcdef", "t" * 30, "example.com:my-project"])
def test_topic_valid_project_accepted(
    publisher: Any, unique: str, project: str
) -> None:
    name = f"projects/{project}/topics/project-{unique}"
    publisher.create_topic(name=name)
    publisher.delete_topic(topic=name)


@pytest.mark.parametrize("topic_id", ["abc", "A-b_c.d~e+f%g", "t" * 255])
def test_topic_valid_ids_accepted(publisher: Any, unique: str, topic_id: str) -> None:
    name = f"projects/{PROJECT}/topics/{topic_id}{unique}"[: len(PROJECT) + 17 + 255]
    publisher.create_topic(name=name)
    publisher.delete_topic(topic=name)


def test_topic_update_labels_with_mask(publisher: Any, topic: str) -> None:
    updated = publisher.update_topic(
        request={
            "topic": {"name": topic, "labels": {"team": "tasks"}},
            "update_mask": field_mask_pb2.FieldMask(paths=["labels"]),
        }
    )

    assert dict(updated.labels) == {"team": "tasks"}
    assert dict(publisher.get_topic(topic=topic).labels) == {"team": "tasks"}


def test_topic_update_empty_mask_rejected(publisher: Any, topic: str) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        publisher.update_topic(
            request={"topic": {"name": topic}, "update_mask": {"paths": []}}
        )


def test_topic_retention_out_of_range(publisher: Any, unique: str) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        publisher.create_topic(
            request={
                "name": f"projects/{PROJECT}/topics/short-retention-{unique}",
                "message_retention_duration": {"seconds": 60},
            }
        )


def test_topic_list_pages(publisher: Any, unique: str) -> None:
    project = f"projects/pages-{unique}"
    names = [f"{project}/topics/page-{index:02d}" for index in range(5)]
    for name in names:
        publisher.create_topic(name=name)

    first = publisher.list_topics(request={"project": project, "page_size": 2})
    pages = list(first.pages)
    listed = [topic.name for page in pages for topic in page.topics]

    assert listed == names
    assert len(pages) == 3
    for name in names:
        publisher.delete_topic(topic=name)


def test_topic_delete_keeps_subscriptions(
    publisher: Any, subscriber: Any, topic: str, subscription_name: str
) -> None:
    subscriber.create_subscription(name=subscription_name, topic=topic)

    publisher.delete_topic(topic=topic)
    orphan = subscriber.get_subscription(subscription=subscription_name)

    assert orphan.topic == "_deleted-topic_"
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=topic)


def test_topic_list_subscriptions(
    publisher: Any, subscriber: Any, topic: str, subscription_name: str
) -> None:
    subscriber.create_subscription(name=subscription_name, topic=topic)

    listed = list(publisher.list_topic_subscriptions(topic=topic))

    assert listed == [subscription_name]


def test_subscription_defaults(
    subscriber: Any, topic: str, subscription_name: str
) -> None:
    created = subscriber.create_subscription(name=subscription_name, topic=topic)

    assert created.ack_deadline_seconds == 10
    assert created.message_retention_duration.total_seconds() == (
        DEFAULT_RETENTION_SECONDS
    )
    assert created.expiration_policy.ttl.total_seconds() == 31 * 24 * 3600
    assert subscriber.get_subscription(subscription=subscription_name) == created


def test_subscription_missing_topic_not_found(
    subscriber: Any, unique: str, subscription_name: str
) -> None:
    with pytest.raises(exceptions.NotFound):
        subscriber.create_subscription(
            name=subscription_name, topic=f"projects/{PROJECT}/topics/none-{unique}"
        )


def test_subscription_create_twice_already_exists(
    subscriber: Any, topic: str, subscription_name: str
) -> None:
    subscriber.create_subscription(name=subscription_name, topic=topic)

    with pytest.raises(exceptions.AlreadyExists):
        subscriber.create_subscription(name=subscription_name, topic=topic)


@pytest.mark.parametrize(
    "settings",
    [
        {"ack_deadline_seconds": 5},
        {"ack_deadline_seconds": 601},
        {"message_retention_duration": {"seconds": 599}},
        {"message_retention_duration": {"seconds": 31 * 24 * 3600 + 1}},
        {"retry_policy": {"minimum_backoff": {"seconds": 601}}},
        {
            "retry_policy": {
                "minimum_backoff": {"seconds": 20},
                "maximum_backoff": {"seconds": 10},
            }
        },
        {"push_config": {"push_endpoint": "http://192.0.2.1/push"}},
        {"push_config": {"push_endpoint": "ftp://127.0.0.1/push"}},
        {"filter": "attributes.kind = "},
        {"expiration_policy": {"ttl": {"seconds": 3600}}},
    ],
)
def test_subscription_invalid_settings_rejected(
    subscriber: Any, topic: str, subscription_name: str, settings: dict[str, Any]
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        subscriber.create_subscription(
            request={"name": subscription_name, "topic": topic, **settings}
        )


def test_subscription_retry_policy_defaults(
    subscriber: Any, topic: str, subscription_name: str
) -> None:
    created = subscriber.create_subscription(
        request={"name": subscription_name, "topic": topic, "retry_policy": {}}
    )

    assert created.retry_policy.minimum_backoff.total_seconds() == 10
    assert created.retry_policy.maximum_backoff.total_seconds() == 600


def test_subscription_dead_letter_defaults(
    subscriber: Any, topic: str, dead_letter_topic: str, subscription_name: str
) -> None:
    created = subscriber.create_subscription(
        request={
            "name": subscription_name,
            "topic": topic,
            "dead_letter_policy": {"dead_letter_topic": dead_letter_topic},
        }
    )

    assert created.dead_letter_policy.max_delivery_attempts == 5


@pytest.mark.parametrize("attempts", [4, 101])
def test_subscription_dead_letter_attempts_range(
    subscriber: Any,
    topic: str,
    dead_letter_topic: str,
    subscription_name: str,
    attempts: int,
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        subscriber.create_subscription(
            request={
                "name": subscription_name,
                "topic": topic,
                "dead_letter_policy": {
                    "dead_letter_topic": dead_letter_topic,
                    "max_delivery_attempts": attempts,
                },
            }
        )


def test_subscription_dead_letter_topic_missing(
    subscriber: Any, topic: str, unique: str, subscription_name: str
) -> None:
    with pytest.raises(exceptions.NotFound):
        subscriber.create_subscription(
            request={
                "name": subscription_name,
                "topic": topic,
                "dead_letter_policy": {
                    "dead_letter_topic": f"projects/{PROJECT}/topics/gone-{unique}"
                },
            }
        )


def test_subscription_update_with_mask(
    subscriber: Any, topic: str, dead_letter_topic: str, subscription_name: str
) -> None:
    subscriber.create_subscription(
        request={"name": subscription_name, "topic": topic, "labels": {"a": "1"}}
    )

    updated = subscriber.update_subscription(
        request={
            "subscription": {
                "name": subscription_name,
                "ack_deadline_seconds": 30,
                "labels": {"b": "2"},
                "retry_policy": {
                    "minimum_backoff": {"seconds": 1},
                    "maximum_backoff": {"seconds": 2},
                },
                "dead_letter_policy": {
                    "dead_letter_topic": dead_letter_topic,
                    "max_delivery_attempts": 7,
                },
                "message_retention_duration": {"seconds": 3600},
            },
            "update_mask": {
                "paths": [
                    "ack_deadline_seconds",
                    "labels",
                    "retry_policy",
                    "dead_letter_policy",
                    "message_retention_duration",
                ]
            },
        }
    )
    fetched = subscriber.get_subscription(subscription=subscription_name)

    assert updated == fetched
    assert fetched.ack_deadline_seconds == 30
    assert dict(fetched.labels) == {"b": "2"}
    assert fetched.retry_policy.maximum_backoff.total_seconds() == 2
    assert fetched.dead_letter_policy.max_delivery_attempts == 7
    assert fetched.message_retention_duration.total_seconds() == 3600


def test_subscription_update_clears_unset_field(
    subscriber: Any, topic: str, subscription_name: str
) -> None:
    subscriber.create_subscription(
        request={"name": subscription_name, "topic": topic, "retry_policy": {}}
    )

    updated = subscriber.update_subscription(
        request={
            "subscription": {"name": subscription_name},
            "update_mask": {"paths": ["retry_policy"]},
        }
    )

    assert "retry_policy" not in updated


@pytest.mark.parametrize("path", ["filter", "topic", "enable_message_ordering"])
def test_subscription_update_immutable_rejected(
    subscriber: Any, topic: str, subscription_name: str, path: str
) -> None:
    subscriber.create_subscription(name=subscription_name, topic=topic)

    with pytest.raises(exceptions.InvalidArgument):
        subscriber.update_subscription(
            request={
                "subscription": {"name": subscription_name, "filter": "attributes:x"},
                "update_mask": {"paths": [path]},
            }
        )


def test_subscription_update_missing_not_found(
    subscriber: Any, subscription_name: str
) -> None:
    with pytest.raises(exceptions.NotFound):
        subscriber.update_subscription(
            request={
                "subscription": {"name": subscription_name, "ack_deadline_seconds": 20},
                "update_mask": {"paths": ["ack_deadline_seconds"]},
            }
        )


def test_subscription_list_pages(publisher: Any, subscriber: Any, unique: str) -> None:
    project = f"projects/subpages-{unique}"
    topic = f"{project}/topics/source"
    publisher.create_topic(name=topic)
    names = [f"{project}/subscriptions/sub-{index:02d}" for index in range(3)]
    for name in names:
        subscriber.create_subscription(name=name, topic=topic)

    pager = subscriber.list_subscriptions(request={"project": project, "page_size": 2})
    listed = [subscription.name for subscription in pager]

    assert listed == names
    for name in names:
        subscriber.delete_subscription(subscription=name)
    publisher.delete_topic(topic=topic)


def test_subscription_delete_then_not_found(
    subscriber: Any, topic: str, subscription_name: str
) -> None:
    subscriber.create_subscription(name=subscription_name, topic=topic)

    subscriber.delete_subscription(subscription=subscription_name)

    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(subscription=subscription_name)
    with pytest.raises(exceptions.NotFound):
        subscriber.delete_subscription(subscription=subscription_name)


def test_modify_push_config_switches_mode(
    subscriber: Any, topic: str, subscription_name: str
) -> None:
    subscriber.create_subscription(name=subscription_name, topic=topic)
    endpoint = "http://127.0.0.1:9/push"

    subscriber.modify_push_config(
        subscription=subscription_name, push_config={"push_endpoint": endpoint}
    )
    pushed = subscriber.get_subscription(subscription=subscription_name)
    subscriber.modify_push_config(subscription=subscription_name, push_config={})
    pulled = subscriber.get_subscription(subscription=subscription_name)

    assert pushed.push_config.push_endpoint == endpoint
    assert pulled.push_config.push_endpoint == ""


def test_modify_push_config_non_loopback_rejected(
    subscriber: Any, topic: str, subscription_name: str
) -> None:
    subscriber.create_subscription(name=subscription_name, topic=topic)

    with pytest.raises(exceptions.InvalidArgument, match="loopback"):
        subscriber.modify_push_config(
            subscription=subscription_name,
            push_config={"push_endpoint": "https://example.com/push"},
        )


def test_subscription_expiration_without_ttl(
    subscriber: Any, topic: str, subscription_name: str
) -> None:
    created = subscriber.create_subscription(
        request={"name": subscription_name, "topic": topic, "expiration_policy": {}}
    )

    assert "expiration_policy" in created
    assert "ttl" not in created.expiration_policy
