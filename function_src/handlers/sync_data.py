"""sync_data: copy the entities of a paginated JSON API into a Firestore collection.

Payload::

    {"source_url": "https://api.example.com/v1/entities", "entity_type": "customer",
     "collection": "customers", "page_size": 100}

The source API contract. Each page is a request::

    GET {source_url}?entity_type={entity_type}&page_size={page_size}[&cursor={cursor}]
    Accept: application/json
    Idempotency-Key: {the task's idempotency key, hashed unless visible ASCII}

The first request has no ``cursor``. A 200 response is a JSON object
``{"items": [{"id": "...", ...}, ...], "next_cursor": "..." or null}``. Each item
is a JSON object whose ``id`` is a non-empty string or an integer, unique within
the entity type. ``next_cursor`` is null on the last page.

Each item is upserted into ``collection`` under its ``id``, with its fields as
sent plus a ``_sync`` map (content hash, entity type, task ID, sync time). An
item whose content hash equals the stored one is not written again. The page's
writes and the task's progress (the next cursor) are committed together, in a
document keyed by the task in ``taskctl_sync_progress`` (or SYNC_PROGRESS_COLLECTION).
A retry therefore resumes after the last completed page. Since upserts are keyed
by ``id``, a page that is fetched again adds no duplicates.

A 5xx, 408 or 429 response, a timeout or a connection failure is transient. Any
other 4xx response, or a response that breaks the contract, is permanent.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

import requests
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from taskworker import failures, firestore_db
from taskworker.failures import PayloadError, PermanentError, TransientError
from taskworker.registry import TaskContext, TaskResult, TaskType

DEFAULT_PAGE_SIZE = 100
# Firestore allows at most 500 writes in one commit, and the progress document
# takes one of them.
MAX_PAGE_SIZE = 499
MAX_WRITES_PER_COMMIT = 500
PROGRESS_COLLECTION_ENV = "SYNC_PROGRESS_COLLECTION"
DEFAULT_PROGRESS_COLLECTION = "taskctl_sync_progress"
TIMEOUT_ENV = "SYNC_HTTP_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_ENTITY_TYPE_LENGTH = 200
METADATA_FIELD = "_sync"
# Besides 5xx, these ask the client to try again later: 408 Request Timeout and
# 429 Too Many Requests.
_TRANSIENT_STATUSES = {408, 429}
_PAYLOAD_FIELDS = {"source_url", "entity_type", "collection", "page_size"}


@dataclass(frozen=True)
class SyncJob:
    """A checked sync_data payload."""

    source_url: str
    entity_type: str
    collection: str
    page_size: int

    def progress_fields(self) -> dict[str, Any]:
        return {
            "source_url": self.source_url,
            "entity_type": self.entity_type,
            "collection": self.collection,
            "page_size": self.page_size,
        }


@dataclass
class _Progress:
    cursor: str | None = None
    pages: int = 0
    items: int = 0
    written: int = 0
    unchanged: int = 0


def parse_payload(payload: dict[str, Any]) -> SyncJob:
    """Check a sync_data payload, raising PayloadError for the first bad field."""
    unknown = sorted(set(payload) - _PAYLOAD_FIELDS)
    if unknown:
        raise PayloadError(unknown[0], "unknown field")

    source_url = payload.get("source_url")
    if source_url is None:
        raise PayloadError("source_url", "is missing")
    if not isinstance(source_url, str) or not _is_http_url(source_url):
        raise PayloadError("source_url", "must be an http:// or https:// URL")

    entity_type = payload.get("entity_type")
    if entity_type is None:
        raise PayloadError("entity_type", "is missing")
    if not isinstance(entity_type, str) or not entity_type.strip():
        raise PayloadError("entity_type", "must be a non-empty string")
    if len(entity_type) > MAX_ENTITY_TYPE_LENGTH:
        raise PayloadError(
            "entity_type", f"is longer than {MAX_ENTITY_TYPE_LENGTH} characters"
        )

    collection = payload.get("collection")
    if collection is None:
        raise PayloadError("collection", "is missing")
    if not isinstance(collection, str) or not firestore_db.is_collection_id(collection):
        raise PayloadError("collection", "must be a Firestore collection ID")

    page_size = payload.get("page_size", DEFAULT_PAGE_SIZE)
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise PayloadError("page_size", "must be an integer")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise PayloadError("page_size", f"must be from 1 to {MAX_PAGE_SIZE}")
    return SyncJob(source_url, entity_type, collection, page_size)


def run(job: SyncJob, context: TaskContext) -> TaskResult:
    """Fetch every page after the recorded cursor and upsert its items."""
    client = firestore_db.client()
    progress_reference = client.collection(progress_collection()).document(
        firestore_db.document_id(context.task_id)
    )
    progress = _load_progress(progress_reference, job, context)
    target = client.collection(job.collection)
    timeout = _timeout_seconds()

    with requests.Session() as session:
        while True:
            page = _fetch_page(session, job, progress.cursor, context.task_id, timeout)
            items = _check_items(page, job)
            next_cursor = _next_cursor(
                page, progress.cursor, _describe_url(job.source_url)
            )
            written, unchanged = _store_page(
                client,
                target,
                progress_reference,
                job,
                context,
                items,
                next_cursor,
                progress,
            )
            progress.pages += 1
            progress.items += len(items)
            progress.written += written
            progress.unchanged += unchanged
            progress.cursor = next_cursor
            context.log.info(
                "synced page %d of %s: %d items, %d written, %d unchanged",
                progress.pages,
                job.entity_type,
                len(items),
                written,
                unchanged,
                page=progress.pages,
                items=len(items),
                written=written,
                unchanged=unchanged,
                more_pages=next_cursor is not None,
            )
            if next_cursor is None:
                break

    context.log.info(
        "sync of %s into %s done: %d pages, %d items, %d written, %d unchanged",
        job.entity_type,
        job.collection,
        progress.pages,
        progress.items,
        progress.written,
        progress.unchanged,
    )
    return TaskResult(outputs=[firestore_db.document_url(progress_reference)])


TASK_TYPE = TaskType(name="sync_data", parse_payload=parse_payload, run=run)


def progress_collection() -> str:
    """Return the collection for progress documents, from the environment if set."""
    name = os.environ.get(PROGRESS_COLLECTION_ENV, "").strip()
    name = name or DEFAULT_PROGRESS_COLLECTION
    if not firestore_db.is_collection_id(name):
        raise TransientError(
            f"{PROGRESS_COLLECTION_ENV}={name!r} is not a collection ID"
        )
    return name


def idempotency_header(key: str) -> str:
    """Return the Idempotency-Key header value: the key, or its hash if unsafe.

    Header values must be visible ASCII (RFC 9110 field values may hold other
    octets, but servers differ on them), so any other key is sent as
    ``sha256-`` and its hex digest.
    """
    if key.isascii() and key.isprintable() and key.strip() == key:
        return key
    return "sha256-" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def content_hash(item: dict[str, Any]) -> str:
    """Return the SHA-256 of the item's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(
        item, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _load_progress(reference: Any, job: SyncJob, context: TaskContext) -> _Progress:
    snapshot = reference.get()
    if not snapshot.exists:
        return _Progress()
    stored = snapshot.to_dict() or {}
    if stored.get("status") == "done" or any(
        stored.get(key) != value for key, value in job.progress_fields().items()
    ):
        # Finished earlier, or recorded for other parameters: start over. Upserts
        # by id make that safe.
        return _Progress()
    progress = _Progress(
        cursor=stored.get("cursor"),
        pages=int(stored.get("pages", 0)),
        items=int(stored.get("items", 0)),
        written=int(stored.get("written", 0)),
        unchanged=int(stored.get("unchanged", 0)),
    )
    context.log.info(
        "resuming sync of %s after page %d",
        job.entity_type,
        progress.pages,
        resumed_after_page=progress.pages,
    )
    return progress


