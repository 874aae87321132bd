"""Firestore v1 ``google.firestore.v1.Firestore``: documents, transactions, queries.

Enough of the API for ``google-cloud-firestore`` pointed at the local cloud with
``FIRESTORE_EMULATOR_HOST``. Every caller may read and write everything, so the
client's ``authorization: Bearer owner`` header is accepted without a check.

Not served: Listen and Write (real-time listeners), PartitionQuery,
ExecutePipeline, vector search and query explain. A read at a past
``read_time`` returns the current documents. TTL policies are not enforced, so
a document whose TTL field is in the past stays until something deletes it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.cloud.firestore_v1.types import common as common_types
from google.cloud.firestore_v1.types import document as document_types
from google.cloud.firestore_v1.types import firestore as firestore_types
from google.cloud.firestore_v1.types import write as write_types
from google.protobuf import empty_pb2
from google.rpc import code_pb2, status_pb2

from taskctl.localcloud.errors import ServiceError, invalid_argument, not_found
from taskctl.localcloud.firestore import values
from taskctl.localcloud.firestore.aggregation import run_aggregations
from taskctl.localcloud.firestore.paths import (
    FieldPath,
    check_collection_id,
    check_document_id,
    parse_database,
    parse_document_name,
    parse_field_path,
    parse_parent,
)
from taskctl.localcloud.firestore.query import compile_query
from taskctl.localcloud.firestore.store import (
    DocumentStore,
    StoredDocument,
    timestamp,
)
from taskctl.localcloud.firestore.transactions import (
    Transaction,
    TransactionRegistry,
    contention,
)
from taskctl.localcloud.firestore.writes import (
    ParsedWrite,
    apply_write,
    check_precondition,
    check_size,
    parse_write,
)
from taskctl.localcloud.rpc import Method, add_service

log = logging.getLogger("taskctl.localcloud.firestore")

BatchGetDocumentsRequest = firestore_types.BatchGetDocumentsRequest.pb()
BatchGetDocumentsResponse = firestore_types.BatchGetDocumentsResponse.pb()
BatchWriteRequest = firestore_types.BatchWriteRequest.pb()
BatchWriteResponse = firestore_types.BatchWriteResponse.pb()
BeginTransactionRequest = firestore_types.BeginTransactionRequest.pb()
BeginTransactionResponse = firestore_types.BeginTransactionResponse.pb()
CommitRequest = firestore_types.CommitRequest.pb()
CommitResponse = firestore_types.CommitResponse.pb()
CreateDocumentRequest = firestore_types.CreateDocumentRequest.pb()
DeleteDocumentRequest = firestore_types.DeleteDocumentRequest.pb()
GetDocumentRequest = firestore_types.GetDocumentRequest.pb()
ListCollectionIdsRequest = firestore_types.ListCollectionIdsRequest.pb()
ListCollectionIdsResponse = firestore_types.ListCollectionIdsResponse.pb()
ListDocumentsRequest = firestore_types.ListDocumentsRequest.pb()
ListDocumentsResponse = firestore_types.ListDocumentsResponse.pb()
RollbackRequest = firestore_types.RollbackRequest.pb()
RunAggregationQueryRequest = firestore_types.RunAggregationQueryRequest.pb()
RunAggregationQueryResponse = firestore_types.RunAggregationQueryResponse.pb()
RunQueryRequest = firestore_types.RunQueryRequest.pb()
RunQueryResponse = firestore_types.RunQueryResponse.pb()
UpdateDocumentRequest = firestore_types.UpdateDocumentRequest.pb()
Document = document_types.Document.pb()
Empty = empty_pb2.Empty
Write = write_types.Write.pb()
WriteResult = write_types.WriteResult.pb()
Precondition = common_types.Precondition.pb()

# ListDocuments and ListCollectionIds document neither a default nor a maximum
# page size; these are the local cloud's own choices.
DEFAULT_PAGE_SIZE = 300
MAX_PAGE_SIZE = 1000
AUTO_ID_ALPHABET = string.ascii_letters + string.digits
AUTO_ID_LENGTH = 20
# Firestore's maximum API request size, from its "Quotas and limits" page.
MAX_REQUEST_BYTES = 10 * 1024 * 1024

Mask = Callable[[Any], Any] | None


def _projection(paths: list[FieldPath]) -> Callable[[Any], Any]:
    def project(fields: Any) -> Any:
        return values.project_fields(fields.fields, paths)

    return project


def _mask(request: Any) -> Mask:
    """Return a projection for the request's ``mask``, or None to keep every field."""
    if not request.HasField("mask"):
        return None
    return _projection([parse_field_path(path) for path in request.mask.field_paths])


