"""The taskctl command line: thin Typer commands over the core modules."""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from taskctl import __version__
from taskctl.cli import commands, local
from taskctl.cli.context import AppContext
from taskctl.errors import ExitCode, TaskctlError
from taskctl.render import Renderer

app = typer.Typer(
    name="taskctl",
    help="Operate Pub/Sub-driven background tasks on Cloud Functions (2nd gen).\n\n"
    "Example: taskctl demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"taskctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            "-p",
            metavar="NAME",
            help="Settings profile to use (default: local).",
            envvar="TASKCTL_PROFILE",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="Settings file (default: the nearest taskctl.toml).",
        ),
    ] = None,
    project: Annotated[
        str | None, typer.Option(metavar="PROJECT", help="Google Cloud project ID.")
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            metavar="REGION", help="Region of the function, e.g. us-central1."
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Local cloud state directory (local profile)."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print results as JSON for scripts.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs on stderr.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    overrides = {"project": project, "region": region, "state_dir": state_dir}
    ctx.obj = AppContext(
        config_path=config,
        profile=profile,
        global_overrides={
            key: value for key, value in overrides.items() if value is not None
        },
        json_output=json_output,
        debug=debug,
        renderer=Renderer(json_output=json_output),
    )
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


commands.register(app)
app.add_typer(local.app, name="local")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map every failure to one line on stderr and an exit code."""
    arguments = sys.argv[1:] if argv is None else argv
    debug = "--debug" in arguments
    renderer = Renderer()
    # SIGTERM (from a service manager or `timeout`) stops a command the way
    # Ctrl-C does, so cleanup code in finally blocks runs and the exit code is 130.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = app(args=arguments, prog_name="taskctl", standalone_mode=False)
        code = int(result) if isinstance(result, int) else ExitCode.OK
        if code == ExitCode.INTERRUPTED:
            # Typer turns Ctrl-C (and SIGTERM, see above) into exit code 130.
            renderer.error("interrupted")
        return code
    except TaskctlError as error:
        if debug:
            traceback.print_exc()
        renderer.error(str(error))
        return error.exit_code
    except typer.Exit as error:
        return int(error.exit_code)
    except typer.TyperException as error:
        # Typer's own usage errors (unknown option, missing argument, bad value).
        show = getattr(error, "show", None)
        if show is not None:
            show()
        else:
            renderer.error(str(error))
        return ExitCode.USAGE
    except (typer.Abort, KeyboardInterrupt):
        renderer.error("interrupted")
        return ExitCode.INTERRUPTED
    except Exception as error:
        if debug:
            traceback.print_exc()
        renderer.error(
            f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)"
        )
        return ExitCode.FAILURE


def entry_point() -> None:
    sys.exit(main())
