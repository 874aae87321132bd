"""Exactly-once effects: one Firestore record per task, claimed before the handler runs.

The key is the task's ``task_id``, which a replay keeps, or the message ID for a
task published without one. A run claims the key with one create-if-absent write
of a record with status ``processing`` and a lease. Then:

- the handler succeeds: the record becomes ``done``, and every later delivery of
  the key returns at once (outcome ``duplicate``);
- the handler fails: the record is deleted, so the redelivery claims it again;
- another delivery finds a live lease: it raises TransientError, so Pub/Sub
  retries it after the first run has finished or its lease has expired;
- a delivery finds an expired lease (its run was killed by the function timeout):
  it takes the claim over in a transaction.

Only ALREADY_EXISTS on the create means "someone else holds the key". Aborted and
every other error are transient, because the claim may not have happened.

NOTE: a run whose handler finished but whose ``done`` write failed leaves the
record ``processing``. The message is acknowledged, but a delivery after the
lease expires (a replay, or Pub/Sub's own at-least-once redelivery) runs the
handler again.
"""

from __future__ import annotations

import datetime
import os
import uuid
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from taskworker import firestore_db
from taskworker.failures import TransientError
from taskworker.structured_log import TaskLogger

COLLECTION_ENV = "IDEMPOTENCY_COLLECTION"
DEFAULT_COLLECTION = "taskctl_idempotency"
# taskctl provision sets this from the function's timeout setting. 60 s is Cloud
# Functions' default timeout for a function deployed without one.
TIMEOUT_ENV = "FUNCTION_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS = 60
# The lease outlives the function timeout by this much, to allow for clock
# differences between instances.
LEASE_MARGIN_SECONDS = 10
# How long a record is kept. A Firestore TTL policy on ``expire_at`` deletes it
# afterwards; without a policy, records stay until deleted by hand.
RETENTION = datetime.timedelta(days=7)

PROCESSING = "processing"
DONE = "done"


class LeaseHeldError(TransientError):
    """Another run has a live claim on the key, so this delivery must wait."""


@dataclass
class Claim:
    """This run's claim on a key; ``duplicate`` when the key is already done."""

    key: str
    reference: Any
    duplicate: bool
    claim_id: str | None = None
    update_time: Any = None

    def complete(self, log: TaskLogger) -> None:
        """Mark the key done; log, but do not raise, when that write fails."""
        try:
            self.reference.update(
                {
                    "status": DONE,
                    "completed_at": firestore.SERVER_TIMESTAMP,
                    "lease_expires_at": firestore.DELETE_FIELD,
                },
                option=firestore_db.client().write_option(
                    last_update_time=self.update_time
                ),
            )
        except api_exceptions.FailedPrecondition:
            log.warning(
                "idempotency record %s was taken over by another run after this "
                "run's lease expired, so it is left as that run wrote it",
                self.reference.path,
                idempotency_key=self.key,
            )
        except api_exceptions.GoogleAPICallError as error:
            # Raising would make Pub/Sub redeliver a task whose effect happened.
            log.error(
                "marking idempotency record %s done failed: %s: %s",
                self.reference.path,
                type(error).__name__,
                error,
                idempotency_key=self.key,
                error_type=type(error).__name__,
            )

    def release(self, log: TaskLogger) -> None:
        """Delete this run's record, so a redelivery runs the handler again."""
        try:
            self.reference.delete(
                option=firestore_db.client().write_option(
                    last_update_time=self.update_time
                )
            )
        except (api_exceptions.FailedPrecondition, api_exceptions.NotFound):
            # Another run took the claim over after this run's lease expired.
            log.warning(
                "idempotency record %s changed since it was claimed; not released",
                self.reference.path,
                idempotency_key=self.key,
            )
        except api_exceptions.GoogleAPICallError as error:
            # The lease still expires, so the task is only delayed, not lost.
            log.error(
                "releasing idempotency record %s failed, so redeliveries wait for "
                "its lease to expire: %s: %s",
                self.reference.path,
                type(error).__name__,
                error,
                idempotency_key=self.key,
                error_type=type(error).__name__,
            )


