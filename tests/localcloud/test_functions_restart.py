"""Functions across local cloud restarts: instances come back, and die with it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.cloud import eventarc_v1, functions_v2, pubsub_v1
from google.cloud.eventarc_v1.services.eventarc.transports import EventarcGrpcTransport
from google.cloud.functions_v2.services.function_service.transports import (
    FunctionServiceGrpcTransport,
)
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from taskctl.localcloud import process
from taskctl.localcloud.server import RuntimeInfo
from tests.localcloud.test_functions import (
    DEPLOY_TIMEOUT,
    PARENT,
    PROJECT,
    RECORDING_FUNCTION,
    event_function,
    make_zip,
    upload,
    wait_for_records,
)


class Clients:
    """Google's clients on one channel to one local cloud process."""

    def __init__(self, info: RuntimeInfo) -> None:
        self.channel = grpc.insecure_channel(info.grpc_endpoint)
        self.functions = functions_v2.FunctionServiceClient(
            transport=FunctionServiceGrpcTransport(channel=self.channel)
        )
        self.eventarc = eventarc_v1.EventarcClient(
            transport=EventarcGrpcTransport(channel=self.channel)
        )
        self.publisher = pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(channel=self.channel)
        )
        self.subscriber = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=self.channel)
        )


@pytest.fixture
def start_cloud(tmp_path: Path) -> Iterator[Callable[[], tuple[Any, RuntimeInfo]]]:
    """Start (or restart) a local cloud on one state directory of this test."""
    started: list[tuple[Any, RuntimeInfo, Clients]] = []

    def start() -> tuple[Clients, RuntimeInfo]:
        child, info = process.spawn(tmp_path / "state")
        clients = Clients(info)
        started.append((child, info, clients))
        return clients, info

    yield start
    for child, info, clients in started:
        clients.channel.close()
        if child.poll() is None:
            process.terminate(info)
        if child.poll() is None:
            child.kill()
        child.wait()


def deploy_recorder(clients: Clients, tmp_path: Path, function_id: str) -> Any:
    topic = clients.publisher.topic_path(PROJECT, "restart-tasks")
    clients.publisher.create_topic(name=topic)
    source = upload(clients.functions, make_zip({"main.py": RECORDING_FUNCTION}))
    operation = clients.functions.create_function(
        parent=PARENT,
        function=event_function(source, topic, tmp_path / "out"),
        function_id=function_id,
    )
    return operation.result(timeout=DEPLOY_TIMEOUT), topic


