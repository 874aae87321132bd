"""Deploying, redeploying and deleting functions, run off the RPC threads.

Each operation walks the stages Google reports (BUILD, SERVICE, TRIGGER),
records them in the operation's metadata, and finishes the operation only
after the function's new state is committed.
"""

from __future__ import annotations

import ast
import logging
import random
import shutil
import string
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.cloud.functions_v2.types import functions as types
from google.protobuf import empty_pb2

from taskctl.localcloud.errors import ServiceError
from taskctl.localcloud.functions.instance import (
    MAX_LOCAL_WORKERS,
    Instance,
    InstanceError,
    InstanceSpec,
)
from taskctl.localcloud.functions.names import FunctionName, parse_function
from taskctl.localcloud.functions.operations import OperationStore
from taskctl.localcloud.functions.progress import (
    DeployError,
    Progress,
    now_timestamp,
)
from taskctl.localcloud.functions.pubsub_bridge import PubSubBridge
from taskctl.localcloud.functions.source import (
    SourceError,
    UploadStore,
    check_requirements,
    unpack,
)
from taskctl.localcloud.functions.store import FunctionRecord, FunctionStore
from taskctl.localcloud.functions.triggers import Triggers, default_service_account

log = logging.getLogger("taskctl.localcloud.functions")

_Function = types.Function.pb()
_Stage = types.Stage.Name
_State = types.Function.State


# A revision whose process dies is started again after this delay, unless it
# died more than MAX_CRASHES_IN_WINDOW times within CRASH_WINDOW_SECONDS.
CRASH_RESTART_DELAY_SECONDS = 1.0
CRASH_WINDOW_SECONDS = 60.0
MAX_CRASHES_IN_WINDOW = 3
# stop_all() waits at most this long beyond the instances' grace period for
# their pumps and for background threads.
STOP_ALL_SLACK_SECONDS = 3.0


def _random_lowercase(length: int) -> str:
    return "".join(random.choices(string.ascii_lowercase, k=length))


@dataclass
class _Deployment:
    """The revision, instance and trigger one deploy attempt created, for undoing."""

    revision: int
    revision_name: str
    source_dir: Path
    instance: Instance | None = None
    trigger_name: str = ""
    subscription: str = ""
    created_trigger: bool = False


def resolve_entry_point(requested: str, function_id: str, source_dir: Path) -> str:
    """Apply Google's default: the function ID, else a function named ``function``."""
    if requested:
        return requested
    try:
        module = ast.parse((source_dir / "main.py").read_bytes(), filename="main.py")
    except SyntaxError as error:
        raise SourceError(
            f"main.py line {error.lineno}: syntax error: {error.msg}"
        ) from error
    defined: set[str] = set()
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            defined.update(alias.asname or alias.name for alias in node.names)
    return function_id if function_id in defined else "function"


