"""The pipeline commands: provision, publish, logs, replay-dlq and demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskctl.cli.context import JsonOutput, app_context
from taskctl.errors import ExitCode, UsageError


def provision(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and change nothing.")
    ] = False,
    max_delivery_attempts: Annotated[
        int | None,
        typer.Option(
            metavar="N", help="Deliveries before a task is dead-lettered (5 to 100)."
        ),
    ] = None,
    min_backoff: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION", help="Minimum retry delay, e.g. 10s (0 to 600 s)."
        ),
    ] = None,
    max_backoff: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION", help="Maximum retry delay, e.g. 600s (0 to 600 s)."
        ),
    ] = None,
    ack_deadline: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Ack deadline of the function's subscription (10 to 600 s).",
        ),
    ] = None,
    retention: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="How long unacked tasks are kept, e.g. 7d (10m to 31d).",
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(metavar="DURATION", help="Function timeout (at most 540 s)."),
    ] = None,
    memory: Annotated[
        str | None, typer.Option(metavar="SIZE", help="Function memory, e.g. 512Mi.")
    ] = None,
    max_instances: Annotated[
        int | None, typer.Option(metavar="N", help="Function max instances.")
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Worker source directory (default: bundled function_src).",
        ),
    ] = None,
) -> None:
    """Create or update the topics, the dead-letter subscription, the worker function
    and the retry and dead-letter policy on the subscription that feeds it.

    Idempotent: a second run changes nothing and reports that.

    Example: taskctl provision --dry-run
    """
    from taskctl.provision import provision as run_provision

    context = app_context(ctx, json_output)
    settings = context.settings(
        max_delivery_attempts=max_delivery_attempts,
        min_backoff=min_backoff,
        max_backoff=max_backoff,
        ack_deadline=ack_deadline,
        retention=retention,
        function_timeout=timeout,
        function_memory=memory,
        function_max_instances=max_instances,
        function_source=str(source.resolve()) if source else None,
    )
    renderer = context.renderer
    clients = context.clients(settings)
    with renderer.status("provisioning") as spinner:

        def progress(message: str) -> None:
            if spinner is not None:
                spinner.update(message)
            renderer.info(message)

        result = run_provision(settings, clients, dry_run=dry_run, progress=progress)
    renderer.provision(result)


def publish(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE...",
            help="Task files: a JSON object, a JSON array or JSON Lines.",
        ),
    ],
    attribute: Annotated[
        list[str] | None,
        typer.Option(
            "--attribute",
            "-a",
            metavar="KEY=VALUE",
            help="Extra attribute KEY=VALUE for every task.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the files and publish nothing.")
    ] = False,
    json_output: JsonOutput = False,
) -> None:
    """Publish tasks from files to the task topic and print their message IDs.

    Every task is checked first (task_type, payload, Pub/Sub's limits); if one is
    invalid, nothing is published and the error names its file and line.

    Example: taskctl publish examples/tasks.json
    """
    from taskctl.publish import publish as run_publish
    from taskctl.tasks import load_files, parse_attribute_options

    context = app_context(ctx, json_output)
    settings = context.settings()
    tasks = load_files(files, parse_attribute_options(attribute or []))
    if dry_run:
        context.renderer.publish_checked(len(tasks), len(files))
        return
    clients = context.clients(settings)
    with context.renderer.status(f"publishing {len(tasks)} task(s)"):
        result = run_publish(settings, clients, tasks)
    context.renderer.publish(result)


def logs(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing new entries until Ctrl-C."),
    ] = False,
    task_id: Annotated[
        str | None, typer.Option(metavar="TASK_ID", help="Only entries of this task.")
    ] = None,
    task_type: Annotated[
        str | None,
        typer.Option(metavar="TASK_TYPE", help="Only entries of this task type."),
    ] = None,
    message_id: Annotated[
        str | None,
        typer.Option(
            metavar="MESSAGE_ID", help="Only entries of this Pub/Sub message."
        ),
    ] = None,
    severity: Annotated[
        str | None,
        typer.Option(metavar="LEVEL", help="Minimum severity, e.g. WARNING."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="WHEN",
            help="Entries since a duration ago (10m, 2h) or an RFC 3339 time.",
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            metavar="N", help="How many of the newest entries to print (1 to 1000)."
        ),
    ] = 100,
) -> None:
    """Print the worker's log entries from Cloud Logging, newest last.

    Example: taskctl logs --since 10m --severity WARNING --follow
    """
    from taskctl import logs as logs_module

    context = app_context(ctx, json_output)
    settings = context.settings()
    query = logs_module.LogQuery(
        task_id=task_id,
        task_type=task_type,
        message_id=message_id,
        severity=logs_module.normalise_severity(severity) if severity else None,
        since=logs_module.parse_since(since) if since else None,
        limit=limit,
    )
    clients = context.clients(settings)
    records = logs_module.read(settings, clients, query)
    for record in records:
        context.renderer.log_record(record)
    if not follow:
        if not records:
            context.renderer.no_log_entries()
        return
    # Ctrl-C ends following; the CLI reports it as an interruption (exit 130).
    for record in logs_module.follow(settings, clients, query):
        context.renderer.log_record(record)


def replay_dlq(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List what would be replayed; change nothing."),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Look at most this many dead letters."),
    ] = None,
    task_type: Annotated[
        str | None,
        typer.Option(metavar="TASK_TYPE", help="Replay only tasks of this type."),
    ] = None,
    max_replays: Annotated[
        int | None,
        typer.Option(metavar="N", help="Skip tasks already replayed this many times."),
    ] = None,
) -> None:
    """Republish dead-lettered tasks to the task topic, then acknowledge them.

    Data, attributes, ordering key and task_id are kept; a replay count is added.

    Example: taskctl replay-dlq --dry-run
    """
    from taskctl.replay import replay

    context = app_context(ctx, json_output)
    settings = context.settings(max_replays=max_replays)
    clients = context.clients(settings)
    result = replay(
        settings,
        clients,
        dry_run=dry_run,
        limit=limit,
        task_type=task_type,
        progress=context.renderer.replay_progress,
    )
    context.renderer.replay(result)
    if result.count("failed"):
        raise typer.Exit(ExitCode.PARTIAL)


def demo(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    keep: Annotated[
        bool, typer.Option(help="Keep the local cloud's state directory afterwards.")
    ] = False,
    tasks_file: Annotated[
        Path | None,
        typer.Option("--tasks", metavar="FILE", help="Task file to publish."),
    ] = None,
) -> None:
    """Run the whole pipeline on a temporary local cloud: publish, fail, retry,
    dead-letter, fix, replay, succeed.

    Example: taskctl demo
    """
    from taskctl import demo as demo_module

    context = app_context(ctx, json_output)
    if context.profile not in (None, "local"):
        raise UsageError(
            "taskctl demo runs on its own local cloud only", hint="drop --profile"
        )
    summary = demo_module.run(
        tasks_file=tasks_file or demo_module.default_tasks_file(),
        keep_state=keep,
        on_event=context.renderer.demo_event,
    )
    context.renderer.demo_summary(summary)
    if not summary.succeeded_story:
        raise typer.Exit(ExitCode.FAILURE)


def register(app: typer.Typer) -> None:
    app.command()(provision)
    app.command()(publish)
    app.command()(logs)
    app.command(name="replay-dlq")(replay_dlq)
    app.command()(demo)
