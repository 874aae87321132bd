"""Declarative provisioning: read the actual state, plan, apply.

Resources, in order: the task topic, the dead-letter topic and its pull
subscription, the Pub/Sub service agent's right to publish dead letters, the
worker function (deployed with retries on), and finally the subscription that
really feeds the function (function -> Eventarc trigger -> transport
subscription), on which the dead-letter policy, retry policy, ack deadline and
retention are set, because Eventarc creates it with none of them. That last step
runs after every deploy, since a redeploy can replace the subscription.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from taskctl import bundle
from taskctl.errors import OperationFailed
from taskctl.gcp.clients import Clients, api_errors, one_line
from taskctl.settings import Settings

Action = Literal["create", "update", "unchanged", "pending"]
EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
SOURCE_LABEL = "taskctl-source-sha256"
PUBLISHER_ROLE = "roles/pubsub.publisher"
SUBSCRIBER_ROLE = "roles/pubsub.subscriber"
DEPLOY_TIMEOUT = 15 * 60  # seconds; real builds commonly take minutes

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Change:
    """One field that differs between the actual and the desired state."""

    field: str
    current: str | None
    desired: str


@dataclass
class PlanItem:
    kind: str  # topic, subscription, iam, function
    name: str
    action: Action
    changes: list[Change] = field(default_factory=list)
    note: str = ""


@dataclass
class ProvisionResult:
    items: list[PlanItem]
    applied: bool
    trigger_subscription: str | None = None
    function_uri: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(item.action in ("create", "update") for item in self.items)


def _seconds(value: Any) -> int | None:
    """Return a proto-plus Duration (a timedelta) as whole seconds, None when unset."""
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        return int(value.total_seconds())
    return int(value.seconds)


def retry_window_seconds(settings: Settings) -> int:
    """Estimate the longest time a message can spend being retried before it is
    dead-lettered: every attempt may run to the function timeout, and the backoff
    doubles from the minimum up to the maximum between attempts."""
    total = settings.max_delivery_attempts * max(settings.function.timeout, 1)
    backoff = settings.min_backoff
    for _ in range(settings.max_delivery_attempts - 1):
        total += min(backoff, settings.max_backoff)
        backoff = max(backoff * 2, 1)
    return total


def warnings_for(settings: Settings) -> list[str]:
    notes = []
    window = retry_window_seconds(settings)
    if settings.retention < window:
        notes.append(
            f"retention ({settings.retention} s) is shorter than the worst-case retry "
            f"window ({window} s): messages could expire before they are dead-lettered"
        )
    if settings.ack_deadline < settings.function.timeout:
        notes.append(
            f"ack_deadline ({settings.ack_deadline} s) is below function.timeout "
            f"({settings.function.timeout} s): a push still running at the deadline "
            "counts as failed and the task is delivered again while it runs"
        )
    return notes


class Provisioner:
    def __init__(
        self,
        settings: Settings,
        clients: Clients,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.dry_run = dry_run
        self._progress = progress or (lambda message: None)
        self.items: list[PlanItem] = []

    def _record(self, item: PlanItem) -> PlanItem:
        self.items.append(item)
        return item

    def _apply(self, item: PlanItem) -> bool:
        return not self.dry_run and item.action in ("create", "update")

    # --- topics -------------------------------------------------------------

    def ensure_topic(self, path: str) -> None:
        from google.api_core import exceptions

        publisher = self.clients.publisher
        current = _read(
            f"reading topic {path}",
            lambda: publisher.get_topic(request={"topic": path}),
        )
        if current is not None:
            self._record(PlanItem("topic", path, "unchanged"))
            return
        item = self._record(PlanItem("topic", path, "create"))
        if self._apply(item):
            self._progress(f"creating topic {path}")
            with api_errors(f"creating topic {path}"):
                try:
                    publisher.create_topic(request={"name": path})
                except exceptions.AlreadyExists:
                    item.action = "unchanged"

    # --- the dead-letter subscription ---------------------------------------

    def ensure_dead_letter_subscription(self) -> None:
        settings = self.settings
        path = settings.dead_letter_subscription_path
        subscriber = self.clients.subscriber
        desired_retention = settings.dead_letter_retention
        current = _read(
            f"reading subscription {path}",
            lambda: subscriber.get_subscription(request={"subscription": path}),
        )
        if current is None:
            item = self._record(PlanItem("subscription", path, "create"))
            if self._apply(item):
                self._progress(f"creating subscription {path}")
                with api_errors(f"creating subscription {path}"):
                    subscriber.create_subscription(
                        request={
                            "name": path,
                            "topic": settings.dead_letter_topic_path,
                            "ack_deadline_seconds": 60,
                            "message_retention_duration": {
                                "seconds": desired_retention
                            },
                        }
                    )
            return

        if current.topic != settings.dead_letter_topic_path:
            raise OperationFailed(
                f"subscription {path} is attached to {current.topic}, not to the "
                f"dead-letter topic {settings.dead_letter_topic_path}",
                hint="delete it or set dead_letter_subscription to another name",
            )
        current_retention = _seconds(current.message_retention_duration)
        if current_retention == desired_retention:
            self._record(PlanItem("subscription", path, "unchanged"))
            return
        item = self._record(
            PlanItem(
                "subscription",
                path,
                "update",
                [
                    Change(
                        "message_retention_duration",
                        f"{current_retention}s",
                        f"{desired_retention}s",
                    )
                ],
            )
        )
        if self._apply(item):
            self._progress(f"updating subscription {path}")
            with api_errors(f"updating subscription {path}"):
                subscriber.update_subscription(
                    request={
                        "subscription": {
                            "name": path,
                            "message_retention_duration": {
                                "seconds": desired_retention
                            },
                        },
                        "update_mask": {"paths": ["message_retention_duration"]},
                    }
                )

    # --- IAM for dead-lettering ----------------------------------------------

    def service_agent(self) -> str:
        with api_errors(f"looking up project {self.settings.project}"):
            project = self.clients.projects.get_project(
                name=f"projects/{self.settings.project}"
            )
        number = project.name.split("/")[-1]
        return f"serviceAccount:service-{number}@gcp-sa-pubsub.iam.gserviceaccount.com"

    def ensure_binding(
        self, client: Any, resource: str, role: str, member: str
    ) -> None:
        name = f"{role} for {member.split(':', 1)[1]} on {resource}"
        with api_errors(f"reading the IAM policy of {resource}"):
            policy = client.get_iam_policy(request={"resource": resource})
        for binding in policy.bindings:
            if binding.role == role and member in binding.members:
                self._record(PlanItem("iam", name, "unchanged"))
                return
        item = self._record(PlanItem("iam", name, "create"))
        if not self._apply(item):
            return
        self._progress(f"granting {role} on {resource}")
        for binding in policy.bindings:
            if binding.role == role:
                binding.members.append(member)
                break
        else:
            policy.bindings.add(role=role, members=[member])
        with api_errors(f"setting the IAM policy of {resource}"):
            # The policy carries the etag it was read with, so a concurrent change
            # makes this fail instead of being overwritten.
            client.set_iam_policy(request={"resource": resource, "policy": policy})

    # --- the function -----------------------------------------------------------

    def desired_function(self, source_hash: str, storage_source: Any | None) -> Any:
        from google.cloud import functions_v2

        settings = self.settings
        function = settings.function
        # The worker reads these: where permanent failures go, and how long a run may
        # last, which bounds the lease on its idempotency record.
        environment = {
            **function.environment,
            "DEAD_LETTER_TOPIC": settings.dead_letter_topic_path,
            "FUNCTION_TIMEOUT_SECONDS": str(function.timeout),
        }
        build_config = functions_v2.BuildConfig(
            runtime=function.runtime, entry_point=function.entry_point
        )
        if storage_source is not None:
            build_config.source = functions_v2.Source(storage_source=storage_source)
        return functions_v2.Function(
            name=settings.function_path,
            description="taskctl worker",
            labels={SOURCE_LABEL: source_hash[:40], "managed-by": "taskctl"},
            environment=functions_v2.Environment.GEN_2,
            build_config=build_config,
            service_config=functions_v2.ServiceConfig(
                available_memory=function.memory,
                timeout_seconds=function.timeout,
                max_instance_count=function.max_instances,
                environment_variables=environment,
            ),
            event_trigger=functions_v2.EventTrigger(
                event_type=EVENT_TYPE,
                pubsub_topic=settings.topic_path(),
                retry_policy=functions_v2.EventTrigger.RetryPolicy.RETRY_POLICY_RETRY,
                trigger_region=settings.region,
            ),
        )

    @staticmethod
    def function_changes(current: Any, desired: Any) -> list[tuple[str, Change]]:
        """Return (update-mask path, change) for each managed field that differs."""
        pairs = [
            (
                "build_config.runtime",
                current.build_config.runtime,
                desired.build_config.runtime,
            ),
            (
                "build_config.entry_point",
                current.build_config.entry_point,
                desired.build_config.entry_point,
            ),
            (
                "build_config.source",
                current.labels.get(SOURCE_LABEL),
                desired.labels[SOURCE_LABEL],
            ),
            (
                "service_config.available_memory",
                current.service_config.available_memory,
                desired.service_config.available_memory,
            ),
            (
                "service_config.timeout_seconds",
                str(current.service_config.timeout_seconds),
                str(desired.service_config.timeout_seconds),
            ),
            (
                "service_config.max_instance_count",
                str(current.service_config.max_instance_count),
                str(desired.service_config.max_instance_count),
            ),
            (
                "service_config.environment_variables",
                _format_map(current.service_config.environment_variables),
                _format_map(desired.service_config.environment_variables),
            ),
            (
                "event_trigger.pubsub_topic",
                current.event_trigger.pubsub_topic,
                desired.event_trigger.pubsub_topic,
            ),
            (
                "event_trigger.retry_policy",
                current.event_trigger.retry_policy.name,
                desired.event_trigger.retry_policy.name,
            ),
        ]
        changes = []
        for path, old, new in pairs:
            if (old or "") != (new or ""):
                label = "source sha256" if path == "build_config.source" else path
                changes.append((path, Change(label, old or None, new)))
        return changes

    def ensure_function(self) -> Any | None:
        """Create or update the function; return it (None on a dry run of a create)."""
        settings = self.settings
        source = bundle.build(bundle.source_dir(settings))
        functions = self.clients.functions
        path = settings.function_path
        current = _read(
            f"reading function {path}", lambda: functions.get_function(name=path)
        )

        desired = self.desired_function(source.sha256, None)
        if current is None:
            item = self._record(
                PlanItem("function", path, "create", note=f"{len(source.files)} files")
            )
            if not self._apply(item):
                return None
            desired = self.desired_function(source.sha256, self._upload(source))
            self._progress(f"deploying function {path}")
            with api_errors(f"creating function {path}"):
                operation = functions.create_function(
                    parent=settings.location_path,
                    function=desired,
                    function_id=settings.function.name,
                )
                deployed = operation.result(timeout=DEPLOY_TIMEOUT)
            return self._check_active(deployed)

        changes = self.function_changes(current, desired)
        if not changes:
            self._record(PlanItem("function", path, "unchanged"))
            return self._check_active(current)
        item = self._record(
            PlanItem("function", path, "update", [change for _, change in changes])
        )
        if not self._apply(item):
            return current
        mask = [mask_path for mask_path, _ in changes]
        if "build_config.source" in mask:
            desired = self.desired_function(source.sha256, self._upload(source))
            mask.append("labels")
        self._progress(f"redeploying function {path}")
        with api_errors(f"updating function {path}"):
            operation = functions.update_function(
                function=desired, update_mask={"paths": mask}
            )
            deployed = operation.result(timeout=DEPLOY_TIMEOUT)
        return self._check_active(deployed)

    def _upload(self, source: bundle.Bundle) -> Any:
        self._progress(f"uploading {len(source.archive)} bytes of function source")
        with api_errors("requesting an upload URL for the function source"):
            response = self.clients.functions.generate_upload_url(
                request={"parent": self.settings.location_path}
            )
        self.clients.upload_source(response.upload_url, source.archive)
        return response.storage_source

    def _check_active(self, function: Any) -> Any:
        from google.cloud import functions_v2

        if function.state != functions_v2.Function.State.ACTIVE:
            messages = "; ".join(
                one_line(message.message) for message in function.state_messages
            )
            raise OperationFailed(
                f"function {function.name} is {function.state.name} after deploy"
                + (f": {messages}" if messages else ""),
                hint="fix the cause and run taskctl provision again",
            )
        return function

    # --- the subscription that feeds the function --------------------------------

    def trigger_subscription(self, function: Any) -> str:
        trigger_name = function.event_trigger.trigger
        if not trigger_name:
            raise OperationFailed(
                f"function {function.name} has no event trigger",
                hint="redeploy it with taskctl provision",
            )
        with api_errors(f"reading trigger {trigger_name}"):
            trigger = self.clients.eventarc.get_trigger(name=trigger_name)
        subscription: str = trigger.transport.pubsub.subscription
        if not subscription:
            raise OperationFailed(
                f"trigger {trigger_name} has no Pub/Sub transport subscription"
            )
        return subscription

    def trigger_subscription_fields(self) -> dict[str, str]:
        """Return the managed fields of the function's subscription, as desired."""
        settings = self.settings
        return {
            "dead_letter_policy.dead_letter_topic": settings.dead_letter_topic_path,
            "dead_letter_policy.max_delivery_attempts": str(
                settings.max_delivery_attempts
            ),
            "retry_policy.minimum_backoff": f"{settings.min_backoff}s",
            "retry_policy.maximum_backoff": f"{settings.max_backoff}s",
            "ack_deadline_seconds": str(settings.ack_deadline),
            "message_retention_duration": f"{settings.retention}s",
        }

    @staticmethod
    def actual_subscription_fields(current: Any) -> dict[str, str | None]:
        """Return the same fields as they are on ``current`` (None when unset)."""
        dead_letter = current.dead_letter_policy
        has_dead_letter = bool(dead_letter.dead_letter_topic)
        retry = current.retry_policy if "retry_policy" in current else None
        return {
            "dead_letter_policy.dead_letter_topic": dead_letter.dead_letter_topic
            if has_dead_letter
            else None,
            "dead_letter_policy.max_delivery_attempts": str(
                dead_letter.max_delivery_attempts
            )
            if has_dead_letter
            else None,
            "retry_policy.minimum_backoff": f"{_seconds(retry.minimum_backoff)}s"
            if retry is not None
            else None,
            "retry_policy.maximum_backoff": f"{_seconds(retry.maximum_backoff)}s"
            if retry is not None
            else None,
            "ack_deadline_seconds": str(current.ack_deadline_seconds),
            "message_retention_duration": f"{_seconds(current.message_retention_duration)}s",
        }

    def ensure_trigger_subscription(self, path: str) -> None:
        with api_errors(f"reading subscription {path}"):
            current = self.clients.subscriber.get_subscription(
                request={"subscription": path}
            )
        actual = self.actual_subscription_fields(current)
        changes = [
            Change(name, actual[name], value)
            for name, value in self.trigger_subscription_fields().items()
            if actual[name] != value
        ]
        note = "the subscription Eventarc created for the function's trigger"
        action: Action = "update" if changes else "unchanged"
        item = self._record(PlanItem("subscription", path, action, changes, note=note))
        if self._apply(item):
            self.update_trigger_subscription(path, changes)

    def update_trigger_subscription(self, path: str, changes: list[Change]) -> None:
        settings = self.settings
        mask = sorted({change.field.split(".")[0] for change in changes})
        self._progress(f"updating subscription {path}")
        with api_errors(f"updating subscription {path}"):
            self.clients.subscriber.update_subscription(
                request={
                    "subscription": {
                        "name": path,
                        "dead_letter_policy": {
                            "dead_letter_topic": settings.dead_letter_topic_path,
                            "max_delivery_attempts": settings.max_delivery_attempts,
                        },
                        "retry_policy": {
                            "minimum_backoff": {"seconds": settings.min_backoff},
                            "maximum_backoff": {"seconds": settings.max_backoff},
                        },
                        "ack_deadline_seconds": settings.ack_deadline,
                        "message_retention_duration": {"seconds": settings.retention},
                    },
                    "update_mask": {"paths": mask},
                }
            )

    # --- the whole run --------------------------------------------------------------

    def run(self) -> ProvisionResult:
        settings = self.settings
        result = ProvisionResult(self.items, applied=not self.dry_run)
        result.warnings = warnings_for(settings)

        self.ensure_topic(settings.topic_path())
        self.ensure_topic(settings.dead_letter_topic_path)
        self.ensure_dead_letter_subscription()
        dead_letter_topic_exists = not (
            self.dry_run and self._planned_create(settings.dead_letter_topic_path)
        )
        member = self.service_agent()
        if dead_letter_topic_exists:
            self.ensure_binding(
                self.clients.publisher,
                settings.dead_letter_topic_path,
                PUBLISHER_ROLE,
                member,
            )
        else:
            self._record(
                PlanItem(
                    "iam",
                    f"{PUBLISHER_ROLE} on {settings.dead_letter_topic_path}",
                    "create",
                )
            )

        function = self.ensure_function()
        if function is None:
            self._record(
                PlanItem(
                    "subscription",
                    "(created by the function's Eventarc trigger)",
                    "pending",
                    note="dead-letter and retry policy are set on it after the deploy",
                )
            )
            return result
        result.function_uri = function.service_config.uri or None
        subscription = self.trigger_subscription(function)
        result.trigger_subscription = subscription
        self.ensure_trigger_subscription(subscription)
        self.ensure_binding(
            self.clients.subscriber, subscription, SUBSCRIBER_ROLE, member
        )
        return result

    def _planned_create(self, name: str) -> bool:
        return any(item.name == name and item.action == "create" for item in self.items)


def provision(
    settings: Settings,
    clients: Clients,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> ProvisionResult:
    """Bring the profile's resources to the state its settings describe."""
    return Provisioner(settings, clients, dry_run=dry_run, progress=progress).run()


def _format_map(values: Any) -> str:
    return ", ".join(f"{key}={values[key]}" for key in sorted(values))


def _read(action: str, call: Callable[[], Any]) -> Any | None:
    """Return what ``call`` reads, or None when the resource does not exist."""
    from google.api_core import exceptions

    with api_errors(action):
        try:
            return call()
        except exceptions.NotFound:
            return None
