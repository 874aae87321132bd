"""Firestore values: their sort order, validation, stored size and field access."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from google.cloud.firestore_v1.types import document as document_types

from taskctl.localcloud.errors import ServiceError, invalid_argument
from taskctl.localcloud.firestore.paths import (
    FieldPath,
    format_field_path,
    parse_document_name,
)

Value = document_types.Value.pb()
MapValue = document_types.MapValue.pb()
ArrayValue = document_types.ArrayValue.pb()

# Limits from Firestore's "Quotas and limits" page (cloud.google.com/firestore/quotas):
# a document, a field value, a field name, and maps and arrays nested in a field.
MAX_DOCUMENT_BYTES = 1_048_576
MAX_STRING_BYTES = 1_048_487
MAX_FIELD_NAME_BYTES = 1500
MAX_NESTING_DEPTH = 20
RESERVED_FIELD = re.compile(r"^__.*__$")
# Timestamps Firestore stores: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Firestore's order of value types: null < boolean < number < timestamp < string
# < bytes < reference < geo point < array < map. Integers and doubles are one type.
TYPE_ORDER = {
    "null_value": 0,
    "boolean_value": 1,
    "integer_value": 2,
    "double_value": 2,
    "timestamp_value": 3,
    "string_value": 4,
    "bytes_value": 5,
    "reference_value": 6,
    "geo_point_value": 7,
    "array_value": 8,
    "map_value": 9,
}
STORABLE_KINDS = frozenset(TYPE_ORDER)


def kind(value: Any) -> str:
    """Return the name of the ``value_type`` field that ``value`` sets, or ``""``."""
    return value.WhichOneof("value_type") or ""


def is_number(value: Any) -> bool:
    return kind(value) in ("integer_value", "double_value")


def number(value: Any) -> int | float:
    if kind(value) == "integer_value":
        return int(value.integer_value)
    return float(value.double_value)


def is_nan(value: Any) -> bool:
    return kind(value) == "double_value" and math.isnan(value.double_value)


def _sign(difference: int | float) -> int:
    return (difference > 0) - (difference < 0)


def _compare_numbers(left: int | float, right: int | float) -> int:
    # NaN sorts before every other number and equals itself, so ordering is total.
    left_nan = isinstance(left, float) and math.isnan(left)
    right_nan = isinstance(right, float) and math.isnan(right)
    if left_nan or right_nan:
        return int(right_nan) - int(left_nan)
    # Python compares int with float exactly, so 2**63 - 1 and 2.0**63 differ.
    return (left > right) - (left < right)


def _compare_sequences(left: Iterable[Any], right: Iterable[Any]) -> int:
    left_items = list(left)
    right_items = list(right)
    for left_item, right_item in zip(left_items, right_items, strict=False):
        result = compare(left_item, right_item)
        if result:
            return result
    return _sign(len(left_items) - len(right_items))


def _compare_maps(left: Any, right: Any) -> int:
    left_keys = sorted(left.fields)
    right_keys = sorted(right.fields)
    for left_key, right_key in zip(left_keys, right_keys, strict=False):
        if left_key != right_key:
            return -1 if left_key < right_key else 1
        result = compare(left.fields[left_key], right.fields[right_key])
        if result:
            return result
    return _sign(len(left_keys) - len(right_keys))


def compare(left: Any, right: Any) -> int:
    """Compare two values in Firestore's total order; return -1, 0 or 1."""
    left_kind = kind(left)
    right_kind = kind(right)
    left_order = TYPE_ORDER.get(left_kind, -1)
    right_order = TYPE_ORDER.get(right_kind, -1)
    if left_order != right_order:
        return _sign(left_order - right_order)

    if left_order == 0:
        return 0
    if left_order == 2:
        return _compare_numbers(number(left), number(right))
    if left_kind == "boolean_value":
        return _sign(int(left.boolean_value) - int(right.boolean_value))
    if left_kind == "timestamp_value":
        left_time = (left.timestamp_value.seconds, left.timestamp_value.nanos)
        right_time = (right.timestamp_value.seconds, right.timestamp_value.nanos)
        return (left_time > right_time) - (left_time < right_time)
    if left_kind == "string_value":
        # Code-point order of str equals the UTF-8 byte order Firestore uses.
        return (left.string_value > right.string_value) - (
            left.string_value < right.string_value
        )
    if left_kind == "bytes_value":
        return (left.bytes_value > right.bytes_value) - (
            left.bytes_value < right.bytes_value
        )
    if left_kind == "reference_value":
        return compare_names(left.reference_value, right.reference_value)
    if left_kind == "geo_point_value":
        left_point = (left.geo_point_value.latitude, left.geo_point_value.longitude)
        right_point = (right.geo_point_value.latitude, right.geo_point_value.longitude)
        return (left_point > right_point) - (left_point < right_point)
    if left_kind == "array_value":
        return _compare_sequences(left.array_value.values, right.array_value.values)
    return _compare_maps(left.map_value, right.map_value)


