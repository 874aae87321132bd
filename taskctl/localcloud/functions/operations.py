"""Long-running operations of Cloud Functions, stored in SQLite.

The functions_v2 client polls ``google.longrunning.Operations/GetOperation`` on
the channel it was built with, so the local cloud serves that API next to
FunctionService.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from taskctl.localcloud.db import Database
from taskctl.localcloud.errors import invalid_argument, not_found
from taskctl.localcloud.functions.names import check_operation_name, parse_location
from taskctl.localcloud.rpc import Method, add_service

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    name TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    done INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_by_parent ON operations (parent, name);
"""

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid_argument(f"invalid page_token {token!r}") from error


class OperationStore:
    """Operations keyed by ``projects/P/locations/R/operations/ID``."""

    def __init__(self, db: Database) -> None:
        self._db = db
        db.migrate(SCHEMA)

    def create(self, parent: str, metadata: Message) -> operations_pb2.Operation:
        # Google's IDs start with "operation-" and the creation time in ms; the
        # random tail keeps two operations in the same millisecond apart.
        operation_id = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(8)}"
        operation = operations_pb2.Operation(
            name=f"{parent}/operations/{operation_id}", done=False
        )
        operation.metadata.CopyFrom(pack(metadata))
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO operations (name, parent, done, body) VALUES (?, ?, 0, ?)",
                (operation.name, parent, operation.SerializeToString()),
            )
        return operation

    def update_metadata(self, name: str, metadata: Message) -> None:
        with self._db.transaction() as conn:
            operation = self._load(conn, name)
            operation.metadata.CopyFrom(pack(metadata))
            self._save(conn, operation)

    def succeed(self, name: str, metadata: Message, response: Message) -> None:
        with self._db.transaction() as conn:
            operation = self._load(conn, name)
            operation.metadata.CopyFrom(pack(metadata))
            operation.response.CopyFrom(pack(response))
            operation.done = True
            self._save(conn, operation)

    def fail(
        self, name: str, metadata: Message, code: grpc.StatusCode, message: str
    ) -> None:
        with self._db.transaction() as conn:
            operation = self._load(conn, name)
            operation.metadata.CopyFrom(pack(metadata))
            # grpc.StatusCode values are (int code, name) pairs.
            operation.error.CopyFrom(
                status_pb2.Status(code=code.value[0], message=message)
            )
            operation.done = True
            self._save(conn, operation)

    def get(self, name: str) -> operations_pb2.Operation:
        rows = self._db.query("SELECT body FROM operations WHERE name = ?", (name,))
        if not rows:
            raise not_found(f"operation {name!r} not found")
        return operations_pb2.Operation.FromString(rows[0]["body"])

    def page(
        self, parent: str, page_size: int, page_token: str
    ) -> tuple[list[operations_pb2.Operation], str]:
        after = _decode_token(page_token) if page_token else ""
        rows = self._db.query(
            "SELECT body FROM operations WHERE parent = ? AND name > ? "
            "ORDER BY name LIMIT ?",
            (parent, after, page_size + 1),
        )
        page = [operations_pb2.Operation.FromString(row["body"]) for row in rows]
        next_token = ""
        if len(page) > page_size:
            page = page[:page_size]
            next_token = _encode_token(page[-1].name)
        return page, next_token

    def delete(self, name: str) -> None:
        with self._db.transaction() as conn:
            deleted = conn.execute("DELETE FROM operations WHERE name = ?", (name,))
            if deleted.rowcount == 0:
                raise not_found(f"operation {name!r} not found")

    def unfinished(self) -> list[operations_pb2.Operation]:
        rows = self._db.query("SELECT body FROM operations WHERE done = 0")
        return [operations_pb2.Operation.FromString(row["body"]) for row in rows]

    def _load(self, conn: Any, name: str) -> operations_pb2.Operation:
        row = conn.execute(
            "SELECT body FROM operations WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise not_found(f"operation {name!r} not found")
        return operations_pb2.Operation.FromString(row["body"])

    def _save(self, conn: Any, operation: operations_pb2.Operation) -> None:
        conn.execute(
            "UPDATE operations SET done = ?, body = ? WHERE name = ?",
            (int(operation.done), operation.SerializeToString(), operation.name),
        )


class OperationsService:
    """``google.longrunning.Operations`` over an :class:`OperationStore`."""

    def __init__(self, store: OperationStore) -> None:
        self._store = store

    def register(self, server: grpc.Server) -> None:
        add_service(
            server,
            "google.longrunning.Operations",
            {
                "GetOperation": Method(
                    self.get_operation,
                    operations_pb2.GetOperationRequest,
                    operations_pb2.Operation,
                ),
                "ListOperations": Method(
                    self.list_operations,
                    operations_pb2.ListOperationsRequest,
                    operations_pb2.ListOperationsResponse,
                ),
                "DeleteOperation": Method(
                    self.delete_operation,
                    operations_pb2.DeleteOperationRequest,
                    empty_pb2.Empty,
                ),
            },
        )

    def get_operation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        check_operation_name(request.name)
        return self._store.get(request.name)

    def list_operations(
        self,
        request: operations_pb2.ListOperationsRequest,
        context: grpc.ServicerContext,
    ) -> operations_pb2.ListOperationsResponse:
        parent = parse_location(request.name)
        if request.filter:
            # NOTE: Google accepts filters here; the local cloud implements none.
            raise invalid_argument(
                f"filter {request.filter!r} is not supported by the local cloud; "
                "list without a filter"
            )
        if request.page_size < 0:
            raise invalid_argument(f"invalid page_size {request.page_size}")
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page, next_token = self._store.page(parent.name, page_size, request.page_token)
        return operations_pb2.ListOperationsResponse(
            operations=page, next_page_token=next_token
        )

    def delete_operation(
        self,
        request: operations_pb2.DeleteOperationRequest,
        context: grpc.ServicerContext,
    ) -> empty_pb2.Empty:
        check_operation_name(request.name)
        self._store.delete(request.name)
        return empty_pb2.Empty()
