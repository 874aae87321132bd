"""Firestore queries: every filter operator, order, cursors, limits, aggregations."""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1 import And, FieldFilter, Or
from google.cloud.firestore_v1.field_path import FieldPath
from google.cloud.firestore_v1.services.firestore import FirestoreClient
from google.cloud.firestore_v1.services.firestore.transports import (
    FirestoreGrpcTransport,
)

from taskctl.localcloud.runtime import RuntimeInfo
from tests.conftest import PROJECT

MOMENT = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


@pytest.fixture
def client(
    local_cloud: RuntimeInfo, monkeypatch: pytest.MonkeyPatch
) -> Iterator[firestore.Client]:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", local_cloud.grpc_endpoint)
    shared = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
    yield shared
    shared.close()


@pytest.fixture
def tasks(client: firestore.Client, unique: str) -> firestore.CollectionReference:
    """Six task documents with numbers, strings, arrays, nulls and a NaN."""
    collection = client.collection(f"tasks-{unique}")
    rows = {
        "t1": {"n": 1, "status": "done", "tags": ["a", "b"], "score": 0.5},
        "t2": {"n": 2, "status": "open", "tags": ["b"], "score": None},
        "t3": {"n": 3.0, "status": "open", "tags": [], "score": math.nan},
        "t4": {"n": 4, "status": "failed", "tags": ["c"], "score": 2.5},
        "t5": {"n": "5", "status": "done", "score": 1.0},
        "t6": {"status": "open", "tags": ["a", "c"]},
    }
    for document_id, data in rows.items():
        collection.document(document_id).set(data)
    return collection


def ids(query: firestore.Query) -> list[str]:
    return [snapshot.id for snapshot in query.stream()]


@pytest.mark.parametrize(
    ("field", "operator", "value", "expected"),
    [
        ("n", "==", 3, ["t3"]),
        ("n", "==", "5", ["t5"]),
        ("n", "!=", 2, ["t1", "t3", "t4", "t5"]),
        ("n", "<", 3, ["t1", "t2"]),
        ("n", "<=", 3, ["t1", "t2", "t3"]),
        ("n", ">", 3, ["t4"]),
        ("n", ">=", 3, ["t3", "t4"]),
        ("n", ">", "0", ["t5"]),
        ("tags", "array_contains", "a", ["t1", "t6"]),
        ("tags", "array_contains_any", ["c", "b"], ["t1", "t2", "t4", "t6"]),
        ("status", "in", ["open", "failed"], ["t2", "t3", "t4", "t6"]),
        ("n", "in", [1.0, "5"], ["t1", "t5"]),
        ("tags", "in", [["b"], ["c", "a"]], ["t2"]),
        ("tags", "==", ["a", "b"], ["t1"]),
        ("status", "not-in", ["open", "failed"], ["t1", "t5"]),
        ("score", "not-in", [0.5, None], []),
        ("score", "==", None, ["t2"]),
        ("score", "==", math.nan, ["t3"]),
        ("score", "!=", None, ["t1", "t3", "t4", "t5"]),
        ("score", "!=", math.nan, ["t1", "t4", "t5"]),
    ],
)
def test_field_filter_operators(
    tasks: firestore.CollectionReference,
    field: str,
    operator: str,
    value: object,
    expected: list[str],
) -> None:
    query = tasks.where(filter=FieldFilter(field, operator, value))
    assert sorted(ids(query)) == expected


def test_and_or_filters(tasks: firestore.CollectionReference) -> None:
    either = Or(
        [
            FieldFilter("status", "==", "failed"),
            FieldFilter("tags", "array_contains", "a"),
        ]
    )
    both = And([FieldFilter("status", "==", "open"), either])

    assert sorted(ids(tasks.where(filter=either))) == ["t1", "t4", "t6"]
    assert ids(tasks.where(filter=both)) == ["t6"]


def test_inequality_orders_by_field(tasks: firestore.CollectionReference) -> None:
    query = tasks.where(filter=FieldFilter("score", ">", 0))
    assert ids(query) == ["t1", "t5", "t4"]


def test_order_by_direction_and_limit(tasks: firestore.CollectionReference) -> None:
    numbers = tasks.where(filter=FieldFilter("n", "<", 10))

    assert ids(numbers.order_by("n")) == ["t1", "t2", "t3", "t4"]
    assert ids(numbers.order_by("n", direction=firestore.Query.DESCENDING)) == [
        "t4",
        "t3",
        "t2",
        "t1",
    ]
    assert ids(numbers.order_by("n").limit(2)) == ["t1", "t2"]
    assert ids(numbers.order_by("n").offset(1).limit(2)) == ["t2", "t3"]
    last_two = numbers.order_by("n").limit_to_last(2).get()
    assert [snapshot.id for snapshot in last_two] == ["t3", "t4"]