def compare_names(left: str, right: str) -> int:
    """Compare resource names segment by segment, as Firestore orders documents."""
    left_segments = left.split("/")
    right_segments = right.split("/")
    return (left_segments > right_segments) - (left_segments < right_segments)


def equal(left: Any, right: Any) -> bool:
    return compare(left, right) == 0


def contains(values: Iterable[Any], candidate: Any) -> bool:
    return any(equal(value, candidate) for value in values)


def reference(name: str) -> Any:
    return Value(reference_value=name)


def validate_fields(fields: Any, database: str, where: str) -> None:
    """Raise INVALID_ARGUMENT for a value or field name Firestore would not store.

    Timestamps are rounded down to whole microseconds in place, the precision
    Firestore stores.
    """
    _validate_map(fields, database, where, (), depth=0)


def validate_value(value: Any, database: str, where: str) -> None:
    """Check one value the way :func:`validate_fields` checks a field's value."""
    _validate_value(value, database, where, (), depth=0)


def _validate_map(
    fields: Any, database: str, where: str, path: FieldPath, depth: int
) -> None:
    is_vector = "__type__" in fields and fields["__type__"].string_value == "__vector__"
    for key, value in fields.items():
        field_path = (*path, key)
        if not key:
            raise invalid_argument(f"{where}: a field name is empty")
        if len(key.encode()) > MAX_FIELD_NAME_BYTES:
            raise invalid_argument(
                f'{where}: field name "{key[:100]}..." is longer than '
                f"{MAX_FIELD_NAME_BYTES} bytes"
            )
        if RESERVED_FIELD.match(key) and not (is_vector and key == "__type__"):
            raise invalid_argument(
                f'{where}: field name "{format_field_path(field_path)}" is reserved: '
                "names matching __.*__ are not allowed"
            )
        _validate_value(value, database, where, field_path, depth)


def _validate_value(
    value: Any, database: str, where: str, path: FieldPath, depth: int
) -> None:
    value_kind = kind(value)
    field = format_field_path(path) if path else "(array element)"
    if value_kind in ("array_value", "map_value") and depth >= MAX_NESTING_DEPTH:
        raise invalid_argument(
            f"{where}: field {field} nests maps and arrays more than "
            f"{MAX_NESTING_DEPTH} levels deep"
        )
    if value_kind not in STORABLE_KINDS:
        detail = (
            "no value is set" if not value_kind else f"{value_kind} is not storable"
        )
        raise invalid_argument(f"{where}: invalid value for field {field}: {detail}")
    if value_kind in ("string_value", "bytes_value"):
        size = (
            len(value.string_value.encode())
            if value_kind == "string_value"
            else len(value.bytes_value)
        )
        if size > MAX_STRING_BYTES:
            raise invalid_argument(
                f"{where}: field {field} is {size} bytes, more than the maximum of "
                f"{MAX_STRING_BYTES}"
            )
    elif value_kind == "timestamp_value":
        stamp = value.timestamp_value
        if not MIN_TIMESTAMP_SECONDS <= stamp.seconds <= MAX_TIMESTAMP_SECONDS or not (
            0 <= stamp.nanos <= 999_999_999
        ):
            raise invalid_argument(
                f"{where}: field {field} has a timestamp outside "
                "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"
            )
        stamp.nanos -= stamp.nanos % 1000
    elif value_kind == "geo_point_value":
        point = value.geo_point_value
        if not (-90 <= point.latitude <= 90 and -180 <= point.longitude <= 180):
            raise invalid_argument(
                f"{where}: field {field} has a geo point outside latitude [-90, 90] "
                "and longitude [-180, 180]"
            )
    elif value_kind == "reference_value":
        _validate_reference(value.reference_value, database, where, field)
    elif value_kind == "array_value":
        for element in value.array_value.values:
            if kind(element) == "array_value":
                raise invalid_argument(
                    f"{where}: field {field} contains an array directly inside an "
                    "array, which Firestore does not store"
                )
            _validate_value(element, database, where, path, depth + 1)
    elif value_kind == "map_value":
        _validate_map(value.map_value.fields, database, where, path, depth + 1)