def _fetch_page(
    session: requests.Session,
    job: SyncJob,
    cursor: str | None,
    idempotency_key: str,
    timeout: float,
) -> dict[str, Any]:
    params = {"entity_type": job.entity_type, "page_size": str(job.page_size)}
    if cursor is not None:
        params["cursor"] = cursor
    where = _describe_url(job.source_url)
    try:
        response = session.get(
            job.source_url,
            params=params,
            headers={
                "Accept": "application/json",
                "Idempotency-Key": idempotency_header(idempotency_key),
            },
            timeout=timeout,
        )
    except (requests.ConnectionError, requests.Timeout) as error:
        raise TransientError(f"GET {where} failed: {type(error).__name__}") from None

    status = response.status_code
    if status >= 500 or status in _TRANSIENT_STATUSES:
        raise TransientError(f"GET {where} returned {status}; retrying later")
    if status != 200:
        raise PermanentError(f"GET {where} returned {status}", failures.SOURCE_REJECTED)
    try:
        page = response.json()
    except ValueError:
        raise PermanentError(
            f"GET {where} returned 200 with a body that is not JSON",
            failures.INVALID_SOURCE_RESPONSE,
        ) from None
    if not isinstance(page, dict):
        raise _contract_error(where, "the body is not a JSON object")
    return page


