"""Firestore document writes and reads through google-cloud-firestore."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import grpc
import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.services.firestore import FirestoreClient
from google.cloud.firestore_v1.services.firestore.transports import (
    FirestoreGrpcTransport,
)
from google.cloud.firestore_v1.types import common, document
from google.cloud.firestore_v1.types import firestore as requests

from taskctl.localcloud.runtime import RuntimeInfo
from tests.conftest import PROJECT

DATABASE = f"projects/{PROJECT}/databases/(default)"


@pytest.fixture
def client(
    local_cloud: RuntimeInfo, monkeypatch: pytest.MonkeyPatch
) -> Iterator[firestore.Client]:
    """A Firestore client that reaches the local cloud the way the worker does."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", local_cloud.grpc_endpoint)
    shared = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
    yield shared
    shared.close()


@pytest.fixture
def api(channel) -> FirestoreClient:  # type: ignore[no-untyped-def]
    """The generated client, for RPCs the handwritten client does not expose."""
    return FirestoreClient(transport=FirestoreGrpcTransport(channel=channel))


@pytest.fixture
def collection(client: firestore.Client, unique: str) -> firestore.CollectionReference:
    return client.collection(f"docs-{unique}")


def test_create_then_get(collection: firestore.CollectionReference) -> None:
    reference = collection.document("a")
    result = reference.create({"status": "processing", "attempt": 1})
    snapshot = reference.get()

    assert snapshot.exists
    assert snapshot.to_dict() == {"status": "processing", "attempt": 1}
    assert snapshot.create_time == result.update_time
    assert snapshot.update_time == result.update_time


def test_create_existing_already_exists(
    collection: firestore.CollectionReference,
) -> None:
    reference = collection.document("a")
    reference.create({"owner": "first"})

    with pytest.raises(exceptions.AlreadyExists, match="Document already exists"):
        reference.create({"owner": "second"})
    assert reference.get().to_dict() == {"owner": "first"}


def test_set_replaces_document(collection: firestore.CollectionReference) -> None:
    reference = collection.document("a")
    reference.set({"keep": 1, "nested": {"x": 1}})
    created = reference.get()

    reference.set({"other": 2})
    replaced = reference.get()

    assert replaced.to_dict() == {"other": 2}
    assert replaced.create_time == created.create_time
    assert replaced.update_time > created.update_time


def test_set_merge_keeps_fields(collection: firestore.CollectionReference) -> None:
    reference = collection.document("a")
    reference.set({"keep": 1, "nested": {"x": 1, "y": 1}})

    reference.set({"added": 2, "nested": {"y": 2}}, merge=True)

    assert reference.get().to_dict() == {
        "keep": 1,
        "added": 2,
        "nested": {"x": 1, "y": 2},
    }


def test_set_merge_field_list(collection: firestore.CollectionReference) -> None:
    reference = collection.document("a")
    reference.set({"a": 1, "b": 1})

    reference.set({"a": 2, "b": 2}, merge=["b"])

    assert reference.get().to_dict() == {"a": 1, "b": 2}


def test_set_merge_creates_missing(collection: firestore.CollectionReference) -> None:
    reference = collection.document("new")
    reference.set({"a": 1}, merge=True)
    assert reference.get().to_dict() == {"a": 1}


def test_update_dotted_paths(collection: firestore.CollectionReference) -> None:
    reference = collection.document("a")
    reference.set({"top": 1, "nested": {"x": 1, "y": 1}, "gone": True})

    reference.update(
        {
            "nested.y": 2,
            "nested.deeper.z": 3,
            "`odd key`": "quoted",
            "gone": firestore.DELETE_FIELD,
        }
    )

    assert reference.get().to_dict() == {
        "top": 1,
        "nested": {"x": 1, "y": 2, "deeper": {"z": 3}},
        "odd key": "quoted",
    }


def test_update_missing_not_found(collection: firestore.CollectionReference) -> None:
    with pytest.raises(exceptions.NotFound, match="No document to update"):
        collection.document("missing").update({"a": 1})
    assert not collection.document("missing").get().exists


