"""Running the local cloud as a background process and finding a running one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from taskctl.localcloud.runtime import RUNTIME_FILE, RuntimeInfo


class StartError(Exception):
    """The local cloud process did not come up."""


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_local_cloud(pid: int, state_dir: Path) -> bool:
    """Tell whether ``pid`` is a local cloud serving ``state_dir``.

    A runtime.json left behind by a killed process can name a PID that the system
    has since given to another program, which must never be signalled.
    """
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        # No /proc (not Linux): fall back to the PID being alive.
        return is_alive(pid)
    decoded = [argument.decode(errors="replace") for argument in arguments]
    if "taskctl.localcloud" in decoded:
        # Started by spawn(): python -m taskctl.localcloud --state-dir DIR
        try:
            given = Path(decoded[decoded.index("--state-dir") + 1])
        except (ValueError, IndexError):
            return False
        return given.resolve() == state_dir.resolve()
    # `taskctl local up` in the foreground runs the local cloud in the CLI process.
    return any("taskctl" in argument for argument in decoded)


def running(state_dir: Path) -> RuntimeInfo | None:
    """Return the runtime info of the local cloud using ``state_dir``, if it runs."""
    info = RuntimeInfo.read(state_dir)
    if info is None or not is_alive(info.pid):
        return None
    if not _is_local_cloud(info.pid, Path(info.state_dir)):
        return None
    return info


def spawn(
    state_dir: Path,
    port: int = 0,
    *,
    timeout: float = 60.0,
    log_level: str = "INFO",
) -> tuple[subprocess.Popen[bytes], RuntimeInfo]:
    """Start ``python -m taskctl.localcloud`` detached and wait until it serves.

    Its log goes to ``state_dir/localcloud.log``.
    """
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    (state_dir / RUNTIME_FILE).unlink(missing_ok=True)
    log_path = state_dir / "localcloud.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taskctl.localcloud",
                "--state-dir",
                str(state_dir),
                "--port",
                str(port),
                "--log-level",
                log_level,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(
                f"the local cloud exited with code {process.returncode} during start-up; "
                f"see {log_path}"
            )
        info = RuntimeInfo.read(state_dir)
        if info is not None and info.pid == process.pid:
            return process, info
        time.sleep(0.05)
    process.kill()
    raise StartError(
        f"the local cloud did not start within {timeout:.0f} s; see {log_path}"
    )


# How long terminate() waits by default. A function instance hung in a blocking
# call is killed after the functions service's 10 s grace plus 3 s, and then
# gRPC (2 s), Pub/Sub (10 s) and the storage emulator (10 s) may each wait for
# their threads, so 60 s covers that worst case of about 35 s with room to spare.
STOP_TIMEOUT_SECONDS = 60.0


def terminate(info: RuntimeInfo, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """Send SIGTERM to the local cloud and wait for it to exit; True if it did."""
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(info.pid):
            return True
        try:
            # Reap it if it is our child, so it does not linger as a zombie.
            finished, _ = os.waitpid(info.pid, os.WNOHANG)
            if finished:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False
