"""Pub/Sub's rules for resource names, messages and subscription settings."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import duration_pb2

from taskctl.localcloud import resourcemanager
from taskctl.localcloud.errors import invalid_argument

# Topic, subscription and snapshot IDs are 3 to 255 characters long. They start
# with a letter, continue with letters, digits and - _ . ~ + %, and must not
# start with "goog", which Google reserves.
RESOURCE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
# Project IDs follow Resource Manager's rule (6 to 30 lowercase letters, digits
# and hyphens, starting with a letter). A legacy domain-scoped project puts a
# domain and a colon in front, as in example.com:my-project.
PROJECT_ID = re.compile(
    r"^(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?"
    + resourcemanager.PROJECT_ID.pattern.removeprefix("^")
)
DELETED_TOPIC = "_deleted-topic_"

# Google states both limits in decimal units: 10 MB is 10,000,000 bytes.
MAX_MESSAGE_DATA_BYTES = 10_000_000
MAX_PUBLISH_REQUEST_BYTES = 10_000_000
MAX_MESSAGES_PER_PUBLISH = 1000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024

MIN_ACK_DEADLINE_SECONDS = 10
MAX_ACK_DEADLINE_SECONDS = 600
DEFAULT_ACK_DEADLINE_SECONDS = 10
MIN_RETENTION_SECONDS = 10 * 60
MAX_RETENTION_SECONDS = 31 * 24 * 3600
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
MAX_BACKOFF_SECONDS = 600
DEFAULT_MINIMUM_BACKOFF_SECONDS = 10
DEFAULT_MAXIMUM_BACKOFF_SECONDS = 600
MIN_DELIVERY_ATTEMPTS = 5
MAX_DELIVERY_ATTEMPTS = 100
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
DEFAULT_EXPIRATION_TTL_SECONDS = 31 * 24 * 3600
MIN_EXPIRATION_TTL_SECONDS = 24 * 3600

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost", "[::1]"})


def _check_id(kind: str, name: str, resource_id: str) -> None:
    if not RESOURCE_ID.match(resource_id):
        raise invalid_argument(
            f"invalid {kind} name {name!r}: the ID must be 3 to 255 characters, start "
            "with a letter and contain only letters, digits and - _ . ~ + %"
        )
    if resource_id.startswith("goog"):
        raise invalid_argument(
            f"invalid {kind} name {name!r}: IDs starting with 'goog' are reserved"
        )


def parse_name(kind: str, name: str) -> tuple[str, str]:
    """Split ``projects/P/<kind>s/ID`` into (project, ID) or raise INVALID_ARGUMENT."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != f"{kind}s":
        raise invalid_argument(
            f"invalid {kind} name {name!r}: expected projects/PROJECT/{kind}s/ID"
        )
    project, resource_id = parts[1], parts[3]
    if not PROJECT_ID.match(project):
        raise invalid_argument(
            f"invalid project {project!r} in {kind} name {name!r}: a project ID is "
            "6 to 30 lowercase letters, digits and hyphens, starting with a letter"
        )
    _check_id(kind, name, resource_id)
    return project, resource_id


def parse_project(project: str) -> str:
    """Return the ID in ``projects/P`` or raise INVALID_ARGUMENT."""
    parts = project.split("/")
    if len(parts) != 2 or parts[0] != "projects" or not PROJECT_ID.match(parts[1]):
        raise invalid_argument(
            f"invalid project {project!r}: expected projects/PROJECT_ID, where a "
            "project ID is 6 to 30 lowercase letters, digits and hyphens, starting "
            "with a letter"
        )
    return parts[1]


def seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def check_message(message: Any, index: int) -> None:
    """Apply the per-message publish limits, counting sizes in bytes."""
    where = f"message {index}"
    if not message.data and not message.attributes:
        raise invalid_argument(f"{where} has neither data nor attributes")
    if len(message.data) > MAX_MESSAGE_DATA_BYTES:
        raise invalid_argument(
            f"{where}: data of {len(message.data)} bytes is over the limit of "
            f"{MAX_MESSAGE_DATA_BYTES} bytes"
        )
    if len(message.attributes) > MAX_ATTRIBUTES:
        raise invalid_argument(
            f"{where} has {len(message.attributes)} attributes; the limit is "
            f"{MAX_ATTRIBUTES}"
        )
    for key, value in message.attributes.items():
        key_bytes = len(key.encode())
        value_bytes = len(value.encode())
        if key_bytes == 0:
            raise invalid_argument(f"{where} has an attribute with an empty key")
        if key_bytes > MAX_ATTRIBUTE_KEY_BYTES:
            raise invalid_argument(
                f"{where}: attribute key of {key_bytes} bytes is over the limit of "
                f"{MAX_ATTRIBUTE_KEY_BYTES} bytes"
            )
        if value_bytes > MAX_ATTRIBUTE_VALUE_BYTES:
            raise invalid_argument(
                f"{where}: value of attribute {key!r} is {value_bytes} bytes, over the "
                f"limit of {MAX_ATTRIBUTE_VALUE_BYTES} bytes"
            )
        if key.startswith("goog"):
            raise invalid_argument(
                f"{where}: attribute key {key!r} is invalid because keys starting with "
                "'goog' are reserved"
            )
    ordering_key_bytes = len(message.ordering_key.encode())
    if ordering_key_bytes > MAX_ORDERING_KEY_BYTES:
        raise invalid_argument(
            f"{where}: ordering key of {ordering_key_bytes} bytes is over the limit of "
            f"{MAX_ORDERING_KEY_BYTES} bytes"
        )
    if message.message_id or message.publish_time.seconds or message.publish_time.nanos:
        raise invalid_argument(
            f"{where} sets message_id or publish_time, which the server assigns"
        )


