"""The example task files in examples/ fit their task types' payload schemas."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.worker.conftest import FUNCTION_SOURCE

EXAMPLES = FUNCTION_SOURCE.parent / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))


def load_tasks(path: Path) -> list[dict[str, Any]]:
    loaded = json.loads(path.read_text())
    return loaded if isinstance(loaded, list) else [loaded]


@pytest.fixture(scope="module")
def registry() -> Any:
    # The worker imports its packages from function_src/ as top-level names.
    sys.path.insert(0, str(FUNCTION_SOURCE))
    try:
        yield importlib.import_module("handlers").REGISTRY
    finally:
        sys.path.remove(str(FUNCTION_SOURCE))


def test_every_task_type_has_example(registry: Any) -> None:
    covered = {task["task_type"] for path in EXAMPLE_FILES for task in load_tasks(path)}
    assert set(registry) <= covered


@pytest.mark.parametrize(
    "path", EXAMPLE_FILES, ids=[path.name for path in EXAMPLE_FILES]
)
def test_example_payloads_parse(registry: Any, path: Path) -> None:
    for task in load_tasks(path):
        task_type = registry[task["task_type"]]
        assert task_type.parse_payload(task["payload"]) is not None
