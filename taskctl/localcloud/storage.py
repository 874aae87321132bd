"""Cloud Storage for the local cloud: the third-party gcp-storage-emulator.

It runs as a child process that stores objects under the state directory and is
stopped with the local cloud (or by the kernel, if the local cloud dies first).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from taskctl.localcloud import children

log = logging.getLogger("taskctl.localcloud.storage")


class StorageEmulator:
    def __init__(self, state_dir: Path, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._root = state_dir / "storage"
        self._log_path = state_dir / "storage.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self._root.mkdir(mode=0o700, exist_ok=True)
        environment = {
            **os.environ,
            "STORAGE_BASE": str(self._root),
            "STORAGE_DIR": "data",
        }
        with self._log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                children.command(
                    "gcp_storage_emulator",
                    "start",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--quiet",
                ),
                env=environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(timeout)
        log.info("storage emulator listening on %s", self.endpoint)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"the storage emulator exited with code {self._process.returncode}; "
                    f"see {self._log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise RuntimeError(f"the storage emulator did not start within {timeout:.0f} s")

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