def _validate_reference(name: str, database: str, where: str, field: str) -> None:
    try:
        parse_document_name(name, database)
    except ServiceError as error:
        raise invalid_argument(
            f"{where}: field {field} is not a valid reference: {error.message}"
        ) from None


def _string_size(text: str) -> int:
    return len(text.encode()) + 1


def name_size(name: str) -> int:
    """Return the stored size of a document name (segments after ``documents``)."""
    segments = name.split("/documents/", 1)[-1].split("/")
    return sum(_string_size(segment) for segment in segments) + 16


def value_size(value: Any) -> int:
    """Return the stored size of ``value`` by Firestore's storage size rules."""
    value_kind = kind(value)
    if value_kind in ("null_value", "boolean_value"):
        return 1
    if value_kind in ("integer_value", "double_value", "timestamp_value"):
        return 8
    if value_kind == "geo_point_value":
        return 16
    if value_kind == "string_value":
        return _string_size(value.string_value)
    if value_kind == "bytes_value":
        return len(value.bytes_value)
    if value_kind == "reference_value":
        return name_size(value.reference_value)
    if value_kind == "array_value":
        return sum(value_size(element) for element in value.array_value.values)
    if value_kind == "map_value":
        return fields_size(value.map_value.fields)
    return 0


def fields_size(fields: Any) -> int:
    return sum(_string_size(key) + value_size(value) for key, value in fields.items())


def document_size(name: str, fields: Any) -> int:
    return name_size(name) + fields_size(fields) + 32


def get_field(fields: Any, path: FieldPath) -> Any | None:
    """Return the value at ``path`` in a ``fields`` map, or None where it is absent."""
    current = fields
    for segment in path[:-1]:
        if segment not in current or kind(current[segment]) != "map_value":
            return None
        current = current[segment].map_value.fields
    if path[-1] not in current:
        return None
    return current[path[-1]]


def set_field(fields: Any, path: FieldPath, value: Any) -> None:
    """Store ``value`` at ``path``, replacing any non-map value on the way with a map."""
    current = fields
    for segment in path[:-1]:
        if segment not in current or kind(current[segment]) != "map_value":
            current[segment].CopyFrom(Value(map_value=MapValue()))
        current = current[segment].map_value.fields
    current[path[-1]].CopyFrom(value)


def delete_field(fields: Any, path: FieldPath) -> None:
    current = fields
    for segment in path[:-1]:
        if segment not in current or kind(current[segment]) != "map_value":
            return
        current = current[segment].map_value.fields
    if path[-1] in current:
        del current[path[-1]]


def project_fields(fields: Any, paths: list[FieldPath]) -> Any:
    """Return a ``MapValue`` with only the fields under ``paths`` (a DocumentMask)."""
    projected = MapValue()
    for path in paths:
        value = get_field(fields, path)
        if value is not None:
            set_field(projected.fields, path, value)
    return projected
