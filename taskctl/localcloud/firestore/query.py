"""Evaluating a ``StructuredQuery``: filters, order, cursors, offset, limit, select.

The local cloud keeps no indexes, so every query reads the candidate documents of
its collection (or collection group) and evaluates the query over them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.cloud.firestore_v1.types import query as query_types

from taskctl.localcloud.errors import invalid_argument
from taskctl.localcloud.firestore import values
from taskctl.localcloud.firestore.paths import (
    NAME_FIELD,
    FieldPath,
    check_collection_id,
    format_field_path,
    parse_field_path,
)
from taskctl.localcloud.firestore.store import StoredDocument

StructuredQuery = query_types.StructuredQuery
FieldOperator = StructuredQuery.FieldFilter.Operator
UnaryOperator = StructuredQuery.UnaryFilter.Operator
CompositeOperator = StructuredQuery.CompositeFilter.Operator
DESCENDING = StructuredQuery.Direction.DESCENDING

# Limits from Firestore's query documentation: in and array-contains-any take up
# to 30 values, not-in up to 10.
MAX_IN_VALUES = 30
MAX_NOT_IN_VALUES = 10
INEQUALITY_OPERATORS = frozenset(
    {
        FieldOperator.LESS_THAN,
        FieldOperator.LESS_THAN_OR_EQUAL,
        FieldOperator.GREATER_THAN,
        FieldOperator.GREATER_THAN_OR_EQUAL,
        FieldOperator.NOT_EQUAL,
        FieldOperator.NOT_IN,
    }
)
LIST_OPERATORS = frozenset(
    {FieldOperator.IN, FieldOperator.NOT_IN, FieldOperator.ARRAY_CONTAINS_ANY}
)

Predicate = Callable[[StoredDocument], bool]


def field_value(document: StoredDocument, path: FieldPath) -> Any | None:
    if path == (NAME_FIELD,):
        return values.reference(document.name)
    return values.get_field(document.fields.fields, path)


@dataclass
class CompiledQuery:
    """A validated query, ready to run over a collection's documents."""

    collection_id: str
    all_descendants: bool
    predicate: Predicate | None
    orders: list[tuple[FieldPath, bool]]  # (field path, descending)
    start_at: Any | None
    end_at: Any | None
    offset: int
    limit: int | None
    projection: list[FieldPath] | None

    def run(self, candidates: list[StoredDocument]) -> tuple[list[StoredDocument], int]:
        """Return the matching documents in order and how many the offset skipped."""
        order_fields = [path for path, _ in self.orders if path != (NAME_FIELD,)]
        matched = [
            document
            for document in candidates
            if all(field_value(document, path) is not None for path in order_fields)
            and (self.predicate is None or self.predicate(document))
        ]
        matched.sort(key=functools.cmp_to_key(self._compare_documents))
        if self.start_at is not None:
            start = self.start_at
            matched = [doc for doc in matched if self._after_start(doc, start)]
        if self.end_at is not None:
            end = self.end_at
            matched = [doc for doc in matched if self._before_end(doc, end)]
        skipped = min(self.offset, len(matched))
        matched = matched[skipped:]
        if self.limit is not None:
            matched = matched[: self.limit]
        return matched, skipped

    def _compare_documents(self, left: StoredDocument, right: StoredDocument) -> int:
        for path, descending in self.orders:
            left_value = field_value(left, path)
            right_value = field_value(right, path)
            assert left_value is not None and right_value is not None
            result = values.compare(left_value, right_value)
            if result:
                return -result if descending else result
        return 0

    def _compare_to_cursor(self, document: StoredDocument, cursor: Any) -> int:
        for (path, descending), bound in zip(self.orders, cursor.values, strict=False):
            value = field_value(document, path)
            assert value is not None
            result = values.compare(value, bound)
            if result:
                return -result if descending else result
        return 0

    def _after_start(self, document: StoredDocument, cursor: Any) -> bool:
        # A start cursor with before=true includes the documents at the cursor.
        result = self._compare_to_cursor(document, cursor)
        return result >= 0 if cursor.before else result > 0

    def _before_end(self, document: StoredDocument, cursor: Any) -> bool:
        # An end cursor with before=true excludes the documents at the cursor.
        result = self._compare_to_cursor(document, cursor)
        return result < 0 if cursor.before else result <= 0


