"""Fixtures shared by the local cloud's Pub/Sub tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import PROJECT


def _prefix(request: pytest.FixtureRequest) -> str:
    """Name resources after the test module (push, retry, ...) to ease debugging."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    return module.removeprefix("test_pubsub_").replace("_", "-")


@pytest.fixture
def topic(publisher: Any, unique: str, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"projects/{PROJECT}/topics/{_prefix(request)}-{unique}"
    publisher.create_topic(name=name)
    yield name
    publisher.delete_topic(topic=name)


@pytest.fixture
def make_subscription(
    subscriber: Any, topic: str, unique: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """Create subscriptions on ``topic`` with the given fields; all are deleted after."""
    created: list[str] = []
    prefix = _prefix(request)

    def make(**settings: Any) -> str:
        name = f"projects/{PROJECT}/subscriptions/{prefix}-{len(created)}-{unique}"
        subscriber.create_subscription(
            request={"name": name, "topic": topic, **settings}
        )
        created.append(name)
        return name

    yield make
    for name in created:
        subscriber.delete_subscription(subscription=name)
