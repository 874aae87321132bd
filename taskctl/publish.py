"""Publishing checked tasks to the task topic."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

from taskctl.errors import PartialFailure, UnavailableError
from taskctl.gcp.clients import Clients, api_errors
from taskctl.settings import Settings
from taskctl.tasks import Task

PUBLISH_TIMEOUT = 60  # seconds to wait for every publish to be confirmed


@dataclass(frozen=True)
class Published:
    task_id: str
    task_type: str
    message_id: str
    source: str


@dataclass(frozen=True)
class PublishResult:
    topic: str
    published: list[Published]


def publish(
    settings: Settings,
    clients: Clients,
    tasks: list[Task],
    *,
    progress: Callable[[int], None] | None = None,
) -> PublishResult:
    """Publish ``tasks`` and wait until Pub/Sub has confirmed each one."""
    topic = settings.topic_path()
    ordered = any(task.ordering_key for task in tasks)
    publisher = clients.ordered_publisher if ordered else clients.publisher
    with api_errors(f"reading topic {topic}"):
        publisher.get_topic(request={"topic": topic})

    pending: list[tuple[Task, futures.Future[str]]] = []
    for task in tasks:
        future = publisher.publish(
            topic, task.data, ordering_key=task.ordering_key, **task.attributes
        )
        pending.append((task, future))

    # One deadline for the whole batch: a service that stops responding must not
    # cost the full timeout once per task.
    deadline = time.monotonic() + PUBLISH_TIMEOUT
    published: list[Published] = []
    failures: list[str] = []
    timed_out = False
    for task, future in pending:
        remaining = max(deadline - time.monotonic(), 0.0)
        try:
            with api_errors(f"publishing {task.source} to {topic}"):
                message_id = future.result(timeout=remaining)
        except futures.TimeoutError:
            timed_out = True
            failures.append(
                f"{task.source} (task_id {task.task_id}): not confirmed in time"
            )
            continue
        except Exception as error:
            failures.append(f"{task.source} (task_id {task.task_id}): {error}")
            continue
        published.append(
            Published(task.task_id, task.task_type, message_id, task.source)
        )
        if progress:
            progress(len(published))

    if failures:
        listed = "; ".join(failures[:5]) + ("; ..." if len(failures) > 5 else "")
        message = (
            f"{len(failures)} of {len(tasks)} tasks were not confirmed by Pub/Sub "
            f"within {PUBLISH_TIMEOUT} s: {listed}"
            if timed_out
            else f"{len(failures)} of {len(tasks)} tasks were not published: {listed}"
        )
        hint = (
            f"{len(published)} were published; publish the others again "
            "(a task that was published after all keeps its task_id, so the worker "
            "runs it once)"
        )
        if timed_out and not published:
            raise UnavailableError(message, hint=hint)
        raise PartialFailure(message, hint=hint)
    return PublishResult(topic, published)
