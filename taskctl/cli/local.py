"""``taskctl local``: run and inspect the embedded local cloud."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from taskctl.cli.context import JsonOutput, app_context
from taskctl.errors import NotFoundError, OperationFailed

app = typer.Typer(
    help="Run the embedded local cloud (Pub/Sub, Functions, Logging, Storage).\n\n"
    "Example: taskctl local up --detach",
    no_args_is_help=True,
)


def _state_dir(
    ctx: typer.Context, state_dir: Path | None, port: int | None = None
) -> tuple[Path, int]:
    settings = app_context(ctx).settings(state_dir=state_dir, port=port)
    return settings.state_dir, settings.port


def _down_hint(directory: Path) -> str:
    default = _default_state_dir()
    suffix = "" if directory == default else f" --state-dir {directory}"
    return f"stop it with 'taskctl local down{suffix}'"


def _default_state_dir() -> Path:
    from taskctl.settings import Settings

    return Settings().state_dir


def _check_state_dir(directory: Path) -> None:
    from taskctl.errors import UsageError

    if directory.exists() and not directory.is_dir():
        raise UsageError(
            f"state directory {directory} is a file, not a directory",
            hint="pick another with --state-dir",
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create state directory {directory}: {error.strerror}",
            hint="pick another with --state-dir",
        ) from None


def _check_port_free(host: str, port: int) -> None:
    import socket

    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise OperationFailed(
                f"port {port} on {host} is already in use",
                hint="pick another with --port (0 picks a free one) or stop what uses it",
            ) from None


@app.command()
def up(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background.")
    ] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Where state is kept (default .taskctl)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT", help="gRPC port on 127.0.0.1 (0 picks a free one)."
        ),
    ] = None,
) -> None:
    """Start the local cloud on 127.0.0.1, in the foreground or detached.

    Example: taskctl local up --detach
    """
    from taskctl.localcloud import process
    from taskctl.localcloud.server import LOOPBACK

    directory, chosen_port = _state_dir(ctx, state_dir, port)
    _check_state_dir(directory)
    existing = process.running(directory)
    if existing is not None:
        raise OperationFailed(
            f"a local cloud already runs for {directory} (pid {existing.pid}, "
            f"{existing.grpc_endpoint})",
            hint=_down_hint(directory),
        )
    _check_port_free(LOOPBACK, chosen_port)
    renderer = app_context(ctx, json_output).renderer
    if detach:
        try:
            _, info = process.spawn(directory, chosen_port)
        except process.StartError as error:
            raise OperationFailed(str(error)) from None
        renderer.local_status(_status_of(directory))
        return

    from taskctl.localcloud.server import LocalCloud

    logging.getLogger("taskctl.localcloud").setLevel(logging.INFO)
    cloud = LocalCloud(directory, port=chosen_port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        info = cloud.start()
    except (OSError, RuntimeError) as error:
        cloud.stop()
        raise OperationFailed(
            f"cannot start the local cloud: {error}", hint="pick another --port"
        ) from None
    renderer.info(f"listening on {info.grpc_endpoint}; press Ctrl-C to stop")
    try:
        cloud.wait()
    except KeyboardInterrupt:
        pass
    finally:
        cloud.stop()


def _status_of(directory: Path) -> dict[str, object]:
    from taskctl.localcloud import process

    info = process.running(directory)
    if info is None:
        return {"running": False, "state_dir": str(directory)}
    return {
        "running": True,
        "pid": info.pid,
        "grpc_endpoint": info.grpc_endpoint,
        "storage_endpoint": info.storage_endpoint,
        "smtp_endpoint": info.smtp_endpoint if info.smtp_port else None,
        "state_dir": info.state_dir,
        "uptime_seconds": round(time.time() - info.started_at),
    }


@app.command()
def status(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="State directory of the local cloud."),
    ] = None,
) -> None:
    """Say whether the local cloud runs, and where it listens.

    Exits with 3 when it is not running.

    Example: taskctl local status --json
    """
    directory, _ = _state_dir(ctx, state_dir)
    result = _status_of(directory)
    app_context(ctx, json_output).renderer.local_status(result)
    if not result["running"]:
        raise typer.Exit(3)


@app.command()
def down(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="State directory of the local cloud."),
    ] = None,
) -> None:
    """Stop a detached local cloud; its state stays in the state directory.

    Example: taskctl local down
    """
    from taskctl.localcloud import process

    directory, _ = _state_dir(ctx, state_dir)
    info = process.running(directory)
    if info is None:
        raise NotFoundError(f"no local cloud is running for {directory}")
    if not process.terminate(info):
        raise OperationFailed(
            f"the local cloud (pid {info.pid}) did not stop within "
            f"{process.STOP_TIMEOUT_SECONDS:.0f} s",
            hint=f"kill {info.pid}",
        )
    app_context(ctx, json_output).renderer.info(
        f"stopped the local cloud (pid {info.pid})"
    )


@app.command()
def env(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="State directory of the local cloud."),
    ] = None,
) -> None:
    """Print the variables that point Google's client libraries at the local cloud.

    Example: eval "$(taskctl local env)"
    """
    context = app_context(ctx, json_output)
    settings = context.settings(state_dir=state_dir)
    from taskctl.localcloud import process

    info = process.running(settings.state_dir)
    if info is None:
        raise NotFoundError(
            f"the local cloud is not running for state directory {settings.state_dir}",
            hint="start it with 'taskctl local up --detach'",
        )
    variables = {
        "PUBSUB_EMULATOR_HOST": info.grpc_endpoint,
        "PUBSUB_PROJECT_ID": settings.project,
        "FIRESTORE_EMULATOR_HOST": info.grpc_endpoint,
        "STORAGE_EMULATOR_HOST": info.storage_endpoint,
        "GOOGLE_CLOUD_PROJECT": settings.project,
        "CLOUDSDK_CORE_PROJECT": settings.project,
        "TASKCTL_STATE_DIR": info.state_dir,
    }
    context.renderer.local_env(variables)
    sys.stdout.flush()


@app.command()
def emails(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    limit: Annotated[
        int, typer.Option(min=1, help="Show at most this many messages, newest first.")
    ] = 20,
    state_dir: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="State directory of the local cloud."),
    ] = None,
) -> None:
    """List the mail that functions sent to the local cloud's SMTP sink.

    Each message is stored under STATE_DIR/mail/ as an .eml file; --json prints
    the file paths and the envelope recipients (Bcc included).

    Example: taskctl local emails --limit 5
    """
    from taskctl.localcloud.smtp import list_mail

    directory, _ = _state_dir(ctx, state_dir)
    app_context(ctx, json_output).renderer.local_emails(
        list_mail(directory, limit=limit)
    )


@app.command()
def upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The file to upload.")],
    url: Annotated[
        str, typer.Argument(metavar="gs://BUCKET/OBJECT", help="Where to put it.")
    ],
    json_output: JsonOutput = False,
) -> None:
    """Upload a file to the local cloud's Cloud Storage (the bucket is created if
    missing), for example an image a process_image task names.

    Example: taskctl local upload examples/images/harbour.jpg gs://taskctl-demo-images/uploads/harbour.jpg
    """
    from taskctl.errors import UsageError
    from taskctl.objects import upload as upload_file

    context = app_context(ctx, json_output)
    settings = context.settings()
    if not settings.local:
        raise UsageError(
            "taskctl local upload writes to the local cloud only",
            hint="use 'gcloud storage cp' for a Google Cloud project",
        )
    result = upload_file(context.clients(settings), file, url)
    context.renderer.uploaded(result)
