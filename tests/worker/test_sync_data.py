"""sync_data against a paginated JSON API on 127.0.0.1 and the local Firestore."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from google.cloud import firestore

from tests.worker.conftest import (
    DeadLetterTopic,
    WorkerProcess,
    encode_task,
    pull_dead_letters,
    push_body,
)


@dataclass
class SourceRequest:
    """One request the source API received."""

    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class SourceApi:
    """A paginated JSON API: entities per type, cursors that are list offsets."""

    entities: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # cursor ("" for the first page) -> statuses to return, first one first.
    scripted_statuses: dict[str, list[int]] = field(default_factory=dict)
    # cursor -> a body to return in place of the page.
    scripted_bodies: dict[str, Any] = field(default_factory=dict)
    delay_seconds: float = 0.0
    requests: list[SourceRequest] = field(default_factory=list)
    url: str = ""

    def respond(self, params: dict[str, str]) -> tuple[int, Any]:
        cursor = params.get("cursor", "")
        statuses = self.scripted_statuses.get(cursor)
        if statuses:
            return statuses.pop(0), {"error": "scripted failure"}
        if cursor in self.scripted_bodies:
            return 200, self.scripted_bodies[cursor]
        items = self.entities.get(params.get("entity_type", ""), [])
        offset = int(cursor or 0)
        size = int(params.get("page_size", "100"))
        page = items[offset : offset + size]
        more = offset + size < len(items)
        return 200, {"items": page, "next_cursor": str(offset + size) if more else None}


@pytest.fixture
def source() -> Iterator[SourceApi]:
    api = SourceApi()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            params = dict(urllib.parse.parse_qsl(parsed.query))
            api.requests.append(SourceRequest(parsed.path, params, dict(self.headers)))
            if api.delay_seconds:
                time.sleep(api.delay_seconds)
            status, body = api.respond(params)
            encoded = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}/v1/entities"
    yield api
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def customers(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"c{number}", "name": f"Customer {number}", "tier": number % 3}
        for number in range(1, count + 1)
    ]


def sync_task(task_id: str, **payload: Any) -> dict[str, Any]:
    return {"task_type": "sync_data", "payload": payload, "task_id": task_id}


def deliver(
    worker: WorkerProcess, task: dict[str, Any], message_id: str
) -> tuple[int, dict[str, Any]]:
    status, lines = worker.deliver(push_body(encode_task(task), message_id), message_id)
    assert lines, f"no log lines for {message_id}"
    return status, lines[-1]


def documents(client: firestore.Client, collection: str) -> dict[str, dict[str, Any]]:
    return {
        snapshot.id: snapshot.to_dict() or {}
        for snapshot in client.collection(collection).stream()
    }


def progress(client: firestore.Client, task_id: str) -> dict[str, Any] | None:
    snapshot = client.collection("taskctl_sync_progress").document(task_id).get()
    return snapshot.to_dict() if snapshot.exists else None


def test_sync_upserts_every_page(
    worker: WorkerProcess,
    firestore_client: firestore.Client,
    source: SourceApi,
    unique: str,
) -> None:
    source.entities["customer"] = customers(5)
    task_id = f"sync-pages-{unique}"
    collection = f"customers_{unique}"
    task = sync_task(
        task_id,
        source_url=source.url,
        entity_type="customer",
        collection=collection,
        page_size=2,
    )

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 200, final
    assert final["outcome"] == "success"
    stored = documents(firestore_client, collection)
    assert sorted(stored) == ["c1", "c2", "c3", "c4", "c5"]
    assert stored["c3"]["name"] == "Customer 3"
    assert stored["c3"]["tier"] == 0
    assert stored["c3"]["id"] == "c3"
    assert stored["c3"]["_sync"]["entity_type"] == "customer"
    assert stored["c3"]["_sync"]["task_id"] == task_id
    assert len(stored["c3"]["_sync"]["content_hash"]) == 64
    assert [request.params.get("cursor") for request in source.requests] == [
        None,
        "2",
        "4",
    ]
    for request in source.requests:
        assert request.path == "/v1/entities"
        assert request.params["entity_type"] == "customer"
        assert request.params["page_size"] == "2"
        assert request.headers["Idempotency-Key"] == task_id
        assert request.headers["Accept"] == "application/json"
    recorded = progress(firestore_client, task_id)
    assert recorded is not None
    assert recorded["status"] == "done"
    assert recorded["cursor"] is None
    assert recorded["pages"] == 3
    assert recorded["items"] == 5
    assert recorded["written"] == 5


def test_sync_skips_unchanged_entities(
    worker: WorkerProcess,
    firestore_client: firestore.Client,
    source: SourceApi,
    unique: str,
) -> None:
    source.entities["customer"] = customers(4)
    collection = f"customers_{unique}"
    payload = {
        "source_url": source.url,
        "entity_type": "customer",
        "collection": collection,
    }
    first_id = f"sync-first-{unique}"
    deliver(worker, sync_task(first_id, **payload), f"msg-{first_id}")
    before = documents(firestore_client, collection)
    source.entities["customer"][1] = {"id": "c2", "name": "Renamed", "tier": 2}
    second_id = f"sync-second-{unique}"

    status, _ = deliver(worker, sync_task(second_id, **payload), f"msg-{second_id}")

    assert status == 200
    after = documents(firestore_client, collection)
    assert after["c2"]["name"] == "Renamed"
    assert after["c2"]["_sync"]["task_id"] == second_id
    for unchanged in ("c1", "c3", "c4"):
        assert after[unchanged] == before[unchanged]
        assert after[unchanged]["_sync"]["task_id"] == first_id
    recorded = progress(firestore_client, second_id)
    assert recorded is not None
    assert recorded["written"] == 1
    assert recorded["unchanged"] == 3


def test_sync_resumes_after_503(
    worker: WorkerProcess,
    firestore_client: firestore.Client,
    source: SourceApi,
    unique: str,
) -> None:
    source.entities["customer"] = customers(6)
    source.scripted_statuses["2"] = [503]
    task_id = f"sync-resume-{unique}"
    message_id = f"msg-{task_id}"
    collection = f"customers_{unique}"
    task = sync_task(
        task_id,
        source_url=source.url,
        entity_type="customer",
        collection=collection,
        page_size=2,
    )

    first_status, first_final = deliver(worker, task, message_id)
    midway = progress(firestore_client, task_id)
    stored_midway = sorted(documents(firestore_client, collection))
    second_status, second_final = deliver(worker, task, message_id)

    assert first_status == 500
    assert first_final["outcome"] == "transient_failure"
    assert "returned 503" in first_final["error"]
    assert midway is not None
    assert midway["status"] == "running"
    assert midway["cursor"] == "2"
    assert midway["pages"] == 1
    assert stored_midway == ["c1", "c2"]
    assert second_status == 200
    assert second_final["outcome"] == "success"
    # The first page was not fetched again; the failed one was.
    assert [request.params.get("cursor") for request in source.requests] == [
        None,
        "2",
        "2",
        "4",
    ]
    stored = documents(firestore_client, collection)
    assert sorted(stored) == ["c1", "c2", "c3", "c4", "c5", "c6"]
    recorded = progress(firestore_client, task_id)
    assert recorded is not None
    assert recorded["status"] == "done"
    assert recorded["pages"] == 3
    assert recorded["items"] == 6
    assert recorded["written"] == 6


def test_sync_404_dead_lettered(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    firestore_client: firestore.Client,
    source: SourceApi,
    unique: str,
) -> None:
    source.scripted_statuses[""] = [404]
    task_id = f"sync-404-{unique}"
    message_id = f"msg-{task_id}"
    # Credentials and query parameters in the URL must not reach logs.
    url = source.url.replace("http://", "http://reader:hunter2@") + "?token=abc123"
    task = sync_task(
        task_id, source_url=url, entity_type="customer", collection=f"c_{unique}"
    )

    status, final = deliver(worker, task, message_id)

    assert status == 200
    assert final["outcome"] == "permanent_failure"
    assert final["failure_reason"] == "source_rejected"
    assert "returned 404" in final["failure_detail"]
    assert "hunter2" not in final["failure_detail"]
    assert "abc123" not in final["failure_detail"]
    assert not any("hunter2" in line for line in worker.stdout())
    assert source.requests[0].params["token"] == "abc123"
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    assert copies[0].attributes["taskctl_failure_reason"] == "source_rejected"


@pytest.mark.parametrize("status_code", [429, 500, 502, 408])
def test_sync_retryable_status_returns_500(
    worker: WorkerProcess, source: SourceApi, unique: str, status_code: int
) -> None:
    source.scripted_statuses[""] = [status_code]
    task_id = f"sync-status-{status_code}-{unique}"
    task = sync_task(
        task_id, source_url=source.url, entity_type="customer", collection="c"
    )

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 500
    assert final["outcome"] == "transient_failure"
    assert f"returned {status_code}" in final["error"]


def test_sync_timeout_returns_500(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    source: SourceApi,
    unique: str,
) -> None:
    worker = worker_factory(dead_letter_topic.topic, SYNC_HTTP_TIMEOUT_SECONDS="0.5")
    source.delay_seconds = 2.0
    task_id = f"sync-timeout-{unique}"
    task = sync_task(
        task_id, source_url=source.url, entity_type="customer", collection="c"
    )

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 500
    assert final["outcome"] == "transient_failure"
    assert "ReadTimeout" in final["error"]


CONTRACT_BREAKS = [
    # (case id, body of the first page, problem named in the detail)
    ("items_missing", {"next_cursor": None}, "items is missing or not a list"),
    (
        "item_not_object",
        {"items": [5], "next_cursor": None},
        "items[0] is not an object",
    ),
    ("id_missing", {"items": [{"name": "x"}]}, "items[0].id is not a string"),
    ("id_empty", {"items": [{"id": ""}]}, "items[0].id is empty"),
    ("cursor_number", {"items": [], "next_cursor": 7}, "next_cursor is not a string"),
    ("body_array", [], "the body is not a JSON object"),
]


@pytest.mark.parametrize(
    ("case", "body", "problem"),
    CONTRACT_BREAKS,
    ids=[case[0] for case in CONTRACT_BREAKS],
)
def test_sync_contract_break_permanent(
    worker: WorkerProcess,
    source: SourceApi,
    unique: str,
    case: str,
    body: Any,
    problem: str,
) -> None:
    source.scripted_bodies[""] = body
    task_id = f"sync-contract-{case}-{unique}"
    task = sync_task(
        task_id, source_url=source.url, entity_type="customer", collection="c"
    )

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    assert final["outcome"] == "permanent_failure"
    assert final["failure_reason"] == "invalid_source_response"
    assert problem in final["failure_detail"]


def test_sync_repeated_cursor_permanent(
    worker: WorkerProcess, source: SourceApi, unique: str
) -> None:
    source.scripted_bodies[""] = {"items": [{"id": 1}], "next_cursor": "same"}
    source.scripted_bodies["same"] = {"items": [{"id": 2}], "next_cursor": "same"}
    task_id = f"sync-loop-{unique}"
    task = sync_task(
        task_id, source_url=source.url, entity_type="customer", collection="c"
    )

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    assert final["failure_reason"] == "invalid_source_response"
    assert "repeats the current cursor" in final["failure_detail"]
    assert len(source.requests) == 2


def test_sync_integer_ids_and_empty_source(
    worker: WorkerProcess,
    firestore_client: firestore.Client,
    source: SourceApi,
    unique: str,
) -> None:
    source.entities["order"] = [{"id": 101, "total": 5}, {"id": 102, "total": 7}]
    collection = f"orders_{unique}"
    first_id = f"sync-integers-{unique}"
    empty_id = f"sync-empty-{unique}"

    status, _ = deliver(
        worker,
        sync_task(
            first_id, source_url=source.url, entity_type="order", collection=collection
        ),
        f"msg-{first_id}",
    )
    empty_status, _ = deliver(
        worker,
        sync_task(
            empty_id, source_url=source.url, entity_type="none", collection=collection
        ),
        f"msg-{empty_id}",
    )

    assert status == 200
    assert sorted(documents(firestore_client, collection)) == ["101", "102"]
    assert empty_status == 200
    recorded = progress(firestore_client, empty_id)
    assert recorded is not None
    assert recorded["items"] == 0
    assert recorded["status"] == "done"


INVALID_PAYLOADS = [
    # (case id, payload, field named in the detail)
    ("url_missing", {"entity_type": "a", "collection": "c"}, "payload.source_url"),
    (
        "url_ftp",
        {"source_url": "ftp://127.0.0.1/x", "entity_type": "a", "collection": "c"},
        "payload.source_url",
    ),
    (
        "url_no_host",
        {"source_url": "http:///x", "entity_type": "a", "collection": "c"},
        "payload.source_url",
    ),
    (
        "entity_type_blank",
        {"source_url": "http://127.0.0.1/", "entity_type": " ", "collection": "c"},
        "payload.entity_type",
    ),
    (
        "collection_path",
        {"source_url": "http://127.0.0.1/", "entity_type": "a", "collection": "a/b"},
        "payload.collection",
    ),
    (
        "page_size_zero",
        {
            "source_url": "http://127.0.0.1/",
            "entity_type": "a",
            "collection": "c",
            "page_size": 0,
        },
        "payload.page_size",
    ),
    (
        "page_size_500",
        {
            "source_url": "http://127.0.0.1/",
            "entity_type": "a",
            "collection": "c",
            "page_size": 500,
        },
        "payload.page_size",
    ),
    (
        "unknown_field",
        {
            "source_url": "http://127.0.0.1/",
            "entity_type": "a",
            "collection": "c",
            "since": "2024-01-01",
        },
        "payload.since",
    ),
]


@pytest.mark.parametrize(
    ("case", "payload", "field_name"),
    INVALID_PAYLOADS,
    ids=[case[0] for case in INVALID_PAYLOADS],
)
def test_sync_invalid_payload(
    worker: WorkerProcess,
    unique: str,
    case: str,
    payload: dict[str, Any],
    field_name: str,
) -> None:
    task_id = f"sync-invalid-{case}-{unique}"

    status, final = deliver(worker, sync_task(task_id, **payload), f"msg-{task_id}")

    assert status == 200
    assert final["outcome"] == "permanent_failure"
    assert final["failure_reason"] == "invalid_payload"
    assert final["failure_detail"].startswith(f"{field_name}:")


def test_sync_hashes_non_ascii_key_header(
    worker: WorkerProcess, source: SourceApi, unique: str
) -> None:
    task_id = f"sync/kunden/müller-{unique}"
    task = sync_task(
        task_id, source_url=source.url, entity_type="customer", collection="c"
    )

    status, _ = deliver(worker, task, f"msg-sync-non-ascii-{unique}")

    assert status == 200
    expected = "sha256-" + hashlib.sha256(task_id.encode()).hexdigest()
    assert source.requests[0].headers["Idempotency-Key"] == expected
