"""Cloud Logging v2 over gRPC: writing, listing with filters, paging and tailing."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
from google.cloud.logging_v2.services.logging_service_v2.transports import (
    LoggingServiceV2GrpcTransport,
)
from google.cloud.logging_v2.types import LogEntry, TailLogEntriesRequest
from google.protobuf import struct_pb2

from taskctl.localcloud.runtime import RuntimeInfo

BASE_SECONDS = 1_700_000_000  # 2023-11-14T22:13:20Z


@pytest.fixture
def client(channel: grpc.Channel) -> LoggingServiceV2Client:
    return LoggingServiceV2Client(
        transport=LoggingServiceV2GrpcTransport(channel=channel)
    )


@pytest.fixture
def project(unique: str) -> str:
    return f"logs-{unique}"


def log_name(project: str, log_id: str = "app") -> str:
    return f"projects/{project}/logs/{log_id}"


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    payload = struct_pb2.Struct()
    payload.update(values)
    return payload


def entry(insert_id: str, offset: float, **fields: Any) -> LogEntry:
    seconds = BASE_SECONDS + int(offset)
    nanos = round((offset - int(offset)) * 1e9)
    return LogEntry(
        insert_id=insert_id, timestamp={"seconds": seconds, "nanos": nanos}, **fields
    )


def write(client: LoggingServiceV2Client, project: str, *entries: LogEntry) -> None:
    client.write_log_entries(
        log_name=log_name(project),
        resource={"type": "global", "labels": {"project_id": project}},
        entries=list(entries),
    )


def insert_ids(
    client: LoggingServiceV2Client, project: str, filter_: str = "", **request: Any
) -> list[str]:
    found = client.list_log_entries(
        request={
            "resource_names": [f"projects/{project}"],
            "filter": filter_,
            **request,
        }
    )
    return [item.insert_id for item in found]


@pytest.fixture
def sample(client: LoggingServiceV2Client, project: str) -> str:
    """Six entries covering each payload kind, severity and label used below."""
    write(
        client,
        project,
        entry("a", 0, severity="DEBUG", text_payload="cache warmed in 12 ms"),
        entry(
            "b",
            1,
            severity="INFO",
            json_payload=struct(
                {
                    "message": "task done",
                    "task": {"id": "t-1", "attempt": 2},
                    "ok": True,
                }
            ),
            labels={"task_type": "resize", "k.x": "dotted"},
        ),
        entry(
            "c",
            2,
            severity="WARNING",
            json_payload=struct(
                {"message": "slow task", "task": {"id": "t-2", "attempt": 10}}
            ),
            labels={"task_type": "email"},
            trace=f"projects/{project}/traces/abc123",
            span_id="000000000000004a",
        ),
        entry("d", 3, severity="ERROR", text_payload="Traceback: KeyError 'user'"),
        entry(
            "e",
            4.5,
            severity="CRITICAL",
            json_payload=struct({"message": "dead-lettered", "reason": None}),
        ),
        entry("f", 5, text_payload="no severity at all"),
    )
    return project


FILTER_CASES = [
    # comparison operators on severity, by level order and numbers
    ("severity=ERROR", {"d"}),
    ("severity=error", {"d"}),
    ("severity!=ERROR", {"a", "b", "c", "e", "f"}),
    ("severity>=WARNING", {"c", "d", "e"}),
    ("severity>WARNING", {"d", "e"}),
    ("severity<INFO", {"a", "f"}),
    ("severity<=INFO", {"a", "b", "f"}),
    ("severity>=500", {"d", "e"}),
    ("severity=DEFAULT", {"f"}),
    # timestamps compare as instants, whatever the offset spelling
    ('timestamp>="2023-11-14T22:13:22Z"', {"c", "d", "e", "f"}),
    ('timestamp<"2023-11-14T22:13:22Z"', {"a", "b"}),
    ('timestamp>"2023-11-14T23:13:23+01:00"', {"e", "f"}),
    ('timestamp="2023-11-14T22:13:24.5Z"', {"e"}),
    (
        'timestamp>="2023-11-14T22:13:21Z" timestamp<="2023-11-14T22:13:23Z"',
        {"b", "c", "d"},
    ),
    # has (":") is a case-insensitive substring test, and ":*" tests presence
    ("textPayload:keyerror", {"d"}),
    ('textPayload:"warmed in"', {"a"}),
    ("jsonPayload.message:task", {"b", "c"}),
    ("jsonPayload.task:t-2", {"c"}),
    ("jsonPayload.reason:*", {"e"}),
    ("trace:*", {"c"}),
    ("-labels.task_type:*", {"a", "d", "e", "f"}),
    # nested JSON fields, numbers compare as numbers
    ('jsonPayload.task.id="t-1"', {"b"}),
    ("jsonPayload.task.attempt>2", {"c"}),
    ("jsonPayload.task.attempt>=2", {"b", "c"}),
    ("jsonPayload.task.attempt<10", {"b"}),
    ("jsonPayload.ok=true", {"b"}),
    ("jsonPayload.reason=NULL_VALUE", {"e"}),
    # labels, quoted keys, resource, log name, insert ID, trace, span ID
    ("labels.task_type=resize", {"b"}),
    ('labels."k.x"=dotted', {"b"}),
    ("labels.task_type!=resize", {"a", "c", "d", "e", "f"}),
    ("resource.type=global", {"a", "b", "c", "d", "e", "f"}),
    ('insertId="c"', {"c"}),
    ("spanId=000000000000004a", {"c"}),
    ('trace:"abc123"', {"c"}),
    ('log_id("app")', {"a", "b", "c", "d", "e", "f"}),
    ('log_id("other")', set()),
    # regular expressions
    (r'textPayload=~"^cache\s+warmed"', {"a"}),
    ('textPayload!~"^cache"', {"b", "c", "d", "e", "f"}),
    # boolean operators, NOT and "-", parentheses, implicit AND
    ("severity=ERROR OR severity=DEBUG", {"a", "d"}),
    ("severity>=INFO AND jsonPayload.message:task", {"b", "c"}),
    ("severity>=INFO jsonPayload.message:task", {"b", "c"}),
    ("NOT severity>=INFO", {"a", "f"}),
    ("-severity>=INFO", {"a", "f"}),
    ("NOT (severity=ERROR OR severity=CRITICAL)", {"a", "b", "c", "f"}),
    ('insertId=("a" OR "d")', {"a", "d"}),
    # OR binds tighter than AND: this is a AND (d OR e), not (a AND d) OR e
    ('insertId="a" AND insertId="d" OR insertId="e"', set()),
    ('insertId="e" AND insertId="d" OR insertId="e"', {"e"}),
    # global restrictions search every field
    ("traceback", {"d"}),
    ('"dead-lettered"', {"e"}),
    ("resize", {"b"}),
    ("cache AND warmed", {"a"}),
    ("cache and", set()),  # lower-case "and" is a search term, not an operator
    # functions and comments
    ('SEARCH("keyerror")', {"d"}),
    ('SEARCH(jsonPayload.message, "task")', {"b", "c"}),
    ("sample(insertId, 1)", {"a", "b", "c", "d", "e", "f"}),
    ("severity=ERROR -- only errors", {"d"}),
]


@pytest.mark.parametrize(("filter_", "expected"), FILTER_CASES)
def test_list_filter_operators(
    client: LoggingServiceV2Client, sample: str, filter_: str, expected: set[str]
) -> None:
    assert set(insert_ids(client, sample, filter_)) == expected


def test_write_fills_server_fields(
    client: LoggingServiceV2Client, project: str
) -> None:
    before = time.time()
    client.write_log_entries(
        log_name=log_name(project),
        resource={"type": "global"},
        labels={"env": "test", "shared": "request"},
        entries=[LogEntry(text_payload="hello", labels={"shared": "entry"})],
    )

    [written] = list(client.list_log_entries(resource_names=[f"projects/{project}"]))
    assert written.insert_id
    assert written.log_name == log_name(project)
    assert written.resource.type == "global"
    assert dict(written.labels) == {"env": "test", "shared": "entry"}
    assert before - 5 <= written.timestamp.timestamp() <= time.time() + 5
    assert before - 5 <= written.receive_timestamp.timestamp() <= time.time() + 5


def test_write_drops_duplicate_entries(
    client: LoggingServiceV2Client, project: str
) -> None:
    write(client, project, entry("same", 0, text_payload="first"))
    write(client, project, entry("same", 0, text_payload="second"))
    write(client, project, entry("same", 1, text_payload="other time"))

    found = list(client.list_log_entries(resource_names=[f"projects/{project}"]))
    assert [item.text_payload for item in found] == ["first", "other time"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"log_name": ""}, "log_name is missing"),
        ({"log_name": "projects/p/logs/a b"}, "invalid log ID"),
        ({"log_name": "logs/app"}, "invalid log_name"),
        ({"resource": None}, "resource is missing"),
    ],
)
def test_write_rejects_invalid_entry(
    client: LoggingServiceV2Client,
    project: str,
    overrides: dict[str, Any],
    message: str,
) -> None:
    request: dict[str, Any] = {
        "log_name": log_name(project),
        "resource": {"type": "global"},
        "entries": [LogEntry(text_payload="x")],
    }
    request.update(overrides)
    if request["resource"] is None:
        del request["resource"]

    with pytest.raises(exceptions.InvalidArgument) as raised:
        client.write_log_entries(request=request)

    assert message in raised.value.message
    assert insert_ids(client, project) == []


def test_write_partial_success_keeps_valid(
    client: LoggingServiceV2Client, project: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument) as raised:
        client.write_log_entries(
            request={
                "resource": {"type": "global"},
                "partial_success": True,
                "entries": [
                    LogEntry(
                        log_name=log_name(project), insert_id="good", text_payload="ok"
                    ),
                    LogEntry(insert_id="bad", text_payload="no log name"),
                ],
            }
        )

    assert "1 of 2 entries were not written" in raised.value.message
    assert insert_ids(client, project) == ["good"]


def test_write_dry_run_stores_nothing(
    client: LoggingServiceV2Client, project: str
) -> None:
    client.write_log_entries(
        request={
            "log_name": log_name(project),
            "resource": {"type": "global"},
            "dry_run": True,
            "entries": [LogEntry(text_payload="checked only")],
        }
    )

    assert insert_ids(client, project) == []


def test_list_orders_by_timestamp(client: LoggingServiceV2Client, project: str) -> None:
    # "y" and "x" share a timestamp, so insert_id breaks the tie.
    write(
        client,
        project,
        entry("z", 2),
        entry("y", 1),
        entry("x", 1),
        entry("w", 0),
    )

    assert insert_ids(client, project) == ["w", "x", "y", "z"]
    assert insert_ids(client, project, order_by="timestamp asc") == ["w", "x", "y", "z"]
    assert insert_ids(client, project, order_by="timestamp desc") == [
        "z",
        "y",
        "x",
        "w",
    ]


def test_list_rejects_unknown_order(
    client: LoggingServiceV2Client, project: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        insert_ids(client, project, order_by="severity desc")


def test_list_pages_with_tokens(client: LoggingServiceV2Client, project: str) -> None:
    write(client, project, *(entry(f"e{index}", index) for index in range(5)))

    pages = client.list_log_entries(
        request={"resource_names": [f"projects/{project}"], "page_size": 2}
    ).pages
    seen = [[item.insert_id for item in page.entries] for page in pages]

    assert seen == [["e0", "e1"], ["e2", "e3"], ["e4"]]


def test_list_last_page_has_no_token(
    client: LoggingServiceV2Client, project: str
) -> None:
    write(client, project, *(entry(f"e{index}", index) for index in range(4)))

    first = next(
        iter(
            client.list_log_entries(
                request={"resource_names": [f"projects/{project}"], "page_size": 4}
            ).pages
        )
    )

    assert len(first.entries) == 4
    assert first.next_page_token == ""


def test_list_pages_with_filter(client: LoggingServiceV2Client, project: str) -> None:
    write(
        client,
        project,
        *(
            entry(
                f"e{index:02d}", index, severity="ERROR" if index % 3 == 0 else "INFO"
            )
            for index in range(12)
        ),
    )

    pages = client.list_log_entries(
        request={
            "resource_names": [f"projects/{project}"],
            "filter": "severity=ERROR",
            "order_by": "timestamp desc",
            "page_size": 3,
        }
    ).pages
    seen = [[item.insert_id for item in page.entries] for page in pages]

    assert seen == [["e09", "e06", "e03"], ["e00"]]


def test_list_rejects_foreign_page_token(
    client: LoggingServiceV2Client, project: str
) -> None:
    write(client, project, *(entry(f"e{index}", index) for index in range(3)))
    first = client.list_log_entries(
        request={"resource_names": [f"projects/{project}"], "page_size": 1}
    )
    token = next(iter(first.pages)).next_page_token
    assert token

    with pytest.raises(exceptions.InvalidArgument):
        insert_ids(client, project, "severity>=DEFAULT", page_token=token)
    with pytest.raises(exceptions.InvalidArgument):
        insert_ids(client, project, page_token="not a token")


@pytest.mark.parametrize("page_size", [-1, 1001])
def test_list_rejects_page_size(
    client: LoggingServiceV2Client, project: str, page_size: int
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        insert_ids(client, project, page_size=page_size)


def test_list_accepts_max_page_size(
    client: LoggingServiceV2Client, project: str
) -> None:
    write(client, project, entry("only", 0))

    assert insert_ids(client, project, page_size=1000) == ["only"]


def test_list_default_page_size(client: LoggingServiceV2Client, project: str) -> None:
    write(client, project, *(entry(f"e{index:03d}", index) for index in range(51)))

    pages = client.list_log_entries(
        request={"resource_names": [f"projects/{project}"]}
    ).pages
    first = next(iter(pages))

    assert len(first.entries) == 50
    assert first.next_page_token


def test_list_reads_only_named_projects(
    client: LoggingServiceV2Client, project: str
) -> None:
    other = f"{project}-other"
    write(client, project, entry("mine", 0))
    write(client, other, entry("theirs", 0))

    assert insert_ids(client, project) == ["mine"]
    both = client.list_log_entries(
        resource_names=[f"projects/{project}", f"projects/{other}"]
    )
    assert sorted(item.insert_id for item in both) == ["mine", "theirs"]


@pytest.mark.parametrize(
    "resource_names",
    [[], ["projects/p"] * 101, ["buckets/b"]],
    ids=["missing", "over-100", "malformed"],
)
def test_list_rejects_resource_names(
    client: LoggingServiceV2Client, resource_names: list[str]
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        list(client.list_log_entries(request={"resource_names": resource_names}))


def test_list_rejects_long_filter(client: LoggingServiceV2Client, project: str) -> None:
    long_filter = " OR ".join(f'insertId="{index:05d}"' for index in range(1500))
    assert len(long_filter) > 20_000

    with pytest.raises(exceptions.InvalidArgument) as raised:
        insert_ids(client, project, long_filter)

    assert "20000" in raised.value.message


@pytest.mark.parametrize(
    ("filter_", "column"),
    [
        ("severity>=", 11),
        ("(severity=ERROR", 16),
        ("severity=ERROR)", 15),
        ('textPayload:"open', 13),
        ("severity=LOUD", 10),
        ('timestamp>"yesterday"', 11),
        ("nosuchfield=1", 1),
        ('textPayload=~"("', 14),
        ("severity=ERROR AND", 19),
        ("NOT", 4),
        ("timestamp>=2024-01-01T00:00:00Z", 12),
    ],
)
def test_list_rejects_invalid_filter(
    client: LoggingServiceV2Client, project: str, filter_: str, column: int
) -> None:
    with pytest.raises(exceptions.InvalidArgument) as raised:
        insert_ids(client, project, filter_)

    assert f"column {column}" in raised.value.message


def test_list_regex_is_linear_time(fresh_local_cloud: RuntimeInfo, unique: str) -> None:
    # A backtracking engine needs about 2**40 steps for this pattern on this
    # text, so the request would time out and the server would stop responding.
    # The server is the test's own so that such a failure stays in this test.
    with grpc.insecure_channel(fresh_local_cloud.grpc_endpoint) as own_channel:
        own_client = LoggingServiceV2Client(
            transport=LoggingServiceV2GrpcTransport(channel=own_channel)
        )
        project = f"logs-{unique}"
        write(
            own_client,
            project,
            entry("catastrophic", 0, text_payload="a" * 40 + "!"),
            entry("plain", 1, text_payload="aaaa"),
        )
        started = time.monotonic()

        found = own_client.list_log_entries(
            request={
                "resource_names": [f"projects/{project}"],
                "filter": 'textPayload=~"^(a+)+$"',
            },
            timeout=30,
        )
        matched = [item.insert_id for item in found]

        assert matched == ["plain"]
        assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "pattern",
    [
        "(?=a)b",  # lookahead, which RE2 does not support
        "(a)\\\\1",  # backreference
        "(a",
    ],
)
def test_list_rejects_non_re2_regex(
    client: LoggingServiceV2Client, project: str, pattern: str
) -> None:
    filter_ = f'textPayload=~"{pattern}"'

    with pytest.raises(exceptions.InvalidArgument) as raised:
        insert_ids(client, project, filter_)

    assert "invalid regular expression" in raised.value.message
    assert "RE2" in raised.value.message


@pytest.mark.parametrize(
    ("filter_", "column"),
    [
        ("(" * 300 + "a" + ")" * 300, 65),
        ("NOT " * 3000 + "a", 257),
        ("(-" * 100 + "a" + ")" * 100, 65),
        ("textPayload=" + "(" * 100 + "x" + ")" * 100, 77),
    ],
    ids=["parentheses", "not", "minus", "value"],
)
def test_list_rejects_deep_nesting(
    client: LoggingServiceV2Client, project: str, filter_: str, column: int
) -> None:
    with pytest.raises(exceptions.InvalidArgument) as raised:
        insert_ids(client, project, filter_)

    assert "64 levels" in raised.value.message
    assert f"column {column}" in raised.value.message


def test_list_accepts_max_nesting(client: LoggingServiceV2Client, sample: str) -> None:
    nested = "(" * 34 + "NOT " * 30 + "severity>=ERROR" + ")" * 34

    assert set(insert_ids(client, sample, nested)) == {"d", "e"}


def test_list_logs_names_each_log(client: LoggingServiceV2Client, project: str) -> None:
    for log_id in ("beta", "alpha", "run.googleapis.com%2Fstdout"):
        client.write_log_entries(
            log_name=log_name(project, log_id),
            resource={"type": "global"},
            entries=[LogEntry(text_payload=log_id)],
        )

    names = list(client.list_logs(parent=f"projects/{project}"))

    assert names == [
        log_name(project, "alpha"),
        log_name(project, "beta"),
        log_name(project, "run.googleapis.com%2Fstdout"),
    ]


# ---------------------------------------------------------------------------
# TailLogEntries


class Tail:
    """A TailLogEntries stream read on a thread, so a test can write meanwhile."""

    def __init__(
        self, client: LoggingServiceV2Client, request: TailLogEntriesRequest
    ) -> None:
        # The client returns the stream only after its first (empty) response,
        # so once this call returns the server is tailing.
        self.stream = client.tail_log_entries(requests=iter([request]))
        self.responses: queue.Queue[list[str]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.stream:
                self.responses.put([item.insert_id for item in response.entries])
        except exceptions.GoogleAPICallError:
            pass  # cancelled by close()

    def collect(self, count: int, timeout: float = 15.0) -> list[list[str]]:
        """Return non-empty responses until ``count`` entries arrived or time ran out."""
        batches: list[list[str]] = []
        deadline = time.monotonic() + timeout
        while sum(map(len, batches)) < count and time.monotonic() < deadline:
            try:
                batch = self.responses.get(timeout=0.1)
            except queue.Empty:
                continue
            if batch:
                batches.append(batch)
        return batches

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(timeout=5)


@pytest.fixture
def open_tail(client: LoggingServiceV2Client) -> Iterator[Any]:
    tails: list[Tail] = []

    def start(project: str, filter_: str = "", buffer_seconds: float = 0.0) -> Tail:
        request = TailLogEntriesRequest(
            resource_names=[f"projects/{project}"],
            filter=filter_,
            buffer_window={
                "seconds": int(buffer_seconds),
                "nanos": int((buffer_seconds % 1) * 1e9),
            },
        )
        tail = Tail(client, request)
        tails.append(tail)
        return tail

    yield start
    for tail in tails:
        tail.close()


def now_entry(insert_id: str, offset: float = 0.0, **fields: Any) -> LogEntry:
    stamp = time.time() + offset
    return LogEntry(
        insert_id=insert_id,
        timestamp={"seconds": int(stamp), "nanos": int((stamp % 1) * 1e9)},
        **fields,
    )


def test_tail_streams_new_entries(
    client: LoggingServiceV2Client, project: str, open_tail: Any
) -> None:
    write(client, project, now_entry("before"))
    tail = open_tail(project)

    write(client, project, now_entry("after-1"))
    write(client, project, now_entry("after-2"))

    batches = tail.collect(2)
    assert [insert_id for batch in batches for insert_id in batch] == [
        "after-1",
        "after-2",
    ]


def test_tail_applies_filter(
    client: LoggingServiceV2Client, project: str, open_tail: Any
) -> None:
    tail = open_tail(project, "severity>=ERROR")

    write(
        client,
        project,
        now_entry("info", severity="INFO"),
        now_entry("error", severity="ERROR"),
    )
    write(client, f"{project}-other", now_entry("elsewhere", severity="ERROR"))
    write(client, project, now_entry("critical", severity="CRITICAL"))

    batches = tail.collect(2)
    assert [insert_id for batch in batches for insert_id in batch] == [
        "error",
        "critical",
    ]
    assert tail.collect(1, timeout=0.5) == []


def test_tail_buffer_window_reorders(
    client: LoggingServiceV2Client, project: str, open_tail: Any
) -> None:
    tail = open_tail(project, buffer_seconds=2.0)

    # The later entry is written first, and the buffer window puts it after the
    # earlier one, which arrives within the window.
    write(client, project, now_entry("later", offset=0.0))
    write(client, project, now_entry("earlier", offset=-1.0))

    started = time.monotonic()
    batches = tail.collect(2)
    waited = time.monotonic() - started
    assert [insert_id for batch in batches for insert_id in batch] == [
        "earlier",
        "later",
    ]
    assert waited >= 0.5


def test_tail_zero_window_sends_at_once(
    client: LoggingServiceV2Client, project: str, open_tail: Any
) -> None:
    tail = open_tail(project, buffer_seconds=0.0)

    started = time.monotonic()
    write(client, project, now_entry("fast"))
    batches = tail.collect(1)

    assert batches == [["fast"]]
    assert time.monotonic() - started < 5


def test_tail_rejects_long_buffer_window(
    client: LoggingServiceV2Client, project: str
) -> None:
    request = TailLogEntriesRequest(
        resource_names=[f"projects/{project}"], buffer_window={"seconds": 61}
    )

    with pytest.raises(exceptions.InvalidArgument):
        list(client.tail_log_entries(requests=iter([request])))


def test_tail_rejects_invalid_filter(
    client: LoggingServiceV2Client, project: str
) -> None:
    request = TailLogEntriesRequest(resource_names=[f"projects/{project}"], filter="(")

    with pytest.raises(exceptions.InvalidArgument):
        list(client.tail_log_entries(requests=iter([request])))
