"""Applying one ``google.firestore.v1.Write`` to a document: masks and transforms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.cloud.firestore_v1.types import write as write_types

from taskctl.localcloud.errors import (
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
)
from taskctl.localcloud.firestore import values
from taskctl.localcloud.firestore.paths import (
    DocumentName,
    FieldPath,
    format_field_path,
    parse_document_name,
    parse_field_path,
)
from taskctl.localcloud.firestore.store import (
    MapValue,
    StoredDocument,
    microseconds,
    timestamp,
)

WriteResult = write_types.WriteResult.pb()
REQUEST_TIME = write_types.DocumentTransform.FieldTransform.ServerValue.REQUEST_TIME
# Firestore's "Quotas and limits" page allows at most 500 field transforms on one
# document in a commit. This checks each write on its own.
MAX_TRANSFORMS = 500


@dataclass(frozen=True)
class ParsedWrite:
    """A validated write: its document, field mask and transforms."""

    write: Any
    document: DocumentName
    mask: list[FieldPath] | None
    transforms: list[tuple[FieldPath, Any]]

    @property
    def is_delete(self) -> bool:
        return self.write.WhichOneof("operation") == "delete"


def parse_write(write: Any, database: str, index: int) -> ParsedWrite:
    """Validate ``write`` (the ``index``-th of its request) and parse its paths."""
    where = f"writes[{index}]"
    operation = write.WhichOneof("operation")
    if operation is None:
        raise invalid_argument(f"{where}: a write must set update, delete or transform")
    if operation == "delete":
        name = write.delete
        transforms_pb: Any = []
    elif operation == "update":
        name = write.update.name
        transforms_pb = write.update_transforms
    else:
        name = write.transform.document
        transforms_pb = write.transform.field_transforms
    document = parse_document_name(name, database)

    mask = None
    if write.HasField("update_mask"):
        if operation != "update":
            raise invalid_argument(f"{where}: update_mask is only valid with update")
        mask = [parse_field_path(path) for path in write.update_mask.field_paths]
    if operation == "delete" and len(write.update_transforms):
        raise invalid_argument(f"{where}: a delete cannot have update_transforms")
    if operation == "update":
        values.validate_fields(
            write.update.fields, database, f"{where} ({document.name})"
        )

    transforms = []
    for position, transform in enumerate(transforms_pb):
        transforms.append(
            (
                parse_field_path(transform.field_path),
                _check_transform(
                    transform, database, f"{where}.update_transforms[{position}]"
                ),
            )
        )
    if len(transforms) > MAX_TRANSFORMS:
        raise invalid_argument(
            f"{where}: {len(transforms)} field transforms on {document.name}, more "
            f"than the maximum of {MAX_TRANSFORMS}"
        )
    transformed = [path for path, _ in transforms]
    if len(set(transformed)) != len(transformed):
        raise invalid_argument(f"{where}: a field is transformed more than once")
    for path in [*(mask or []), *transformed]:
        _check_writable(path, where)
    return ParsedWrite(write, document, mask, transforms)


def _check_writable(path: FieldPath, where: str) -> None:
    # Values are checked with the document, but a mask or transform path can
    # name a field that the update's fields do not contain.
    for segment in path:
        if values.RESERVED_FIELD.match(segment):
            raise invalid_argument(
                f'{where}: field path "{format_field_path(path)}" names a reserved '
                "field: names matching __.*__ are not allowed"
            )


def _check_transform(transform: Any, database: str, where: str) -> Any:
    transform_kind = transform.WhichOneof("transform_type")
    if transform_kind is None:
        raise invalid_argument(
            f"{where}: a field transform must set one transform type"
        )
    if transform_kind == "set_to_server_value":
        if transform.set_to_server_value != REQUEST_TIME:
            raise invalid_argument(f"{where}: set_to_server_value must be REQUEST_TIME")
        return transform
    operand = getattr(transform, transform_kind)
    if transform_kind in ("increment", "maximum", "minimum"):
        if not values.is_number(operand):
            raise invalid_argument(
                f"{where}: {transform_kind} needs an integer or double operand"
            )
    else:
        for element in operand.values:
            if values.kind(element) == "array_value":
                raise invalid_argument(
                    f"{where}: {transform_kind} cannot contain an array, because "
                    "Firestore does not store arrays directly inside arrays"
                )
            values.validate_value(element, database, where)
    return transform


def check_precondition(parsed: ParsedWrite, current: StoredDocument | None) -> None:
    """Raise the error Firestore returns when the write's precondition fails."""
    name = parsed.document.name
    precondition = parsed.write.current_document
    condition = precondition.WhichOneof("condition_type")
    if condition == "exists":
        if precondition.exists and current is None:
            raise not_found(f"No document to update: {name}")
        if not precondition.exists and current is not None:
            raise already_exists(f"Document already exists: {name}")
    elif condition == "update_time":
        expected = microseconds(precondition.update_time)
        if current is None:
            raise failed_precondition(
                f"document {name} does not exist, so its update_time cannot match "
                "the precondition"
            )
        if current.update_time != expected:
            raise failed_precondition(
                f"document {name} was last updated at {_rfc3339(current.update_time)}, "
                f"not at the precondition's update_time {_rfc3339(expected)}"
            )