def answers_http(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
    except requests.ConnectionError:
        return False
    return True


def test_restart_resumes_active_function(
    start_cloud: Callable[[], tuple[Clients, RuntimeInfo]], tmp_path: Path
) -> None:
    clients, info = start_cloud()
    function, topic = deploy_recorder(clients, tmp_path, "restart-fn")
    assert process.terminate(info)
    assert not answers_http(function.service_config.uri)

    clients, _ = start_cloud()
    resumed = clients.functions.get_function(name=function.name)

    assert resumed.state == functions_v2.Function.State.ACTIVE
    assert resumed.service_config.revision == function.service_config.revision
    subscription = clients.eventarc.get_trigger(
        name=resumed.event_trigger.trigger
    ).transport.pubsub.subscription
    pushed_to = clients.subscriber.get_subscription(
        subscription=subscription
    ).push_config.push_endpoint
    assert pushed_to == resumed.service_config.uri + "/"
    clients.publisher.publish(topic, b"after-restart").result(timeout=30)
    [record] = wait_for_records(tmp_path / "out", 1)
    assert record["data"] == "after-restart"


def test_sigkill_stops_instances(
    start_cloud: Callable[[], tuple[Clients, RuntimeInfo]], tmp_path: Path
) -> None:
    clients, info = start_cloud()
    function, _ = deploy_recorder(clients, tmp_path, "orphan-fn")
    assert answers_http(function.service_config.uri)

    os.kill(info.pid, signal.SIGKILL)

    deadline = time.monotonic() + 30
    while answers_http(function.service_config.uri) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not answers_http(function.service_config.uri)


def test_restart_aborts_interrupted_deploy(
    start_cloud: Callable[[], tuple[Clients, RuntimeInfo]], tmp_path: Path
) -> None:
    clients, info = start_cloud()
    topic = clients.publisher.topic_path(PROJECT, "interrupted-tasks")
    clients.publisher.create_topic(name=topic)
    # The import sleeps, so the deploy waits in its SERVICE stage when killed.
    slow_import = "import time\ntime.sleep(60)\n" + RECORDING_FUNCTION
    source = upload(clients.functions, make_zip({"main.py": slow_import}))
    operation = clients.functions.create_function(
        parent=PARENT,
        function=event_function(source, topic, tmp_path / "out"),
        function_id="interrupted-fn",
    )
    name = f"{PARENT}/functions/interrupted-fn"
    service_stage = functions_v2.Stage.Name.SERVICE
    in_progress = functions_v2.Stage.State.IN_PROGRESS
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        operation.done()  # refreshes the metadata
        states = {stage.name: stage.state for stage in operation.metadata.stages}
        if states.get(service_stage) == in_progress:
            break
        time.sleep(0.1)
    assert states.get(service_stage) == in_progress
    os.kill(info.pid, signal.SIGKILL)

    clients, _ = start_cloud()
    finished = clients.functions._transport.operations_client.get_operation(
        operation.operation.name
    )
    function = clients.functions.get_function(name=name)

    assert finished.done
    assert finished.error.code == grpc.StatusCode.ABORTED.value[0]
    assert function.state == functions_v2.Function.State.FAILED
    assert (
        "stopped before this operation finished" in function.state_messages[0].message
    )
    revisions = tmp_path / "state" / "functions" / PROJECT / "us-central1"
    assert list((revisions / "interrupted-fn").iterdir()) == []


HANGING_FUNCTION = """
import os
import time

import functions_framework


@functions_framework.cloud_event
def handle(event):
    with open(os.environ["OUT_FILE"], "a") as out:
        out.write(str(os.getpid()) + "\\n")
    time.sleep(1000)
"""


def deploy_hung_function(clients: Clients, tmp_path: Path) -> tuple[Any, int]:
    """Deploy HANGING_FUNCTION, invoke it once and return it with its worker's PID."""
    topic = clients.publisher.topic_path(PROJECT, "hung-tasks")
    clients.publisher.create_topic(name=topic)
    source = upload(clients.functions, make_zip({"main.py": HANGING_FUNCTION}))
    out_file = tmp_path / "out"
    function = clients.functions.create_function(
        parent=PARENT,
        function=event_function(source, topic, out_file),
        function_id="hung-fn",
    ).result(timeout=DEPLOY_TIMEOUT)
    clients.publisher.publish(topic, b"hang").result(timeout=30)
    deadline = time.monotonic() + 30
    while not out_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return function, int(out_file.read_text().split()[0])


def wait_until_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not process.is_alive(pid)


def test_terminate_kills_hung_function(
    start_cloud: Callable[[], tuple[Clients, RuntimeInfo]], tmp_path: Path
) -> None:
    clients, info = start_cloud()
    _, worker_pid = deploy_hung_function(clients, tmp_path)

    stopped = process.terminate(info)

    assert stopped
    assert wait_until_gone(worker_pid, 5), f"worker pid {worker_pid} still runs"


def test_terminate_kills_retiring_hung_revision(
    start_cloud: Callable[[], tuple[Clients, RuntimeInfo]], tmp_path: Path
) -> None:
    # A redeploy stops the replaced revision in the background with gunicorn's
    # full grace period, which is longer than the local cloud's shutdown.
    clients, info = start_cloud()
    function, worker_pid = deploy_hung_function(clients, tmp_path)
    function.service_config.environment_variables["GREETING"] = "v2"
    clients.functions.update_function(
        function=function, update_mask={"paths": ["service_config"]}
    ).result(timeout=DEPLOY_TIMEOUT)

    stopped = process.terminate(info)

    assert stopped
    assert wait_until_gone(worker_pid, 5), f"worker pid {worker_pid} still runs"


HANGING_IMPORT = """
import os
import time

with open(os.environ["OUT_FILE"], "a") as out:
    out.write(str(os.getpid()) + "\\n")
time.sleep(1000)
"""


def test_terminate_kills_instance_still_starting(
    start_cloud: Callable[[], tuple[Clients, RuntimeInfo]], tmp_path: Path
) -> None:
    clients, info = start_cloud()
    topic = clients.publisher.topic_path(PROJECT, "slow-start-tasks")
    clients.publisher.create_topic(name=topic)
    source = upload(clients.functions, make_zip({"main.py": HANGING_IMPORT}))
    out_file = tmp_path / "out"
    clients.functions.create_function(
        parent=PARENT,
        function=event_function(source, topic, out_file),
        function_id="slow-start-fn",
    )
    deadline = time.monotonic() + 30
    while not out_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    importer_pid = int(out_file.read_text().split()[0])

    stopped = process.terminate(info)

    assert stopped
    assert wait_until_gone(importer_pid, 5), f"pid {importer_pid} still runs"
    # The interrupted deploy is aborted at the next start, as after a SIGKILL.
    clients, _ = start_cloud()
    function = clients.functions.get_function(name=f"{PARENT}/functions/slow-start-fn")
    assert function.state == functions_v2.Function.State.FAILED
    assert (
        "stopped before this operation finished" in function.state_messages[0].message
    )
