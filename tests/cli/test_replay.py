"""replay-dlq: what a replayed copy carries, when it is acknowledged, and loop limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskctl.localcloud.runtime import RuntimeInfo
from tests.cli.helpers import Run, taskctl

PROJECT = "taskctl-local"
DEAD_LETTER_ATTRIBUTES = {
    "CloudPubSubDeadLetterSourceDeliveryCount": "5",
    "CloudPubSubDeadLetterSourceSubscription": "eventarc-us-central1-worker-sub-001",
    "CloudPubSubDeadLetterSourceSubscriptionProject": PROJECT,
    "CloudPubSubDeadLetterSourceTopicPublishTime": "2026-12-01T10:00:00.000Z",
}


@pytest.fixture
def queues(
    local_cloud: RuntimeInfo,
    unique: str,
    publisher: Any,
    subscriber: Any,
    tmp_path: Path,
) -> Iterator[dict[str, Any]]:
    """A task topic with a pull subscription standing in for the worker, and a
    dead-letter topic with its subscription, with no function attached."""
    names = {
        "topic": f"projects/{PROJECT}/topics/replay-tasks-{unique}",
        "inbox": f"projects/{PROJECT}/subscriptions/replay-inbox-{unique}",
        "dead_topic": f"projects/{PROJECT}/topics/replay-dead-{unique}",
        "dead_sub": f"projects/{PROJECT}/subscriptions/replay-dead-sub-{unique}",
    }
    publisher.create_topic(request={"name": names["topic"]})
    publisher.create_topic(request={"name": names["dead_topic"]})
    subscriber.create_subscription(
        request={
            "name": names["inbox"],
            "topic": names["topic"],
            "enable_message_ordering": True,
        }
    )
    subscriber.create_subscription(
        request={"name": names["dead_sub"], "topic": names["dead_topic"]}
    )
    env = {
        "TASKCTL_STATE_DIR": local_cloud.state_dir,
        "TASKCTL_TOPIC": f"replay-tasks-{unique}",
        "TASKCTL_DEAD_LETTER_TOPIC": f"replay-dead-{unique}",
        "TASKCTL_DEAD_LETTER_SUBSCRIPTION": f"replay-dead-sub-{unique}",
    }
    yield {**names, "env": env, "cwd": tmp_path}
    for subscription in (names["inbox"], names["dead_sub"]):
        subscriber.delete_subscription(request={"subscription": subscription})
    for topic in (names["topic"], names["dead_topic"]):
        publisher.delete_topic(request={"topic": topic})


def replay(queues: dict[str, Any], *arguments: str, **env: str) -> Run:
    return taskctl(
        "--json",
        "replay-dlq",
        *arguments,
        env={**queues["env"], **env},
        cwd=queues["cwd"],
    )


def dead_letter(
    publisher: Any, queues: dict[str, Any], task_id: str, **extra: str
) -> str:
    from google.cloud import pubsub_v1

    ordered = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(
            enable_message_ordering=True
        ),
        transport=publisher._transport,
    )
    future = ordered.publish(
        queues["dead_topic"],
        b'{"task_type":"process_image","task_id":"%s","payload":{}}' % task_id.encode(),
        ordering_key="customer-7",
        task_id=task_id,
        task_type="process_image",
        **DEAD_LETTER_ATTRIBUTES,
        **extra,
    )
    return str(future.result(timeout=30))


def pull_all(subscriber: Any, subscription: str, expected: int) -> list[Any]:
    received: list[Any] = []
    for _ in range(10):
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 10}, timeout=5
        )
        received.extend(response.received_messages)
        if len(received) >= expected:
            break
    if received:
        subscriber.acknowledge(
            request={
                "subscription": subscription,
                "ack_ids": [item.ack_id for item in received],
            }
        )
    return received


def test_replay_keeps_data_attributes_and_key(
    queues: dict[str, Any], publisher: Any, subscriber: Any
) -> None:
    dead_letter(publisher, queues, "replay-1")
    result = replay(queues)
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["replayed"] == 1
    assert summary["failed"] == 0

    [copy] = pull_all(subscriber, queues["inbox"], 1)
    message = copy.message
    assert (
        message.data
        == b'{"task_type":"process_image","task_id":"replay-1","payload":{}}'
    )
    assert message.ordering_key == "customer-7"
    attributes = dict(message.attributes)
    assert attributes["task_id"] == "replay-1"
    assert attributes["task_type"] == "process_image"
    assert attributes["taskctl_replay_count"] == "1"
    assert attributes["taskctl_dead_letter_delivery_count"] == "5"
    assert (
        attributes["taskctl_dead_letter_subscription"]
        == "eventarc-us-central1-worker-sub-001"
    )
    assert attributes["taskctl_dead_letter_subscription_project"] == PROJECT
    assert (
        attributes["taskctl_dead_letter_topic_publish_time"]
        == "2026-12-01T10:00:00.000Z"
    )
    assert not any(key.startswith("CloudPubSubDeadLetter") for key in attributes)
    assert pull_all(subscriber, queues["dead_sub"], 0) == []


def test_dry_run_leaves_dead_letters(
    queues: dict[str, Any], publisher: Any, subscriber: Any
) -> None:
    dead_letter(publisher, queues, "replay-dry-1")
    dead_letter(publisher, queues, "replay-dry-2")
    listed = replay(queues, "--dry-run")
    assert listed.code == 0, listed.stderr
    summary = listed.json()
    assert summary["would_replay"] == 2
    assert summary["replayed"] == 0
    assert {item["dead_letter"]["task_id"] for item in summary["items"]} == {
        "replay-dry-1",
        "replay-dry-2",
    }
    assert pull_all(subscriber, queues["inbox"], 0) == []
    assert replay(queues, "--dry-run").json()["would_replay"] == 2


def test_limit_replays_only_that_many(
    queues: dict[str, Any], publisher: Any, subscriber: Any
) -> None:
    for number in range(3):
        dead_letter(publisher, queues, f"replay-limit-{number}")
    first = replay(queues, "--limit", "2")
    assert first.json()["replayed"] == 2
    assert len(pull_all(subscriber, queues["inbox"], 2)) == 2
    rest = replay(queues)
    assert rest.json()["replayed"] == 1


def test_replay_count_caps_loops(
    queues: dict[str, Any], publisher: Any, subscriber: Any
) -> None:
    dead_letter(publisher, queues, "replay-loop", taskctl_replay_count="3")
    result = replay(queues, TASKCTL_MAX_REPLAYS="3")
    summary = result.json()
    assert summary["replayed"] == 0
    assert summary["skipped"] == 1
    assert "already replayed 3 times" in summary["items"][0]["reason"]
    assert pull_all(subscriber, queues["inbox"], 0) == []
    assert (
        replay(queues, "--dry-run", TASKCTL_MAX_REPLAYS="4").json()["would_replay"] == 1
    )


def test_task_type_filter_skips_others(queues: dict[str, Any], publisher: Any) -> None:
    dead_letter(publisher, queues, "replay-typed")
    result = replay(queues, "--task-type", "send_email")
    summary = result.json()
    assert summary["skipped"] == 1
    assert summary["replayed"] == 0


def test_missing_task_topic_keeps_dead_letters(
    queues: dict[str, Any], publisher: Any, subscriber: Any
) -> None:
    dead_letter(publisher, queues, "replay-no-topic")
    result = replay(queues, TASKCTL_TOPIC="no-such-topic")
    assert result.code == 3
    assert "no-such-topic" in result.stderr
    assert "taskctl provision" in result.stderr
    assert replay(queues, "--dry-run").json()["would_replay"] == 1


def test_empty_dead_letter_queue(queues: dict[str, Any]) -> None:
    human = taskctl("replay-dlq", env=queues["env"], cwd=queues["cwd"])
    assert human.code == 0
    assert "No dead letters" in human.stdout
