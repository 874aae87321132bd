"""generate_report against the local cloud's Firestore, under functions-framework."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from google.cloud import firestore

from tests.conftest import PROJECT
from tests.worker.conftest import WorkerProcess, encode_task, push_body

UTC = datetime.UTC


def at(day: int, hour: int = 12, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(2024, 5, day, hour, minute, tzinfo=UTC)


def report_task(task_id: str, **payload: Any) -> dict[str, Any]:
    return {"task_type": "generate_report", "payload": payload, "task_id": task_id}


def deliver(
    worker: WorkerProcess, task: dict[str, Any], message_id: str
) -> tuple[int, dict[str, Any]]:
    status, lines = worker.deliver(push_body(encode_task(task), message_id), message_id)
    assert lines, f"no log lines for {message_id}"
    return status, lines[-1]


@pytest.fixture
def orders(
    firestore_client: firestore.Client, unique: str
) -> firestore.CollectionReference:
    """Orders from 2024-04-30 to 2024-05-06, with records the report must skip."""
    collection = firestore_client.collection(f"orders_{unique}")
    seeded = {
        "before-range": {
            "created_at": at(1, 0, 0) - datetime.timedelta(seconds=1),
            "amount": 1000,
        },
        "first-instant": {"created_at": at(1, 0, 0), "amount": 10},
        "may-1-noon": {"created_at": at(1), "amount": 15},
        # 23:30 at UTC-2 is 01:30 UTC on 3 May.
        "may-3-offset": {
            "created_at": datetime.datetime(
                2024,
                5,
                2,
                23,
                30,
                tzinfo=datetime.timezone(datetime.timedelta(hours=-2)),
            ),
            "amount": 7,
        },
        "may-4-text-amount": {"created_at": at(4), "amount": "12.50"},
        "may-4-no-amount": {"created_at": at(4)},
        "may-5-last-instant": {
            "created_at": at(6, 0, 0) - datetime.timedelta(microseconds=1),
            "amount": 3,
        },
        "after-range": {"created_at": at(6, 0, 0), "amount": 2000},
        # A string is not a timestamp, so the range query never returns it.
        "text-timestamp": {"created_at": "2024-05-02T12:00:00Z", "amount": 500},
    }
    for document_id, fields in seeded.items():
        collection.document(document_id).set(fields)
    return collection


def report(
    firestore_client: firestore.Client, collection: str, task_id: str
) -> dict[str, Any]:
    snapshot = firestore_client.collection(collection).document(task_id).get()
    assert snapshot.exists, f"no report {collection}/{task_id}"
    return snapshot.to_dict() or {}


def test_report_figures_from_orders(
    worker: WorkerProcess,
    firestore_client: firestore.Client,
    orders: firestore.CollectionReference,
    unique: str,
) -> None:
    task_id = f"report-figures-{unique}"
    reports = f"reports_{unique}"
    task = report_task(
        task_id,
        collection=orders.id,
        report_collection=reports,
        start_date="2024-05-01",
        end_date="2024-05-05",
    )

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    assert final["outcome"] == "success"
    expected_url = (
        f"https://firestore.googleapis.com/v1/projects/{PROJECT}/databases/(default)"
        f"/documents/{reports}/{task_id}"
    )
    assert final["outputs"] == [expected_url]
    stored = report(firestore_client, reports, task_id)
    assert stored["record_count"] == 4
    assert stored["total_amount"] == 35
    assert stored["average_amount"] == pytest.approx(8.75)
    assert stored["min_amount"] == 3
    assert stored["max_amount"] == 15
    assert stored["skipped_records"] == 2
    assert stored["start_date"] == "2024-05-01"
    assert stored["end_date"] == "2024-05-05"
    assert stored["time_zone"] == "UTC"
    assert stored["task_id"] == task_id
    assert isinstance(stored["generated_at"], datetime.datetime)
    assert stored["days"] == [
        {"date": "2024-05-01", "record_count": 2, "total_amount": 25},
        {"date": "2024-05-02", "record_count": 0, "total_amount": 0},
        {"date": "2024-05-03", "record_count": 1, "total_amount": 7},
        {"date": "2024-05-04", "record_count": 0, "total_amount": 0},
        {"date": "2024-05-05", "record_count": 1, "total_amount": 3},
    ]


def test_report_empty_range(
    worker: WorkerProcess,
    firestore_client: firestore.Client,
    orders: firestore.CollectionReference,
    unique: str,
) -> None:
    task_id = f"report-empty-{unique}"
    reports = f"reports_{unique}"
    task = report_task(
        task_id,
        collection=orders.id,
        report_collection=reports,
        start_date="2023-02-27",
        end_date="2023-03-01",
    )

    status, _ = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    stored = report(firestore_client, reports, task_id)
    assert stored["record_count"] == 0
    assert stored["total_amount"] == 0
    assert stored["average_amount"] is None
    assert stored["min_amount"] is None
    assert [day["date"] for day in stored["days"]] == [
        "2023-02-27",
        "2023-02-28",
        "2023-03-01",
    ]
    assert all(day["record_count"] == 0 for day in stored["days"])


def test_report_custom_fields_and_floats(
    worker: WorkerProcess, firestore_client: firestore.Client, unique: str
) -> None:
    sales = firestore_client.collection(f"sales_{unique}")
    sales.document("a").set({"sold": {"at": at(10)}, "price": {"gross": 0.1}})
    sales.document("b").set({"sold": {"at": at(10, 18)}, "price": {"gross": 0.2}})
    sales.document("c").set({"sold": {"at": at(11)}, "price": {"gross": 2}})
    task_id = f"report-floats-{unique}"
    task = report_task(
        task_id,
        collection=sales.id,
        start_date="2024-05-10",
        end_date="2024-05-11",
        timestamp_field="sold.at",
        amount_field="price.gross",
    )

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 200, final
    stored = report(firestore_client, "reports", task_id)
    assert stored["record_count"] == 3
    assert stored["total_amount"] == 2.3
    assert stored["days"][0] == {
        "date": "2024-05-10",
        "record_count": 2,
        "total_amount": 0.3,
    }
    assert stored["days"][1]["total_amount"] == 2.0
    assert stored["collection"] == sales.id
    assert stored["amount_field"] == "price.gross"


def test_report_rewritten_on_retry(
    worker: WorkerProcess,
    firestore_client: firestore.Client,
    orders: firestore.CollectionReference,
    unique: str,
) -> None:
    # A first run wrote a report, then was killed by the function timeout before
    # it recorded success, so its claim has expired.
    task_id = f"report-retry-{unique}"
    reports = f"reports_{unique}"
    firestore_client.collection(reports).document(task_id).set(
        {"record_count": 1, "total_amount": -1, "stale_field": True}
    )
    claimed_at = datetime.datetime.now(UTC) - datetime.timedelta(minutes=10)
    firestore_client.collection("taskctl_idempotency").document(task_id).create(
        {
            "key": task_id,
            "status": "processing",
            "claim_id": "killed-run",
            "claimed_at": claimed_at,
            "lease_expires_at": claimed_at + datetime.timedelta(seconds=70),
            "attempts": 1,
        }
    )
    task = report_task(
        task_id,
        collection=orders.id,
        report_collection=reports,
        start_date="2024-05-01",
        end_date="2024-05-05",
    )

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    assert final["outcome"] == "success"
    stored = report(firestore_client, reports, task_id)
    assert stored["total_amount"] == 35
    assert stored["record_count"] == 4
    assert "stale_field" not in stored
    assert len(list(firestore_client.collection(reports).stream())) == 1


INVALID_PAYLOADS = [
    # (case id, payload, field named in the detail)
    ("start_missing", {"end_date": "2024-05-01"}, "payload.start_date"),
    ("end_missing", {"start_date": "2024-05-01"}, "payload.end_date"),
    (
        "end_before_start",
        {"start_date": "2024-05-02", "end_date": "2024-05-01"},
        "payload.end_date",
    ),
    (
        "range_367_days",
        {"start_date": "2024-01-01", "end_date": "2025-01-01"},
        "payload.end_date",
    ),
    (
        "no_zero_padding",
        {"start_date": "2024-5-1", "end_date": "2024-05-02"},
        "payload.start_date",
    ),
    (
        "not_a_calendar_date",
        {"start_date": "2023-02-29", "end_date": "2023-03-01"},
        "payload.start_date",
    ),
    (
        "date_with_time",
        {"start_date": "2024-05-01T00:00:00", "end_date": "2024-05-02"},
        "payload.start_date",
    ),
    (
        "collection_path",
        {"start_date": "2024-05-01", "end_date": "2024-05-01", "collection": "a/b"},
        "payload.collection",
    ),
    (
        "report_collection_reserved",
        {
            "start_date": "2024-05-01",
            "end_date": "2024-05-01",
            "report_collection": "__reports__",
        },
        "payload.report_collection",
    ),
    (
        "field_path_empty_part",
        {"start_date": "2024-05-01", "end_date": "2024-05-01", "amount_field": "a..b"},
        "payload.amount_field",
    ),
    (
        "unknown_field",
        {"start_date": "2024-05-01", "end_date": "2024-05-01", "currency": "EUR"},
        "payload.currency",
    ),
]


@pytest.mark.parametrize(
    ("case", "payload", "field"),
    INVALID_PAYLOADS,
    ids=[case[0] for case in INVALID_PAYLOADS],
)
def test_report_invalid_payload(
    worker: WorkerProcess,
    unique: str,
    case: str,
    payload: dict[str, Any],
    field: str,
) -> None:
    task_id = f"report-invalid-{case}-{unique}"

    status, final = deliver(worker, report_task(task_id, **payload), f"msg-{task_id}")

    assert status == 200
    assert final["outcome"] == "permanent_failure"
    assert final["failure_reason"] == "invalid_payload"
    assert final["failure_detail"].startswith(f"{field}:")


def test_report_leap_year_range_allowed(
    worker: WorkerProcess, firestore_client: firestore.Client, unique: str
) -> None:
    task_id = f"report-leap-{unique}"
    task = report_task(
        task_id,
        collection=f"empty_{unique}",
        report_collection=f"reports_{unique}",
        start_date="2024-01-01",
        end_date="2024-12-31",
    )

    status, _ = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    stored = report(firestore_client, f"reports_{unique}", task_id)
    assert len(stored["days"]) == 366
    assert stored["days"][59] == {
        "date": "2024-02-29",
        "record_count": 0,
        "total_amount": 0,
    }