def compile_query(query: Any, database: str) -> CompiledQuery:
    """Validate a raw ``StructuredQuery`` and build what runs it."""
    if len(query.from_) != 1:
        raise invalid_argument(
            "a structured query must select exactly one collection in from"
        )
    selector = query.from_[0]
    if selector.collection_id:
        check_collection_id(selector.collection_id, "the query's from")
    elif not selector.all_descendants:
        raise invalid_argument(
            "the query's from needs a collection_id unless all_descendants is true"
        )
    if query.HasField("find_nearest"):
        raise invalid_argument(
            "the local cloud does not support vector search (find_nearest)"
        )

    inequality_fields: list[FieldPath] = []
    predicate = None
    if query.HasField("where"):
        predicate = _compile_filter(query.where, database, inequality_fields, "where")

    orders = _orders(query, inequality_fields)
    for name, cursor in (("start_at", query.start_at), ("end_at", query.end_at)):
        if len(cursor.values) > len(orders):
            raise invalid_argument(
                f"{name} has {len(cursor.values)} values but the query orders by only "
                f"{len(orders)} fields"
            )

    if query.offset < 0:
        raise invalid_argument(f"offset must not be negative, got {query.offset}")
    limit = None
    if query.HasField("limit"):
        if query.limit.value < 0:
            raise invalid_argument(
                f"limit must not be negative, got {query.limit.value}"
            )
        limit = query.limit.value

    projection = None
    if query.HasField("select"):
        projection = [
            parse_field_path(reference.field_path)
            for reference in query.select.fields
            if reference.field_path != NAME_FIELD
        ]

    return CompiledQuery(
        collection_id=selector.collection_id,
        all_descendants=selector.all_descendants,
        predicate=predicate,
        orders=orders,
        start_at=query.start_at if query.HasField("start_at") else None,
        end_at=query.end_at if query.HasField("end_at") else None,
        offset=query.offset,
        limit=limit,
        projection=projection,
    )


def _orders(
    query: Any, inequality_fields: list[FieldPath]
) -> list[tuple[FieldPath, bool]]:
    """Return the explicit orders plus the ones Firestore adds implicitly.

    Inequality fields that are not ordered explicitly follow, sorted by field
    path, then ``__name__`` in the direction of the last order.
    """
    orders: list[tuple[FieldPath, bool]] = []
    for order in query.order_by:
        path = parse_field_path(order.field.field_path)
        if any(existing == path for existing, _ in orders):
            raise invalid_argument(
                f"order_by names field {format_field_path(path)} more than once"
            )
        orders.append((path, order.direction == DESCENDING))
    ordered = {path for path, _ in orders}
    for path in sorted(set(inequality_fields) - ordered):
        if path != (NAME_FIELD,):
            orders.append((path, False))
    if (NAME_FIELD,) not in ordered:
        last_descending = orders[-1][1] if orders else False
        orders.append(((NAME_FIELD,), last_descending))
    return orders


def _compile_filter(
    filter_pb: Any, database: str, inequality_fields: list[FieldPath], where: str
) -> Predicate:
    filter_kind = filter_pb.WhichOneof("filter_type")
    if filter_kind == "composite_filter":
        return _compile_composite(
            filter_pb.composite_filter, database, inequality_fields, where
        )
    if filter_kind == "field_filter":
        return _compile_field_filter(
            filter_pb.field_filter, database, inequality_fields, where
        )
    if filter_kind == "unary_filter":
        return _compile_unary_filter(filter_pb.unary_filter, inequality_fields, where)
    raise invalid_argument(
        f"{where}: a filter must set composite_filter, field_filter or unary_filter"
    )


def _compile_composite(
    composite: Any, database: str, inequality_fields: list[FieldPath], where: str
) -> Predicate:
    if composite.op not in (CompositeOperator.AND, CompositeOperator.OR):
        raise invalid_argument(f"{where}: a composite filter's op must be AND or OR")
    if not composite.filters:
        raise invalid_argument(f"{where}: a composite filter needs at least one filter")
    parts = [
        _compile_filter(part, database, inequality_fields, f"{where}.filters[{index}]")
        for index, part in enumerate(composite.filters)
    ]
    if composite.op == CompositeOperator.AND:
        return lambda document: all(part(document) for part in parts)
    return lambda document: any(part(document) for part in parts)


def _compile_field_filter(
    field_filter: Any, database: str, inequality_fields: list[FieldPath], where: str
) -> Predicate:
    path = parse_field_path(field_filter.field.field_path)
    operand = field_filter.value
    try:
        operator = FieldOperator(field_filter.op)
    except ValueError:
        raise invalid_argument(
            f"{where}: unknown field filter operator {field_filter.op}"
        ) from None
    if operator == FieldOperator.OPERATOR_UNSPECIFIED:
        raise invalid_argument(f"{where}: a field filter needs an operator")
    if operator in LIST_OPERATORS:
        _check_list_operand(operator, operand, where)
        # The operand lists candidates, and a candidate may itself be an array.
        for candidate in operand.array_value.values:
            values.validate_value(candidate, database, where)
    else:
        values.validate_value(operand, database, where)
    if path == (NAME_FIELD,):
        _check_name_operand(operator, operand, where)
    if operator in INEQUALITY_OPERATORS:
        inequality_fields.append(path)
    test = _FIELD_TESTS[operator]
    return lambda document: test(field_value(document, path), operand)


