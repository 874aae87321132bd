"""Cloud Functions v2, its operations and Eventarc triggers over real gRPC.

Every function here is a small CloudEvent function written by the test; it
appends what it received to the file named by its ``OUT_FILE`` variable.
"""

from __future__ import annotations

import contextlib
import io
import json
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.api_core import exceptions
from google.cloud import eventarc_v1, functions_v2
from google.cloud.eventarc_v1.services.eventarc.transports import EventarcGrpcTransport
from google.cloud.functions_v2.services.function_service.transports import (
    FunctionServiceGrpcTransport,
)
from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
from google.cloud.logging_v2.services.logging_service_v2.transports import (
    LoggingServiceV2GrpcTransport,
)
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2

from tests.conftest import PROJECT

REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
DEPLOY_TIMEOUT = 90

RECORDING_FUNCTION = """
import base64
import json
import os

import functions_framework


@functions_framework.cloud_event
def handle(event):
    data = base64.b64decode(event.data["message"]["data"]).decode()
    record = {
        "data": data,
        "id": event["id"],
        "type": event["type"],
        "source": event["source"],
        "subscription": event.data.get("subscription"),
        "K_SERVICE": os.environ.get("K_SERVICE"),
        "K_REVISION": os.environ.get("K_REVISION"),
        "GOOGLE_CLOUD_PROJECT": os.environ.get("GOOGLE_CLOUD_PROJECT"),
        "PUBSUB_EMULATOR_HOST": os.environ.get("PUBSUB_EMULATOR_HOST"),
        "FUNCTION_SIGNATURE_TYPE": os.environ.get("FUNCTION_SIGNATURE_TYPE"),
        "GREETING": os.environ.get("GREETING"),
    }
    print(json.dumps({"severity": "WARNING", "message": "handled " + data}))
    with open(os.environ["OUT_FILE"], "a") as out:
        out.write(json.dumps(record) + "\\n")
    if data == "fail":
        raise RuntimeError("failing because the message data requested it")
"""


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture
def client(channel: grpc.Channel) -> functions_v2.FunctionServiceClient:
    return functions_v2.FunctionServiceClient(
        transport=FunctionServiceGrpcTransport(channel=channel)
    )


@pytest.fixture
def eventarc(channel: grpc.Channel) -> eventarc_v1.EventarcClient:
    return eventarc_v1.EventarcClient(transport=EventarcGrpcTransport(channel=channel))


@pytest.fixture
def topic(publisher: Any, unique: str) -> Iterator[str]:
    name = publisher.topic_path(PROJECT, f"fn-tasks-{unique}")
    publisher.create_topic(name=name)
    yield name
    with contextlib.suppress(exceptions.NotFound):
        publisher.delete_topic(topic=name)


@pytest.fixture
def function_id(unique: str) -> str:
    return f"fn-{unique}"


