"""Publishing a permanently failed message to the dead-letter topic.

The copy keeps the original data and attributes and adds ``taskctl_*`` attributes
saying why and where it failed. The function acknowledges the original only after
Pub/Sub has confirmed this publish, so a failed task is never lost.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass

from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.cloud.pubsub_v1 import PublisherClient

from taskworker.envelope import PushMessage
from taskworker.failures import PermanentError

TOPIC_ENV = "DEAD_LETTER_TOPIC"
TIMEOUT_ENV = "DEAD_LETTER_PUBLISH_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 60.0

REASON_ATTRIBUTE = "taskctl_failure_reason"
DETAIL_ATTRIBUTE = "taskctl_failure_detail"
SOURCE_MESSAGE_ID_ATTRIBUTE = "taskctl_source_message_id"
SOURCE_SUBSCRIPTION_ATTRIBUTE = "taskctl_source_subscription"
DELIVERY_ATTEMPT_ATTRIBUTE = "taskctl_delivery_attempt"
SOURCE_ORDERING_KEY_ATTRIBUTE = "taskctl_source_ordering_key"

# Pub/Sub limits on a published message.
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_VALUE_BYTES = 1024

_TOPIC_NAME = re.compile(r"^projects/[^/]+/topics/[^/]+$")

# The errors the Publish RPC's own default retry covers (google-cloud-pubsub 2.x).
_RETRYABLE_PUBLISH_ERRORS = api_retry.if_exception_type(
    api_exceptions.Aborted,
    api_exceptions.Cancelled,
    api_exceptions.DeadlineExceeded,
    api_exceptions.InternalServerError,
    api_exceptions.ResourceExhausted,
    api_exceptions.ServiceUnavailable,
    api_exceptions.Unknown,
)

_client_lock = threading.Lock()
_client: PublisherClient | None = None


class ConfigurationError(Exception):
    """The worker's environment does not allow dead-lettering."""


@dataclass(frozen=True)
class DeadLetterReceipt:
    """The topic and message ID of a dead-lettered copy."""

    topic: str
    message_id: str
    dropped_attributes: tuple[str, ...]


def dead_letter_topic() -> str:
    """Return the dead-letter topic from the environment, or raise ConfigurationError."""
    topic = os.environ.get(TOPIC_ENV, "").strip()
    if not topic:
        raise ConfigurationError(
            f"{TOPIC_ENV} is not set, so a permanently failed message cannot be "
            "dead-lettered and is retried instead; set it to projects/P/topics/T"
        )
    if not _TOPIC_NAME.match(topic):
        raise ConfigurationError(
            f"{TOPIC_ENV}={topic!r} is not a topic name; set it to projects/P/topics/T"
        )
    return topic


def publish(message: PushMessage, failure: PermanentError) -> DeadLetterReceipt:
    """Publish a copy of ``message`` to the dead-letter topic and wait for the ack.

    Raises ConfigurationError, or the publish error, when the copy was not stored.
    """
    topic = dead_letter_topic()
    attributes, dropped = failure_attributes(message, failure)
    timeout = _publish_timeout()
    future = _publisher().publish(
        topic,
        message.original_data(),
        retry=api_retry.Retry(
            predicate=_RETRYABLE_PUBLISH_ERRORS,
            initial=0.1,
            maximum=5.0,
            multiplier=2.0,
            timeout=timeout,
        ),
        timeout=timeout,
        **attributes,
    )
    # The retry gives up after ``timeout``, and the extra seconds cover batching.
    message_id = future.result(timeout=timeout + 10.0)
    return DeadLetterReceipt(
        topic=topic, message_id=message_id, dropped_attributes=dropped
    )


def failure_attributes(
    message: PushMessage, failure: PermanentError
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Return the copy's attributes and the names of failure attributes left out.

    The original attributes are kept as they are, except that earlier ``taskctl_*``
    failure attributes (from a replayed message that failed again) are replaced. If
    the message already has nearly 100 attributes, the failure attributes are added
    in order of importance until Pub/Sub's limit is reached.
    """
    added = {
        REASON_ATTRIBUTE: failure.reason,
        SOURCE_MESSAGE_ID_ATTRIBUTE: message.message_id,
        DETAIL_ATTRIBUTE: truncate_utf8(failure.detail, MAX_ATTRIBUTE_VALUE_BYTES),
    }
    if message.subscription:
        added[SOURCE_SUBSCRIPTION_ATTRIBUTE] = message.subscription
    if message.delivery_attempt is not None:
        added[DELIVERY_ATTEMPT_ATTRIBUTE] = str(message.delivery_attempt)
    if message.ordering_key:
        added[SOURCE_ORDERING_KEY_ATTRIBUTE] = truncate_utf8(
            message.ordering_key, MAX_ATTRIBUTE_VALUE_BYTES
        )

    stale = {
        REASON_ATTRIBUTE,
        DETAIL_ATTRIBUTE,
        SOURCE_MESSAGE_ID_ATTRIBUTE,
        SOURCE_SUBSCRIPTION_ATTRIBUTE,
        DELIVERY_ATTEMPT_ATTRIBUTE,
        SOURCE_ORDERING_KEY_ATTRIBUTE,
    }
    attributes = {
        key: value for key, value in message.attributes.items() if key not in stale
    }
    dropped: list[str] = []
    for key, value in added.items():
        if len(attributes) < MAX_ATTRIBUTES:
            attributes[key] = value
        else:
            dropped.append(key)
    return attributes, tuple(dropped)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """Shorten ``text`` to at most ``max_bytes`` UTF-8 bytes, ending in "…" if cut.

    The cut never splits a multi-byte character.
    """
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= max_bytes:
        return encoded.decode("utf-8")
    ellipsis = "…".encode()
    kept = encoded[: max_bytes - len(ellipsis)].decode("utf-8", errors="ignore")
    return kept + "…"


def _publish_timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigurationError(
            f"{TIMEOUT_ENV}={value!r} is not a number of seconds"
        ) from None
    if seconds <= 0:
        raise ConfigurationError(f"{TIMEOUT_ENV} must be positive, not {value!r}")
    return seconds


def _publisher() -> PublisherClient:
    # One client per process, because it owns a gRPC channel and batching threads.
    # It is thread-safe, so concurrent invocations share it.
    global _client
    with _client_lock:
        if _client is None:
            _client = PublisherClient()
        return _client