class Deployer:
    """Runs instances and triggers for the stored functions."""

    def __init__(
        self,
        *,
        state_dir: Path,
        store: FunctionStore,
        operations: OperationStore,
        uploads: UploadStore,
        bridge: PubSubBridge,
        host: str,
        grpc_endpoint: str,
        storage_endpoint: str,
        container_log: Any,
        ready_timeout: float,
        smtp_port: int = 0,
    ) -> None:
        self._root = state_dir / "functions"
        self._store = store
        self._operations = operations
        self._uploads = uploads
        self._triggers = Triggers(store, bridge)
        self._host = host
        self._grpc_endpoint = grpc_endpoint
        self._storage_endpoint = storage_endpoint
        self._smtp_port = smtp_port
        self._container_log = container_log
        self._ready_timeout = ready_timeout
        self._instances: dict[str, Instance] = {}
        # Every instance created, serving or not: starting, retiring or crashed.
        # stop_all() stops them all, so none outlives the local cloud.
        self._created: weakref.WeakSet[Instance] = weakref.WeakSet()
        self._shutting_down = False
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._crashes: dict[str, list[float]] = {}

    def run_in_background(self, name: str, work: Callable[[], None]) -> None:
        thread = threading.Thread(target=work, name=name, daemon=True)
        thread.start()
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    # ----- deploy and redeploy -------------------------------------------------

    def deploy(self, function_name: str, desired: Any, progress: Progress) -> None:
        """Deploy ``desired`` as the next revision, then finish the operation."""
        record = self._store.require(function_name)
        name = parse_function(function_name)
        revision = record.revision + 1
        revision_name = f"{name.function_id}-{revision:05d}-{_random_lowercase(3)}"
        deployment = _Deployment(
            revision=revision,
            revision_name=revision_name,
            source_dir=self._revision_dir(name, revision_name),
        )
        try:
            self._build(name, desired, deployment, progress)
            self._start_service(name, desired, deployment, progress)
            if desired.HasField("event_trigger"):
                self._connect_trigger(name, record, desired, deployment, progress)
            self._commit(record, desired, deployment, progress)
        except DeployError as error:
            if self._abandon_at_shutdown(function_name, deployment):
                return
            self._fail(record, desired, deployment, progress, error.code, error.message)
        except Exception:
            if self._abandon_at_shutdown(function_name, deployment):
                return
            log.exception("deploy of function=%s failed", function_name)
            self._fail(
                record,
                desired,
                deployment,
                progress,
                grpc.StatusCode.INTERNAL,
                "internal error in the local cloud while deploying; see its log",
            )

    def _abandon_at_shutdown(self, function_name: str, deployment: _Deployment) -> bool:
        """Leave a deploy that shutdown interrupted for the next start to clean up.

        Stopping its instance made the deploy fail, and recording that failure
        would blame the function for the local cloud's exit.
        """
        if not self._shutting_down:
            return False
        log.warning(
            "deploy of function=%s revision=%s interrupted by shutdown",
            function_name,
            deployment.revision_name,
        )
        if deployment.instance is not None:
            deployment.instance.kill()
        return True

    def _revision_dir(self, name: FunctionName, revision_name: str) -> Path:
        return (
            self._root / name.project / name.location / name.function_id / revision_name
        )

    def _build(
        self,
        name: FunctionName,
        desired: Any,
        deployment: _Deployment,
        progress: Progress,
    ) -> None:
        progress.begin(_Stage.BUILD, "unpacking the source and checking requirements")
        storage = desired.build_config.source.storage_source
        try:
            zip_path = self._uploads.find(storage.bucket, storage.object_)
            unpack(zip_path, deployment.source_dir)
            check_requirements(deployment.source_dir)
            desired.build_config.entry_point = resolve_entry_point(
                desired.build_config.entry_point,
                name.function_id,
                deployment.source_dir,
            )
        except ServiceError as error:
            raise DeployError(error.code, error.message) from error
        except SourceError as error:
            raise DeployError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        desired.build_config.source_provenance.resolved_storage_source.CopyFrom(storage)
        progress.complete(_Stage.BUILD)

    def _start_service(
        self,
        name: FunctionName,
        desired: Any,
        deployment: _Deployment,
        progress: Progress,
    ) -> None:
        progress.begin(_Stage.SERVICE, f"starting revision {deployment.revision_name}")
        instance = self._new_instance(
            name, desired, deployment.revision_name, deployment.source_dir
        )
        deployment.instance = instance
        try:
            instance.start(self._ready_timeout)
        except InstanceError as error:
            # Google reports a container that fails its health check this way.
            raise DeployError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"could not start revision {deployment.revision_name} of function "
                f"{name.function_id}: {error}",
            ) from error
        progress.complete(_Stage.SERVICE, self._service_name(name), instance.url)

    def _new_instance(
        self,
        name: FunctionName,
        function: Any,
        revision_name: str,
        source_dir: Path,
        preferred_port: int = 0,
    ) -> Instance:
        config = function.service_config
        spec = InstanceSpec(
            project=name.project,
            location=name.location,
            function_id=name.function_id,
            revision_name=revision_name,
            source_dir=source_dir,
            entry_point=function.build_config.entry_point,
            signature_type="cloudevent"
            if function.HasField("event_trigger")
            else "http",
            timeout_seconds=config.timeout_seconds,
            concurrency=config.max_instance_request_concurrency or 1,
            # An unset max_instance_count leaves MAX_LOCAL_WORKERS as the limit.
            max_instances=config.max_instance_count or MAX_LOCAL_WORKERS,
            environment_variables=dict(config.environment_variables),
        )
        instance = Instance(
            spec,
            host=self._host,
            grpc_endpoint=self._grpc_endpoint,
            storage_endpoint=self._storage_endpoint,
            container_log=self._container_log,
            preferred_port=preferred_port,
            smtp_port=self._smtp_port,
        )
        instance.on_exit = self._instance_exited
        with self._lock:
            self._created.add(instance)
            shutting_down = self._shutting_down
        if shutting_down:
            # stop_all() has already collected the instances it stops.
            instance.kill()
        return instance

    @staticmethod
    def _service_name(name: FunctionName) -> str:
        return f"{name.parent.name}/services/{name.function_id}"

    def _connect_trigger(
        self,
        name: FunctionName,
        record: FunctionRecord,
        desired: Any,
        deployment: _Deployment,
        progress: Progress,
    ) -> None:
        progress.begin(_Stage.TRIGGER, "connecting the Pub/Sub trigger")
        assert deployment.instance is not None
        endpoint = deployment.instance.url + "/"

        current = record.function
        # NOTE: a changed retry_policy gets a new trigger and subscription, because
        # Pub/Sub's in-process API cannot change how an existing subscription
        # treats failed pushes. Whether Google keeps the subscription then is not
        # known here.
        same_trigger = (
            record.subscription
            and current.HasField("event_trigger")
            and current.event_trigger.trigger
            and current.event_trigger.pubsub_topic == desired.event_trigger.pubsub_topic
            and current.event_trigger.retry_policy == desired.event_trigger.retry_policy
        )
        try:
            if same_trigger:
                # Repointing keeps the subscription, so settings added to it after
                # the first deploy (dead-letter and retry policy) survive.
                self._triggers.repoint(record.subscription, endpoint)
                deployment.trigger_name = current.event_trigger.trigger
                deployment.subscription = record.subscription
            else:
                created = self._triggers.create(name, desired, endpoint)
                deployment.trigger_name, deployment.subscription = created
                deployment.created_trigger = True
        except ServiceError as error:
            raise DeployError(
                error.code,
                f"could not connect the trigger of {name.function_id}: {error.message}",
            ) from error

        desired.event_trigger.trigger = deployment.trigger_name
        if not desired.event_trigger.service_account_email:
            desired.event_trigger.service_account_email = default_service_account(name)
        progress.complete(_Stage.TRIGGER, deployment.trigger_name)

    def _commit(
        self,
        record: FunctionRecord,
        desired: Any,
        deployment: _Deployment,
        progress: Progress,
    ) -> None:
        instance = deployment.instance
        assert instance is not None
        name = parse_function(record.name)

        desired.state = _State.ACTIVE
        del desired.state_messages[:]
        desired.update_time.CopyFrom(now_timestamp())
        desired.service_config.service = self._service_name(name)
        desired.service_config.revision = deployment.revision_name
        desired.service_config.uri = instance.url
        desired.url = instance.url

        updated = record.evolve(
            function=desired,
            revision=deployment.revision,
            revision_name=deployment.revision_name,
            source_dir=str(deployment.source_dir),
            port=instance.port,
            subscription=deployment.subscription,
            operation="",
        )
        with self._lock:
            previous = self._instances.get(record.name)
            self._instances[record.name] = instance
        self._store.save(updated)
        progress.succeed(desired)

        log.info(
            "function=%s revision=%s active on %s",
            record.name,
            deployment.revision_name,
            instance.url,
        )
        self._retire(record, deployment, previous)

    def _retire(
        self, record: FunctionRecord, deployment: _Deployment, previous: Instance | None
    ) -> None:
        """Remove what the replaced revision used once the new one serves."""
        if record.subscription and record.subscription != deployment.subscription:
            self._triggers.delete(
                record.function.event_trigger.trigger, record.subscription
            )
        old_dir = Path(record.source_dir) if record.source_dir else None

        def stop_previous() -> None:
            if previous is not None:
                previous.stop()
            if old_dir is not None:
                shutil.rmtree(old_dir, ignore_errors=True)

        self.run_in_background(f"retire-{record.revision_name}", stop_previous)

    def _fail(
        self,
        record: FunctionRecord,
        desired: Any,
        deployment: _Deployment,
        progress: Progress,
        code: grpc.StatusCode,
        message: str,
    ) -> None:
        log.error("deploy of function=%s failed: %s", record.name, message)
        if deployment.instance is not None:
            deployment.instance.kill()
        if deployment.created_trigger:
            self._triggers.delete(deployment.trigger_name, deployment.subscription)
        shutil.rmtree(deployment.source_dir, ignore_errors=True)

        with self._lock:
            still_serving = record.name in self._instances
        if still_serving:
            # NOTE: the previous revision keeps serving with its configuration,
            # and the failure shows as a state message on the function.
            function = _Function()
            function.CopyFrom(record.function)
            function.state = _State.ACTIVE
        else:
            function = desired
            function.state = _State.FAILED
        del function.state_messages[:]
        function.state_messages.add(
            severity=types.StateMessage.Severity.ERROR,
            type_="DeployError",
            message=message,
        )
        function.update_time.CopyFrom(now_timestamp())
        self._store.save(record.evolve(function=function, operation=""))
        progress.fail(code, message)

    # ----- delete -------------------------------------------------------------

    def delete(self, function_name: str, progress: Progress) -> None:
        record = self._store.require(function_name)
        try:
            progress.begin(_Stage.SERVICE, "stopping the function's instance")
            with self._lock:
                instance = self._instances.pop(function_name, None)
            if instance is not None:
                instance.stop()
            progress.complete(_Stage.SERVICE)
            if record.function.HasField("event_trigger"):
                progress.begin(_Stage.TRIGGER, "deleting the trigger")
                if record.subscription:
                    self._triggers.delete(
                        record.function.event_trigger.trigger, record.subscription
                    )
                progress.complete(_Stage.TRIGGER)
            self._store.delete(function_name)
            name = parse_function(function_name)
            shutil.rmtree(self._revision_dir(name, ""), ignore_errors=True)
            progress.succeed(empty_pb2.Empty())
            log.info("function=%s deleted", function_name)
        except Exception:
            log.exception("delete of function=%s failed", function_name)
            function = _Function()
            function.CopyFrom(record.function)
            function.state = _State.FAILED
            self._store.save(record.evolve(function=function, operation=""))
            progress.fail(
                grpc.StatusCode.INTERNAL,
                "internal error while deleting; see the local cloud's log",
            )

    # ----- start and stop of the local cloud ----------------------------------

    def discard_leftovers(self, record: FunctionRecord) -> None:
        """Remove the trigger and files of a deploy the local cloud's exit cut short."""
        current_trigger = record.function.event_trigger.trigger
        for trigger in self._store.triggers_of(record.name):
            if trigger.name == current_trigger:
                continue
            log.warning(
                "deleting trigger=%s left by an interrupted deploy of function=%s",
                trigger.name,
                record.name,
            )
            self._triggers.delete(trigger.name, trigger.transport.pubsub.subscription)

        function_dir = self._revision_dir(parse_function(record.name), "")
        if not function_dir.is_dir():
            return
        for revision_dir in function_dir.iterdir():
            if str(revision_dir) != record.source_dir:
                shutil.rmtree(revision_dir, ignore_errors=True)

    def _instance_exited(self, instance: Instance, code: int) -> None:
        """Start a serving revision again when its process dies, as Cloud Run would."""
        spec = instance.spec
        name = FunctionName(spec.project, spec.location, spec.function_id).name
        with self._lock:
            if self._instances.get(name) is not instance:
                return
            now = time.monotonic()
            recent = [
                t for t in self._crashes.get(name, []) if now - t < CRASH_WINDOW_SECONDS
            ]
            recent.append(now)
            self._crashes[name] = recent
        log.error(
            "instance revision=%s of function=%s exited with code %s%s",
            spec.revision_name,
            name,
            code,
            instance.recent_output(),
        )
        if len(recent) > MAX_CRASHES_IN_WINDOW:
            self._mark_crash_looping(name, code)
            return

        def restart() -> None:
            time.sleep(CRASH_RESTART_DELAY_SECONDS)
            record = self._store.get(name)
            if (
                record is None
                or record.operation
                or record.revision_name != spec.revision_name
            ):
                return
            self.resume(record, replacing=instance)

        self.run_in_background(f"restart-{spec.revision_name}", restart)

    def _mark_crash_looping(self, name: str, code: int) -> None:
        record = self._store.get(name)
        if record is None:
            return
        message = (
            f"revision {record.revision_name} exited {MAX_CRASHES_IN_WINDOW + 1} times "
            f"within {CRASH_WINDOW_SECONDS:.0f} s (last exit code {code}); the local "
            "cloud stopped restarting it. Fix the function and deploy again"
        )
        log.error("function=%s: %s", name, message)
        function = _Function()
        function.CopyFrom(record.function)
        function.state = _State.FAILED
        function.state_messages.add(
            severity=types.StateMessage.Severity.ERROR,
            type_="CrashLoop",
            message=message,
        )
        self._store.save(record.evolve(function=function))

    def resume(self, record: FunctionRecord, replacing: Instance | None = None) -> None:
        """Start an ACTIVE function's current revision again.

        Used after a local cloud restart, and after the revision's process died,
        when ``replacing`` is the dead instance. A replacement that lost a race
        with a redeploy or delete is stopped again.
        """
        name = parse_function(record.name)
        instance = self._new_instance(
            name,
            record.function,
            record.revision_name,
            Path(record.source_dir),
            preferred_port=record.port,
        )
        function = _Function()
        function.CopyFrom(record.function)
        try:
            instance.start(self._ready_timeout)
            if record.subscription and instance.port != record.port:
                self._triggers.repoint(record.subscription, instance.url + "/")
        except (InstanceError, ServiceError) as error:
            instance.kill()
            if self._shutting_down:
                log.info("restart of function=%s stopped by shutdown", record.name)
                return
            message = getattr(error, "message", None) or str(error)
            log.error("restarting function=%s failed: %s", record.name, message)
            function.state = _State.FAILED
            function.state_messages.add(
                severity=types.StateMessage.Severity.ERROR,
                type_="RestartError",
                message=f"the local cloud could not restart this function: {message}",
            )
            self._store.save(record.evolve(function=function))
            return
        function.service_config.uri = instance.url
        function.url = instance.url
        with self._lock:
            superseded = (
                replacing is not None
                and self._instances.get(record.name) is not replacing
            )
            if not superseded:
                self._instances[record.name] = instance
        if superseded:
            instance.kill()
            return
        self._store.save(record.evolve(function=function, port=instance.port))
        log.info(
            "function=%s revision=%s restarted on %s",
            record.name,
            record.revision_name,
            instance.url,
        )

    def stop_all(self, grace: float) -> None:
        """Stop every instance within about ``grace`` seconds in total.

        That covers serving revisions, replaced ones still finishing requests and
        ones still starting. Each gets SIGTERM and, after ``grace``, SIGKILL for
        its whole process group.
        """
        deadline = time.monotonic() + grace + STOP_ALL_SLACK_SECONDS
        with self._lock:
            self._shutting_down = True
            instances = [
                instance for instance in self._created if not instance.finished
            ]
            self._instances.clear()
        stoppers = [
            threading.Thread(target=instance.stop, args=(grace,), daemon=True)
            for instance in instances
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            background = list(self._threads)
        for thread in background:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        unfinished = [thread.name for thread in background if thread.is_alive()]
        if unfinished:
            log.warning(
                "shutdown continues without waiting for threads %s",
                ", ".join(unfinished),
            )