@pytest.fixture
def cleanup_functions(
    client: functions_v2.FunctionServiceClient,
) -> Iterator[list[str]]:
    """Names appended here are deleted after the test, whatever its outcome."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(exceptions.NotFound):
            client.delete_function(name=name).result(timeout=DEPLOY_TIMEOUT)


def upload(
    client: functions_v2.FunctionServiceClient, archive: bytes
) -> functions_v2.StorageSource:
    response = client.generate_upload_url(request={"parent": PARENT})
    put = requests.put(
        response.upload_url,
        data=archive,
        headers={"content-type": "application/zip"},
        timeout=30,
    )
    assert put.status_code == 200, put.text
    return response.storage_source


def event_function(
    source: functions_v2.StorageSource,
    topic: str,
    out_file: Path,
    *,
    retry: bool = True,
    environment: dict[str, str] | None = None,
) -> functions_v2.Function:
    return functions_v2.Function(
        build_config=functions_v2.BuildConfig(
            runtime="python311",
            entry_point="handle",
            source=functions_v2.Source(storage_source=source),
        ),
        service_config=functions_v2.ServiceConfig(
            available_memory="256Mi",
            timeout_seconds=60,
            environment_variables={"OUT_FILE": str(out_file), **(environment or {})},
        ),
        event_trigger=functions_v2.EventTrigger(
            event_type=EVENT_TYPE,
            pubsub_topic=topic,
            retry_policy=(
                functions_v2.EventTrigger.RetryPolicy.RETRY_POLICY_RETRY
                if retry
                else functions_v2.EventTrigger.RetryPolicy.RETRY_POLICY_DO_NOT_RETRY
            ),
        ),
    )


def wait_for_records(out_file: Path, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out_file.exists():
            lines = out_file.read_text().splitlines()
            if len(lines) >= count:
                return [json.loads(line) for line in lines]
        time.sleep(0.1)
    found = out_file.read_text() if out_file.exists() else "(no file)"
    raise AssertionError(f"expected {count} invocations within {timeout} s: {found}")


Deploy = Callable[..., tuple[functions_v2.Function, Any]]


@pytest.fixture
def deploy(
    client: functions_v2.FunctionServiceClient,
    cleanup_functions: list[str],
) -> Deploy:
    """Create a function and return it with its finished operation."""

    def create(function_id: str, function: functions_v2.Function) -> tuple[Any, Any]:
        cleanup_functions.append(f"{PARENT}/functions/{function_id}")
        operation = client.create_function(
            parent=PARENT, function=function, function_id=function_id
        )
        return operation.result(timeout=DEPLOY_TIMEOUT), operation

    return create


@pytest.fixture
def recording_source(client: functions_v2.FunctionServiceClient) -> Any:
    return upload(client, make_zip({"main.py": RECORDING_FUNCTION}))


# ----- upload URL -----------------------------------------------------------------


def test_upload_rejects_wrong_content_type(
    client: functions_v2.FunctionServiceClient,
) -> None:
    response = client.generate_upload_url(request={"parent": PARENT})
    put = requests.put(
        response.upload_url,
        data=make_zip({"main.py": "x = 1\n"}),
        headers={"content-type": "application/octet-stream"},
        timeout=30,
    )
    assert put.status_code == 403
    assert "application/zip" in put.text


def test_upload_url_names_bucket_and_object(
    client: functions_v2.FunctionServiceClient,
) -> None:
    response = client.generate_upload_url(request={"parent": PARENT})
    assert response.upload_url.startswith("http://127.0.0.1:")
    assert response.storage_source.bucket.startswith("gcf-v2-uploads-")
    assert response.storage_source.bucket.endswith(f"-{REGION}")
    assert response.storage_source.object_.endswith(".zip")


def test_list_runtimes_has_python_ga(
    client: functions_v2.FunctionServiceClient,
) -> None:
    runtimes = {
        runtime.name: runtime
        for runtime in client.list_runtimes(parent=PARENT).runtimes
    }
    stage = functions_v2.ListRuntimesResponse.RuntimeStage
    for name in ("python310", "python311", "python312", "python313"):
        assert runtimes[name].stage == stage.GA
        assert runtimes[name].environment == functions_v2.Environment.GEN_2


# ----- deploy and trigger -------------------------------------------------------------


def test_create_becomes_active_with_stages(
    deploy: Deploy,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    function, operation = deploy(
        function_id, event_function(recording_source, topic, tmp_path / "out")
    )

    assert function.name == f"{PARENT}/functions/{function_id}"
    assert function.state == functions_v2.Function.State.ACTIVE
    assert function.environment == functions_v2.Environment.GEN_2
    assert function.service_config.uri.startswith("http://127.0.0.1:")
    assert function.url == function.service_config.uri
    assert function.service_config.service.endswith(f"/services/{function_id}")
    assert function.service_config.revision.startswith(f"{function_id}-00001-")
    assert function.service_config.available_memory == "256Mi"
    assert function.event_trigger.trigger.startswith(
        f"{PARENT}/triggers/{function_id}-"
    )

    metadata = operation.metadata
    assert metadata.verb == "create"
    assert metadata.target == function.name
    stage_names = [stage.name for stage in metadata.stages]
    assert stage_names == [
        functions_v2.Stage.Name.BUILD,
        functions_v2.Stage.Name.SERVICE,
        functions_v2.Stage.Name.TRIGGER,
    ]
    for stage in metadata.stages:
        assert stage.state == functions_v2.Stage.State.COMPLETE


def test_trigger_subscription_has_eventarc_defaults(
    deploy: Deploy,
    eventarc: eventarc_v1.EventarcClient,
    subscriber: Any,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    function, _ = deploy(
        function_id, event_function(recording_source, topic, tmp_path / "out")
    )

    trigger = eventarc.get_trigger(name=function.event_trigger.trigger)
    assert trigger.transport.pubsub.topic == topic
    subscription_name = trigger.transport.pubsub.subscription
    assert subscription_name.startswith(
        f"projects/{PROJECT}/subscriptions/eventarc-{REGION}-{function_id}-"
    )
    subscription = subscriber.get_subscription(subscription=subscription_name)
    assert subscription.topic == topic
    assert not subscription.dead_letter_policy.dead_letter_topic
    assert subscription.message_retention_duration.total_seconds() == 24 * 3600
    assert subscription.ack_deadline_seconds == 600
    assert subscription.retry_policy.minimum_backoff.total_seconds() == 10
    assert subscription.retry_policy.maximum_backoff.total_seconds() == 600
    assert subscription.push_config.push_endpoint == function.service_config.uri + "/"


def test_publish_invokes_function_as_cloudevent(
    deploy: Deploy,
    publisher: Any,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    out_file = tmp_path / "out"
    function, _ = deploy(function_id, event_function(recording_source, topic, out_file))

    message_id = publisher.publish(topic, b"hello").result(timeout=30)

    [record] = wait_for_records(out_file, 1)
    assert record["data"] == "hello"
    assert record["id"] == message_id
    assert record["type"] == EVENT_TYPE
    assert record["source"] == f"//pubsub.googleapis.com/{topic}"
    assert "/subscriptions/eventarc-" in record["subscription"]
    assert record["K_SERVICE"] == function_id
    assert record["K_REVISION"] == function.service_config.revision
    assert record["GOOGLE_CLOUD_PROJECT"] == PROJECT
    assert record["PUBSUB_EMULATOR_HOST"]
    assert record["FUNCTION_SIGNATURE_TYPE"] == "cloudevent"


def test_function_output_becomes_log_entries(
    deploy: Deploy,
    channel: grpc.Channel,
    publisher: Any,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    out_file = tmp_path / "out"
    function, _ = deploy(function_id, event_function(recording_source, topic, out_file))
    publisher.publish(topic, b"logged").result(timeout=30)
    wait_for_records(out_file, 1)

    logging_client = LoggingServiceV2Client(
        transport=LoggingServiceV2GrpcTransport(channel=channel)
    )
    query = (
        'resource.type="cloud_run_revision" '
        f'AND resource.labels.service_name="{function_id}" '
        'AND jsonPayload.message="handled logged"'
    )
    entries: list[Any] = []
    deadline = time.monotonic() + 20
    while not entries and time.monotonic() < deadline:
        entries = list(
            logging_client.list_log_entries(
                resource_names=[f"projects/{PROJECT}"], filter=query
            )
        )
        time.sleep(0.2)
    assert entries, "the function's JSON log line never reached Cloud Logging"
    assert (
        entries[0].resource.labels["revision_name"] == function.service_config.revision
    )
    assert entries[0].severity == 400  # WARNING


def test_create_existing_fails_in_operation(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    function = event_function(recording_source, topic, tmp_path / "out")
    deploy(function_id, function)

    operation = client.create_function(
        parent=PARENT, function=function, function_id=function_id
    )
    with pytest.raises(exceptions.AlreadyExists, match="already exists"):
        operation.result(timeout=DEPLOY_TIMEOUT)


def test_default_entry_point_is_function_id(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    topic: str,
    tmp_path: Path,
    unique: str,
) -> None:
    function_id = f"fn{unique}"  # no hyphen, so it is a Python name
    source = upload(
        client,
        make_zip(
            {"main.py": RECORDING_FUNCTION.replace("def handle", f"def {function_id}")}
        ),
    )
    function = event_function(source, topic, tmp_path / "out")
    function.build_config.entry_point = ""

    deployed, _ = deploy(function_id, function)

    assert deployed.state == functions_v2.Function.State.ACTIVE
    assert deployed.build_config.entry_point == function_id


# ----- source checks ---------------------------------------------------------------


def zip_with_entry(name: str, content: bytes = b"x = 1\n", mode: int = 0) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", RECORDING_FUNCTION)
        info = zipfile.ZipInfo(name)
        if mode:
            info.external_attr = mode << 16
        archive.writestr(info, content)
    return buffer.getvalue()


def oversized_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("main.py", RECORDING_FUNCTION)
        with archive.open("padding.bin", "w", force_zip64=True) as padding:
            chunk = bytes(1024 * 1024)
            for _ in range(101):
                padding.write(chunk)
    return buffer.getvalue()


BAD_SOURCES: dict[str, tuple[Callable[[], bytes], str]] = {
    "absolute": (lambda: zip_with_entry("/etc/evil.py"), "absolute path"),
    "parent": (lambda: zip_with_entry("lib/../../evil.py"), "'..'"),
    "symlink": (
        lambda: zip_with_entry("link", b"/etc/passwd", stat.S_IFLNK | 0o777),
        "symbolic link",
    ),
    "oversized": (oversized_zip, "more than 100 MB"),
    "empty-name": (lambda: zip_with_entry(""), "empty name"),
    "file-then-directory": (
        lambda: make_zip({"main.py": RECORDING_FUNCTION, "a": "", "a/b": ""}),
        "entry 'a' is a file, but entry 'a/b' needs a directory",
    ),
    "directory-then-file": (
        lambda: make_zip({"main.py": RECORDING_FUNCTION, "a/b": "", "a": ""}),
        "entry 'a' is a file, but entry 'a/b' needs a directory",
    ),
    "long-path": (
        lambda: zip_with_entry("d/" * 2999 + "x.py"),
        "has a name of 6002 bytes",
    ),
    "long-component": (
        lambda: zip_with_entry("x" * 300 + ".py"),
        "longer than 255 bytes",
    ),
    "no-main": (lambda: make_zip({"other.py": "x = 1\n"}), "no main.py"),
    "not-zip": (lambda: b"this is not a zip archive", "not a valid zip"),
    "missing-requirement": (
        lambda: make_zip(
            {
                "main.py": RECORDING_FUNCTION,
                "requirements.txt": "functions-framework>=3\nno-such-dist-xyz==1.0\n",
            }
        ),
        "no-such-dist-xyz is not installed",
    ),
    "wrong-version": (
        lambda: make_zip(
            {"main.py": RECORDING_FUNCTION, "requirements.txt": "packaging<1\n"}
        ),
        "packaging",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_source_fails_deploy(
    case: str,
    client: functions_v2.FunctionServiceClient,
    cleanup_functions: list[str],
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    build_archive, expected_message = BAD_SOURCES[case]
    source = upload(client, build_archive())
    cleanup_functions.append(f"{PARENT}/functions/{function_id}")

    operation = client.create_function(
        parent=PARENT,
        function=event_function(source, topic, tmp_path / "out"),
        function_id=function_id,
    )

    with pytest.raises(exceptions.InvalidArgument) as failure:
        operation.result(timeout=DEPLOY_TIMEOUT)
    assert expected_message in str(failure.value)
    function = client.get_function(name=f"{PARENT}/functions/{function_id}")
    assert function.state == functions_v2.Function.State.FAILED
    assert expected_message in function.state_messages[0].message


def test_crashing_instance_reports_output(
    client: functions_v2.FunctionServiceClient,
    cleanup_functions: list[str],
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    source = upload(
        client, make_zip({"main.py": "raise SystemExit('broken at import time')\n"})
    )
    cleanup_functions.append(f"{PARENT}/functions/{function_id}")

    operation = client.create_function(
        parent=PARENT,
        function=event_function(source, topic, tmp_path / "out"),
        function_id=function_id,
    )

    with pytest.raises(exceptions.InvalidArgument, match="broken at import time"):
        operation.result(timeout=DEPLOY_TIMEOUT)


# ----- request validation ------------------------------------------------------------


def invalid_requests() -> dict[
    str, tuple[str, Callable[[functions_v2.Function], None]]
]:
    def set_runtime(function: functions_v2.Function) -> None:
        function.build_config.runtime = "cobol85"

    def set_memory(function: functions_v2.Function) -> None:
        function.service_config.available_memory = "256MB"

    def set_timeout(function: functions_v2.Function) -> None:
        function.service_config.timeout_seconds = 541

    def set_event_type(function: functions_v2.Function) -> None:
        function.event_trigger.event_type = "google.cloud.storage.object.v1.finalized"

    def set_missing_topic(function: functions_v2.Function) -> None:
        function.event_trigger.pubsub_topic = f"projects/{PROJECT}/topics/no-such-topic"

    def set_reserved_variable(function: functions_v2.Function) -> None:
        function.service_config.environment_variables["K_SERVICE"] = "x"

    def set_secret(function: functions_v2.Function) -> None:
        function.service_config.secret_environment_variables.append(
            functions_v2.SecretEnvVar(key="TOKEN", secret="token", version="1")
        )

    return {
        "secret": ("secret_environment_variables", set_secret),
        "runtime": ("runtime", set_runtime),
        "memory": ("available_memory", set_memory),
        "timeout": ("timeout_seconds", set_timeout),
        "event-type": ("event_type", set_event_type),
        "missing-topic": ("not found", set_missing_topic),
        "reserved-variable": ("reserved", set_reserved_variable),
    }


@pytest.mark.parametrize("case", sorted(invalid_requests()))
def test_create_rejects_invalid_function(
    case: str,
    client: functions_v2.FunctionServiceClient,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    expected_message, change = invalid_requests()[case]
    function = event_function(recording_source, topic, tmp_path / "out")
    change(function)

    with pytest.raises(exceptions.InvalidArgument, match=expected_message):
        client.create_function(
            parent=PARENT, function=function, function_id=function_id
        )


@pytest.mark.parametrize(
    "function_id", ["abc", "9starts-with-digit", "ends-with-", "Upper-case", "a" * 64]
)
def test_create_rejects_invalid_function_id(
    function_id: str,
    client: functions_v2.FunctionServiceClient,
    recording_source: Any,
    topic: str,
    tmp_path: Path,
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="function ID"):
        client.create_function(
            parent=PARENT,
            function=event_function(recording_source, topic, tmp_path / "out"),
            function_id=function_id,
        )


def test_http_timeout_allows_an_hour(
    deploy: Deploy,
    recording_source: Any,
    function_id: str,
) -> None:
    function = functions_v2.Function(
        build_config=functions_v2.BuildConfig(
            runtime="python312",
            entry_point="handle",
            source=functions_v2.Source(storage_source=recording_source),
        ),
        service_config=functions_v2.ServiceConfig(timeout_seconds=3600),
    )

    deployed, operation = deploy(function_id, function)

    assert deployed.state == functions_v2.Function.State.ACTIVE
    assert deployed.service_config.timeout_seconds == 3600
    assert [stage.name for stage in operation.metadata.stages] == [
        functions_v2.Stage.Name.BUILD,
        functions_v2.Stage.Name.SERVICE,
    ]


# ----- redeploy ---------------------------------------------------------------------


def test_redeploy_keeps_subscription_and_dead_letter(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    eventarc: eventarc_v1.EventarcClient,
    publisher: Any,
    subscriber: Any,
    recording_source: Any,
    topic: str,
    function_id: str,
    unique: str,
    tmp_path: Path,
) -> None:
    out_file = tmp_path / "out"
    first, _ = deploy(function_id, event_function(recording_source, topic, out_file))
    subscription_name = eventarc.get_trigger(
        name=first.event_trigger.trigger
    ).transport.pubsub.subscription
    dead_letter_topic = publisher.topic_path(PROJECT, f"fn-dead-{unique}")
    publisher.create_topic(name=dead_letter_topic)
    subscriber.update_subscription(
        request={
            "subscription": {
                "name": subscription_name,
                "dead_letter_policy": {
                    "dead_letter_topic": dead_letter_topic,
                    "max_delivery_attempts": 7,
                },
            },
            "update_mask": {"paths": ["dead_letter_policy"]},
        }
    )

    change = functions_v2.Function(
        name=first.name,
        service_config=functions_v2.ServiceConfig(
            environment_variables={"OUT_FILE": str(out_file), "GREETING": "second"}
        ),
    )
    operation = client.update_function(
        function=change,
        update_mask=field_mask_pb2.FieldMask(
            paths=["service_config.environment_variables"]
        ),
    )
    second = operation.result(timeout=DEPLOY_TIMEOUT)

    assert second.state == functions_v2.Function.State.ACTIVE
    assert second.service_config.revision.startswith(f"{function_id}-00002-")
    assert second.event_trigger.trigger == first.event_trigger.trigger
    assert second.build_config.runtime == "python311"
    subscription = subscriber.get_subscription(subscription=subscription_name)
    assert subscription.dead_letter_policy.dead_letter_topic == dead_letter_topic
    assert subscription.dead_letter_policy.max_delivery_attempts == 7
    assert subscription.push_config.push_endpoint == second.service_config.uri + "/"

    publisher.publish(topic, b"after-update").result(timeout=30)
    [record] = wait_for_records(out_file, 1)
    assert record["GREETING"] == "second"
    assert record["K_REVISION"] == second.service_config.revision
    publisher.delete_topic(topic=dead_letter_topic)


def test_redeploy_to_new_topic_replaces_subscription(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    eventarc: eventarc_v1.EventarcClient,
    publisher: Any,
    subscriber: Any,
    recording_source: Any,
    topic: str,
    function_id: str,
    unique: str,
    tmp_path: Path,
) -> None:
    out_file = tmp_path / "out"
    first, _ = deploy(function_id, event_function(recording_source, topic, out_file))
    old_subscription = eventarc.get_trigger(
        name=first.event_trigger.trigger
    ).transport.pubsub.subscription
    new_topic = publisher.topic_path(PROJECT, f"fn-other-{unique}")
    publisher.create_topic(name=new_topic)

    change = functions_v2.Function(
        name=first.name,
        event_trigger=functions_v2.EventTrigger(
            event_type=EVENT_TYPE,
            pubsub_topic=new_topic,
            retry_policy=functions_v2.EventTrigger.RetryPolicy.RETRY_POLICY_RETRY,
        ),
    )
    second = client.update_function(function=change).result(timeout=DEPLOY_TIMEOUT)

    assert second.event_trigger.trigger != first.event_trigger.trigger
    new_subscription = eventarc.get_trigger(
        name=second.event_trigger.trigger
    ).transport.pubsub.subscription
    assert new_subscription != old_subscription
    assert subscriber.get_subscription(subscription=new_subscription).topic == new_topic
    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(subscription=old_subscription)
    with pytest.raises(exceptions.NotFound):
        eventarc.get_trigger(name=first.event_trigger.trigger)

    publisher.publish(new_topic, b"on-new-topic").result(timeout=30)
    [record] = wait_for_records(out_file, 1)
    assert record["data"] == "on-new-topic"
    publisher.delete_topic(topic=new_topic)


def test_update_rejects_output_only_mask(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    first, _ = deploy(
        function_id, event_function(recording_source, topic, tmp_path / "out")
    )

    with pytest.raises(exceptions.InvalidArgument, match="output only"):
        client.update_function(
            function=functions_v2.Function(name=first.name),
            update_mask=field_mask_pb2.FieldMask(paths=["service_config.uri"]),
        )


# ----- delete, list, operations ---------------------------------------------------------


def test_delete_removes_trigger_and_subscription(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    eventarc: eventarc_v1.EventarcClient,
    subscriber: Any,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    function, _ = deploy(
        function_id, event_function(recording_source, topic, tmp_path / "out")
    )
    subscription = eventarc.get_trigger(
        name=function.event_trigger.trigger
    ).transport.pubsub.subscription

    client.delete_function(name=function.name).result(timeout=DEPLOY_TIMEOUT)

    with pytest.raises(exceptions.NotFound):
        client.get_function(name=function.name)
    with pytest.raises(exceptions.NotFound):
        eventarc.get_trigger(name=function.event_trigger.trigger)
    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(subscription=subscription)
    with pytest.raises(requests.ConnectionError):
        requests.get(function.service_config.uri, timeout=5)


def test_delete_missing_function_not_found(
    client: functions_v2.FunctionServiceClient, function_id: str
) -> None:
    with pytest.raises(exceptions.NotFound):
        client.delete_function(name=f"{PARENT}/functions/{function_id}")


def test_list_functions_pages(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    recording_source: Any,
    unique: str,
) -> None:
    project = f"list-{unique}"
    parent = f"projects/{project}/locations/{REGION}"
    names = []
    for index in range(3):
        function_id = f"fn-{unique}-{index}"
        function = functions_v2.Function(
            build_config=functions_v2.BuildConfig(
                runtime="python311",
                entry_point="handle",
                source=functions_v2.Source(storage_source=recording_source),
            ),
        )
        operation = client.create_function(
            parent=parent, function=function, function_id=function_id
        )
        names.append(operation.result(timeout=DEPLOY_TIMEOUT).name)
    try:
        first_page = client.list_functions(
            request={"parent": parent, "page_size": 2}
        )._response
        assert [function.name for function in first_page.functions] == names[:2]
        assert first_page.next_page_token
        everything = [
            function.name
            for function in client.list_functions(
                request={"parent": f"projects/{project}/locations/-", "page_size": 2}
            )
        ]
        assert everything == names
    finally:
        for name in names:
            client.delete_function(name=name).result(timeout=DEPLOY_TIMEOUT)


def test_operations_listed_and_fetched(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    _, operation = deploy(
        function_id, event_function(recording_source, topic, tmp_path / "out")
    )
    name = operation.operation.name
    operations_client = client._transport.operations_client

    fetched = operations_client.get_operation(name)
    listed = [op.name for op in operations_client.list_operations(PARENT, "")]

    assert fetched.done
    assert name in listed
    with pytest.raises(exceptions.NotFound):
        operations_client.get_operation(f"{PARENT}/operations/operation-0-missing")


def test_get_operation_rejects_bad_name(channel: grpc.Channel) -> None:
    get = channel.unary_unary(
        "/google.longrunning.Operations/GetOperation",
        request_serializer=operations_pb2.GetOperationRequest.SerializeToString,
        response_deserializer=operations_pb2.Operation.FromString,
    )
    with pytest.raises(grpc.RpcError) as failure:
        get(operations_pb2.GetOperationRequest(name="operations/nope"), timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


SLOW_FUNCTION = """
import base64
import json
import os
import time

