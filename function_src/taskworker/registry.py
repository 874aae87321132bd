"""Task types, each a payload schema check plus a handler.

Each module in the ``handlers`` package defines one ``TASK_TYPE = TaskType(...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskworker.structured_log import TaskLogger


@dataclass(frozen=True)
class TaskContext:
    """Invocation details a handler may use besides its payload."""

    task_id: str
    message_id: str
    delivery_attempt: int | None
    log: TaskLogger


@dataclass(frozen=True)
class TaskResult:
    """A handler's result; ``outputs`` are the URLs of what it wrote."""

    outputs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TaskType:
    """A task type.

    ``parse_payload`` checks the payload object and returns the value ``run`` takes,
    raising PayloadError for a payload that does not fit. ``run`` does the work,
    raising PermanentError for a failure no retry can fix. Anything else it raises
    makes Pub/Sub redeliver the message.
    """

    name: str
    parse_payload: Callable[[dict[str, Any]], Any]
    run: Callable[[Any, TaskContext], TaskResult]
