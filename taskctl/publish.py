"""Publishing checked tasks to the task topic."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

from taskctl.errors import PartialFailure
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

    published: list[Published] = []
    failures: list[str] = []
    for task, future in pending:
        try:
            with api_errors(f"publishing {task.source} to {topic}"):
                message_id = future.result(timeout=PUBLISH_TIMEOUT)
        except Exception as error:
            failures.append(f"{task.source}: {error}")
            continue
        published.append(
            Published(task.task_id, task.task_type, message_id, task.source)
        )
        if progress:
            progress(len(published))

    if failures:
        raise PartialFailure(
            f"{len(failures)} of {len(tasks)} tasks were not published; first: {failures[0]}",
            hint=f"{len(published)} were published; publish the others again",
        )
    return PublishResult(topic, published)
