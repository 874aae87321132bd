"""Task files: formats, line numbers and Pub/Sub's limits, checked before publishing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskctl.errors import NotFoundError, UsageError
from taskctl.tasks import load_files, parse_attribute_options

TASK = {"task_type": "process_image", "payload": {"bucket": "b"}}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_single_object(tmp_path: Path) -> None:
    tasks = load_files([write(tmp_path, "one.json", json.dumps(TASK))])
    assert len(tasks) == 1
    assert tasks[0].attributes["task_type"] == "process_image"
    assert tasks[0].attributes["task_id"] == tasks[0].task_id
    assert json.loads(tasks[0].data)["payload"] == {"bucket": "b"}


def test_array_reports_element_lines(tmp_path: Path) -> None:
    text = '[\n  {"task_type": "a", "payload": {}},\n  {"task_type": "b", "payload": 5}\n]\n'
    with pytest.raises(
        UsageError, match=r"many\.json:3: payload must be a JSON object"
    ):
        load_files([write(tmp_path, "many.json", text)])


def test_json_lines(tmp_path: Path) -> None:
    lines = "\n".join(json.dumps({**TASK, "task_id": f"t{n}"}) for n in range(3))
    tasks = load_files([write(tmp_path, "tasks.jsonl", lines + "\n")])
    assert [task.task_id for task in tasks] == ["t0", "t1", "t2"]
    assert [task.source.rsplit(":", 1)[1] for task in tasks] == ["1", "2", "3"]


def test_json_lines_error_names_line(tmp_path: Path) -> None:
    text = json.dumps(TASK) + "\n" + '{"payload": {}}\n'
    with pytest.raises(UsageError, match=r"tasks\.jsonl:2: missing task_type"):
        load_files([write(tmp_path, "tasks.jsonl", text)])


def test_invalid_json_names_line(tmp_path: Path) -> None:
    text = json.dumps(TASK) + "\n" + '{"task_type": "x", payload: {}}\n'
    with pytest.raises(UsageError, match=r"bad\.jsonl:2: invalid JSON"):
        load_files([write(tmp_path, "bad.jsonl", text)])


def test_generated_task_ids_unique(tmp_path: Path) -> None:
    lines = "\n".join(json.dumps(TASK) for _ in range(3))
    tasks = load_files([write(tmp_path, "tasks.jsonl", lines)])
    assert len({task.task_id for task in tasks}) == 3


def test_duplicate_task_id_rejected(tmp_path: Path) -> None:
    lines = "\n".join(json.dumps({**TASK, "task_id": "same"}) for _ in range(2))
    with pytest.raises(UsageError, match="task_id 'same' repeats"):
        load_files([write(tmp_path, "tasks.jsonl", lines)])


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ([1, 2], "a task must be a JSON object"),
        ({"payload": {}}, "missing task_type"),
        ({"task_type": "", "payload": {}}, "invalid task_type"),
        ({"task_type": 3, "payload": {}}, "invalid task_type"),
        ({"task_type": "a"}, "payload must be a JSON object (missing)"),
        ({"task_type": "a", "payload": []}, "payload must be a JSON object (a list)"),
        (
            {"task_type": "a", "payload": {}, "task_id": ""},
            "task_id must be a non-empty string",
        ),
        ({"task_type": "a", "payload": {}, "extra": 1}, "unknown task field 'extra'"),
        (
            {"task_type": "a", "payload": {}, "attributes": {"googkey": "v"}},
            "starts with 'goog'",
        ),
        (
            {"task_type": "a", "payload": {}, "attributes": {"k": "é" * 513}},
            "1026 bytes, over Pub/Sub's limit of 1024",
        ),
        (
            {"task_type": "a", "payload": {}, "attributes": {"k" * 257: "v"}},
            "257 bytes, over Pub/Sub's limit of 256",
        ),
        (
            {
                "task_type": "a",
                "payload": {},
                "attributes": {f"k{n}": "v" for n in range(99)},
            },
            "101 attributes, over Pub/Sub's limit of 100",
        ),
        (
            {"task_type": "a", "payload": {}, "ordering_key": "é" * 513},
            "ordering_key is 1026 bytes",
        ),
        (
            {"task_type": "a", "payload": {}, "attributes": {"task_id": "x"}},
            "is set by taskctl",
        ),
    ],
)
def test_invalid_task_rejected(tmp_path: Path, task: object, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        load_files([write(tmp_path, "task.json", json.dumps(task))])
    assert message in str(caught.value)
    assert "task.json:1" in str(caught.value)


def test_data_limit_counts_bytes(tmp_path: Path) -> None:
    task = {"task_type": "a", "payload": {"blob": "é" * 5_000_000}}
    with pytest.raises(UsageError, match="over the 9983616-byte limit taskctl keeps"):
        load_files([write(tmp_path, "big.json", json.dumps(task, ensure_ascii=False))])


def test_empty_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="the file is empty"):
        load_files([write(tmp_path, "empty.json", "  \n")])


def test_missing_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        load_files([tmp_path / "absent.json"])


def test_attribute_options() -> None:
    assert parse_attribute_options(["team=imaging", "env=dev"]) == {
        "team": "imaging",
        "env": "dev",
    }
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_attribute_options(["novalue"])
    with pytest.raises(UsageError, match="set from the task"):
        parse_attribute_options(["task_type=x"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"task_type": "a", "payload": {"x": NaN}}', "NaN is not valid JSON"),
        (
            '{"task_type": "a", "payload": {"x": -Infinity}}',
            "-Infinity is not valid JSON",
        ),
        (
            '{"task_type": "a", "payload": {"x": 1e400}}',
            "the number 1e400 is out of range",
        ),
        (
            '{"task_type": "a", "task_type": "b", "payload": {}}',
            "the key 'task_type' appears twice",
        ),
        ('{"task_type": "a", "payload": {"n": ' + "9" * 5000 + "}}", "invalid JSON"),
        (
            '{"task_type": "a", "payload": {"x": '
            + "[" * 100_000
            + "]" * 100_000
            + "}}",
            "nested too deeply",
        ),
        ('{"task_type": "a", "payload": {"x": "\\ud800"}}', "lone surrogate"),
        (
            '{"task_type": "a", "payload": {}, "attributes": {"k": "\\udfff"}}',
            "lone surrogate",
        ),
        ('\ufeff{"task_type": "a", "payload": {}}', "byte order mark"),
    ],
)
def test_values_worker_would_reject(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        load_files([write(tmp_path, "task.json", text)])
    assert message in str(caught.value)
    assert "task.json:1" in str(caught.value)


@pytest.mark.parametrize(
    "key", ["topic", "data", "ordering_key", "retry", "timeout", "self"]
)
def test_client_parameter_attribute_names_rejected(tmp_path: Path, key: str) -> None:
    task = {"task_type": "a", "payload": {}, "attributes": {key: "x"}}
    with pytest.raises(UsageError, match=f"attribute key '{key}' cannot be published"):
        load_files([write(tmp_path, "task.json", json.dumps(task))])


def test_non_regular_files_rejected(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="is not a regular file"):
        load_files([fifo])
    with pytest.raises(UsageError, match="is not a regular file"):
        load_files([Path("/dev/zero")])


def test_oversized_file_rejected(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    with big.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024 + 1)
    with pytest.raises(UsageError, match="over the 268435456-byte limit"):
        load_files([big])


def test_many_lines_numbered(tmp_path: Path) -> None:
    lines = [json.dumps({**TASK, "task_id": f"t{n}"}) for n in range(20_000)]
    lines.append('{"task_type": "a"}')
    with pytest.raises(
        UsageError, match=r"many\.jsonl:20001: payload must be a JSON object"
    ):
        load_files([write(tmp_path, "many.jsonl", "\n".join(lines))])