def claim(key: str, *, task_type: str, message_id: str) -> Claim:
    """Claim ``key`` for this run, or return a duplicate Claim if it is done.

    Raises LeaseHeldError while another run's lease is live, and lets Firestore
    errors other than ALREADY_EXISTS through (they are transient).
    """
    client = firestore_db.client()
    reference = client.collection(collection_name()).document(
        firestore_db.document_id(key)
    )
    record = _new_record(key, task_type=task_type, message_id=message_id)
    try:
        result = reference.create(record)
    except api_exceptions.AlreadyExists:
        return _claim_existing(client, reference, record)
    return Claim(
        key=key,
        reference=reference,
        duplicate=False,
        claim_id=record["claim_id"],
        update_time=result.update_time,
    )


def _claim_existing(
    client: firestore.Client, reference: Any, record: dict[str, Any]
) -> Claim:
    key = record["key"]
    transaction = client.transaction(max_attempts=1)

    @firestore.transactional
    def take_over(transaction: Any) -> bool:
        snapshot = reference.get(transaction=transaction)
        if not snapshot.exists:
            # Released since the create failed: claim it afresh.
            transaction.create(reference, record)
            return True
        existing = snapshot.to_dict() or {}
        if existing.get("status") == DONE:
            return False
        lease_expires_at = existing.get("lease_expires_at")
        now = datetime.datetime.now(datetime.UTC)
        if isinstance(lease_expires_at, datetime.datetime) and lease_expires_at > now:
            raise LeaseHeldError(
                f"task {key!r} is being processed by another run (claimed by "
                f"message {existing.get('message_id')}, lease until "
                f"{lease_expires_at.isoformat()}); Pub/Sub will retry it"
            )
        transaction.update(
            reference,
            {
                **record,
                "taken_over_from": existing.get("claim_id"),
                "attempts": firestore.Increment(1),
            },
        )
        return True

    try:
        claimed = take_over(transaction)
    except ValueError as error:
        # firestore.transactional wraps an Aborted commit in ValueError.
        if isinstance(error.__cause__, api_exceptions.Aborted):
            raise TransientError(
                f"taking over the claim on task {key!r} conflicted with another "
                "run; Pub/Sub will retry it"
            ) from error
        raise
    if not claimed:
        return Claim(key=key, reference=reference, duplicate=True)
    # The transaction's write time is not returned, so read it back for the
    # precondition on the later complete() or release().
    snapshot = reference.get()
    if not snapshot.exists or snapshot.get("claim_id") != record["claim_id"]:
        raise LeaseHeldError(f"task {key!r} was claimed by another run meanwhile")
    return Claim(
        key=key,
        reference=reference,
        duplicate=False,
        claim_id=record["claim_id"],
        update_time=snapshot.update_time,
    )


def _new_record(key: str, *, task_type: str, message_id: str) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    lease = datetime.timedelta(
        seconds=function_timeout_seconds() + LEASE_MARGIN_SECONDS
    )
    return {
        "key": key,
        "status": PROCESSING,
        "task_type": task_type,
        "message_id": message_id,
        "claim_id": uuid.uuid4().hex,
        "claimed_at": now,
        "lease_expires_at": now + lease,
        "expire_at": now + RETENTION,
        "attempts": 1,
    }


def collection_name() -> str:
    """Return the collection for records, from IDEMPOTENCY_COLLECTION if set."""
    name = os.environ.get(COLLECTION_ENV, "").strip() or DEFAULT_COLLECTION
    if not firestore_db.is_collection_id(name):
        raise TransientError(f"{COLLECTION_ENV}={name!r} is not a collection ID")
    return name


def function_timeout_seconds() -> int:
    """Return the function timeout from FUNCTION_TIMEOUT_SECONDS, or 60."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_SECONDS
    if not value.isdigit() or int(value) < 1:
        raise TransientError(f"{TIMEOUT_ENV}={value!r} is not a positive whole number")
    return int(value)
