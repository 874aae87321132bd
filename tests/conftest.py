"""Shared fixtures: a real local cloud process and Google's clients pointed at it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from taskctl.localcloud import process
from taskctl.localcloud.runtime import RuntimeInfo

PROJECT = "taskctl-test"

# A client that finds no credentials must not probe the metadata server.
os.environ.setdefault("NO_GCE_CHECK", "true")


@pytest.fixture(scope="session")
def local_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeInfo]:
    """A local cloud shared by the whole session, on a free port in a temp dir."""
    state_dir = tmp_path_factory.mktemp("localcloud")
    child, info = process.spawn(state_dir, log_level="DEBUG")
    yield info
    process.terminate(info)
    if child.poll() is None:
        child.kill()
    child.wait()


@pytest.fixture
def fresh_local_cloud(tmp_path: Path) -> Iterator[RuntimeInfo]:
    """A local cloud of the test's own, for tests that stop or kill it."""
    child, info = process.spawn(tmp_path / "state")
    yield info
    if child.poll() is None:
        process.terminate(info)
    if child.poll() is None:
        child.kill()
    child.wait()


@pytest.fixture(scope="session")
def channel(local_cloud: RuntimeInfo) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(local_cloud.grpc_endpoint) as shared:
        yield shared


@pytest.fixture
def publisher(channel: grpc.Channel):  # type: ignore[no-untyped-def]
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))


@pytest.fixture
def subscriber(channel: grpc.Channel):  # type: ignore[no-untyped-def]
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    return pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=channel)
    )


@pytest.fixture
def unique() -> str:
    """A short random suffix so tests sharing a local cloud never collide."""
    return uuid.uuid4().hex[:10]
