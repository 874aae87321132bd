"""Aggregations of ``RunAggregationQuery``: count, sum and avg."""

from __future__ import annotations

import math
from typing import Any

from taskctl.localcloud.errors import invalid_argument
from taskctl.localcloud.firestore import values
from taskctl.localcloud.firestore.paths import parse_field_path
from taskctl.localcloud.firestore.query import field_value
from taskctl.localcloud.firestore.store import StoredDocument

# Firestore allows at most 5 aggregations in one query.
MAX_AGGREGATIONS = 5


def run_aggregations(
    aggregations: Any, documents: list[StoredDocument]
) -> dict[str, Any]:
    """Return each aggregation's alias and its value over ``documents``."""
    if not aggregations:
        raise invalid_argument("an aggregation query needs at least one aggregation")
    if len(aggregations) > MAX_AGGREGATIONS:
        raise invalid_argument(
            f"an aggregation query takes at most {MAX_AGGREGATIONS} aggregations, "
            f"got {len(aggregations)}"
        )
    results: dict[str, Any] = {}
    for index, aggregation in enumerate(aggregations):
        alias = aggregation.alias or f"field_{index + 1}"
        if alias in results:
            raise invalid_argument(f'aggregation alias "{alias}" is used twice')
        operator = aggregation.WhichOneof("operator")
        if operator == "count":
            count = len(documents)
            if aggregation.count.HasField("up_to"):
                if aggregation.count.up_to.value <= 0:
                    raise invalid_argument("count's up_to must be greater than zero")
                count = min(count, aggregation.count.up_to.value)
            results[alias] = values.Value(integer_value=count)
        elif operator in ("sum", "avg"):
            path = parse_field_path(getattr(aggregation, operator).field.field_path)
            numbers = []
            for document in documents:
                value = field_value(document, path)
                if value is not None and values.is_number(value):
                    numbers.append(value)
            results[alias] = _sum(numbers) if operator == "sum" else _average(numbers)
        else:
            raise invalid_argument(f"aggregation {alias} sets no operator")
    return results


def _sum(numbers: list[Any]) -> Any:
    # Non-numeric values are skipped. The sum stays an integer while every
    # operand is one and it fits in 64 bits, and becomes a double otherwise.
    if all(values.kind(number) == "integer_value" for number in numbers):
        total = sum(int(number.integer_value) for number in numbers)
        if values.INT64_MIN <= total <= values.INT64_MAX:
            return values.Value(integer_value=total)
        return values.Value(double_value=float(total))
    return values.Value(
        double_value=math.fsum(float(values.number(n)) for n in numbers)
    )


def _average(numbers: list[Any]) -> Any:
    if not numbers:
        return values.Value(null_value=0)
    total = math.fsum(float(values.number(number)) for number in numbers)
    return values.Value(double_value=total / len(numbers))
