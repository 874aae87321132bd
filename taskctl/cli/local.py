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

from taskctl.cli.context import app_context
from taskctl.errors import NotFoundError, OperationFailed, UnavailableError

app = typer.Typer(
    help="Run the embedded local cloud (Pub/Sub, Functions, Logging, Storage).",
    no_args_is_help=True,
)


def _state_dir(ctx: typer.Context, state_dir: Path | None) -> tuple[Path, int]:
    context = app_context(ctx)
    settings = context.settings(state_dir=state_dir)
    return settings.state_dir, settings.port


@app.command()
def up(
    ctx: typer.Context,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background.")
    ] = False,
    state_dir: Annotated[
        Path | None, typer.Option(help="Where state is kept (default .taskctl).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="gRPC port on 127.0.0.1 (0 picks a free one).")
    ] = None,
) -> None:
    """Start the local cloud on 127.0.0.1, in the foreground or detached.

    Example: taskctl local up --detach
    """
    from taskctl.localcloud import process

    directory, default_port = _state_dir(ctx, state_dir)
    chosen_port = default_port if port is None else port
    existing = process.running(directory)
    if existing is not None:
        raise OperationFailed(
            f"a local cloud already runs for {directory} (pid {existing.pid}, {existing.grpc_endpoint})",
            hint="stop it with 'taskctl local down'",
        )
    renderer = app_context(ctx).renderer
    if detach:
        try:
            _, info = process.spawn(directory, chosen_port)
        except process.StartError as error:
            raise UnavailableError(str(error)) from None
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
    except OSError as error:
        cloud.stop()
        raise UnavailableError(
            f"cannot start the local cloud: {error}", hint="pick another --port"
        ) from None
    renderer.info(
        f"local cloud listening on {info.grpc_endpoint} (loopback only); Ctrl-C stops it"
    )
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
        "state_dir": info.state_dir,
        "uptime_seconds": round(time.time() - info.started_at),
    }


@app.command()
def status(
    ctx: typer.Context,
    state_dir: Annotated[
        Path | None, typer.Option(help="State directory of the local cloud.")
    ] = None,
) -> None:
    """Say whether the local cloud runs, and where it listens.

    Exits with 3 when it is not running.

    Example: taskctl local status --json
    """
    directory, _ = _state_dir(ctx, state_dir)
    result = _status_of(directory)
    app_context(ctx).renderer.local_status(result)
    if not result["running"]:
        raise typer.Exit(3)


@app.command()
def down(
    ctx: typer.Context,
    state_dir: Annotated[
        Path | None, typer.Option(help="State directory of the local cloud.")
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
            f"the local cloud (pid {info.pid}) did not stop within 20 s",
            hint=f"kill {info.pid}",
        )
    app_context(ctx).renderer.info(f"stopped the local cloud (pid {info.pid})")


@app.command()
def env(
    ctx: typer.Context,
    state_dir: Annotated[
        Path | None, typer.Option(help="State directory of the local cloud.")
    ] = None,
) -> None:
    """Print the variables that point Google's client libraries at the local cloud.

    Example: eval "$(taskctl local env)"
    """
    context = app_context(ctx)
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
    limit: Annotated[
        int, typer.Option(min=1, help="Show at most this many messages, newest first.")
    ] = 20,
    state_dir: Annotated[
        Path | None, typer.Option(help="State directory of the local cloud.")
    ] = None,
) -> None:
    """List the mail that functions sent to the local cloud's SMTP sink.

    Each message is stored under STATE_DIR/mail/ as an .eml file; --json prints
    the file paths and the envelope recipients (Bcc included).

    Example: taskctl local emails --limit 5
    """
    from taskctl.localcloud.smtp import list_mail

    directory, _ = _state_dir(ctx, state_dir)
    app_context(ctx).renderer.local_emails(list_mail(directory, limit=limit))
