"""generate_report: sum a Firestore collection's records over a date range.

Payload::

    {"start_date": "2024-05-01", "end_date": "2024-05-31",
     "collection": "orders", "report_collection": "reports",
     "timestamp_field": "created_at", "amount_field": "amount"}

Only the dates are required; the other fields default to the values shown. The
range is inclusive, in UTC, and at most 366 days long. The handler queries
``collection`` for records whose ``timestamp_field`` is a Firestore timestamp from
the start of ``start_date`` up to, not including, the day after ``end_date``. It
writes one report document with the record count, the amount total, average,
minimum and maximum, and a per-day breakdown that lists every day of the range,
days without records included. Records whose amount is missing or not a number
are counted in ``skipped_records`` and left out of the amount figures.

The report's document ID is derived from the task's idempotency key, so a retry
rewrites the same report instead of adding another.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from taskworker import firestore_db
from taskworker.failures import PayloadError
from taskworker.registry import TaskContext, TaskResult, TaskType

MAX_RANGE_DAYS = 366
DEFAULT_COLLECTION = "orders"
DEFAULT_REPORT_COLLECTION = "reports"
DEFAULT_TIMESTAMP_FIELD = "created_at"
DEFAULT_AMOUNT_FIELD = "amount"
_PAYLOAD_FIELDS = {
    "collection",
    "start_date",
    "end_date",
    "report_collection",
    "timestamp_field",
    "amount_field",
}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ReportJob:
    """A checked generate_report payload."""

    collection: str
    start_date: datetime.date
    end_date: datetime.date
    report_collection: str
    timestamp_field: str
    amount_field: str

    def days(self) -> list[datetime.date]:
        count = (self.end_date - self.start_date).days + 1
        return [self.start_date + datetime.timedelta(days=n) for n in range(count)]


@dataclass
class _DayTotals:
    count: int = 0
    total: Decimal = Decimal(0)


def parse_payload(payload: dict[str, Any]) -> ReportJob:
    """Check a generate_report payload, raising PayloadError for the first bad field."""
    unknown = sorted(set(payload) - _PAYLOAD_FIELDS)
    if unknown:
        raise PayloadError(unknown[0], "unknown field")

    start_date = _date(payload, "start_date")
    end_date = _date(payload, "end_date")
    if end_date < start_date:
        raise PayloadError("end_date", "is before start_date")
    days = (end_date - start_date).days + 1
    if days > MAX_RANGE_DAYS:
        raise PayloadError(
            "end_date", f"makes a range of {days} days; at most {MAX_RANGE_DAYS}"
        )
    return ReportJob(
        collection=_collection(payload, "collection", DEFAULT_COLLECTION),
        start_date=start_date,
        end_date=end_date,
        report_collection=_collection(
            payload, "report_collection", DEFAULT_REPORT_COLLECTION
        ),
        timestamp_field=_field_path(
            payload, "timestamp_field", DEFAULT_TIMESTAMP_FIELD
        ),
        amount_field=_field_path(payload, "amount_field", DEFAULT_AMOUNT_FIELD),
    )


def run(job: ReportJob, context: TaskContext) -> TaskResult:
    """Query the records in range, compute the report and write it."""
    client = firestore_db.client()
    start = _midnight_utc(job.start_date)
    end = _midnight_utc(job.end_date + datetime.timedelta(days=1))
    query = (
        client.collection(job.collection)
        .where(filter=FieldFilter(job.timestamp_field, ">=", start))
        .where(filter=FieldFilter(job.timestamp_field, "<", end))
        .select([job.timestamp_field, job.amount_field])
    )
    report = compute_report(
        job, (snapshot.to_dict() or {} for snapshot in query.stream())
    )
    report.update(
        {
            "task_id": context.task_id,
            "generated_at": firestore.SERVER_TIMESTAMP,
        }
    )

    reference = client.collection(job.report_collection).document(
        firestore_db.document_id(context.task_id)
    )
    # set() replaces the whole document, so a retry leaves no stale field behind.
    reference.set(report)
    url = firestore_db.document_url(reference)
    context.log.info(
        "wrote report %s: %d records, total %s, %d skipped",
        reference.path,
        report["record_count"],
        report["total_amount"],
        report["skipped_records"],
        output=url,
        record_count=report["record_count"],
        skipped_records=report["skipped_records"],
    )
    return TaskResult(outputs=[url])


TASK_TYPE = TaskType(name="generate_report", parse_payload=parse_payload, run=run)


def compute_report(job: ReportJob, records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Compute the report's figures from the records the query returned."""
    per_day = {day: _DayTotals() for day in job.days()}
    amounts: list[Decimal] = []
    all_integers = True
    skipped = 0
    for record in records:
        moment = _lookup(record, job.timestamp_field)
        amount = _lookup(record, job.amount_field)
        if not isinstance(moment, datetime.datetime):
            skipped += 1
            continue
        day = moment.astimezone(datetime.UTC).date()
        if day not in per_day or isinstance(amount, bool):
            skipped += 1
            continue
        if not isinstance(amount, int | float) or amount != amount:
            # Missing, not a number, or NaN: nothing to add up.
            skipped += 1
            continue
        all_integers = all_integers and isinstance(amount, int)
        # Decimal of the float's shortest repr, so 0.1 + 0.2 adds up to 0.3.
        value = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(amount)
        amounts.append(value)
        per_day[day].count += 1
        per_day[day].total += value

    def number(value: Decimal) -> int | float:
        return int(value) if all_integers else float(value)

    total = sum(amounts, Decimal(0))
    return {
        "collection": job.collection,
        "start_date": job.start_date.isoformat(),
        "end_date": job.end_date.isoformat(),
        "timestamp_field": job.timestamp_field,
        "amount_field": job.amount_field,
        "time_zone": "UTC",
        "record_count": len(amounts),
        "skipped_records": skipped,
        "total_amount": number(total),
        "average_amount": float(total / len(amounts)) if amounts else None,
        "min_amount": number(min(amounts)) if amounts else None,
        "max_amount": number(max(amounts)) if amounts else None,
        "days": [
            {
                "date": day.isoformat(),
                "record_count": totals.count,
                "total_amount": number(totals.total),
            }
            for day, totals in per_day.items()
        ],
    }


def _lookup(record: dict[str, Any], field_path: str) -> Any:
    value: Any = record
    for part in field_path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _midnight_utc(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)


def _date(payload: dict[str, Any], field: str) -> datetime.date:
    value = payload.get(field)
    if value is None:
        raise PayloadError(field, "is missing")
    if not isinstance(value, str) or not _DATE.match(value):
        raise PayloadError(field, "must be a date as YYYY-MM-DD")
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise PayloadError(field, "is not a valid calendar date") from None


def _collection(payload: dict[str, Any], field: str, default: str) -> str:
    value = payload.get(field, default)
    if not isinstance(value, str) or not firestore_db.is_collection_id(value):
        raise PayloadError(field, "must be a Firestore collection ID")
    return value


def _field_path(payload: dict[str, Any], field: str, default: str) -> str:
    value = payload.get(field, default)
    if not isinstance(value, str) or not firestore_db.is_field_path(value):
        raise PayloadError(field, "must be a field name, or names joined by dots")
    return value
