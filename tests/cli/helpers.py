"""Running taskctl as a user does: a subprocess with arguments and environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def taskctl(
    *arguments: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
) -> Run:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TASKCTL_")
    }
    environment.update(env or {})
    completed = subprocess.run(
        [sys.executable, "-m", "taskctl", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd or REPOSITORY,
        timeout=timeout,
    )
    return Run(completed.returncode, completed.stdout, completed.stderr)
