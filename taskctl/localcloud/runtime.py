"""The addresses of a running local cloud, as recorded in its state directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RUNTIME_FILE = "runtime.json"


@dataclass(frozen=True)
class RuntimeInfo:
    """The addresses and PID of a running local cloud, written to ``runtime.json``."""

    pid: int
    host: str
    grpc_port: int
    http_port: int
    storage_port: int
    state_dir: str
    started_at: float
    # 0 in runtime files written before the local cloud had an SMTP sink.
    smtp_port: int = 0

    @property
    def grpc_endpoint(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def storage_endpoint(self) -> str:
        return f"http://{self.host}:{self.storage_port}"

    @property
    def smtp_endpoint(self) -> str:
        return f"{self.host}:{self.smtp_port}"

    @classmethod
    def read(cls, state_dir: Path) -> RuntimeInfo | None:
        try:
            data = json.loads((state_dir / RUNTIME_FILE).read_text())
            return cls(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None