def test_delete_document(collection: firestore.CollectionReference) -> None:
    reference = collection.document("a")
    reference.set({"a": 1})

    reference.delete()
    reference.delete()

    assert not reference.get().exists


def test_update_time_precondition(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("a")
    first = reference.set({"n": 1})
    second = reference.set({"n": 2})
    stale = client.write_option(last_update_time=first.update_time)
    current = client.write_option(last_update_time=second.update_time)

    with pytest.raises(exceptions.FailedPrecondition):
        reference.update({"n": 3}, option=stale)
    with pytest.raises(exceptions.FailedPrecondition):
        reference.delete(option=stale)
    reference.update({"n": 4}, option=current)
    assert reference.get().get("n") == 4


def test_exists_preconditions(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("a")
    with pytest.raises(exceptions.NotFound):
        reference.delete(option=client.write_option(exists=True))

    reference.set({"n": 1})
    reference.delete(option=client.write_option(exists=True))
    assert not reference.get().exists


def test_unchanged_write_keeps_update_time(
    collection: firestore.CollectionReference,
) -> None:
    reference = collection.document("a")
    first = reference.set({"n": 1})
    second = reference.set({"n": 1})
    assert second.update_time == first.update_time


def test_server_timestamp_is_commit_time(
    collection: firestore.CollectionReference,
) -> None:
    reference = collection.document("a")
    before = datetime.datetime.now(datetime.UTC)
    result = reference.set({"claimed_at": firestore.SERVER_TIMESTAMP, "n": 1})
    stored = reference.get().get("claimed_at")

    assert stored == result.update_time
    assert before - datetime.timedelta(seconds=5) < stored
    assert stored < before + datetime.timedelta(seconds=60)


def test_server_timestamp_only_document(
    collection: firestore.CollectionReference,
) -> None:
    reference = collection.document("a")
    reference.create({"claimed_at": firestore.SERVER_TIMESTAMP})
    assert isinstance(reference.get().get("claimed_at"), datetime.datetime)


def test_increment_transforms(collection: firestore.CollectionReference) -> None:
    reference = collection.document("a")
    reference.set({"count": 1, "ratio": 1.5, "text": "x"})

    reference.update(
        {
            "count": firestore.Increment(2),
            "ratio": firestore.Increment(1),
            "text": firestore.Increment(5),
            "absent": firestore.Increment(7),
            "mixed": firestore.Increment(0.5),
        }
    )

    assert reference.get().to_dict() == {
        "count": 3,
        "ratio": 2.5,
        "text": 5,
        "absent": 7,
        "mixed": 0.5,
    }


def test_increment_saturates_int64(collection: firestore.CollectionReference) -> None:
    reference = collection.document("a")
    reference.set({"high": 2**63 - 2, "low": -(2**63) + 1})

    reference.update({"high": firestore.Increment(10), "low": firestore.Increment(-10)})

    assert reference.get().to_dict() == {"high": 2**63 - 1, "low": -(2**63)}


def test_maximum_minimum_transforms(
    collection: firestore.CollectionReference,
) -> None:
    reference = collection.document("a")
    reference.set({"high": 5, "low": 5, "same": 3, "text": "x"})

    reference.update(
        {
            "high": firestore.Maximum(7.5),
            "low": firestore.Minimum(2),
            "same": firestore.Maximum(3.0),
            "text": firestore.Minimum(1),
            "absent": firestore.Maximum(4),
        }
    )
    stored = reference.get().to_dict()

    assert stored == {"high": 7.5, "low": 2, "same": 3, "text": 1, "absent": 4}
    assert isinstance(stored["same"], int)


def test_array_transforms(collection: firestore.CollectionReference) -> None:
    reference = collection.document("a")
    reference.set({"tags": ["a", "b", "a", 1], "other": "not an array"})

    reference.update(
        {
            "tags": firestore.ArrayUnion(["b", "c", "c", 1.0]),
            "other": firestore.ArrayRemove(["x"]),
        }
    )
    reference.update({"removed": firestore.ArrayRemove(["a"])})
    reference.update({"tags": firestore.ArrayRemove(["a"])})

    assert reference.get().to_dict() == {
        "tags": ["b", 1, "c"],
        "other": [],
        "removed": [],
    }


def test_transform_results_returned(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("a")
    reference.set({"n": 1})
    batch = client.batch()
    batch.update(
        reference, {"n": firestore.Increment(4), "at": firestore.SERVER_TIMESTAMP}
    )
    sent = [transform.field_path for transform in batch._write_pbs[0].update_transforms]

    [result] = batch.commit()
    by_field = dict(zip(sent, result.transform_results, strict=True))

    assert by_field["n"].integer_value == 5
    assert by_field["at"].timestamp_value == result.update_time


def test_batch_is_atomic(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    existing = collection.document("existing")
    existing.set({"n": 1})
    batch = client.batch()
    batch.set(collection.document("written"), {"n": 1})
    batch.update(existing, {"n": 2})
    batch.create(existing, {"n": 3})

    with pytest.raises(exceptions.AlreadyExists):
        batch.commit()
    assert not collection.document("written").get().exists
    assert existing.get().get("n") == 1


def test_batch_writes_same_document(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("a")
    batch = client.batch()
    batch.create(reference, {"n": 1})
    batch.update(reference, {"n": firestore.Increment(1)})
    batch.update(reference, {"m": 1})

    results = batch.commit()

    assert reference.get().to_dict() == {"n": 2, "m": 1}
    assert len(results) == 3


def test_get_all_reports_missing(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    collection.document("a").set({"n": 1, "m": 2})
    collection.document("c").set({"n": 3})
    references = [collection.document(name) for name in ("a", "b", "c")]

    snapshots = {snapshot.id: snapshot for snapshot in client.get_all(references)}

    assert set(snapshots) == {"a", "b", "c"}
    assert snapshots["a"].to_dict() == {"n": 1, "m": 2}
    assert not snapshots["b"].exists
    assert snapshots["c"].to_dict() == {"n": 3}


def test_get_field_mask(collection: firestore.CollectionReference) -> None:
    reference = collection.document("a")
    reference.set({"n": 1, "nested": {"x": 1, "y": 2}, "other": 3})

    snapshot = reference.get(field_paths=["n", "nested.y"])

    assert snapshot.to_dict() == {"n": 1, "nested": {"y": 2}}


def test_value_types_round_trip(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    reference = collection.document("a")
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC)
    data = {
        "null": None,
        "bool": True,
        "int": -(2**63),
        "double": 1.25,
        "time": moment,
        "text": "héllo",
        "bytes": b"\x00\xff",
        "ref": collection.document("other"),
        "geo": firestore.GeoPoint(51.5, -0.12),
        "array": [1, "two", {"three": 3}],
        "map": {"inner": {"deep": [True]}},
    }
    reference.set(data)

    stored = reference.get().to_dict()

    assert stored["ref"].path == collection.document("other").path
    assert stored["time"] == moment
    assert {key: value for key, value in stored.items() if key != "ref"} == {
        key: value for key, value in data.items() if key != "ref"
    }


def test_reserved_document_id_rejected(
    collection: firestore.CollectionReference,
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="reserved"):
        collection.document("__reserved__").set({"a": 1})


def test_reserved_field_name_rejected(
    collection: firestore.CollectionReference,
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="reserved"):
        collection.document("a").set({"__hidden__": 1})


def test_nested_array_rejected(collection: firestore.CollectionReference) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="array directly inside"):
        collection.document("a").set({"grid": [[1, 2], [3]]})


def test_oversized_document_rejected(
    collection: firestore.CollectionReference,
) -> None:
    reference = collection.document("big")
    reference.set({"a": "x" * 600_000})
    with pytest.raises(exceptions.InvalidArgument, match="exceeds the maximum"):
        reference.set({"a": "x" * 600_000, "b": "y" * 600_000})
    with pytest.raises(exceptions.InvalidArgument, match="exceeds the maximum"):
        reference.update({"b": "y" * 600_000})
    assert set(reference.get().to_dict()) == {"a"}


def test_list_documents_pages(collection: firestore.CollectionReference) -> None:
    for index in range(7):
        collection.document(f"d{index}").set({"n": index})
    # Only a subcollection: a "missing" document that list_documents still shows.
    collection.document("parent").collection("child").document("x").set({"n": 0})

    listed = [reference.id for reference in collection.list_documents(page_size=2)]

    assert listed == [*(f"d{index}" for index in range(7)), "parent"]


def test_list_documents_raw_pages(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    for index in range(5):
        collection.document(f"d{index}").set({"n": index})
    parent = f"{DATABASE}/documents"

    first = api.list_documents(
        request={"parent": parent, "collection_id": collection.id, "page_size": 2}
    )
    pages = list(first.pages)

    assert [len(page.documents) for page in pages] == [2, 2, 1]
    assert pages[0].documents[0].fields["n"].integer_value == 0
    assert pages[-1].next_page_token == ""


def test_collections_lists_subcollections(
    collection: firestore.CollectionReference,
) -> None:
    parent = collection.document("p")
    parent.collection("beta").document("x").set({})
    parent.collection("alpha").document("y").collection("deep").document("z").set({})

    assert sorted(child.id for child in parent.collections()) == ["alpha", "beta"]


def test_get_document_not_found(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    name = f"{DATABASE}/documents/{collection.id}/missing"
    with pytest.raises(exceptions.NotFound, match="not found"):
        api.get_document(request={"name": name})


def test_document_rpcs(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    parent = f"{DATABASE}/documents"
    created = api.create_document(
        request={
            "parent": parent,
            "collection_id": collection.id,
            "document": {"fields": {"n": {"integer_value": 1}}},
        }
    )
    document_id = created.name.rsplit("/", 1)[1]

    updated = api.update_document(
        request={
            "document": {"name": created.name, "fields": {"m": {"string_value": "x"}}},
            "update_mask": {"field_paths": ["m"]},
            "current_document": {"exists": True},
        }
    )
    api.delete_document(request={"name": created.name})

    assert len(document_id) == 20
    assert dict(updated.fields) == {
        "n": document.Value(integer_value=1),
        "m": document.Value(string_value="x"),
    }
    with pytest.raises(exceptions.NotFound):
        api.get_document(request={"name": created.name})


@pytest.mark.parametrize(
    "name",
    [
        f"{DATABASE}/documents/odd",
        f"{DATABASE}/documents/c/..",
        f"{DATABASE}/documents/c//d",
        f"{DATABASE}/documents/c/" + "x" * 1501,
        "projects/p/databases/(default)/docs/c/d",
    ],
)
def test_invalid_document_names(api: FirestoreClient, name: str) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        api.get_document(request={"name": name})


def test_commit_needs_operation(api: FirestoreClient) -> None:
    request = requests.CommitRequest(database=DATABASE, writes=[{}])
    with pytest.raises(exceptions.InvalidArgument, match="update, delete or transform"):
        api.commit(request=request)


def test_begin_read_only_options(api: FirestoreClient) -> None:
    response = api.begin_transaction(
        request={
            "database": DATABASE,
            "options": common.TransactionOptions(read_only={}),
        }
    )
    assert len(response.transaction) > 0


def test_list_documents_sibling_ids(collection: firestore.CollectionReference) -> None:
    # "a-b" sorts between "a" and "a/..." by string, but is a sibling of "a".
    collection.document("a").set({})
    collection.document("a").collection("sub").document("x").set({})
    collection.document("a-b").set({})
    collection.document("b").collection("sub").document("y").set({})

    listed = [reference.id for reference in collection.list_documents(page_size=1)]

    assert listed == ["a", "a-b", "b"]


def test_timestamps_rounded_to_microseconds(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    name = f"{DATABASE}/documents/{collection.id}/a"
    write = {
        "update": {
            "name": name,
            "fields": {
                "at": {"timestamp_value": {"seconds": 10, "nanos": 123_456_789}}
            },
        }
    }
    api.commit(request={"database": DATABASE, "writes": [write]})

    stored = api.get_document(request={"name": name})

    assert stored.fields["at"].timestamp_value.nanosecond == 123_456_000


def test_create_document_id_with_slash(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match='must not contain "/"'):
        api.create_document(
            request={
                "parent": f"{DATABASE}/documents",
                "collection_id": collection.id,
                "document_id": "x/sub/y",
                "document": {},
            }
        )


def test_add_generates_id(collection: firestore.CollectionReference) -> None:
    _, reference = collection.add({"n": 1})
    assert reference.get().to_dict() == {"n": 1}


def test_recursive_delete_removes_tree(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    collection.document("a").set({"n": 1})
    collection.document("a").collection("sub").document("x").set({"n": 2})
    collection.document("b").collection("sub").document("y").set({"n": 3})

    deleted = client.recursive_delete(collection)

    assert deleted == 3
    assert list(collection.list_documents()) == []


def test_bulk_writer_reports_failures(
    client: firestore.Client, collection: firestore.CollectionReference
) -> None:
    collection.document("exists").set({"n": 1})
    failures: list[tuple[str, int]] = []

    def on_error(failure, writer) -> bool:  # type: ignore[no-untyped-def]
        failures.append((failure.operation.reference.id, failure.code))
        return False

    writer = client.bulk_writer()
    writer.on_write_error(on_error)
    writer.create(collection.document("exists"), {"n": 2})
    writer.create(collection.document("new"), {"n": 3})
    writer.close()

    assert failures == [("exists", grpc.StatusCode.ALREADY_EXISTS.value[0])]
    assert collection.document("exists").get().get("n") == 1
    assert collection.document("new").get().get("n") == 3


def test_batch_write_one_per_document(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    name = f"{DATABASE}/documents/{collection.id}/a"
    writes = [{"update": {"name": name}}, {"delete": name}]
    with pytest.raises(exceptions.InvalidArgument, match="one write per document"):
        api.batch_write(request={"database": DATABASE, "writes": writes})


def test_too_many_transforms_rejected(
    collection: firestore.CollectionReference,
) -> None:
    data = {f"f{index}": firestore.Increment(1) for index in range(501)}
    with pytest.raises(exceptions.InvalidArgument, match="maximum of 500"):
        collection.document("a").set(data)


def test_deep_nesting_rejected(collection: firestore.CollectionReference) -> None:
    allowed: dict[str, object] = {"leaf": 1}
    for _ in range(19):
        allowed = {"m": allowed}
    collection.document("ok").set({"top": allowed})

    too_deep: object = {"leaf": 1}
    for _ in range(10):
        too_deep = [{"m": too_deep}]
    with pytest.raises(exceptions.InvalidArgument, match="levels deep"):
        collection.document("deep").set({"top": too_deep})


def test_long_field_name_rejected(collection: firestore.CollectionReference) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="longer than 1500 bytes"):
        collection.document("a").set({"x" * 1501: 1})


def test_oversized_request_rejected(
    api: FirestoreClient, collection: firestore.CollectionReference
) -> None:
    writes = [
        {
            "update": {
                "name": f"{DATABASE}/documents/{collection.id}/d{index}",
                "fields": {"blob": {"bytes_value": b"x" * 1_000_000}},
            }
        }
        for index in range(11)
    ]
    with pytest.raises(exceptions.InvalidArgument, match="maximum of 10,485,760"):
        api.commit(request={"database": DATABASE, "writes": writes})
    assert list(collection.list_documents()) == []


def test_reserved_transform_path_rejected(
    collection: firestore.CollectionReference,
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="reserved"):
        collection.document("a").set({"__count__": firestore.Increment(1)})
    assert not collection.document("a").get().exists