def _rfc3339(stamp: int) -> str:
    return timestamp(stamp).ToJsonString()


def apply_write(
    parsed: ParsedWrite, current: StoredDocument | None, commit_time: int
) -> tuple[StoredDocument | None, Any]:
    """Return the document after ``parsed`` and the write's ``WriteResult``."""
    if parsed.is_delete:
        return None, WriteResult()

    write = parsed.write
    fields = MapValue()
    if current is not None and (
        parsed.mask is not None or write.WhichOneof("operation") == "transform"
    ):
        fields.CopyFrom(current.fields)
    if write.WhichOneof("operation") == "update":
        if parsed.mask is None:
            fields.fields.clear()
            fields.fields.MergeFrom(write.update.fields)
        else:
            for path in parsed.mask:
                value = values.get_field(write.update.fields, path)
                if value is None:
                    values.delete_field(fields.fields, path)
                else:
                    values.set_field(fields.fields, path, value)

    transform_results = []
    for path, transform in parsed.transforms:
        transform_results.append(
            _apply_transform(fields.fields, path, transform, commit_time)
        )

    if current is not None and current.fields == fields:
        # An unchanged document keeps its update_time, as the API documents for
        # WriteResult.update_time.
        update_time = current.update_time
    else:
        update_time = commit_time
    create_time = current.create_time if current is not None else commit_time
    document = StoredDocument(parsed.document.name, fields, create_time, update_time)
    result = WriteResult(
        update_time=timestamp(update_time), transform_results=transform_results
    )
    return document, result


def _apply_transform(
    fields: Any, path: FieldPath, transform: Any, commit_time: int
) -> Any:
    transform_kind = transform.WhichOneof("transform_type")
    current = values.get_field(fields, path)
    if transform_kind == "set_to_server_value":
        new_value = values.Value(timestamp_value=timestamp(commit_time))
    elif transform_kind == "increment":
        new_value = _increment(current, transform.increment)
    elif transform_kind == "maximum":
        new_value = _extreme(current, transform.maximum, larger=True)
    elif transform_kind == "minimum":
        new_value = _extreme(current, transform.minimum, larger=False)
    else:
        elements = (
            list(current.array_value.values)
            if current is not None and values.kind(current) == "array_value"
            else []
        )
        if transform_kind == "append_missing_elements":
            for element in transform.append_missing_elements.values:
                if not values.contains(elements, element):
                    elements.append(element)
        else:
            removed = transform.remove_all_from_array.values
            elements = [
                element for element in elements if not values.contains(removed, element)
            ]
        new_value = values.Value(array_value=values.ArrayValue(values=elements))
        values.set_field(fields, path, new_value)
        # Array transforms report null as their result.
        return values.Value(null_value=0)
    values.set_field(fields, path, new_value)
    return new_value


def _increment(current: Any | None, operand: Any) -> Any:
    if current is None or not values.is_number(current):
        return operand
    if (
        values.kind(current) == "integer_value"
        and values.kind(operand) == "integer_value"
    ):
        total = current.integer_value + operand.integer_value
        # Integer overflow saturates at the int64 limits.
        return values.Value(
            integer_value=min(max(total, values.INT64_MIN), values.INT64_MAX)
        )
    return values.Value(
        double_value=float(values.number(current)) + float(values.number(operand))
    )


def _extreme(current: Any | None, operand: Any, *, larger: bool) -> Any:
    """Apply a maximum (``larger``) or minimum transform."""
    if current is None or not values.is_number(current):
        return operand
    if values.is_nan(current):
        return current
    if values.is_nan(operand):
        return operand
    stored = values.number(current)
    given = values.number(operand)
    # Equal operands such as 3 and 3.0, or 0 and -0.0, keep the stored value.
    if (given > stored) if larger else (given < stored):
        return operand
    return current


def check_size(document: StoredDocument) -> None:
    size = values.document_size(document.name, document.fields.fields)
    if size > values.MAX_DOCUMENT_BYTES:
        raise invalid_argument(
            f"document {document.name} cannot be written because its size "
            f"({size:,} bytes) exceeds the maximum allowed size of "
            f"{values.MAX_DOCUMENT_BYTES:,} bytes"
        )