def _check_list_operand(operator: Any, operand: Any, where: str) -> None:
    if values.kind(operand) != "array_value" or not operand.array_value.values:
        raise invalid_argument(
            f"{where}: '{operator.name}' requires a non-empty array value"
        )
    limit = MAX_NOT_IN_VALUES if operator == FieldOperator.NOT_IN else MAX_IN_VALUES
    if len(operand.array_value.values) > limit:
        raise invalid_argument(
            f"{where}: '{operator.name}' takes at most {limit} values, got "
            f"{len(operand.array_value.values)}"
        )


def _check_name_operand(operator: Any, operand: Any, where: str) -> None:
    if operator in (FieldOperator.ARRAY_CONTAINS, FieldOperator.ARRAY_CONTAINS_ANY):
        raise invalid_argument(
            f"{where}: __name__ cannot be filtered with {operator.name}"
        )
    operands = operand.array_value.values if operator in LIST_OPERATORS else [operand]
    for value in operands:
        if values.kind(value) != "reference_value":
            raise invalid_argument(
                f"{where}: a filter on __name__ needs reference values (document names)"
            )


def _same_type(field: Any, operand: Any) -> bool:
    return values.TYPE_ORDER[values.kind(field)] == values.TYPE_ORDER.get(
        values.kind(operand), -1
    )


def _comparison(accept: Callable[[int], bool]) -> Callable[[Any | None, Any], bool]:
    # Range and equality filters match only values of the operand's type; 1 and
    # 1.0 are both numbers.
    def test(field: Any | None, operand: Any) -> bool:
        return (
            field is not None
            and _same_type(field, operand)
            and accept(values.compare(field, operand))
        )

    return test


def _exists_not_null(field: Any | None) -> bool:
    return field is not None and values.kind(field) != "null_value"


def _not_equal(field: Any | None, operand: Any) -> bool:
    return _exists_not_null(field) and not values.equal(field, operand)


def _array_contains(field: Any | None, operand: Any) -> bool:
    return (
        field is not None
        and values.kind(field) == "array_value"
        and values.contains(field.array_value.values, operand)
    )


def _array_contains_any(field: Any | None, operand: Any) -> bool:
    if field is None or values.kind(field) != "array_value":
        return False
    return any(
        values.contains(field.array_value.values, wanted)
        for wanted in operand.array_value.values
    )


def _in(field: Any | None, operand: Any) -> bool:
    return field is not None and values.contains(operand.array_value.values, field)


def _not_in(field: Any | None, operand: Any) -> bool:
    # A null among the operands makes not-in match nothing, as in Firestore.
    if any(values.kind(value) == "null_value" for value in operand.array_value.values):
        return False
    return _exists_not_null(field) and not values.contains(
        operand.array_value.values, field
    )


_FIELD_TESTS: dict[Any, Callable[[Any | None, Any], bool]] = {
    FieldOperator.LESS_THAN: _comparison(lambda result: result < 0),
    FieldOperator.LESS_THAN_OR_EQUAL: _comparison(lambda result: result <= 0),
    FieldOperator.GREATER_THAN: _comparison(lambda result: result > 0),
    FieldOperator.GREATER_THAN_OR_EQUAL: _comparison(lambda result: result >= 0),
    FieldOperator.EQUAL: _comparison(lambda result: result == 0),
    FieldOperator.NOT_EQUAL: _not_equal,
    FieldOperator.ARRAY_CONTAINS: _array_contains,
    FieldOperator.ARRAY_CONTAINS_ANY: _array_contains_any,
    FieldOperator.IN: _in,
    FieldOperator.NOT_IN: _not_in,
}


def _compile_unary_filter(
    unary: Any, inequality_fields: list[FieldPath], where: str
) -> Predicate:
    if unary.WhichOneof("operand_type") != "field":
        raise invalid_argument(f"{where}: a unary filter needs a field")
    path = parse_field_path(unary.field.field_path)
    operator = unary.op
    if operator == UnaryOperator.IS_NAN:
        return lambda document: _is_nan(field_value(document, path))
    if operator == UnaryOperator.IS_NULL:
        return lambda document: _is_null(field_value(document, path))
    if operator == UnaryOperator.IS_NOT_NAN:
        inequality_fields.append(path)
        return lambda document: (
            _exists_not_null(field_value(document, path))
            and not _is_nan(field_value(document, path))
        )
    if operator == UnaryOperator.IS_NOT_NULL:
        inequality_fields.append(path)
        return lambda document: _exists_not_null(field_value(document, path))
    raise invalid_argument(
        f"{where}: a unary filter's op must be IS_NAN, IS_NULL, IS_NOT_NAN or IS_NOT_NULL"
    )


def _is_nan(field: Any | None) -> bool:
    return field is not None and values.is_nan(field)


def _is_null(field: Any | None) -> bool:
    return field is not None and values.kind(field) == "null_value"
