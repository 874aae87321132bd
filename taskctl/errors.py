"""taskctl's exceptions and exit codes.

Every failure a user can meet is a :class:`TaskctlError`; the CLI prints its message
on one line (with the hint, if any) and exits with its code. Tracebacks are shown
only with ``--debug``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; the README documents the same table."""

    OK = 0
    FAILURE = 1  # an operation failed (an API error, a failed deploy)
    USAGE = 2  # invalid flags, settings or input files; nothing was sent
    NOT_FOUND = 3  # a resource, file or the local cloud is missing
    PERMISSION_DENIED = 4  # credentials, IAM or a disabled API
    UNAVAILABLE = 5  # a service did not respond or timed out
    PARTIAL = 6  # some items of a batch (publish, replay) failed
    INTERRUPTED = 130  # Ctrl-C


class TaskctlError(Exception):
    """The root of every error taskctl reports to its user."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class UsageError(TaskctlError):
    """Invalid flags, settings or input, found before any API call."""

    exit_code = ExitCode.USAGE


class NotFoundError(TaskctlError):
    exit_code = ExitCode.NOT_FOUND


class PermissionDeniedError(TaskctlError):
    exit_code = ExitCode.PERMISSION_DENIED


class UnavailableError(TaskctlError):
    exit_code = ExitCode.UNAVAILABLE


class PartialFailure(TaskctlError):
    """Some items of a batch failed; the others were applied."""

    exit_code = ExitCode.PARTIAL


class OperationFailed(TaskctlError):
    exit_code = ExitCode.FAILURE