import functions_framework


@functions_framework.cloud_event
def handle(event):
    data = base64.b64decode(event.data["message"]["data"]).decode()
    revision = os.environ["K_REVISION"]
    with open(os.environ["OUT_FILE"], "a") as out:
        out.write(json.dumps({"data": data, "step": "started", "revision": revision}))
        out.write("\\n")
    time.sleep(3)
    with open(os.environ["OUT_FILE"], "a") as out:
        out.write(json.dumps({"data": data, "step": "finished", "revision": revision}))
        out.write("\\n")
"""


def test_redeploy_lets_inflight_request_finish(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    publisher: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    out_file = tmp_path / "out"
    source = upload(client, make_zip({"main.py": SLOW_FUNCTION}))
    first, _ = deploy(function_id, event_function(source, topic, out_file))
    publisher.publish(topic, b"slow").result(timeout=30)
    wait_for_records(out_file, 1)

    change = functions_v2.Function(
        name=first.name,
        service_config=functions_v2.ServiceConfig(
            environment_variables={"OUT_FILE": str(out_file), "GREETING": "new"}
        ),
    )
    second = client.update_function(
        function=change,
        update_mask=field_mask_pb2.FieldMask(
            paths=["service_config.environment_variables"]
        ),
    ).result(timeout=DEPLOY_TIMEOUT)

    records = wait_for_records(out_file, 2)
    assert records[1] == {
        "data": "slow",
        "step": "finished",
        "revision": first.service_config.revision,
    }
    assert second.service_config.revision != first.service_config.revision


def test_failed_redeploy_keeps_old_revision(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    publisher: Any,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    out_file = tmp_path / "out"
    first, _ = deploy(function_id, event_function(recording_source, topic, out_file))
    broken = upload(
        client,
        make_zip(
            {"main.py": RECORDING_FUNCTION, "requirements.txt": "no-such-dist-xyz\n"}
        ),
    )

    change = functions_v2.Function(
        name=first.name,
        build_config=functions_v2.BuildConfig(
            source=functions_v2.Source(storage_source=broken)
        ),
    )
    operation = client.update_function(
        function=change,
        update_mask=field_mask_pb2.FieldMask(paths=["build_config.source"]),
    )
    with pytest.raises(exceptions.InvalidArgument, match="no-such-dist-xyz"):
        operation.result(timeout=DEPLOY_TIMEOUT)

    current = client.get_function(name=first.name)
    assert current.state == functions_v2.Function.State.ACTIVE
    assert current.service_config.revision == first.service_config.revision
    assert current.build_config.source == first.build_config.source
    assert "no-such-dist-xyz" in current.state_messages[0].message
    publisher.publish(topic, b"still-served").result(timeout=30)
    [record] = wait_for_records(out_file, 1)
    assert record["K_REVISION"] == first.service_config.revision


def test_update_while_deploying_aborted(
    client: functions_v2.FunctionServiceClient,
    cleanup_functions: list[str],
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    cleanup_functions.append(f"{PARENT}/functions/{function_id}")
    operation = client.create_function(
        parent=PARENT,
        function=event_function(recording_source, topic, tmp_path / "out"),
        function_id=function_id,
    )

    # Starting an instance takes far longer than this RPC, so the create is
    # still running. In the unlikely case that it is not, the test skips itself.
    try:
        client.update_function(
            function=functions_v2.Function(
                name=f"{PARENT}/functions/{function_id}", description="second"
            )
        )
    except exceptions.Aborted as error:
        assert "in progress" in str(error)
    else:
        pytest.skip("the create finished before the update arrived")
    finally:
        operation.result(timeout=DEPLOY_TIMEOUT)


def test_instance_serves_concurrent_requests(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    publisher: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    out_file = tmp_path / "out"
    source = upload(client, make_zip({"main.py": SLOW_FUNCTION}))
    deploy(function_id, event_function(source, topic, out_file))

    for index in range(3):
        publisher.publish(topic, f"slow-{index}".encode()).result(timeout=30)

    records = wait_for_records(out_file, 6)
    steps = [record["step"] for record in records]
    # Each request sleeps 3 s, so a second start before the first finish shows
    # two requests in the instance at once.
    assert steps[:2] == ["started", "started"]


def test_requirements_with_markers_and_includes(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    requirements = "\n".join(
        [
            "# the worker's dependencies",
            "--index-url https://pypi.invalid/simple",
            "-r more-requirements.txt",
            'functions-framework>=3 ; python_version >= "3.8"',
            'no-such-dist-xyz==1.0 ; python_version < "3.0"',
            "packaging \\",
            "    >=20  # continued line",
        ]
    )
    source = upload(
        client,
        make_zip(
            {
                "main.py": RECORDING_FUNCTION,
                "requirements.txt": requirements,
                "more-requirements.txt": "requests>=2\n",
            }
        ),
    )

    function, _ = deploy(function_id, event_function(source, topic, tmp_path / "out"))

    assert function.state == functions_v2.Function.State.ACTIVE


def test_requirements_include_outside_rejected(
    client: functions_v2.FunctionServiceClient,
    cleanup_functions: list[str],
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    source = upload(
        client,
        make_zip(
            {"main.py": RECORDING_FUNCTION, "requirements.txt": "-r ../../etc/hosts\n"}
        ),
    )
    cleanup_functions.append(f"{PARENT}/functions/{function_id}")

    operation = client.create_function(
        parent=PARENT,
        function=event_function(source, topic, tmp_path / "out"),
        function_id=function_id,
    )

    with pytest.raises(exceptions.InvalidArgument, match="not found in the source"):
        operation.result(timeout=DEPLOY_TIMEOUT)


def test_update_without_mask_takes_present_fields(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    first, _ = deploy(
        function_id, event_function(recording_source, topic, tmp_path / "out")
    )

    # A client that sends back what GetFunction returned, output-only fields
    # included, with one field changed.
    change = client.get_function(name=first.name)
    change.description = "resized"
    change.service_config.available_memory = "512Mi"
    second = client.update_function(function=change).result(timeout=DEPLOY_TIMEOUT)

    assert second.description == "resized"
    assert second.service_config.available_memory == "512Mi"
    assert second.build_config.runtime == first.build_config.runtime
    assert second.event_trigger.trigger == first.event_trigger.trigger
    assert second.service_config.revision != first.service_config.revision


def test_update_rejects_trigger_type_change(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    first, _ = deploy(
        function_id, event_function(recording_source, topic, tmp_path / "out")
    )

    with pytest.raises(exceptions.InvalidArgument, match="trigger type"):
        client.update_function(
            function=functions_v2.Function(name=first.name),
            update_mask=field_mask_pb2.FieldMask(paths=["event_trigger"]),
        )


def test_get_trigger_missing_not_found(
    eventarc: eventarc_v1.EventarcClient, unique: str
) -> None:
    with pytest.raises(exceptions.NotFound):
        eventarc.get_trigger(name=f"{PARENT}/triggers/missing-{unique}")


def test_list_triggers_includes_function_trigger(
    deploy: Deploy,
    eventarc: eventarc_v1.EventarcClient,
    recording_source: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    function, _ = deploy(
        function_id, event_function(recording_source, topic, tmp_path / "out")
    )

    names = [trigger.name for trigger in eventarc.list_triggers(parent=PARENT)]

    assert function.event_trigger.trigger in names


KILLING_FUNCTION = RECORDING_FUNCTION.replace(
    '    if data == "fail":',
    '    if data == "die":\n'
    "        import signal\n\n"
    "        os.kill(os.getppid(), signal.SIGKILL)  # the gunicorn master\n"
    '    if data == "fail":',
)


def test_crashed_instance_restarts(
    deploy: Deploy,
    client: functions_v2.FunctionServiceClient,
    publisher: Any,
    topic: str,
    function_id: str,
    tmp_path: Path,
) -> None:
    out_file = tmp_path / "out"
    source = upload(client, make_zip({"main.py": KILLING_FUNCTION}))
    function, _ = deploy(
        function_id, event_function(source, topic, out_file, retry=False)
    )

    publisher.publish(topic, b"die").result(timeout=30)
    wait_for_records(out_file, 1)
    # The instance that served "die" is gone once its port refuses connections.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(function.service_config.uri, timeout=2)
        except requests.ConnectionError:
            break
        time.sleep(0.05)
    restarted = False
    while not restarted and time.monotonic() < deadline:
        try:
            requests.get(function.service_config.uri, timeout=2)
            restarted = True
        except requests.ConnectionError:
            time.sleep(0.2)
    assert restarted, "the crashed instance was not started again on its port"

    current = client.get_function(name=function.name)
    assert current.state == functions_v2.Function.State.ACTIVE
    publisher.publish(topic, b"after-crash").result(timeout=30)
    records = wait_for_records(out_file, 2)
    assert records[1]["data"] == "after-crash"
    assert records[1]["K_REVISION"] == function.service_config.revision
    assert current.service_config.uri == function.service_config.uri
