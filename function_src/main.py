"""The taskctl worker: a CloudEvent function fed by a Pub/Sub push subscription.

Each invocation ends in one of four ways:

- success: the function returns, functions-framework responds with 200 and Pub/Sub
  acknowledges the message.
- transient failure: the function raises, functions-framework responds with 500 and
  Pub/Sub redelivers with backoff, up to the subscription's max delivery attempts.
- permanent failure: the original message is published to DEAD_LETTER_TOPIC with the
  reason in ``taskctl_*`` attributes, then the function returns, so the message is
  neither retried nor lost. If that publish fails, the function raises instead.
- duplicate: the task's key (its task_id) is already done, so the function returns
  without running the handler. The key is claimed in Firestore before the handler
  runs (see taskworker/idempotency.py).
"""

from __future__ import annotations

import os
import time

import functions_framework
from cloudevents.http import CloudEvent
from handlers import REGISTRY
from taskworker import dead_letter, envelope, failures, idempotency, structured_log
from taskworker.failures import PermanentError
from taskworker.registry import TaskContext, TaskResult
from taskworker.structured_log import TaskLogger

_logger = structured_log.configure()


@functions_framework.cloud_event
def handle_task(cloud_event: CloudEvent) -> None:
    """Run the task in one Pub/Sub message."""
    started = time.monotonic()
    message = envelope.read_message(str(cloud_event["id"]), cloud_event.data)
    log = TaskLogger(
        _logger,
        {
            "task_id": message.attributes.get("task_id") or message.message_id,
            "task_type": None,
            "message_id": message.message_id,
            "delivery_attempt": message.delivery_attempt,
            **structured_log.trace_fields(os.environ.get("GOOGLE_CLOUD_PROJECT")),
        },
    )
    log.info("task received", subscription=message.subscription)

    try:
        task = envelope.decode_task(message)
        log = log.bind(task_id=task.task_id, task_type=task.task_type)
        result = _route_and_run(task, message, log)
    except PermanentError as failure:
        _dead_letter(message, failure, log, started)
        return
    except Exception as error:
        _log_transient_failure(log, error, started)
        raise
    if result is None:
        log.info(
            "task %s already done, so this duplicate delivery is acknowledged",
            task.task_id,
            outcome="duplicate",
            duration_ms=_elapsed_ms(started),
        )
        return
    log.info(
        "task succeeded",
        outcome="success",
        outputs=result.outputs,
        duration_ms=_elapsed_ms(started),
    )


def _route_and_run(
    task: envelope.Task, message: envelope.PushMessage, log: TaskLogger
) -> TaskResult | None:
    """Run the task once per key; return None for a key that is already done.

    A payload that fails its schema is rejected before any claim, because no
    delivery of it can ever run.
    """
    task_type = REGISTRY.get(task.task_type)
    if task_type is None:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise PermanentError(
            f"unknown task_type {task.task_type!r} (known: {known})",
            failures.UNKNOWN_TASK_TYPE,
        )
    job = task_type.parse_payload(task.payload)
    claim = idempotency.claim(
        task.task_id, task_type=task.task_type, message_id=message.message_id
    )
    if claim.duplicate:
        return None
    context = TaskContext(
        task_id=task.task_id,
        message_id=message.message_id,
        delivery_attempt=message.delivery_attempt,
        log=log,
    )
    try:
        result = task_type.run(job, context)
    except BaseException:
        claim.release(log)
        raise
    claim.complete(log)
    return result


def _dead_letter(
    message: envelope.PushMessage,
    failure: PermanentError,
    log: TaskLogger,
    started: float,
) -> None:
    try:
        receipt = dead_letter.publish(message, failure)
    except Exception as error:
        log.error(
            "dead-lettering failed after permanent failure %s (%s), so the message "
            "will be redelivered: %s: %s",
            failure.reason,
            failure.detail,
            type(error).__name__,
            error,
            outcome="transient_failure",
            failure_reason=failure.reason,
            error_type=type(error).__name__,
            error=str(error),
            exc_info=error,
            with_stack_trace=True,
            duration_ms=_elapsed_ms(started),
        )
        raise
    if receipt.dropped_attributes:
        log.warning(
            "dead-lettered copy left out %s: the message already has %d attributes",
            ", ".join(receipt.dropped_attributes),
            len(message.attributes),
        )
    log.error(
        "task failed permanently (%s: %s); dead-lettered to %s as message %s",
        failure.reason,
        failure.detail,
        receipt.topic,
        receipt.message_id,
        outcome="permanent_failure",
        failure_reason=failure.reason,
        failure_detail=failure.detail,
        dead_letter_topic=receipt.topic,
        dead_letter_message_id=receipt.message_id,
        duration_ms=_elapsed_ms(started),
    )


def _log_transient_failure(log: TaskLogger, error: Exception, started: float) -> None:
    known_transient = failures.is_expected_transient(error)
    log.error(
        "task failed (%s), Pub/Sub will redeliver it: %s: %s",
        "transient" if known_transient else "unexpected error",
        type(error).__name__,
        error,
        exc_info=error,
        with_stack_trace=True,
        outcome="transient_failure",
        known_transient=known_transient,
        error_type=type(error).__name__,
        error=str(error),
        duration_ms=_elapsed_ms(started),
    )


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
