"""The task types this worker runs, found by module.

Adding a task type means adding one module here that defines
``TASK_TYPE = taskworker.registry.TaskType(...)``. Modules whose names start with an
underscore are skipped, so they can hold shared helpers.
"""

from __future__ import annotations

import importlib
import pkgutil

from taskworker.registry import TaskType


def _discover() -> dict[str, TaskType]:
    registry: dict[str, TaskType] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        task_type = getattr(module, "TASK_TYPE", None)
        if not isinstance(task_type, TaskType):
            raise ImportError(
                f"handler module {module.__name__} defines no TASK_TYPE = TaskType(...)"
            )
        if task_type.name in registry:
            raise ImportError(
                f"task type {task_type.name!r} is defined twice "
                f"(second time in {module.__name__})"
            )
        registry[task_type.name] = task_type
    return registry


REGISTRY: dict[str, TaskType] = _discover()
