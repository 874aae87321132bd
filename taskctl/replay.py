"""Replaying dead-lettered tasks to the task topic, losing nothing.

Each dead letter is republished with its data, attributes, ordering key and
task_id unchanged; Pub/Sub's ``CloudPubSubDeadLetterSource*`` attributes are kept
under taskctl's own names (Pub/Sub would otherwise add a second set on the next
dead-lettering) and a replay count is added. The dead letter is acknowledged only
after the republish is confirmed, so a crash in between can duplicate a task but
never lose one. The worker's idempotency key (task_id) absorbs the duplicate. A
task replayed ``max_replays`` times is skipped and stays in the dead-letter
subscription, so a task that can never succeed does not loop forever.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from taskctl.errors import NotFoundError
from taskctl.gcp.clients import Clients, api_errors
from taskctl.settings import Settings

REPLAY_COUNT = "taskctl_replay_count"
# Pub/Sub's dead-letter attributes and the names a replayed copy keeps them under.
SOURCE_ATTRIBUTES = {
    "CloudPubSubDeadLetterSourceDeliveryCount": "taskctl_dead_letter_delivery_count",
    "CloudPubSubDeadLetterSourceSubscription": "taskctl_dead_letter_subscription",
    "CloudPubSubDeadLetterSourceSubscriptionProject": "taskctl_dead_letter_subscription_project",
    "CloudPubSubDeadLetterSourceTopicPublishTime": "taskctl_dead_letter_topic_publish_time",
    "CloudPubSubDeadLetterSourceDeliveryErrorMessage": "taskctl_dead_letter_error_message",
}
PULL_BATCH = 100
# How long one pull may wait for dead letters; an empty response ends the run.
PULL_WAIT = 5.0  # seconds
PUBLISH_TIMEOUT = 60  # seconds

Outcome = Literal["replayed", "would_replay", "skipped", "failed"]


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered task as found in the dead-letter subscription."""

    message_id: str
    task_id: str | None
    task_type: str | None
    replay_count: int
    delivery_count: int | None
    failure_reason: str | None
    attributes: dict[str, str]


@dataclass(frozen=True)
class ReplayItem:
    dead_letter: DeadLetter
    outcome: Outcome
    new_message_id: str | None = None
    reason: str = ""


@dataclass
class ReplayResult:
    subscription: str
    topic: str
    dry_run: bool
    items: list[ReplayItem] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for item in self.items if item.outcome == outcome)


def replay_attributes(attributes: dict[str, str]) -> dict[str, str]:
    """Return the attributes a replayed copy is published with."""
    result: dict[str, str] = {}
    for key, value in attributes.items():
        result[SOURCE_ATTRIBUTES.get(key, key)] = value
    result[REPLAY_COUNT] = str(_replay_count(attributes) + 1)
    return result


def _replay_count(attributes: dict[str, str]) -> int:
    try:
        return max(int(attributes.get(REPLAY_COUNT, "0")), 0)
    except ValueError:
        return 0


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def describe(message_id: str, attributes: dict[str, str]) -> DeadLetter:
    return DeadLetter(
        message_id=message_id,
        task_id=attributes.get("task_id"),
        task_type=attributes.get("task_type"),
        replay_count=_replay_count(attributes),
        delivery_count=_as_int(
            attributes.get("CloudPubSubDeadLetterSourceDeliveryCount")
        ),
        failure_reason=attributes.get("taskctl_failure_reason"),
        attributes=attributes,
    )