def check_ack_deadline(value: int, field: str = "ack_deadline_seconds") -> int:
    """Return the effective ack deadline (0 means the default of 10 s)."""
    if value == 0:
        return DEFAULT_ACK_DEADLINE_SECONDS
    if not MIN_ACK_DEADLINE_SECONDS <= value <= MAX_ACK_DEADLINE_SECONDS:
        raise invalid_argument(
            f"invalid {field} {value}: it must be between {MIN_ACK_DEADLINE_SECONDS} "
            f"and {MAX_ACK_DEADLINE_SECONDS} seconds"
        )
    return value


def check_retention(duration: duration_pb2.Duration, field: str) -> None:
    value = seconds(duration)
    if not MIN_RETENTION_SECONDS <= value <= MAX_RETENTION_SECONDS:
        raise invalid_argument(
            f"invalid {field} {value:g}s: it must be between 10 minutes and 31 days"
        )


def check_push_endpoint(endpoint: str) -> None:
    """Reject push endpoints that are not http(s) URLs on a loopback address.

    The local cloud runs on one machine and must never send traffic elsewhere.
    """
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid_argument(
            f"invalid push_endpoint {endpoint!r}: expected an http:// or https:// URL"
        )
    if parts.hostname not in LOOPBACK_HOSTS:
        raise invalid_argument(
            f"invalid push_endpoint {endpoint!r}: the local cloud pushes only to "
            "loopback hosts (127.0.0.1, ::1, localhost)"
        )


def normalize_subscription(subscription: Any) -> None:
    """Validate the settings of ``subscription`` and fill in Google's defaults.

    Names and the topic are checked by the caller; this covers the fields that
    UpdateSubscription can change as well.
    """
    subscription.ack_deadline_seconds = check_ack_deadline(
        subscription.ack_deadline_seconds
    )
    if subscription.HasField("message_retention_duration"):
        check_retention(
            subscription.message_retention_duration, "message_retention_duration"
        )
    else:
        subscription.message_retention_duration.FromSeconds(DEFAULT_RETENTION_SECONDS)
    if subscription.HasField("retry_policy"):
        normalize_retry_policy(subscription)
    normalize_expiration_policy(subscription)
    if subscription.HasField("dead_letter_policy"):
        policy = subscription.dead_letter_policy
        if policy.max_delivery_attempts == 0:
            policy.max_delivery_attempts = DEFAULT_MAX_DELIVERY_ATTEMPTS
        if (
            not MIN_DELIVERY_ATTEMPTS
            <= policy.max_delivery_attempts
            <= (MAX_DELIVERY_ATTEMPTS)
        ):
            raise invalid_argument(
                f"invalid max_delivery_attempts {policy.max_delivery_attempts}: "
                f"it must be between {MIN_DELIVERY_ATTEMPTS} and "
                f"{MAX_DELIVERY_ATTEMPTS}"
            )
        if not policy.dead_letter_topic:
            raise invalid_argument("dead_letter_policy.dead_letter_topic is missing")
        parse_name("topic", policy.dead_letter_topic)
    if subscription.push_config.push_endpoint:
        check_push_endpoint(subscription.push_config.push_endpoint)


def normalize_retry_policy(subscription: Any) -> None:
    policy = subscription.retry_policy
    if not policy.HasField("minimum_backoff"):
        policy.minimum_backoff.FromSeconds(DEFAULT_MINIMUM_BACKOFF_SECONDS)
    if not policy.HasField("maximum_backoff"):
        policy.maximum_backoff.FromSeconds(DEFAULT_MAXIMUM_BACKOFF_SECONDS)
    minimum = seconds(policy.minimum_backoff)
    maximum = seconds(policy.maximum_backoff)
    for field, value in (("minimum_backoff", minimum), ("maximum_backoff", maximum)):
        if not 0 <= value <= MAX_BACKOFF_SECONDS:
            raise invalid_argument(
                f"invalid retry_policy.{field} {value:g}s: it must be between 0 and "
                f"{MAX_BACKOFF_SECONDS} seconds"
            )
    if minimum > maximum:
        raise invalid_argument(
            f"invalid retry_policy: minimum_backoff {minimum:g}s is greater than "
            f"maximum_backoff {maximum:g}s"
        )


def normalize_expiration_policy(subscription: Any) -> None:
    """Apply Google's default TTL of 31 days and its minimum of 1 day.

    An expiration policy without a TTL means the subscription never expires.
    NOTE: the local cloud stores the policy but never deletes idle subscriptions.
    """
    if not subscription.HasField("expiration_policy"):
        subscription.expiration_policy.ttl.FromSeconds(DEFAULT_EXPIRATION_TTL_SECONDS)
        return
    policy = subscription.expiration_policy
    if policy.HasField("ttl") and seconds(policy.ttl) < MIN_EXPIRATION_TTL_SECONDS:
        raise invalid_argument(
            f"invalid expiration_policy.ttl {seconds(policy.ttl):g}s: the minimum is "
            "1 day; set an expiration policy without a TTL for a subscription that "
            "never expires"
        )
