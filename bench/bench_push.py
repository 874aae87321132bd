"""Measure push delivery from Pub/Sub into a deployed function against a baseline.

One local cloud is started in a temporary directory and one CloudEvent function,
which appends a line per event to a file, is deployed on it. Two runs send it N
events:

- through Pub/Sub: N messages are published to the function's trigger topic and
  the local cloud pushes them to the instance as binary-mode CloudEvents;
- the baseline: the same CloudEvents POSTed straight to the instance by as many
  concurrent senders as Pub/Sub keeps in flight per subscription.

Both runs end when the function has recorded every event, so the ratio
(Pub/Sub / baseline) is the cost of storing, leasing and pushing each message,
and is less sensitive to the machine than the absolute rates.

    .venv/bin/python bench/bench_push.py --messages 2000
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import requests

PROJECT = "bench-project"
PARENT = f"projects/{PROJECT}/locations/us-central1"
TOPIC = f"projects/{PROJECT}/topics/bench-push"
EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"

COUNTING_FUNCTION = """
import os

import functions_framework

_out = open(os.environ["OUT_FILE"], "a", buffering=1)


@functions_framework.cloud_event
def handle(event):
    _out.write(event["id"] + "\\n")
"""


def recorded(out_file: Path) -> int:
    if not out_file.exists():
        return 0
    return out_file.read_bytes().count(b"\n")


def wait_until_recorded(out_file: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while recorded(out_file) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {recorded(out_file)} of {count} events recorded in {timeout:.0f} s"
            )
        time.sleep(0.02)


def deploy(channel: grpc.Channel, out_file: Path) -> str:
    """Deploy the counting function on TOPIC and return its instance URL."""
    from google.cloud import functions_v2, pubsub_v1
    from google.cloud.functions_v2.services.function_service.transports import (
        FunctionServiceGrpcTransport,
    )
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    pubsub_v1.PublisherClient(
        transport=PublisherGrpcTransport(channel=channel)
    ).create_topic(name=TOPIC)
    client = functions_v2.FunctionServiceClient(
        transport=FunctionServiceGrpcTransport(channel=channel)
    )
    upload = client.generate_upload_url(request={"parent": PARENT})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as source:
        source.writestr("main.py", COUNTING_FUNCTION)
    requests.put(
        upload.upload_url,
        data=archive.getvalue(),
        headers={"content-type": "application/zip"},
        timeout=30,
    ).raise_for_status()
    function = functions_v2.Function(
        build_config=functions_v2.BuildConfig(
            runtime="python311",
            entry_point="handle",
            source=functions_v2.Source(storage_source=upload.storage_source),
        ),
        service_config=functions_v2.ServiceConfig(
            environment_variables={"OUT_FILE": str(out_file)}
        ),
        event_trigger=functions_v2.EventTrigger(
            event_type=EVENT_TYPE,
            pubsub_topic=TOPIC,
            retry_policy=functions_v2.EventTrigger.RetryPolicy.RETRY_POLICY_RETRY,
        ),
    )
    operation = client.create_function(
        parent=PARENT, function=function, function_id="bench-push"
    )
    return operation.result(timeout=120).service_config.uri


def pubsub_rate(
    channel: grpc.Channel, out_file: Path, messages: int
) -> tuple[float, float]:
    """Publish ``messages`` messages and return the publish and end-to-end rates."""
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    client = pubsub_v1.PublisherClient(
        transport=PublisherGrpcTransport(channel=channel)
    )
    already = recorded(out_file)
    started = time.perf_counter()
    pending = [client.publish(TOPIC, b"{}") for _ in range(messages)]
    for future in pending:
        future.result(timeout=120)
    published = time.perf_counter() - started
    wait_until_recorded(out_file, already + messages, timeout=600)
    elapsed = time.perf_counter() - started
    client.stop()
    return messages / published, messages / elapsed


def _post(
    connection: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
) -> int:
    connection.request("POST", "/", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    if response.will_close:
        connection.close()
    return response.status


def post_events(url: str, first_id: int, count: int, errors: list[str]) -> None:
    """POST events on one keep-alive connection, reconnecting as push delivery does."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    body = json.dumps(
        {
            "message": {
                "data": base64.b64encode(b"{}").decode(),
                "attributes": {},
                "messageId": "0",
                "publishTime": "2026-01-01T00:00:00Z",
            },
            "subscription": f"projects/{PROJECT}/subscriptions/baseline",
        }
    ).encode()
    for event_id in range(first_id, first_id + count):
        headers = {
            "content-type": "application/json",
            "ce-id": f"baseline-{event_id}",
            "ce-source": f"//pubsub.googleapis.com/{TOPIC}",
            "ce-type": EVENT_TYPE,
            "ce-specversion": "1.0",
            "ce-time": "2026-01-01T00:00:00Z",
        }
        try:
            try:
                status = _post(connection, body, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError):
                # The server closed the kept-alive connection, so retry once.
                connection.close()
                status = _post(connection, body, headers)
        except (OSError, http.client.HTTPException) as error:
            errors.append(f"event {event_id}: {error!r}")
            return
        if status != 200:
            errors.append(f"event {event_id}: HTTP {status}")
    connection.close()


def direct_rate(url: str, out_file: Path, messages: int, senders: int) -> float:
    """POST ``messages`` CloudEvents from ``senders`` threads and return events/s."""
    errors: list[str] = []
    per_sender, remainder = divmod(messages, senders)
    counts = [per_sender + (1 if index < remainder else 0) for index in range(senders)]
    firsts = [sum(counts[:index]) for index in range(senders)]
    threads = [
        threading.Thread(target=post_events, args=(url, first, count, errors))
        for first, count in zip(firsts, counts, strict=True)
    ]
    already = recorded(out_file)
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} baseline posts failed, first: {errors[0]}")
    wait_until_recorded(out_file, already + messages, timeout=600)
    elapsed = time.perf_counter() - started
    return messages / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="events per run")
    arguments = parser.parse_args()

    from taskctl.localcloud import process
    from taskctl.localcloud.pubsub.push import MAX_IN_FLIGHT_PER_SUBSCRIPTION

    with tempfile.TemporaryDirectory() as temporary:
        out_file = Path(temporary) / "events"
        child, info = process.spawn(Path(temporary) / "state", log_level="WARNING")
        try:
            with grpc.insecure_channel(info.grpc_endpoint) as channel:
                url = deploy(channel, out_file)
                # Warm-up: the first requests import the function's modules.
                direct_rate(url, out_file, 50, MAX_IN_FLIGHT_PER_SUBSCRIPTION)
                baseline = direct_rate(
                    url, out_file, arguments.messages, MAX_IN_FLIGHT_PER_SUBSCRIPTION
                )
                publish_rate, pushed = pubsub_rate(
                    channel, out_file, arguments.messages
                )
        finally:
            process.terminate(info)
            child.wait()

    print(f"events: {arguments.messages}")
    print(f"publish alone:                       {publish_rate:10.0f} msgs/s")
    print(f"through Pub/Sub push:                {pushed:10.0f} events/s")
    print(
        f"direct POSTs ({MAX_IN_FLIGHT_PER_SUBSCRIPTION} senders) baseline: "
        f"{baseline:10.0f} events/s"
    )
    print(f"ratio push/baseline:                 {pushed / baseline:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
