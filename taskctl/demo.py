"""``taskctl demo``: the whole pipeline on a temporary local cloud.

The story: provision with short retry delays, upload a sample image, publish the
example tasks (one names an image that is not uploaded yet), watch the others
succeed and that one fail, be retried with backoff and be dead-lettered after
``max_delivery_attempts`` deliveries, upload the missing image, replay the dead
letter, and watch it succeed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from taskctl import logs, provision, publish, replay
from taskctl import settings as settings_module
from taskctl.errors import OperationFailed
from taskctl.gcp.clients import Clients, LocalEndpoints
from taskctl.localcloud import process
from taskctl.tasks import Task, load_files

BUCKET = "taskctl-demo-images"
SAMPLE_OBJECT = "uploads/harbour.jpg"
STEP_TIMEOUT = 90.0  # seconds any one stage of the story may take
POLL_INTERVAL = 0.5
# Short delays keep the story to about a minute: the 1 s minimum backoff doubles
# up to 4 s.
DEMO_OVERRIDES: dict[str, Any] = {
    "min_backoff": 1,
    "max_backoff": 4,
    "max_delivery_attempts": 5,
    "ack_deadline": 30,
    "function": {"timeout": 30, "max_instances": 4},
    "port": 0,
}

EventKind = Literal["step", "log", "note"]


@dataclass(frozen=True)
class DemoEvent:
    kind: EventKind
    text: str
    record: logs.LogRecord | None = None


@dataclass(frozen=True)
class DemoEmail:
    recipients: tuple[str, ...]
    subject: str
    file: str


@dataclass(frozen=True)
class DemoReport:
    path: str
    record_count: int
    total_amount: float
    days: int


@dataclass
class DemoSummary:
    published: int = 0
    succeeded: int = 0
    dead_lettered: int = 0
    replayed: int = 0
    failing_task_id: str | None = None
    delivery_attempts: int = 0
    max_delivery_attempts: int = 0
    failing_task_succeeded: bool = False
    outputs: list[str] = field(default_factory=list)
    output_dir: str | None = None
    emails: list[DemoEmail] = field(default_factory=list)
    reports: list[DemoReport] = field(default_factory=list)
    state_dir: str | None = None
    elapsed_seconds: float = 0.0

    @property
    def succeeded_story(self) -> bool:
        return (
            self.failing_task_id is not None
            and self.delivery_attempts == self.max_delivery_attempts
            and self.dead_lettered == 1
            and self.replayed == 1
            and self.failing_task_succeeded
            and self.succeeded == self.published
            and bool(self.emails)
            and bool(self.reports)
        )


def default_tasks_file() -> Path:
    return Path(__file__).resolve().parent.parent / "examples" / "tasks.json"


def sample_image() -> Path:
    return (
        Path(__file__).resolve().parent.parent / "examples" / "images" / "harbour.jpg"
    )


def sample_orders() -> Path:
    return Path(__file__).resolve().parent.parent / "examples" / "data" / "orders.json"


def seed_orders(clients: Clients, path: Path) -> int:
    """Write the sample orders that the report task summarises into Firestore."""
    import datetime

    orders = json.loads(path.read_text())
    batch = clients.firestore.batch()
    for order in orders:
        created = datetime.datetime.fromisoformat(
            order["created_at"].replace("Z", "+00:00")
        )
        document = {**order, "created_at": created}
        batch.set(
            clients.firestore.collection("orders").document(order["id"]), document
        )
    batch.commit()
    return len(orders)


class LogWatcher:
    """Polls the worker's log entries and keeps the per-task outcomes seen so far."""

    def __init__(
        self,
        settings: settings_module.Settings,
        clients: Clients,
        emit: Callable[[DemoEvent], None],
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._emit = emit
        self._seen: set[str] = set()
        self.outcomes: dict[str, list[str]] = {}
        self.outputs: dict[str, list[str]] = {}

    def poll(self) -> None:
        query = logs.LogQuery(limit=1000)
        for record in logs.read(self._settings, self._clients, query):
            if record.insert_id in self._seen:
                continue
            self._seen.add(record.insert_id)
            self._emit(DemoEvent("log", record.message, record))
            task_id = record.task_id
            if task_id and record.outcome:
                self.outcomes.setdefault(task_id, []).append(record.outcome)
                written = record.fields.get("outputs")
                if record.outcome == "success" and isinstance(written, list):
                    self.outputs[task_id] = [str(item) for item in written]

    def count(self, task_id: str, outcome: str) -> int:
        return self.outcomes.get(task_id, []).count(outcome)

    def wait_until(self, description: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            self.poll()
            if condition():
                return
            if time.monotonic() > deadline:
                raise OperationFailed(
                    f"the demo timed out after {STEP_TIMEOUT:.0f} s waiting until {description}",
                    hint="rerun with --keep and read localcloud.log in the state directory",
                )
            time.sleep(POLL_INTERVAL)


def _failing_task(tasks: list[Task], uploaded: set[str]) -> Task:
    for task in tasks:
        payload = json.loads(task.data)["payload"]
        if task.task_type == "process_image" and payload.get("source") not in uploaded:
            return task
    raise OperationFailed("the demo's task file has no task naming a missing image")


def _dead_letters(
    settings: settings_module.Settings, clients: Clients
) -> list[replay.ReplayItem]:
    return replay.replay(settings, clients, dry_run=True).items


def run(
    *,
    tasks_file: Path,
    keep_state: bool = False,
    on_event: Callable[[DemoEvent], None] = lambda event: None,
) -> DemoSummary:
    """Run the story and return its summary; the local cloud is always shut down."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="taskctl-demo-"))
    state_dir = root / "state"
    summary = DemoSummary(state_dir=str(state_dir) if keep_state else None)

    def step(text: str) -> None:
        on_event(DemoEvent("step", text))

    tasks = load_files([tasks_file])
    step(f"Starting a local cloud in {state_dir}")
    child, info = process.spawn(state_dir)
    try:
        settings = settings_module.load(
            config_path=None,
            environ={},
            cwd=root,
            overrides={**DEMO_OVERRIDES, "state_dir": state_dir},
        )
        summary.max_delivery_attempts = settings.max_delivery_attempts
        clients = Clients(
            settings, LocalEndpoints(info.grpc_endpoint, info.storage_endpoint)
        )
        _story(settings, clients, tasks, summary, root, step, on_event)
    finally:
        step("Shutting the local cloud down")
        process.terminate(info)
        if child.poll() is None:
            child.kill()
        child.wait()
        if not keep_state:
            shutil.rmtree(state_dir, ignore_errors=True)
    summary.elapsed_seconds = round(time.monotonic() - started, 1)
    return summary


def _story(
    settings: settings_module.Settings,
    clients: Clients,
    tasks: list[Task],
    summary: DemoSummary,
    root: Path,
    step: Callable[[str], None],
    on_event: Callable[[DemoEvent], None],
) -> None:
    step(
        f"Provisioning: retries with {settings.min_backoff}-{settings.max_backoff} s backoff, "
        f"dead-lettering after {settings.max_delivery_attempts} deliveries"
    )
    result = provision.provision(settings, clients)
    for item in result.items:
        on_event(DemoEvent("note", f"{item.action:<9} {item.kind:<12} {item.name}"))

    step(f"Uploading the sample image to gs://{BUCKET}/{SAMPLE_OBJECT}")
    bucket = clients.storage.create_bucket(BUCKET)
    bucket.blob(SAMPLE_OBJECT).upload_from_filename(
        str(sample_image()), content_type="image/jpeg"
    )
    order_count = seed_orders(clients, sample_orders())
    step(f"Writing {order_count} sample orders to Firestore for the report task")
    failing = _failing_task(tasks, {SAMPLE_OBJECT})
    missing_object = json.loads(failing.data)["payload"]["source"]
    summary.failing_task_id = failing.task_id

    step(
        f"Publishing {len(tasks)} tasks; task {failing.task_id} names {missing_object}, which is not uploaded yet"
    )
    published = publish.publish(settings, clients, tasks)
    summary.published = len(published.published)

    step("Watching the worker's log entries")
    watcher = LogWatcher(settings, clients, on_event)
    others = [task.task_id for task in tasks if task.task_id != failing.task_id]
    watcher.wait_until(
        "the other tasks succeeded",
        lambda: all(watcher.count(task_id, "success") for task_id in others),
    )
    step(f"Waiting for task {failing.task_id} to be dead-lettered")
    dead: list[replay.ReplayItem] = []

    def is_dead_lettered() -> bool:
        dead[:] = _dead_letters(settings, clients)
        return bool(dead)

    watcher.wait_until("the failing task was dead-lettered", is_dead_lettered)
    watcher.poll()
    summary.dead_lettered = len(dead)
    summary.delivery_attempts = watcher.count(failing.task_id, "transient_failure")
    counted = dead[0].dead_letter.delivery_count
    on_event(
        DemoEvent(
            "note",
            f"dead-lettered after {summary.delivery_attempts} deliveries "
            f"(Pub/Sub counted {counted})",
        )
    )

    step(f"Fixing the cause: uploading gs://{BUCKET}/{missing_object}")
    bucket.blob(missing_object).upload_from_filename(
        str(sample_image()), content_type="image/jpeg"
    )

    step("Replaying the dead letter")
    replayed = replay.replay(settings, clients)
    summary.replayed = replayed.count("replayed")
    watcher.wait_until(
        f"task {failing.task_id} succeeded after the replay",
        lambda: watcher.count(failing.task_id, "success") > 0,
    )
    summary.failing_task_succeeded = True
    summary.succeeded = sum(
        1 for task in tasks if watcher.count(task.task_id, "success")
    )

    output_dir = root / "outputs"
    output_dir.mkdir()
    for urls in watcher.outputs.values():
        for url in urls:
            summary.outputs.append(url)
            if not url.startswith(f"gs://{BUCKET}/"):
                continue
            name = url.removeprefix(f"gs://{BUCKET}/")
            target = output_dir / name.replace("/", "_")
            bucket.blob(name).download_to_filename(str(target))
    summary.output_dir = str(output_dir)
    summary.emails = _emails(settings, output_dir)
    summary.reports = _reports(clients, tasks)
    for email in summary.emails:
        on_event(
            DemoEvent(
                "note", f"mail to {', '.join(email.recipients)}: {email.subject!r}"
            )
        )
    for report in summary.reports:
        on_event(
            DemoEvent(
                "note",
                f"report {report.path}: {report.record_count} orders over {report.days} "
                f"days, total {report.total_amount}",
            )
        )


def _emails(settings: settings_module.Settings, output_dir: Path) -> list[DemoEmail]:
    """Return the mail the SMTP sink received, copying each message beside the images."""
    from taskctl.localcloud.smtp import list_mail

    emails = []
    for number, mail in enumerate(list_mail(settings.state_dir), start=1):
        copy = output_dir / f"email-{number}.eml"
        shutil.copyfile(mail.path, copy)
        emails.append(DemoEmail(tuple(mail.recipients), mail.subject or "", str(copy)))
    return emails


def _reports(clients: Clients, tasks: list[Task]) -> list[DemoReport]:
    reports = []
    for task in tasks:
        if task.task_type != "generate_report":
            continue
        payload = json.loads(task.data)["payload"]
        collection = payload.get("report_collection", "reports")
        snapshot = clients.firestore.collection(collection).document(task.task_id).get()
        if not snapshot.exists:
            continue
        report = snapshot.to_dict() or {}
        reports.append(
            DemoReport(
                path=f"{collection}/{task.task_id}",
                record_count=int(report.get("record_count", 0)),
                total_amount=float(report.get("total_amount", 0)),
                days=len(report.get("days", [])),
            )
        )
    return reports