def _check_request_size(request: Any) -> None:
    size = request.ByteSize()
    if size > MAX_REQUEST_BYTES:
        raise invalid_argument(
            f"the request is {size:,} bytes, more than the maximum of "
            f"{MAX_REQUEST_BYTES:,}; split the writes into several commits"
        )


def _encode_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid_argument(f'invalid page_token "{token}"') from None


def _page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_argument(f"page_size must not be negative, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class FirestoreService:
    """The local Firestore; documents live in ``firestore.sqlite3``."""

    def __init__(self, state_dir: Path) -> None:
        self.store = DocumentStore(state_dir / "firestore.sqlite3")
        self.transactions = TransactionRegistry()

    def register(self, server: grpc.Server) -> None:
        def stream(handler: Callable[..., Any], request: Any, response: Any) -> Method:
            return Method(handler, request, response, kind="unary_stream")

        add_service(
            server,
            "google.firestore.v1.Firestore",
            {
                "GetDocument": Method(self.get_document, GetDocumentRequest, Document),
                "ListDocuments": Method(
                    self.list_documents, ListDocumentsRequest, ListDocumentsResponse
                ),
                "CreateDocument": Method(
                    self.create_document, CreateDocumentRequest, Document
                ),
                "UpdateDocument": Method(
                    self.update_document, UpdateDocumentRequest, Document
                ),
                "DeleteDocument": Method(
                    self.delete_document, DeleteDocumentRequest, Empty
                ),
                "BatchGetDocuments": stream(
                    self.batch_get_documents,
                    BatchGetDocumentsRequest,
                    BatchGetDocumentsResponse,
                ),
                "BeginTransaction": Method(
                    self.begin_transaction,
                    BeginTransactionRequest,
                    BeginTransactionResponse,
                ),
                "Commit": Method(self.commit, CommitRequest, CommitResponse),
                "Rollback": Method(self.rollback, RollbackRequest, Empty),
                "RunQuery": stream(self.run_query, RunQueryRequest, RunQueryResponse),
                "RunAggregationQuery": stream(
                    self.run_aggregation_query,
                    RunAggregationQueryRequest,
                    RunAggregationQueryResponse,
                ),
                "BatchWrite": Method(
                    self.batch_write, BatchWriteRequest, BatchWriteResponse
                ),
                "ListCollectionIds": Method(
                    self.list_collection_ids,
                    ListCollectionIdsRequest,
                    ListCollectionIdsResponse,
                ),
            },
        )

    def start(self) -> None:
        log.info("firestore started, state in %s", self.store.db.path)

    def stop(self) -> None:
        self.store.close()
        log.info("firestore stopped")

    # Reads and their consistency selector.

    def _read_transaction(
        self, request: Any, database: str
    ) -> tuple[Transaction | None, bytes]:
        """Return the request's transaction and the ID of one it asked to begin."""
        selector = request.WhichOneof("consistency_selector")
        if selector == "transaction":
            return self.transactions.get(request.transaction, database), b""
        if selector == "new_transaction":
            transaction = self._begin(database, request.new_transaction)
            return transaction, transaction.identifier
        # NOTE: read_time is accepted but the local cloud keeps no history, so
        # a read at a past time returns the current documents.
        return None, b""

    def get_document(self, request: Any, context: grpc.ServicerContext) -> Any:
        parsed = parse_document_name(request.name)
        name = parsed.name
        transaction, _ = self._read_transaction(request, parsed.database)
        document = self.store.get(None, name)
        self.transactions.record_reads(
            transaction, [name], {name: document} if document else {}
        )
        if document is None:
            raise not_found(f'Document "{name}" not found.')
        return document.to_pb(_mask(request))

    def batch_get_documents(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        database = parse_database(request.database)
        names = [parse_document_name(name, database).name for name in request.documents]
        mask = _mask(request)
        transaction, new_identifier = self._read_transaction(request, database)
        found = self.store.get_many(names)
        self.transactions.record_reads(transaction, names, found)
        read_time = timestamp(self.store.read_time())

        if not names and new_identifier:
            yield BatchGetDocumentsResponse(
                transaction=new_identifier, read_time=read_time
            )
        for index, name in enumerate(names):
            response = BatchGetDocumentsResponse(read_time=read_time)
            if index == 0 and new_identifier:
                response.transaction = new_identifier
            document = found.get(name)
            if document is None:
                response.missing = name
            else:
                response.found.CopyFrom(document.to_pb(mask))
            yield response

    def run_query(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        database, parent = parse_parent(request.parent)
        if request.WhichOneof("query_type") != "structured_query":
            raise invalid_argument("RunQuery needs a structured_query")
        if request.HasField("explain_options"):
            raise invalid_argument("the local cloud does not support explain_options")
        compiled = compile_query(request.structured_query, database)
        transaction, new_identifier = self._read_transaction(request, database)
        documents, skipped = self._run_compiled(compiled, parent)
        # NOTE: only the returned documents are recorded, so a document that
        # starts to match the query after this read does not abort the transaction.
        self.transactions.record_reads(
            transaction,
            [document.name for document in documents],
            {document.name: document for document in documents},
        )
        read_time = timestamp(self.store.read_time())
        mask = None
        if compiled.projection is not None:
            mask = _projection(compiled.projection)

        first = RunQueryResponse(read_time=read_time, skipped_results=skipped)
        if new_identifier:
            first.transaction = new_identifier
        if not documents:
            yield first
            return
        for index, document in enumerate(documents):
            response = first if index == 0 else RunQueryResponse(read_time=read_time)
            response.document.CopyFrom(document.to_pb(mask))
            yield response

    def _run_compiled(
        self, compiled: Any, parent: str
    ) -> tuple[list[StoredDocument], int]:
        collection_id = compiled.collection_id or None
        if compiled.all_descendants:
            candidates = self.store.collection_group(parent, collection_id)
        else:
            candidates = self.store.collection(parent, collection_id)
        return compiled.run(candidates)

    def run_aggregation_query(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        database, parent = parse_parent(request.parent)
        if request.WhichOneof("query_type") != "structured_aggregation_query":
            raise invalid_argument(
                "RunAggregationQuery needs a structured_aggregation_query"
            )
        if request.HasField("explain_options"):
            raise invalid_argument("the local cloud does not support explain_options")
        aggregation = request.structured_aggregation_query
        compiled = compile_query(aggregation.structured_query, database)
        transaction, new_identifier = self._read_transaction(request, database)
        documents, _ = self._run_compiled(compiled, parent)
        self.transactions.record_reads(
            transaction,
            [document.name for document in documents],
            {document.name: document for document in documents},
        )
        response = RunAggregationQueryResponse(
            read_time=timestamp(self.store.read_time())
        )
        if new_identifier:
            response.transaction = new_identifier
        for alias, value in run_aggregations(
            aggregation.aggregations, documents
        ).items():
            response.result.aggregate_fields[alias].CopyFrom(value)
        yield response

    def list_documents(self, request: Any, context: grpc.ServicerContext) -> Any:
        database, parent = parse_parent(request.parent)
        collection_id = request.collection_id or None
        if collection_id is not None:
            check_collection_id(collection_id, request.parent)
        if request.order_by not in ("", "__name__", "__name__ asc"):
            # NOTE: only name order is served; Google's API also orders by fields.
            raise invalid_argument(
                f'order_by "{request.order_by}" is not supported by the local cloud; '
                'use "__name__"'
            )
        page_size = _page_size(request.page_size)
        after = _decode_token(request.page_token)
        mask = _mask(request)
        transaction, _ = self._read_transaction(request, database)

        if request.show_missing:
            page = self._names_with_missing(parent, collection_id, after, page_size + 1)
            found = self.store.get_many(page)
            documents = [found.get(name) or Document(name=name) for name in page]
        else:
            stored = self.store.collection(parent, collection_id, after, page_size + 1)
            page = [document.name for document in stored]
            found = {document.name: document for document in stored}
            documents = list(stored)
        more = len(page) > page_size
        page = page[:page_size]
        documents = documents[:page_size]
        self.transactions.record_reads(
            transaction, [name for name in page if name in found], found
        )

        response = ListDocumentsResponse()
        for document in documents:
            if isinstance(document, StoredDocument):
                response.documents.append(document.to_pb(mask))
            else:
                response.documents.append(document)
        if more:
            response.next_page_token = _encode_token(page[-1])
        return response

    def _names_with_missing(
        self, parent: str, collection_id: str | None, after: str, limit: int
    ) -> list[str]:
        """Return names of the documents in the collection, and of missing ones.

        A missing document does not exist but has documents in its subcollections.
        """
        prefix = parent if collection_id is None else f"{parent}/{collection_id}"
        depth = prefix.count("/") + (3 if collection_id is None else 2)
        # A set, because a document and the documents below it are not adjacent
        # in name order when an ID contains a character that sorts before "/".
        children = {
            "/".join(name.split("/")[:depth]) for name in self.store.names_under(prefix)
        }
        return sorted(child for child in children if child > after)[:limit]

    def list_collection_ids(self, request: Any, context: grpc.ServicerContext) -> Any:
        _, parent = parse_parent(request.parent)
        page_size = _page_size(request.page_size)
        after = _decode_token(request.page_token)
        depth = parent.count("/") + 1
        identifiers = sorted(
            {name.split("/")[depth] for name in self.store.names_under(parent)}
        )
        identifiers = [identifier for identifier in identifiers if identifier > after]
        response = ListCollectionIdsResponse(collection_ids=identifiers[:page_size])
        if len(identifiers) > page_size:
            response.next_page_token = _encode_token(identifiers[page_size - 1])
        return response

    # Transactions.

    def _begin(self, database: str, options: Any) -> Transaction:
        mode = options.WhichOneof("mode")
        read_only = mode == "read_only"
        return self.transactions.begin(database, read_only=read_only)

    def begin_transaction(self, request: Any, context: grpc.ServicerContext) -> Any:
        database = parse_database(request.database)
        transaction = self._begin(database, request.options)
        return BeginTransactionResponse(transaction=transaction.identifier)

    def rollback(self, request: Any, context: grpc.ServicerContext) -> Any:
        database = parse_database(request.database)
        if not request.transaction:
            raise invalid_argument("Rollback needs a transaction")
        self.transactions.rollback(request.transaction, database)
        return Empty()

    # Writes.

    def commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        database = parse_database(request.database)
        _check_request_size(request)
        parsed = [
            parse_write(write, database, index)
            for index, write in enumerate(request.writes)
        ]
        transaction = None
        if request.transaction:
            transaction = self.transactions.get(request.transaction, database)
        try:
            if transaction is not None and transaction.read_only and parsed:
                raise invalid_argument(
                    "Cannot modify entities in a read-only transaction."
                )
            results, commit_time, _ = self._apply_writes(parsed, transaction)
        finally:
            if transaction is not None:
                self.transactions.end(transaction.identifier)
        return CommitResponse(write_results=results, commit_time=timestamp(commit_time))

    def _apply_writes(
        self, parsed: list[ParsedWrite], transaction: Transaction | None
    ) -> tuple[list[Any], int, dict[str, StoredDocument | None]]:
        """Apply ``parsed`` in one SQLite transaction: all of them or none."""
        with self.store.db.transaction() as connection:
            if transaction is not None:
                for name, version in transaction.reads.items():
                    current = self.store.get(connection, name)
                    if (current.update_time if current else None) != version:
                        log.info(
                            "aborted transaction=%s: document=%s changed",
                            transaction.identifier.hex(),
                            name,
                        )
                        raise contention(transaction, name)
            commit_time = self.store.next_commit_time()
            working: dict[str, StoredDocument | None] = {}
            results = []
            for write in parsed:
                name = write.document.name
                current = (
                    working[name]
                    if name in working
                    else self.store.get(connection, name)
                )
                check_precondition(write, current)
                updated, result = apply_write(write, current, commit_time)
                if updated is not None:
                    check_size(updated)
                working[name] = updated
                results.append(result)
            for write in parsed:
                name = write.document.name
                document = working[name]
                if document is None:
                    self.store.delete(connection, name)
                else:
                    self.store.put(
                        connection,
                        document,
                        write.document.parent,
                        write.document.collection_id,
                    )
        return results, commit_time, working

    def batch_write(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Apply each write on its own; one failing does not stop the others."""
        database = parse_database(request.database)
        _check_request_size(request)
        parsed_writes = [
            parse_write(write, database, index)
            for index, write in enumerate(request.writes)
        ]
        names = [parsed.document.name for parsed in parsed_writes]
        if len(set(names)) != len(names):
            raise invalid_argument(
                "BatchWrite allows at most one write per document; use Commit to "
                "write a document more than once"
            )
        response = BatchWriteResponse()
        for parsed in parsed_writes:
            try:
                results, _, _ = self._apply_writes([parsed], None)
            except ServiceError as error:
                log.info(
                    "batch write to document=%s failed: %s",
                    parsed.document.name,
                    error.message,
                )
                response.write_results.append(WriteResult())
                response.status.append(
                    status_pb2.Status(code=error.code.value[0], message=error.message)
                )
                continue
            response.write_results.append(results[0])
            response.status.append(status_pb2.Status(code=code_pb2.OK))
        return response

    def _commit_one(self, write: Any, database: str) -> StoredDocument | None:
        parsed = parse_write(write, database, 0)
        _, _, working = self._apply_writes([parsed], None)
        return working[parsed.document.name]

    def create_document(self, request: Any, context: grpc.ServicerContext) -> Any:
        database, parent = parse_parent(request.parent)
        check_collection_id(request.collection_id, request.parent)
        document_id = request.document_id or "".join(
            secrets.choice(AUTO_ID_ALPHABET) for _ in range(AUTO_ID_LENGTH)
        )
        check_document_id(document_id, request.parent)
        name = f"{parent}/{request.collection_id}/{document_id}"
        write = Write(
            update=Document(name=name, fields=request.document.fields),
            current_document=Precondition(exists=False),
        )
        created = self._commit_one(write, database)
        assert created is not None
        return created.to_pb(_mask(request))

    def update_document(self, request: Any, context: grpc.ServicerContext) -> Any:
        database = parse_document_name(request.document.name).database
        write = Write(update=request.document)
        if request.HasField("update_mask"):
            write.update_mask.CopyFrom(request.update_mask)
        if request.HasField("current_document"):
            write.current_document.CopyFrom(request.current_document)
        updated = self._commit_one(write, database)
        assert updated is not None
        return updated.to_pb(_mask(request))

    def delete_document(self, request: Any, context: grpc.ServicerContext) -> Any:
        parsed = parse_document_name(request.name)
        write = Write(delete=parsed.name)
        if request.HasField("current_document"):
            write.current_document.CopyFrom(request.current_document)
        self._commit_one(write, parsed.database)
        return Empty()
