"""All terminal output: Rich tables and lines for people, JSON for scripts.

Results go to stdout; progress, warnings and errors go to stderr. Colour is used
only when the stream is a terminal (Rich decides, and honours NO_COLOR).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from taskctl.demo import DemoEvent, DemoSummary
    from taskctl.localcloud.smtp import ReceivedMail
    from taskctl.logs import LogRecord
    from taskctl.objects import Uploaded
    from taskctl.provision import ProvisionResult
    from taskctl.publish import PublishResult
    from taskctl.replay import ReplayItem, ReplayResult

_ACTION_STYLE = {
    "create": "green",
    "update": "yellow",
    "unchanged": "dim",
    "pending": "cyan",
}
_SEVERITY_STYLE = {
    "DEBUG": "dim",
    "INFO": "",
    "NOTICE": "cyan",
    "WARNING": "yellow",
    "ERROR": "red",
    "CRITICAL": "bold red",
    "ALERT": "bold red",
    "EMERGENCY": "bold red",
}


def _default(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)


# Width for output that is not a terminal (a pipe or file), so tables of long
# resource names are not folded at Rich's 80-column default.
_PIPE_WIDTH = 240


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console = Console(
            stderr=stderr, highlight=False, soft_wrap=True, width=_PIPE_WIDTH
        )
    return console


class Renderer:
    def __init__(self, *, json_output: bool = False) -> None:
        self.json_output = json_output
        self.out = _console(stderr=False)
        self.err = _console(stderr=True)

    # --- generic ------------------------------------------------------------

    def emit_json(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value, default=_default, indent=None) + "\n")
        sys.stdout.flush()

    def error(self, message: str) -> None:
        self.err.print(f"[red]taskctl: error:[/red] {escape(message)}")

    def warning(self, message: str) -> None:
        self.err.print(f"[yellow]taskctl: warning:[/yellow] {escape(message)}")

    def info(self, message: str) -> None:
        self.err.print(f"[dim]{escape(message)}[/dim]")

    @contextmanager
    def status(self, message: str) -> Iterator[Any]:
        """Show a spinner on stderr while the block runs (nothing when not a terminal)."""
        if not self.err.is_terminal:
            yield None
            return
        with self.err.status(escape(message)) as spinner:
            yield spinner

    # --- provision ------------------------------------------------------------

    def provision(self, result: ProvisionResult) -> None:
        if self.json_output:
            self.emit_json(
                {
                    "applied": result.applied,
                    "changed": result.changed,
                    "items": [dataclasses.asdict(item) for item in result.items],
                    "trigger_subscription": result.trigger_subscription,
                    "function_uri": result.function_uri,
                    "warnings": result.warnings,
                }
            )
            return
        for warning in result.warnings:
            self.warning(warning)
        table = Table(title="Plan" if not result.applied else None, show_edge=False)
        table.add_column("action")
        table.add_column("kind")
        table.add_column("resource", overflow="fold")
        table.add_column("changes", overflow="fold")
        for item in result.items:
            action: str = item.action
            if result.applied and item.action in ("create", "update"):
                action = f"{item.action}d"
            style = _ACTION_STYLE.get(item.action, "")
            changes = "\n".join(
                f"{change.field}: {change.current or '(unset)'} -> {change.desired}"
                for change in item.changes
            )
            if item.note and item.action in ("create", "pending"):
                changes = f"[dim]{escape(item.note)}[/dim]"
            else:
                changes = escape(changes)
            table.add_row(
                f"[{style}]{action}[/{style}]" if style else action,
                item.kind,
                escape(item.name),
                changes,
            )
        self.out.print(table)
        if not result.changed:
            self.out.print("Everything is up to date; nothing was changed.")
        elif not result.applied:
            self.out.print(
                "Dry run: nothing was changed. Run without --dry-run to apply."
            )
        if result.trigger_subscription:
            self.out.print(
                f"Subscription feeding the function: {result.trigger_subscription}"
            )

    # --- publish ----------------------------------------------------------------

    def publish(self, result: PublishResult) -> None:
        if self.json_output:
            self.emit_json(
                {
                    "topic": result.topic,
                    "published": [
                        dataclasses.asdict(item) for item in result.published
                    ],
                }
            )
            return
        table = Table(show_edge=False)
        for column in ("message_id", "task_id", "task_type", "source"):
            table.add_column(column, overflow="fold")
        for item in result.published:
            table.add_row(
                item.message_id, item.task_id, item.task_type, escape(item.source)
            )
        self.out.print(table)
        self.out.print(f"Published {len(result.published)} task(s) to {result.topic}.")

    def publish_checked(self, count: int, files: int) -> None:
        if self.json_output:
            self.emit_json({"checked": count, "files": files, "published": []})
        else:
            self.out.print(
                f"{count} task(s) in {files} file(s) are valid; nothing was published (--dry-run)."
            )

    # --- logs ---------------------------------------------------------------------

    def log_record(self, record: LogRecord) -> None:
        if self.json_output:
            self.emit_json(record.to_json())
            return
        self._print_log(self.out, record)

    def _print_log(
        self, console: Console, record: LogRecord, *, first_line_only: bool = False
    ) -> None:
        style = _SEVERITY_STYLE.get(record.severity, "")
        time_text = record.timestamp.astimezone(datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S.%f"
        )[:-3]
        context = []
        for key in ("task_id", "task_type", "delivery_attempt", "outcome"):
            value = record.labels.get(key) or record.fields.get(key)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if value not in (None, ""):
                context.append(f"{key}={value}")
        severity = f"{record.severity:<8}"
        severity = f"[{style}]{severity}[/{style}]" if style else severity
        suffix = f" [dim]{escape(' '.join(context))}[/dim]" if context else ""
        first_line, _, rest = record.message.partition("\n")
        console.print(f"{time_text} {severity} {escape(first_line)}{suffix}")
        if rest and not first_line_only:
            # Continuation lines (a stack trace) are indented under the entry.
            for line in rest.splitlines():
                console.print(f"    {escape(line)}", style="dim")

    def no_log_entries(self) -> None:
        if not self.json_output:
            self.err.print("No log entries match.", style="dim")

    # --- replay -----------------------------------------------------------------------

    def replay_progress(self, item: ReplayItem) -> None:
        """Show each dead letter as it is handled (stderr, terminals only)."""
        if self.json_output or not self.err.is_terminal:
            return
        self.err.print(
            f"{item.outcome}: {escape(str(item.dead_letter.task_id))}", style="dim"
        )

    def _replay_row(self, item: ReplayItem) -> tuple[str, str, str, str, str]:
        letter = item.dead_letter
        label = {
            "replayed": "[green]replayed[/green]",
            "would_replay": "[cyan]would replay[/cyan]",
            "skipped": "[yellow]skipped[/yellow]",
            "failed": "[red]failed[/red]",
        }[item.outcome]
        why = letter.failure_reason or (
            f"failed {letter.delivery_count} deliveries"
            if letter.delivery_count
            else ""
        )
        note = item.reason
        if item.new_message_id:
            note = f"republished as {item.new_message_id}" + (
                f"; {note}" if note else ""
            )
        return (
            label,
            escape(str(letter.task_id)),
            escape(str(letter.task_type)),
            escape(why),
            escape(note),
        )

    def replay(self, result: ReplayResult) -> None:
        if self.json_output:
            self.emit_json(
                {
                    "subscription": result.subscription,
                    "topic": result.topic,
                    "dry_run": result.dry_run,
                    "replayed": result.count("replayed"),
                    "would_replay": result.count("would_replay"),
                    "skipped": result.count("skipped"),
                    "failed": result.count("failed"),
                    "items": [dataclasses.asdict(item) for item in result.items],
                }
            )
            return
        if not result.items:
            self.out.print(f"No dead letters in {result.subscription}.")
            return
        items = Table(show_edge=False)
        for column in (
            "outcome",
            "task_id",
            "task_type",
            "dead-lettered because",
            "note",
        ):
            items.add_column(column, overflow="fold")
        for item in result.items:
            items.add_row(*self._replay_row(item))
        self.out.print(items)
        table = Table(show_edge=False)
        table.add_column("outcome")
        table.add_column("count", justify="right")
        if result.dry_run:
            table.add_row("would replay", str(result.count("would_replay")))
        else:
            table.add_row("replayed", str(result.count("replayed")))
        table.add_row("skipped", str(result.count("skipped")))
        table.add_row("failed", str(result.count("failed")))
        self.out.print(table)
        if result.dry_run:
            self.out.print("Dry run: nothing was republished or acknowledged.")

    # --- the local cloud ------------------------------------------------------------

    def local_status(self, status: dict[str, Any]) -> None:
        if self.json_output:
            self.emit_json(status)
            return
        if not status["running"]:
            self.out.print(
                f"The local cloud is not running (state directory {status['state_dir']})."
            )
            return
        table = Table(show_header=False, show_edge=False)
        for key in (
            "pid",
            "grpc_endpoint",
            "storage_endpoint",
            "smtp_endpoint",
            "state_dir",
            "uptime_seconds",
        ):
            if status.get(key) is not None:
                table.add_row(key, str(status[key]))
        self.out.print(table)

    def local_env(self, variables: dict[str, str]) -> None:
        if self.json_output:
            self.emit_json(variables)
            return
        for name, value in variables.items():
            sys.stdout.write(f"export {name}={value}\n")

    def local_emails(self, messages: list[ReceivedMail]) -> None:
        if self.json_output:
            self.emit_json(
                [
                    {
                        "received_at": _utc(message.received_at).isoformat(),
                        "message_id": message.message_id,
                        "from": message.mail_from,
                        "recipients": list(message.recipients),
                        "subject": message.subject,
                        "size": message.size,
                        "file": str(message.path),
                    }
                    for message in messages
                ]
            )
            return
        if not messages:
            self.out.print("No mail has reached the local cloud's SMTP sink.")
            return
        table = Table(show_edge=False)
        table.add_column("time (UTC)")
        table.add_column("from")
        table.add_column("to")
        table.add_column("subject")
        for message in messages:
            table.add_row(
                _utc(message.received_at).strftime("%Y-%m-%d %H:%M:%S"),
                escape(message.mail_from),
                escape(", ".join(message.recipients)),
                escape(message.subject or ""),
            )
        self.out.print(table)

    # --- the demo ------------------------------------------------------------------

    def demo_event(self, event: DemoEvent) -> None:
        # Progress goes to stderr in both modes; --json changes only the summary.
        if event.kind == "step":
            self.err.print(f"\n[bold]==> {escape(event.text)}[/bold]")
        elif event.kind == "log" and event.record is not None:
            # The worker's own structured lines tell the story; the runtime's plain
            # text (request logs, tracebacks) stays available through taskctl logs.
            if event.record.structured:
                self._print_log(self.err, event.record, first_line_only=True)
        else:
            self.err.print(f"    {escape(event.text)}")

    def demo_summary(self, summary: DemoSummary) -> None:
        if self.json_output:
            self.emit_json(
                {
                    **dataclasses.asdict(summary),
                    "succeeded_story": summary.succeeded_story,
                }
            )
            return
        table = Table(title="Demo summary", show_header=False, show_edge=False)
        table.add_column("item", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_row("published", str(summary.published))
        table.add_row("succeeded", str(summary.succeeded))
        table.add_row(
            "dead-lettered",
            f"{summary.dead_lettered} (task {summary.failing_task_id}, after "
            f"{summary.delivery_attempts} of {summary.max_delivery_attempts} deliveries)",
        )
        table.add_row("replayed", str(summary.replayed))
        table.add_row(
            "replayed task succeeded", "yes" if summary.failing_task_succeeded else "no"
        )
        images = [url for url in summary.outputs if url.startswith("gs://")]
        table.add_row("resized images", "\n".join(images) or "none")
        table.add_row(
            "emails in the SMTP sink",
            "\n".join(
                f"{', '.join(mail.recipients)}: {mail.subject}"
                for mail in summary.emails
            )
            or "none",
        )
        table.add_row(
            "reports in Firestore",
            "\n".join(
                f"{report.path}: {report.record_count} orders, total {report.total_amount}"
                for report in summary.reports
            )
            or "none",
        )
        if summary.output_dir:
            table.add_row("copied to", summary.output_dir)
        if summary.state_dir:
            table.add_row("state kept in", summary.state_dir)
        table.add_row("elapsed", f"{summary.elapsed_seconds} s")
        self.out.print(table)
        verdict = (
            "[green]The story ran as expected.[/green]"
            if summary.succeeded_story
            else "[red]The story did not run as expected.[/red]"
        )
        self.out.print(verdict)

    def uploaded(self, result: Uploaded) -> None:
        if self.json_output:
            self.emit_json(dataclasses.asdict(result))
            return
        created = " (created the bucket)" if result.bucket_created else ""
        self.out.print(
            f"Uploaded {result.size} bytes ({result.content_type}) to {escape(result.url)}{created}."
        )

    def line(self, text: str) -> None:
        """Print one line of already-escaped Rich markup to stdout."""
        self.out.print(text)
