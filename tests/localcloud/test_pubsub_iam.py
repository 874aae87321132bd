"""Pub/Sub IAMPolicy on topics and subscriptions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions

from tests.conftest import PROJECT

SERVICE_AGENT = "serviceAccount:service-1@gcp-sa-pubsub.iam.gserviceaccount.com"


@pytest.fixture
def subscription(subscriber: Any, topic: str, unique: str) -> Iterator[str]:
    name = f"projects/{PROJECT}/subscriptions/iam-{unique}"
    subscriber.create_subscription(name=name, topic=topic)
    yield name
    subscriber.delete_subscription(subscription=name)


def test_iam_topic_policy_roundtrip(publisher: Any, topic: str) -> None:
    policy = publisher.get_iam_policy(request={"resource": topic})
    initial_bindings = len(policy.bindings)
    initial_etag = policy.etag
    policy.bindings.add(role="roles/pubsub.publisher", members=[SERVICE_AGENT])

    stored = publisher.set_iam_policy(request={"resource": topic, "policy": policy})
    fetched = publisher.get_iam_policy(request={"resource": topic})

    assert initial_bindings == 0
    assert fetched == stored
    assert [(b.role, list(b.members)) for b in fetched.bindings] == [
        ("roles/pubsub.publisher", [SERVICE_AGENT])
    ]
    assert fetched.etag != initial_etag


def test_iam_subscription_policy_roundtrip(subscriber: Any, subscription: str) -> None:
    policy = subscriber.get_iam_policy(request={"resource": subscription})
    policy.bindings.add(role="roles/pubsub.subscriber", members=[SERVICE_AGENT])

    subscriber.set_iam_policy(request={"resource": subscription, "policy": policy})
    fetched = subscriber.get_iam_policy(request={"resource": subscription})

    assert [b.role for b in fetched.bindings] == ["roles/pubsub.subscriber"]


def test_iam_stale_etag_aborted(publisher: Any, topic: str) -> None:
    stale = publisher.get_iam_policy(request={"resource": topic})
    fresh = publisher.get_iam_policy(request={"resource": topic})
    fresh.bindings.add(role="roles/pubsub.viewer", members=["user:a@example.com"])
    publisher.set_iam_policy(request={"resource": topic, "policy": fresh})
    stale.bindings.add(role="roles/pubsub.editor", members=["user:b@example.com"])

    with pytest.raises(exceptions.Aborted):
        publisher.set_iam_policy(request={"resource": topic, "policy": stale})


def test_iam_policy_without_etag_overwrites(publisher: Any, topic: str) -> None:
    first = publisher.get_iam_policy(request={"resource": topic})
    first.bindings.add(role="roles/pubsub.viewer", members=["user:a@example.com"])
    publisher.set_iam_policy(request={"resource": topic, "policy": first})

    publisher.set_iam_policy(
        request={
            "resource": topic,
            "policy": {"bindings": [{"role": "roles/pubsub.editor", "members": []}]},
        }
    )
    fetched = publisher.get_iam_policy(request={"resource": topic})

    assert [b.role for b in fetched.bindings] == ["roles/pubsub.editor"]


def test_iam_missing_resource_not_found(publisher: Any, unique: str) -> None:
    with pytest.raises(exceptions.NotFound):
        publisher.get_iam_policy(
            request={"resource": f"projects/{PROJECT}/topics/none-{unique}"}
        )


def test_iam_invalid_role_rejected(publisher: Any, topic: str) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        publisher.set_iam_policy(
            request={
                "resource": topic,
                "policy": {"bindings": [{"role": "owner", "members": []}]},
            }
        )


def test_iam_test_permissions_returns_requested(
    subscriber: Any, subscription: str
) -> None:
    permissions = ["pubsub.subscriptions.consume", "pubsub.subscriptions.get"]

    response = subscriber.test_iam_permissions(
        request={"resource": subscription, "permissions": permissions}
    )

    assert list(response.permissions) == permissions


def test_iam_policy_deleted_with_topic(publisher: Any, unique: str) -> None:
    name = f"projects/{PROJECT}/topics/iam-recreated-{unique}"
    publisher.create_topic(name=name)
    policy = publisher.get_iam_policy(request={"resource": name})
    policy.bindings.add(role="roles/pubsub.viewer", members=["user:a@example.com"])
    publisher.set_iam_policy(request={"resource": name, "policy": policy})

    publisher.delete_topic(topic=name)
    publisher.create_topic(name=name)
    fetched = publisher.get_iam_policy(request={"resource": name})
    publisher.delete_topic(topic=name)

    assert list(fetched.bindings) == []
