"""Child processes of the local cloud (function instances, the storage emulator)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

_PR_SET_PDEATHSIG = 1


def command(module: str, *arguments: str) -> list[str]:
    """Return the command that runs ``python -m module arguments`` as a child that
    dies with this process.

    A local cloud killed with SIGKILL must not leave function instances or the
    storage emulator running. The child asks the kernel for a parent-death signal
    itself, after it has started, because a ``preexec_fn`` runs between fork and
    exec, where the gRPC runtime's fork handlers can abort a threaded parent's
    child. The kernel sends that signal when the *thread* that started the child
    exits, so children must be started from a thread that lives as long as the
    local cloud.
    """
    return [
        sys.executable,
        "-m",
        "taskctl.localcloud.children",
        str(os.getpid()),
        module,
        *arguments,
    ]


def die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this process when its parent dies (Linux
    only; a no-op where prctl is missing)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _launch(arguments: list[str]) -> None:
    parent, module, *rest = arguments
    die_with_parent()
    if os.getppid() != int(parent):
        # The parent died before the signal was requested.
        sys.exit(1)
    os.execv(sys.executable, [sys.executable, "-m", module, *rest])


if __name__ == "__main__":
    _launch(sys.argv[1:])
