"""Firestore transactions: optimistic reads, ABORTED on contention, client retries."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.services.firestore import FirestoreClient
from google.cloud.firestore_v1.services.firestore.transports import (
    FirestoreGrpcTransport,
)

from taskctl.localcloud.runtime import RuntimeInfo
from tests.conftest import PROJECT

DATABASE = f"projects/{PROJECT}/databases/(default)"


@pytest.fixture
def client(
    local_cloud: RuntimeInfo, monkeypatch: pytest.MonkeyPatch
) -> Iterator[firestore.Client]:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", local_cloud.grpc_endpoint)
    shared = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
    yield shared
    shared.close()


@pytest.fixture
def api(channel) -> FirestoreClient:  # type: ignore[no-untyped-def]
    return FirestoreClient(transport=FirestoreGrpcTransport(channel=channel))


@pytest.fixture
def collection(client: firestore.Client, unique: str) -> firestore.CollectionReference:
    return client.collection(f"txn-{unique}")


def document_name(reference: firestore.DocumentReference) -> str:
    return f"{DATABASE}/documents/{reference.path}"


def begin(api: FirestoreClient) -> bytes:
    return api.begin_transaction(request={"database": DATABASE}).transaction


def read_in(api: FirestoreClient, transaction: bytes, name: str) -> None:
    request = {"database": DATABASE, "documents": [name], "transaction": transaction}
    list(api.batch_get_documents(request=request))


def increment_write(name: str) -> dict[str, object]:
    return {
        "update": {"name": name},
        "update_mask": {"field_paths": []},
        "update_transforms": [{"field_path": "n", "increment": {"integer_value": 1}}],
    }


def test_transactional_read_then_write(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("counter")
    reference.set({"n": 1})

    @firestore.transactional
    def double(transaction: firestore.Transaction) -> int:
        snapshot = reference.get(transaction=transaction)
        transaction.update(reference, {"n": snapshot.get("n") * 2})
        return snapshot.get("n")

    assert double(client.transaction()) == 1
    assert reference.get().get("n") == 2


def test_changed_read_aborts(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("counter")
    reference.set({"n": 1})
    name = document_name(reference)
    transaction = begin(api)
    read_in(api, transaction, name)
    reference.set({"n": 5})

    with pytest.raises(exceptions.Aborted, match="contention"):
        api.commit(
            request={
                "database": DATABASE,
                "transaction": transaction,
                "writes": [increment_write(name)],
            }
        )
    assert reference.get().get("n") == 5


def test_missing_read_then_created_aborts(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("claim")
    name = document_name(reference)
    transaction = begin(api)
    read_in(api, transaction, name)
    reference.create({"owner": "other"})

    with pytest.raises(exceptions.Aborted):
        api.commit(
            request={
                "database": DATABASE,
                "transaction": transaction,
                "writes": [{"update": {"name": name}}],
            }
        )
    assert reference.get().to_dict() == {"owner": "other"}


def test_query_read_changed_aborts(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("a")
    reference.set({"n": 1})
    transaction = begin(api)
    query = collection.where(filter=firestore.FieldFilter("n", "==", 1))
    list(
        api.run_query(
            request={
                "parent": f"{DATABASE}/documents",
                "structured_query": query._to_protobuf(),
                "transaction": transaction,
            }
        )
    )
    reference.update({"n": 2})

    with pytest.raises(exceptions.Aborted):
        api.commit(request={"database": DATABASE, "transaction": transaction})


def test_contention_retried_by_client(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("counter")
    reference.set({"n": 0})
    attempts: list[int] = []

    @firestore.transactional
    def increment(transaction: firestore.Transaction) -> None:
        snapshot = reference.get(transaction=transaction)
        attempts.append(snapshot.get("n"))
        if len(attempts) == 1:
            # Another writer changes the document between this read and commit.
            reference.update({"n": firestore.Increment(10)})
        transaction.update(reference, {"n": snapshot.get("n") + 1})

    increment(client.transaction())

    assert attempts == [0, 10]
    assert reference.get().get("n") == 11


def test_concurrent_increments_all_count(
    local_cloud: RuntimeInfo,
    monkeypatch: pytest.MonkeyPatch,
    collection: firestore.CollectionReference,
) -> None:
    reference = collection.document("counter")
    reference.set({"n": 0})
    workers = 4
    increments_each = 5
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", local_cloud.grpc_endpoint)
    clients = [
        firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
        for _ in range(workers)
    ]
    failures: list[BaseException] = []

    @firestore.transactional
    def increment(
        transaction: firestore.Transaction, target: firestore.DocumentReference
    ) -> None:
        snapshot = target.get(transaction=transaction)
        transaction.update(target, {"n": snapshot.get("n") + 1})

    def run(worker: firestore.Client) -> None:
        target = worker.document(reference.path)
        try:
            for _ in range(increments_each):
                increment(worker.transaction(max_attempts=50), target)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=run, args=(worker,)) for worker in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for worker in clients:
        worker.close()

    assert failures == []
    assert reference.get().get("n") == workers * increments_each


def test_create_in_transaction_conflicts(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("claim")
    reference.create({"owner": "first"})

    @firestore.transactional
    def claim(transaction: firestore.Transaction) -> None:
        transaction.create(reference, {"owner": "second"})

    with pytest.raises(exceptions.AlreadyExists):
        claim(client.transaction())
    assert reference.get().get("owner") == "first"


def test_rollback_discards_transaction(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    name = document_name(collection.document("a"))
    transaction = begin(api)

    api.rollback(request={"database": DATABASE, "transaction": transaction})
    api.rollback(request={"database": DATABASE, "transaction": transaction})

    with pytest.raises(exceptions.InvalidArgument, match="no longer valid"):
        api.commit(
            request={
                "database": DATABASE,
                "transaction": transaction,
                "writes": [{"update": {"name": name}}],
            }
        )
    assert not collection.document("a").get().exists


def test_error_in_function_rolls_back(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("a")

    @firestore.transactional
    def fail(transaction: firestore.Transaction) -> None:
        reference.get(transaction=transaction)
        transaction.set(reference, {"n": 1})
        raise RuntimeError("stop before commit")

    with pytest.raises(RuntimeError):
        fail(client.transaction())
    assert not reference.get().exists


def test_unknown_transaction_rejected(api: FirestoreClient) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        api.commit(request={"database": DATABASE, "transaction": b"nope"})
    with pytest.raises(exceptions.InvalidArgument):
        api.rollback(request={"database": DATABASE, "transaction": b"nope"})


def test_read_only_rejects_writes(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    name = document_name(collection.document("a"))
    transaction = api.begin_transaction(
        request={"database": DATABASE, "options": {"read_only": {}}}
    ).transaction

    with pytest.raises(exceptions.InvalidArgument, match="read-only"):
        api.commit(
            request={
                "database": DATABASE,
                "transaction": transaction,
                "writes": [{"update": {"name": name}}],
            }
        )


def test_read_only_transaction_reads(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("a")
    reference.set({"n": 1})

    @firestore.transactional
    def read(transaction: firestore.Transaction) -> int:
        value = reference.get(transaction=transaction).get("n")
        # A read-only transaction records no reads, so this write cannot abort it.
        reference.update({"n": 2})
        return value

    assert read(client.transaction(read_only=True)) == 1


def test_new_transaction_on_read(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("a")
    reference.set({"n": 1})
    name = document_name(reference)

    responses = list(
        api.batch_get_documents(
            request={
                "database": DATABASE,
                "documents": [name],
                "new_transaction": {"read_write": {}},
            }
        )
    )
    transaction = responses[0].transaction
    reference.update({"n": 2})

    assert len(transaction) > 0
    with pytest.raises(exceptions.Aborted):
        api.commit(
            request={
                "database": DATABASE,
                "transaction": transaction,
                "writes": [increment_write(name)],
            }
        )
