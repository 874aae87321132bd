"""Pub/Sub state after the local cloud is killed with SIGKILL and restarted."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from taskctl.localcloud import process
from taskctl.localcloud.server import RuntimeInfo
from tests.conftest import PROJECT

pytestmark = pytest.mark.filterwarnings("ignore:The return_immediately flag")

TOPIC = f"projects/{PROJECT}/topics/durable"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/durable"
DEAD_LETTER_TOPIC = f"projects/{PROJECT}/topics/durable-dlq"


class Clients:
    """Publisher and subscriber clients on their own channel to one process."""

    def __init__(self, info: RuntimeInfo) -> None:
        self.channel = grpc.insecure_channel(info.grpc_endpoint)
        self.publisher = pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(channel=self.channel)
        )
        self.subscriber = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=self.channel)
        )
        from google.pubsub_v1.services.publisher import PublisherClient

        self.raw_publisher = PublisherClient(
            transport=PublisherGrpcTransport(channel=self.channel)
        )

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def restartable(fresh_local_cloud: RuntimeInfo) -> Iterator[dict[str, Any]]:
    """The first process's info and clients; a test replaces them on restart."""
    state: dict[str, Any] = {
        "info": fresh_local_cloud,
        "clients": Clients(fresh_local_cloud),
        "children": [],
    }
    yield state
    state["clients"].close()
    for child in state["children"]:
        if child.poll() is None:
            process.terminate(state["info"])
        if child.poll() is None:
            child.kill()
        child.wait()


