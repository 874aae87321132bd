"""The Logging query language parser and evaluator, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from taskctl.localcloud.logging.query import (
    And,
    Comparison,
    FilterError,
    GlobalRestriction,
    Not,
    Or,
    Value,
    compile_filter,
    parse_timestamp,
    tokenize,
)

ENTRY: dict[str, Any] = {
    "textPayload": "Request timed out after 30s",
    "httpRequest": {"remoteIp": "10.1.2.3", "status": 504},
    "logName": "projects/p/logs/run.googleapis.com%2Fstdout",
    "resource": {"type": "cloud_run_revision", "labels": {"service_name": "worker"}},
    "timestamp": "2024-05-01T12:00:00.123456789Z",
    "receiveTimestamp": "2024-05-01T12:00:01Z",
    "severity": "ERROR",
    "insertId": "id-1",
    "labels": {"task_type": "resize", "k.x": "dotted", "count": "12"},
    "jsonPayload": {
        "message": "Task Failed",
        "task": {"id": "t-1", "attempt": 3, "tags": ["slow", "retry"]},
        "ratio": 0.5,
        "note": None,
    },
}


def matches(text: str, entry: dict[str, Any] = ENTRY) -> bool:
    return compile_filter(text).matches(entry)


def test_tokenize_marks_adjacency() -> None:
    tokens = tokenize('labels."k.x" = v')

    assert [(token.kind, token.text, token.spaced) for token in tokens] == [
        ("word", "labels.", True),
        ("string", "k.x", False),
        ("comparator", "=", True),
        ("word", "v", True),
        ("end", "", True),
    ]


def test_parse_or_binds_tighter_than_and() -> None:
    root = compile_filter('"a" OR NOT "b" AND NOT "c" OR "d"').root

    assert root == And(
        (
            Or(
                (
                    GlobalRestriction(Value("a", True, 0)),
                    Not(GlobalRestriction(Value("b", True, 11))),
                )
            ),
            Or(
                (
                    Not(GlobalRestriction(Value("c", True, 23))),
                    GlobalRestriction(Value("d", True, 30)),
                )
            ),
        )
    )


def test_parse_juxtaposition_is_and() -> None:
    root = compile_filter("a b OR c").root

    assert isinstance(root, And)
    assert isinstance(root.children[1], Or)


def test_parse_minus_negates() -> None:
    root = compile_filter("-severity=ERROR").root

    assert isinstance(root, Not)
    assert isinstance(root.child, Comparison)
    assert root.child.path == ("severity",)


def test_parse_quoted_path_segments() -> None:
    root = compile_filter('jsonPayload."a b".c:*').root

    assert isinstance(root, Comparison)
    assert root.path == ("jsonPayload", "a b", "c")


def test_parse_snake_case_field() -> None:
    root = compile_filter("json_payload.x=1").root

    assert isinstance(root, Comparison)
    assert root.path == ("jsonPayload", "x")


def test_parse_empty_filter_matches_all() -> None:
    assert compile_filter("").root is None
    assert compile_filter("   ").matches({})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("severity=ERROR", True),
        ("severity>=WARNING", True),
        ("severity>ERROR", False),
        ("severity=500", True),
        ("severity<=error", True),
        ('timestamp>"2024-05-01T12:00:00.123456788Z"', True),
        ('timestamp>"2024-05-01T12:00:00.123456789Z"', False),
        ('timestamp<"2024-05-01T13:00:00+00:30"', True),
        ('timestamp>="2024-05-01"', True),
        ('receiveTimestamp="2024-05-01T12:00:01Z"', True),
        ("labels.count>9", True),  # numeric, although "12" < "9" as text
        ("labels.count<100", True),
        ('labels."k.x"=DOTTED', True),
        ("labels.missing=x", False),
        ("labels.missing!=x", True),
        ("jsonPayload.task.attempt=3.0", True),
        ("jsonPayload.ratio<1", True),
        ("jsonPayload.task.tags=retry", True),
        ("jsonPayload.task.tags:slo", True),
        ("jsonPayload.task:t-1", True),
        ("jsonPayload.note=NULL_VALUE", True),
        ("jsonPayload.note:*", True),
        ("jsonPayload.absent:*", False),
        ('jsonPayload.message=~"^Task"', True),
        ('jsonPayload.message=~"^task"', False),  # regexes are case-sensitive
        ('jsonPayload.message!~"^Task"', False),
        ('logName="projects/p/logs/run.googleapis.com/stdout"', True),
        ('log_id("run.googleapis.com/stdout")', True),
        ("resource.labels.service_name=(worker OR other)", True),
        ("resource.labels.service_name=(other OR NOT worker)", False),
        ("failed", True),
        ("FAILED task", True),
        ("robot", False),
        ("NOT robot", True),
        ("-robot severity=ERROR", True),
        ("severity=INFO OR severity=ERROR", True),
        ("(severity=INFO OR severity=ERROR) AND labels.task_type=email", False),
        # functions
        ('SEARCH("timed out")', True),
        ('SEARCH("TIMED")', True),
        ('SEARCH("time")', False),  # whole tokens only
        ('SEARCH("out timed")', True),  # each term on its own
        ('SEARCH("`timed ou`")', True),  # backticks: the exact text
        ('SEARCH("`out timed`")', False),
        ('SEARCH(textPayload, "request")', True),
        ('SEARCH(jsonPayload.message, "request")', False),
        ('SEARCH(labels.missing, "x")', False),
        ("sample(insertId, 1)", True),
        ("sample(insertId, 0)", False),
        ("sample(jsonPayload.absent, 1)", False),
        ('ip_in_net(httpRequest.remoteIp, "10.0.0.0/8")', True),
        ('ip_in_net(httpRequest.remoteIp, "192.168.0.0/16")', False),
        ('ip_in_net(httpRequest.remoteIp, "::/0")', False),
        ('ip_in_net(labels.task_type, "10.0.0.0/8")', False),
        # comments
        ("severity=ERROR -- and nothing else", True),
        ("severity=INFO -- OR severity=ERROR", False),
        ("-- first line only\nseverity=ERROR", True),
    ],
)
def test_evaluate_filter(text: str, expected: bool) -> None:
    assert matches(text) is expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("severity>=", "expected a value"),
        ("(severity=ERROR", "expected ')'"),
        ("severity=ERROR)", "unexpected ')'"),
        ('"open', "unterminated quoted string"),
        ("severity=LOUD", "invalid severity"),
        ('timestamp>"soon"', "invalid timestamp"),
        ("nosuch=1", "unknown field 'nosuch'"),
        ("severity.x=1", "has no subfield"),
        ('textPayload=~"("', "invalid regular expression"),
        ("labels.x=*", "'*' is only allowed after ':'"),
        ("a AND", "expected an expression"),
        ("NOT", "expected an expression after NOT"),
        ("- a", "right after '-'"),
        ("()", "empty parentheses"),
        ("labels.=x", "empty segment"),
        ("~", "unexpected character"),
        ('log_id("a", "b")', "log_id() takes one quoted log ID"),
        ("log_id(app)", "unknown field 'app'"),
        ('search("x")', "unknown function 'search'"),
        ("SEARCH()", "SEARCH() takes a quoted query"),
        ('SEARCH("  ")', "SEARCH() needs a non-empty query"),
        ("sample(insertId, 1.5)", "sample() takes a field and a fraction"),
        ("sample(insertId)", "sample() takes a field and a fraction"),
        ('ip_in_net(httpRequest.remoteIp, "10.0.0.0/33")', "invalid network"),
        ('ip_in_net(httpRequest.remoteIp "10.0.0.0/8")', "expected ',' or ')'"),
    ],
)
def test_parse_rejects_invalid(text: str, fragment: str) -> None:
    with pytest.raises(FilterError) as raised:
        compile_filter(text)

    assert fragment in str(raised.value)


def test_sample_keeps_stable_fraction() -> None:
    sampled = compile_filter("sample(insertId, 0.25)")
    entries = [{"insertId": f"id-{index}"} for index in range(2000)]

    chosen = [entry for entry in entries if sampled.matches(entry)]
    again = [entry for entry in entries if sampled.matches(entry)]

    assert 400 <= len(chosen) <= 600
    assert chosen == again


def test_error_reports_line_and_column() -> None:
    with pytest.raises(FilterError) as raised:
        compile_filter("severity=ERROR\nAND )")

    assert "line 2, column 5" in str(raised.value)
    assert raised.value.position == 19


@pytest.mark.parametrize(
    ("text", "lower", "upper"),
    [
        ('timestamp>="2024-05-01T00:00:00Z"', "2024-05-01T00:00:00Z", None),
        (
            'timestamp<"2024-05-02T00:00:00Z" severity=ERROR',
            None,
            "2024-05-02T00:00:00Z",
        ),
        (
            'timestamp>="2024-05-01T00:00:00Z" AND timestamp<="2024-05-02T00:00:00Z"',
            "2024-05-01T00:00:00Z",
            "2024-05-02T00:00:00Z",
        ),
        # Bounds under OR or NOT cannot narrow the scan.
        ('timestamp>="2024-05-01T00:00:00Z" OR severity=ERROR', None, None),
        ('NOT timestamp>="2024-05-01T00:00:00Z"', None, None),
    ],
)
def test_filter_timestamp_range(
    text: str, lower: str | None, upper: str | None
) -> None:
    bounds = compile_filter(text).timestamp_range()

    assert bounds.lower == (parse_timestamp(lower) if lower else None)
    assert bounds.upper == (parse_timestamp(upper) if upper else None)


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:01.5Z", 1_500_000_000),
        ("1970-01-01T01:00:00+01:00", 0),
        ("1970-01-01", 0),
        ("1970-01-01T00:00:00.000000001Z", 1),
    ],
)
def test_parse_timestamp_forms(text: str, nanoseconds: int) -> None:
    assert parse_timestamp(text) == nanoseconds


@pytest.mark.parametrize(
    "text", ["yesterday", "2024-13-01", "2024-02-30", "2024-05-01T25:00:00Z"]
)
def test_parse_timestamp_rejects(text: str) -> None:
    assert parse_timestamp(text) is None