def _check_items(
    page: dict[str, Any], job: SyncJob
) -> list[tuple[str, dict[str, Any]]]:
    where = _describe_url(job.source_url)
    items = page.get("items")
    if not isinstance(items, list):
        raise _contract_error(where, "items is missing or not a list")
    checked: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _contract_error(where, f"items[{index}] is not an object")
        entity_id = item.get("id")
        if isinstance(entity_id, bool) or not isinstance(entity_id, str | int):
            raise _contract_error(
                where, f"items[{index}].id is not a string or integer"
            )
        key = str(entity_id)
        if not key:
            raise _contract_error(where, f"items[{index}].id is empty")
        # A repeated id on one page keeps its last version, as sequential upserts
        # would.
        checked[key] = item
    return list(checked.items())


def _next_cursor(page: dict[str, Any], current: str | None, where: str) -> str | None:
    next_cursor = page.get("next_cursor")
    if next_cursor is None or next_cursor == "":
        return None
    if not isinstance(next_cursor, str):
        raise _contract_error(where, "next_cursor is not a string or null")
    if next_cursor == current:
        # The same cursor again would loop forever.
        raise _contract_error(where, "next_cursor repeats the current cursor")
    return next_cursor


def _store_page(
    client: firestore.Client,
    target: Any,
    progress_reference: Any,
    job: SyncJob,
    context: TaskContext,
    items: list[tuple[str, dict[str, Any]]],
    next_cursor: str | None,
    progress: _Progress,
) -> tuple[int, int]:
    """Upsert the page's changed items and record the next cursor in one commit."""
    references = {
        key: target.document(firestore_db.document_id(key)) for key, _ in items
    }
    stored_hashes: dict[str, str | None] = {}
    if references:
        for snapshot in client.get_all(
            list(references.values()), field_paths=[f"{METADATA_FIELD}.content_hash"]
        ):
            metadata = (
                (snapshot.to_dict() or {}).get(METADATA_FIELD)
                if snapshot.exists
                else None
            )
            stored_hashes[snapshot.reference.path] = (
                metadata.get("content_hash") if isinstance(metadata, dict) else None
            )

    synced_at = datetime.datetime.now(datetime.UTC)
    upserts: list[tuple[Any, dict[str, Any]]] = []
    for key, item in items:
        reference = references[key]
        digest = content_hash(item)
        if stored_hashes.get(reference.path) == digest:
            continue
        fields = {name: value for name, value in item.items() if name != METADATA_FIELD}
        fields[METADATA_FIELD] = {
            "content_hash": digest,
            "entity_type": job.entity_type,
            "task_id": context.task_id,
            "synced_at": synced_at,
        }
        upserts.append((reference, fields))
    written = len(upserts)

    # A source may return more items than page_size. The earlier commits then
    # hold items only, and the last one the rest with the progress document.
    chunk = MAX_WRITES_PER_COMMIT - 1
    for start in range(0, max(len(upserts), 1), chunk):
        batch = client.batch()
        for reference, fields in upserts[start : start + chunk]:
            batch.set(reference, fields)
        if start + chunk >= len(upserts):
            _set_progress(
                batch,
                progress_reference,
                job,
                context,
                next_cursor,
                progress,
                len(items),
                written,
            )
        _commit(batch, job)
    return written, len(items) - written


def _set_progress(
    batch: Any,
    progress_reference: Any,
    job: SyncJob,
    context: TaskContext,
    next_cursor: str | None,
    progress: _Progress,
    items: int,
    written: int,
) -> None:
    batch.set(
        progress_reference,
        {
            **job.progress_fields(),
            "task_id": context.task_id,
            "status": "running" if next_cursor is not None else "done",
            "cursor": next_cursor,
            "pages": progress.pages + 1,
            "items": progress.items + items,
            "written": progress.written + written,
            "unchanged": progress.unchanged + items - written,
            "updated_at": firestore.SERVER_TIMESTAMP,
        },
    )


def _commit(batch: Any, job: SyncJob) -> None:
    try:
        batch.commit()
    except api_exceptions.InvalidArgument as error:
        # For example nested arrays, or a field name Firestore reserves.
        raise PermanentError(
            f"Firestore rejected items from {_describe_url(job.source_url)}: "
            f"{error.message}",
            failures.INVALID_SOURCE_RESPONSE,
        ) from None


def _contract_error(where: str, problem: str) -> PermanentError:
    return PermanentError(
        f"the response from {where} breaks the sync_data contract: {problem}",
        failures.INVALID_SOURCE_RESPONSE,
    )


def _is_http_url(text: str) -> bool:
    try:
        parsed = urllib.parse.urlsplit(text)
    except ValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.hostname)


def _describe_url(url: str) -> str:
    """Return the URL without credentials or query, which may contain secrets."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


def _timeout_seconds() -> float:
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not (seconds > 0 and math.isfinite(seconds)):
        raise TransientError(
            f"{TIMEOUT_ENV}={value!r} is not a positive, finite number"
        )
    return seconds
