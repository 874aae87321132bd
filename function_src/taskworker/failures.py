"""Failure types, and the one place that decides whether a failure is retried.

A permanent failure is dead-lettered and acknowledged: retrying cannot fix it. Every
other failure is transient: the function raises, functions-framework responds with 500 and
Pub/Sub redelivers the message with backoff.
"""

from __future__ import annotations

import requests
from google.api_core import exceptions as api_exceptions

# Reason codes for the ``taskctl_failure_reason`` attribute of a dead-lettered copy.
INVALID_EVENT = "invalid_event"
INVALID_BASE64 = "invalid_base64"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_TASK_TYPE = "missing_task_type"
INVALID_TASK_ID = "invalid_task_id"
UNKNOWN_TASK_TYPE = "unknown_task_type"
INVALID_PAYLOAD = "invalid_payload"
PERMANENT_ERROR = "permanent_error"
# The SMTP server rejected every recipient, or the message itself, with 5xx.
RECIPIENT_REJECTED = "recipient_rejected"
MESSAGE_REJECTED = "message_rejected"
# A sync source returned a 4xx status, or a response that breaks its contract.
SOURCE_REJECTED = "source_rejected"
INVALID_SOURCE_RESPONSE = "invalid_source_response"


class TransientError(Exception):
    """A failure that a later delivery of the same message may not hit."""


# Errors that a retry is expected to fix. They are logged as expected transient
# failures. Any other exception is retried too (a bug fix and a redelivery may cure
# it, and the subscription's dead-letter policy bounds the retries), but it is logged
# as unexpected.
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    TransientError,
    api_exceptions.Aborted,
    api_exceptions.BadGateway,
    api_exceptions.DeadlineExceeded,
    api_exceptions.GatewayTimeout,
    api_exceptions.InternalServerError,
    api_exceptions.ResourceExhausted,
    api_exceptions.RetryError,
    api_exceptions.ServiceUnavailable,
    api_exceptions.TooManyRequests,
    # google-cloud-storage raises these from requests once its own retries ran out.
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


class PermanentError(Exception):
    """A failure that every delivery of the same message would hit again.

    ``detail`` is a short human-readable text for logs and the dead-lettered copy. It
    must not contain payload values, because payloads can carry secrets.
    """

    def __init__(self, detail: str, reason: str = PERMANENT_ERROR) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


class PayloadError(PermanentError):
    """A payload that fails its task type's schema, naming the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"payload.{field}: {problem}", INVALID_PAYLOAD)
        self.field = field


def is_expected_transient(error: BaseException) -> bool:
    """Return whether ``error`` is one of the failures a retry is known to fix."""
    return isinstance(error, TRANSIENT_EXCEPTIONS)