def replay(
    settings: Settings,
    clients: Clients,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    task_type: str | None = None,
    progress: Callable[[ReplayItem], None] | None = None,
) -> ReplayResult:
    """Move dead letters back to the task topic (or, with ``dry_run``, list them)."""
    subscription = settings.dead_letter_subscription_path
    topic = settings.topic_path()
    result = ReplayResult(subscription, topic, dry_run)
    publisher = clients.publisher  # raises first if the local cloud is not running
    try:
        with api_errors(f"reading topic {topic}"):
            publisher.get_topic(request={"topic": topic})
    except NotFoundError as error:
        raise NotFoundError(
            error.message,
            hint="create it with 'taskctl provision'; no dead letter was touched",
        ) from None

    # Ack IDs handed back only at the end, so one run handles each dead letter once.
    held_ack_ids: list[str] = []
    seen: set[str] = set()
    # A task replayed by this run can fail again and come back as a new dead letter
    # before the run ends. It is left for the next run rather than counted twice.
    replayed_tasks: set[str] = set()
    # Leased dead letters of the current batch not yet handled; an interruption
    # hands them back at once instead of leaving them leased until their deadline.
    unhandled: list[str] = []
    try:
        while limit is None or len(result.items) < limit:
            batch = (
                PULL_BATCH
                if limit is None
                else min(PULL_BATCH, limit - len(result.items))
            )
            received_messages = _pull(clients, subscription, batch)
            fresh = []
            for received in received_messages:
                task_id = received.message.attributes.get("task_id")
                if received.message.message_id in seen or task_id in replayed_tasks:
                    held_ack_ids.append(received.ack_id)
                else:
                    fresh.append(received)
            # An empty pull, or one returning only messages this run already saw (a
            # held lease expired), means every dead letter has been looked at.
            if not fresh:
                break
            unhandled = [received.ack_id for received in fresh]
            for received in fresh:
                unhandled.remove(received.ack_id)
                seen.add(received.message.message_id)
                item = _handle(settings, clients, received, dry_run, task_type)
                if item.outcome == "replayed":
                    item = _acknowledge(clients, subscription, received.ack_id, item)
                    if item.dead_letter.task_id:
                        replayed_tasks.add(item.dead_letter.task_id)
                else:
                    held_ack_ids.append(received.ack_id)
                result.items.append(item)
                if progress:
                    progress(item)
    finally:
        _release(clients, subscription, held_ack_ids + unhandled)
    return result


def _pull(clients: Clients, subscription: str, batch: int) -> list[Any]:
    """Pull up to ``batch`` dead letters; an empty list when none came in time."""
    from google.api_core import exceptions

    with api_errors(f"pulling from {subscription}"):
        try:
            response = clients.subscriber.pull(
                request={"subscription": subscription, "max_messages": batch},
                timeout=PULL_WAIT,
                retry=None,
            )
        except exceptions.DeadlineExceeded:
            return []
    return list(response.received_messages)


def _handle(
    settings: Settings,
    clients: Clients,
    received: Any,
    dry_run: bool,
    task_type: str | None,
) -> ReplayItem:
    message = received.message
    attributes = dict(message.attributes)
    dead_letter = describe(message.message_id, attributes)
    if task_type is not None and dead_letter.task_type != task_type:
        return ReplayItem(
            dead_letter, "skipped", reason=f"task_type is not {task_type}"
        )
    if dead_letter.replay_count >= settings.max_replays:
        return ReplayItem(
            dead_letter,
            "skipped",
            reason=f"already replayed {dead_letter.replay_count} times; raise "
            "--max-replays to replay it again",
        )
    if dry_run:
        return ReplayItem(dead_letter, "would_replay")

    publisher = clients.ordered_publisher if message.ordering_key else clients.publisher
    try:
        with api_errors(f"republishing dead letter {message.message_id}"):
            future = publisher.publish(
                settings.topic_path(),
                message.data,
                ordering_key=message.ordering_key,
                **replay_attributes(attributes),
            )
            new_message_id = future.result(timeout=PUBLISH_TIMEOUT)
    except Exception as error:
        return ReplayItem(dead_letter, "failed", reason=str(error))
    return ReplayItem(dead_letter, "replayed", new_message_id=new_message_id)


def _acknowledge(
    clients: Clients, subscription: str, ack_id: str, item: ReplayItem
) -> ReplayItem:
    """Acknowledge a replayed dead letter; if that fails it will be delivered again,
    and replaying it again is harmless because the task keeps its task_id."""
    try:
        with api_errors(f"acknowledging a dead letter in {subscription}"):
            clients.subscriber.acknowledge(
                request={"subscription": subscription, "ack_ids": [ack_id]}
            )
    except Exception as error:
        return ReplayItem(
            item.dead_letter,
            "failed",
            new_message_id=item.new_message_id,
            reason=f"republished as {item.new_message_id}, but the ack failed: {error}",
        )
    return item


def _release(clients: Clients, subscription: str, ack_ids: list[str]) -> None:
    """Hand leased dead letters back at once instead of waiting out their deadline."""
    for start in range(0, len(ack_ids), 1000):
        with api_errors(f"releasing dead letters in {subscription}"):
            clients.subscriber.modify_ack_deadline(
                request={
                    "subscription": subscription,
                    "ack_ids": ack_ids[start : start + 1000],
                    "ack_deadline_seconds": 0,
                }
            )