def kill_and_restart(state: dict[str, Any]) -> Clients:
    info: RuntimeInfo = state["info"]
    state["clients"].close()
    os.kill(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process.is_alive(info.pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.pid, os.WNOHANG)
        time.sleep(0.05)
    child, new_info = process.spawn(Path(info.state_dir))
    state["children"].append(child)
    state["info"] = new_info
    state["clients"] = Clients(new_info)
    return state["clients"]


def drain(
    subscriber: Any, subscription: str, expected: set[str], timeout: float = 20.0
) -> list[Any]:
    """Pull until every ``expected`` message ID arrived and then 1 s passed quietly.

    The quiet second catches messages that should not be there.
    """
    received: list[Any] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if expected <= seen and time.monotonic() - quiet_since >= 1.0:
            break
        response = subscriber.pull(
            subscription=subscription, max_messages=1000, return_immediately=True
        )
        if response.received_messages:
            received.extend(response.received_messages)
            seen.update(m.message.message_id for m in response.received_messages)
            quiet_since = time.monotonic()
        else:
            time.sleep(0.05)
    return received


def test_kill_keeps_answered_publishes(restartable: dict[str, Any]) -> None:
    clients: Clients = restartable["clients"]
    clients.publisher.create_topic(name=TOPIC)
    clients.subscriber.create_subscription(name=SUBSCRIPTION, topic=TOPIC)
    answered: set[str] = set()
    stop = threading.Event()

    def publish_until_killed() -> None:
        index = 0
        while not stop.is_set():
            try:
                response = clients.raw_publisher.publish(
                    request={
                        "topic": TOPIC,
                        "messages": [{"data": b"%d" % (index + n)} for n in range(10)],
                    },
                    timeout=5,
                )
            except (exceptions.GoogleAPICallError, exceptions.RetryError, ValueError):
                return
            answered.update(response.message_ids)
            index += 10

    publishing = threading.Thread(target=publish_until_killed)
    publishing.start()
    time.sleep(1.0)
    clients = kill_and_restart(restartable)
    stop.set()
    publishing.join(timeout=20)

    received = drain(clients.subscriber, SUBSCRIPTION, answered)
    received_ids = {m.message.message_id for m in received}

    assert len(answered) > 0
    assert answered <= received_ids


def test_kill_does_not_resurrect_acked(restartable: dict[str, Any]) -> None:
    clients: Clients = restartable["clients"]
    clients.publisher.create_topic(name=TOPIC)
    clients.subscriber.create_subscription(name=SUBSCRIPTION, topic=TOPIC)
    ids = clients.raw_publisher.publish(
        request={"topic": TOPIC, "messages": [{"data": b"%d" % n} for n in range(20)]}
    ).message_ids
    first = clients.subscriber.pull(
        subscription=SUBSCRIPTION, max_messages=10, return_immediately=True
    ).received_messages
    acked = {m.message.message_id for m in first}
    clients.subscriber.acknowledge(
        subscription=SUBSCRIPTION, ack_ids=[m.ack_id for m in first]
    )

    clients = kill_and_restart(restartable)
    received = drain(clients.subscriber, SUBSCRIPTION, set(ids) - acked)
    received_ids = {m.message.message_id for m in received}

    assert len(acked) == 10
    assert received_ids == set(ids) - acked


def test_kill_releases_leases_and_keeps_attempts(restartable: dict[str, Any]) -> None:
    clients: Clients = restartable["clients"]
    clients.publisher.create_topic(name=TOPIC)
    clients.publisher.create_topic(name=DEAD_LETTER_TOPIC)
    clients.subscriber.create_subscription(
        request={
            "name": SUBSCRIPTION,
            "topic": TOPIC,
            "ack_deadline_seconds": 600,
            "dead_letter_policy": {"dead_letter_topic": DEAD_LETTER_TOPIC},
        }
    )
    clients.publisher.publish(TOPIC, b"x").result(timeout=30)
    for _ in range(2):
        [leased] = clients.subscriber.pull(
            subscription=SUBSCRIPTION, max_messages=1, return_immediately=True
        ).received_messages
        clients.subscriber.modify_ack_deadline(
            subscription=SUBSCRIPTION, ack_ids=[leased.ack_id], ack_deadline_seconds=0
        )
    [held] = clients.subscriber.pull(
        subscription=SUBSCRIPTION, max_messages=1, timeout=10
    ).received_messages

    clients = kill_and_restart(restartable)
    [after] = drain(clients.subscriber, SUBSCRIPTION, {held.message.message_id})

    assert held.delivery_attempt == 3
    assert after.message.message_id == held.message.message_id
    assert after.delivery_attempt == 4


def test_restart_keeps_configuration(restartable: dict[str, Any]) -> None:
    clients: Clients = restartable["clients"]
    clients.publisher.create_topic(request={"name": TOPIC, "labels": {"team": "tasks"}})
    created = clients.subscriber.create_subscription(
        request={"name": SUBSCRIPTION, "topic": TOPIC, "ack_deadline_seconds": 42}
    )
    policy = clients.publisher.get_iam_policy(request={"resource": TOPIC})
    policy.bindings.add(role="roles/pubsub.publisher", members=["user:a@example.com"])
    clients.publisher.set_iam_policy(request={"resource": TOPIC, "policy": policy})

    clients = kill_and_restart(restartable)
    topic = clients.publisher.get_topic(topic=TOPIC)
    subscription = clients.subscriber.get_subscription(subscription=SUBSCRIPTION)
    restored = clients.publisher.get_iam_policy(request={"resource": TOPIC})

    assert dict(topic.labels) == {"team": "tasks"}
    assert subscription == created
    assert [binding.role for binding in restored.bindings] == ["roles/pubsub.publisher"]
    new_id = clients.publisher.publish(TOPIC, b"after").result(timeout=30)
    assert int(new_id) > 0


def test_restart_never_reuses_message_ids(restartable: dict[str, Any]) -> None:
    clients: Clients = restartable["clients"]
    clients.publisher.create_topic(name=TOPIC)
    # Without subscriptions the messages are dropped, but their IDs are spent.
    before = clients.raw_publisher.publish(
        request={"topic": TOPIC, "messages": [{"data": b"x"}] * 5}
    ).message_ids

    clients = kill_and_restart(restartable)
    after = clients.raw_publisher.publish(
        request={"topic": TOPIC, "messages": [{"data": b"y"}] * 5}
    ).message_ids

    assert set(before).isdisjoint(after)