def test_order_by_skips_missing_field(tasks: firestore.CollectionReference) -> None:
    assert "t6" not in ids(tasks.order_by("n"))
    assert "t5" not in ids(tasks.order_by("tags"))


def test_order_by_name_breaks_ties(tasks: firestore.CollectionReference) -> None:
    assert ids(tasks.order_by("status")) == ["t1", "t5", "t4", "t2", "t3", "t6"]
    assert ids(tasks.order_by("status", direction=firestore.Query.DESCENDING)) == [
        "t6",
        "t3",
        "t2",
        "t4",
        "t5",
        "t1",
    ]


def test_value_type_order(client: firestore.Client, unique: str) -> None:
    collection = client.collection(f"order-{unique}")
    ordered = [
        None,
        False,
        True,
        -math.inf,
        -1,
        0.5,
        2,
        MOMENT,
        "",
        "a",
        "b",
        b"\x00",
        collection.document("a"),
        collection.document("b"),
        firestore.GeoPoint(-10, 5),
        firestore.GeoPoint(10, -5),
        [1],
        [1, 2],
        [2],
        {"a": 1},
        {"b": 0},
    ]
    for index, value in enumerate(reversed(ordered)):
        collection.document(f"v{index:02d}").set({"v": value})

    found = [snapshot.id for snapshot in collection.order_by("v").stream()]

    assert found == [f"v{index:02d}" for index in reversed(range(len(ordered)))]


def test_nan_sorts_before_numbers(tasks: firestore.CollectionReference) -> None:
    query = tasks.where(filter=FieldFilter("score", ">=", -math.inf)).order_by("score")
    assert ids(query) == ["t1", "t5", "t4"]
    assert ids(tasks.order_by("score"))[:2] == ["t2", "t3"]


def test_cursors(tasks: firestore.CollectionReference) -> None:
    numbers = tasks.where(filter=FieldFilter("n", "<", 10)).order_by("n")

    assert ids(numbers.start_at({"n": 2})) == ["t2", "t3", "t4"]
    assert ids(numbers.start_after({"n": 2})) == ["t3", "t4"]
    assert ids(numbers.end_at({"n": 3})) == ["t1", "t2", "t3"]
    assert ids(numbers.end_before({"n": 3})) == ["t1", "t2"]
    assert ids(numbers.start_after({"n": 1}).end_before({"n": 4})) == ["t2", "t3"]


def test_cursor_from_snapshot(tasks: firestore.CollectionReference) -> None:
    by_status = tasks.order_by("status")
    first_page = list(by_status.limit(3).stream())

    second_page = ids(by_status.start_after(first_page[-1]).limit(3))

    assert [snapshot.id for snapshot in first_page] == ["t1", "t5", "t4"]
    assert second_page == ["t2", "t3", "t6"]


def test_filter_on_document_id(tasks: firestore.CollectionReference) -> None:
    wanted = [tasks.document("t2"), tasks.document("t5")]
    by_id = tasks.where(filter=FieldFilter(FieldPath.document_id(), "in", wanted))
    after = tasks.where(
        filter=FieldFilter(FieldPath.document_id(), ">", tasks.document("t4"))
    )

    assert ids(by_id) == ["t2", "t5"]
    assert ids(after) == ["t5", "t6"]


def test_select_projects_fields(tasks: firestore.CollectionReference) -> None:
    snapshots = list(tasks.select(["status"]).limit(1).stream())
    keys_only = list(tasks.select([]).limit(1).stream())

    assert snapshots[0].to_dict() == {"status": "done"}
    assert keys_only[0].to_dict() == {}


def test_collection_group_query(client: firestore.Client, unique: str) -> None:
    group = f"attempts-{unique}"
    client.collection(f"a-{unique}").document("x").collection(group).document("1").set(
        {"ok": True}
    )
    client.collection(f"b-{unique}").document("y").collection(group).document("2").set(
        {"ok": False}
    )
    client.collection(group).document("3").set({"ok": True})
    client.collection(f"c-{unique}").document(group).set({"ok": True})

    found = client.collection_group(group).where(filter=FieldFilter("ok", "==", True))

    assert sorted(snapshot.id for snapshot in found.stream()) == ["1", "3"]
    assert len(list(client.collection_group(group).stream())) == 3


def test_subcollection_query_scope(client: firestore.Client, unique: str) -> None:
    parent = client.collection(f"p-{unique}").document("x")
    parent.collection("items").document("1").set({"n": 1})
    client.collection(f"p-{unique}").document("y").collection("items").document(
        "2"
    ).set({"n": 1})

    assert [snapshot.id for snapshot in parent.collection("items").stream()] == ["1"]


