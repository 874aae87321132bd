"""Reading the Pub/Sub message out of a CloudEvent, and the task out of the message.

Eventarc delivers a message to a 2nd-gen function as a binary-mode CloudEvent whose
data is the push body ``{"message": {...}, "subscription": ..., "deliveryAttempt": N}``.
functions-framework converts a raw Pub/Sub push body, posted without CloudEvent
headers, to a CloudEvent. Versions 3.1 and later accept one without an ``attributes``
key. The conversion drops ``subscription``, ``deliveryAttempt`` and ``orderingKey``, so
those are read back from the request body.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import flask

from taskworker import failures
from taskworker.failures import PermanentError


@dataclass(frozen=True)
class PushMessage:
    """One Pub/Sub message as delivered to the function.

    ``data`` is the push body's ``data`` field as received: base64 text when the
    sender is Pub/Sub, but anything at all when someone posts to the function.
    """

    data: Any
    attributes: dict[str, str]
    message_id: str
    publish_time: str | None
    ordering_key: str | None
    subscription: str | None
    delivery_attempt: int | None
    # Why the event is not a Pub/Sub push body at all; None for a well-formed one.
    envelope_problem: str | None = None

    def original_data(self) -> bytes:
        """Return the message's bytes as published, for the dead-lettered copy.

        Data that is not valid base64 cannot be turned back into the published
        bytes, so the received text itself is kept.
        """
        if isinstance(self.data, str):
            try:
                return base64.b64decode(self.data, validate=True)
            except binascii.Error:
                return self.data.encode("utf-8", errors="surrogatepass")
        if isinstance(self.data, bytes):
            return self.data
        return json.dumps(self.data, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Task:
    """A decoded task message body."""

    task_type: str
    payload: dict[str, Any]
    task_id: str


def read_message(event_id: str, event_data: Any) -> PushMessage:
    """Build a PushMessage from a CloudEvent's id and data; never raises."""
    if isinstance(event_data, bytes | str):
        try:
            event_data = json.loads(event_data)
        except ValueError:
            return _malformed(event_id, event_data, "the event data is not JSON")
    if not isinstance(event_data, dict):
        return _malformed(event_id, event_data, "the event data is not a JSON object")
    message = event_data.get("message")
    if not isinstance(message, dict):
        return _malformed(event_id, event_data, "the event data has no message object")

    extras = _raw_push_body_extras()
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        attributes = {}
    message_id = message.get("messageId") or message.get("message_id") or event_id
    return PushMessage(
        data=message.get("data", ""),
        attributes={str(key): str(value) for key, value in attributes.items()},
        message_id=str(message_id),
        publish_time=_optional_string(
            message.get("publishTime") or message.get("publish_time")
        ),
        ordering_key=_optional_string(
            message.get("orderingKey") or extras.get("orderingKey")
        ),
        subscription=_optional_string(
            event_data.get("subscription") or extras.get("subscription")
        ),
        delivery_attempt=_parse_delivery_attempt(
            event_data.get("deliveryAttempt", extras.get("deliveryAttempt"))
        ),
    )


def decode_task(message: PushMessage) -> Task:
    """Decode the task body strictly; raise PermanentError with a reason code."""
    if message.envelope_problem is not None:
        raise PermanentError(message.envelope_problem, failures.INVALID_EVENT)
    body = _decode_json_object(message.data)

    task_type = body.get("task_type")
    if task_type is None:
        raise PermanentError("task_type is missing", failures.MISSING_TASK_TYPE)
    if not isinstance(task_type, str) or not task_type:
        raise PermanentError(
            f"task_type must be a non-empty string, not {_json_type(task_type)}",
            failures.MISSING_TASK_TYPE,
        )

    payload = body.get("payload")
    if not isinstance(payload, dict):
        found = "missing" if payload is None else f"a {_json_type(payload)}"
        raise PermanentError(
            f"payload must be a JSON object, but it is {found}",
            failures.INVALID_PAYLOAD,
        )

    task_id = body.get("task_id")
    if task_id is None:
        task_id = message.attributes.get("task_id") or message.message_id
    elif not isinstance(task_id, str) or not task_id:
        raise PermanentError(
            f"task_id must be a non-empty string, not {_json_type(task_id)}",
            failures.INVALID_TASK_ID,
        )
    return Task(task_type=task_type, payload=payload, task_id=task_id)


def _decode_json_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, str):
        raise PermanentError(
            f"message data must be a base64 string, not {_json_type(data)}",
            failures.INVALID_BASE64,
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as error:
        raise PermanentError(
            f"message data is not valid base64: {error}", failures.INVALID_BASE64
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PermanentError(
            f"message data is not UTF-8: invalid byte at offset {error.start}",
            failures.INVALID_UTF8,
        ) from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        raise PermanentError(
            f"message data is not JSON: {error}", failures.INVALID_JSON
        ) from None
    if not isinstance(body, dict):
        raise PermanentError(
            f"message data must be a JSON object, not {_json_type(body)}",
            failures.NOT_AN_OBJECT,
        )
    return body


def _reject_constant(name: str) -> None:
    # Python's json module accepts NaN and Infinity, which JSON itself does not.
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _optional_string(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _parse_delivery_attempt(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _raw_push_body_extras() -> dict[str, Any]:
    """Return the push-body fields functions-framework drops when it converts one.

    Empty unless the current request is a raw push body (no ``ce-id`` header).
    """
    if not flask.has_request_context() or "ce-id" in flask.request.headers:
        return {}
    body = flask.request.get_json(silent=True)
    if not isinstance(body, dict):
        return {}
    message = body.get("message")
    extras = {
        "subscription": body.get("subscription"),
        "deliveryAttempt": body.get("deliveryAttempt"),
    }
    if isinstance(message, dict):
        extras["orderingKey"] = message.get("orderingKey")
    return extras


def _malformed(event_id: str, event_data: Any, problem: str) -> PushMessage:
    # Keep the event data as bytes, so the dead-lettered copy carries it unchanged.
    if isinstance(event_data, str):
        data = event_data.encode("utf-8", errors="surrogatepass")
    elif isinstance(event_data, bytes):
        data = event_data
    else:
        data = json.dumps(event_data, separators=(",", ":")).encode()
    return PushMessage(
        data=data,
        attributes={},
        message_id=event_id,
        publish_time=None,
        ordering_key=None,
        subscription=None,
        delivery_attempt=None,
        envelope_problem=problem,
    )