def test_aggregations(tasks: firestore.CollectionReference) -> None:
    numbers = tasks.where(filter=FieldFilter("n", "<", 10))
    aggregation = numbers.count(alias="count")
    total = numbers.sum("n", alias="total")
    average = numbers.avg("n", alias="average")

    [[count]] = aggregation.get()
    [[summed]] = total.get()
    [[averaged]] = average.get()

    assert count.value == 4
    assert summed.value == 10
    assert averaged.value == 2.5


def test_empty_query_returns_nothing(tasks: firestore.CollectionReference) -> None:
    assert ids(tasks.where(filter=FieldFilter("status", "==", "absent"))) == []


def test_in_with_too_many_values(tasks: firestore.CollectionReference) -> None:
    query = tasks.where(filter=FieldFilter("n", "in", list(range(31))))
    with pytest.raises(exceptions.InvalidArgument, match="at most 30"):
        ids(query)


def test_not_in_with_too_many_values(tasks: firestore.CollectionReference) -> None:
    query = tasks.where(filter=FieldFilter("n", "not-in", list(range(11))))
    with pytest.raises(exceptions.InvalidArgument, match="at most 10"):
        ids(query)


def test_query_in_transaction(
    client: firestore.Client, tasks: firestore.CollectionReference
) -> None:
    open_tasks = tasks.where(filter=FieldFilter("status", "==", "open"))

    @firestore.transactional
    def close_all(transaction: firestore.Transaction) -> int:
        snapshots = list(open_tasks.stream(transaction=transaction))
        for snapshot in snapshots:
            transaction.update(snapshot.reference, {"status": "closed"})
        return len(snapshots)

    assert close_all(client.transaction()) == 3
    assert ids(open_tasks) == []


@pytest.fixture
def api(channel) -> FirestoreClient:  # type: ignore[no-untyped-def]
    return FirestoreClient(transport=FirestoreGrpcTransport(channel=channel))


def run_raw(api: FirestoreClient, query: dict[str, object]) -> list[object]:
    request = {
        "parent": f"projects/{PROJECT}/databases/(default)/documents",
        "structured_query": query,
    }
    return list(api.run_query(request=request))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"from_": []}, "exactly one collection"),
        ({"from_": [{"collection_id": "__bad__"}]}, "reserved"),
        (
            {
                "from_": [{"collection_id": "c"}],
                "where": {"field_filter": {"field": {"field_path": "a"}, "value": {}}},
            },
            "needs an operator",
        ),
        (
            {
                "from_": [{"collection_id": "c"}],
                "where": {
                    "field_filter": {
                        "field": {"field_path": "__name__"},
                        "op": "EQUAL",
                        "value": {"string_value": "x"},
                    }
                },
            },
            "reference values",
        ),
        (
            {
                "from_": [{"collection_id": "c"}],
                "where": {
                    "field_filter": {
                        "field": {"field_path": "a"},
                        "op": "IN",
                        "value": {"array_value": {}},
                    }
                },
            },
            "non-empty array",
        ),
        (
            {
                "from_": [{"collection_id": "c"}],
                "where": {"composite_filter": {"op": "AND"}},
            },
            "at least one filter",
        ),
        (
            {
                "from_": [{"collection_id": "c"}],
                "start_at": {"values": [{"integer_value": 1}, {"integer_value": 2}]},
            },
            "orders by only 1",
        ),
        ({"from_": [{"collection_id": "c"}], "offset": -1}, "must not be negative"),
        (
            {
                "from_": [{"collection_id": "c"}],
                "order_by": [{"field": {"field_path": "a."}}],
            },
            "invalid field path",
        ),
    ],
)
def test_invalid_queries_rejected(
    api: FirestoreClient, query: dict[str, object], message: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=message):
        run_raw(api, query)


def test_kindless_query_under_document(
    api: FirestoreClient, client: firestore.Client, unique: str
) -> None:
    parent = client.collection(f"root-{unique}").document("p")
    parent.collection("a").document("1").set({})
    parent.collection("b").document("2").set({})
    parent.collection("b").document("2").collection("c").document("3").set({})
    client.collection(f"root-{unique}").document("q").set({})

    responses = list(
        api.run_query(
            request={
                "parent": f"projects/{PROJECT}/databases/(default)/documents/{parent.path}",
                "structured_query": {"from_": [{"all_descendants": True}]},
            }
        )
    )

    found = [response.document.name.rsplit("/", 1)[1] for response in responses]
    assert found == ["1", "2", "3"]
