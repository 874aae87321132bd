"""Measure publish throughput of the local cloud's Pub/Sub against a baseline.

The same ``google-cloud-pubsub`` PublisherClient publishes N small messages to
two servers started in this run, each in its own process:

- the local cloud, to a topic with one pull subscription, so every message is
  committed to SQLite before the publish returns;
- a do-nothing gRPC server whose Publish returns message IDs at once.

The ratio (local cloud / baseline) shows the cost of storing messages and is
less sensitive to the machine than the absolute rates.

    .venv/bin/python bench/bench_publish.py --messages 20000
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc

PROJECT = "bench-project"
TOPIC = f"projects/{PROJECT}/topics/bench"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/bench"


def serve_baseline() -> None:
    """Serve a Publisher that accepts every request and stores nothing."""
    from google.pubsub_v1.types import PublishRequest, PublishResponse, Topic

    from taskctl.localcloud.rpc import Method, add_service

    counter = itertools.count(1)

    def publish(request: object, context: grpc.ServicerContext) -> object:
        count = len(request.messages)  # type: ignore[attr-defined]
        return PublishResponse.pb()(
            message_ids=[str(next(counter)) for _ in range(count)]
        )

    def echo_topic(request: object, context: grpc.ServicerContext) -> object:
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    add_service(
        server,
        "google.pubsub.v1.Publisher",
        {
            "Publish": Method(publish, PublishRequest.pb(), PublishResponse.pb()),
            "CreateTopic": Method(echo_topic, Topic.pb(), Topic.pb()),
        },
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def publish_rate(endpoint: str, messages: int, size: int) -> float:
    """Publish ``messages`` messages of ``size`` bytes; return messages per second."""
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    with grpc.insecure_channel(endpoint) as channel:
        client = pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(channel=channel)
        )
        payload = b"x" * size
        # A short warm-up opens the channel and the client's batch threads.
        for future in [client.publish(TOPIC, payload) for _ in range(200)]:
            future.result(timeout=60)
        started = time.perf_counter()
        pending = [client.publish(TOPIC, payload) for _ in range(messages)]
        for future in pending:
            future.result(timeout=120)
        elapsed = time.perf_counter() - started
        client.stop()
    return messages / elapsed


def start_baseline() -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-baseline"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    port = child.stdout.readline().strip()
    return child, f"127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages per run")
    parser.add_argument("--size", type=int, default=100, help="message data in bytes")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_baseline:
        serve_baseline()
        return 0

    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    from taskctl.localcloud import process

    baseline, baseline_endpoint = start_baseline()
    with tempfile.TemporaryDirectory() as state_dir:
        child, info = process.spawn(Path(state_dir), log_level="WARNING")
        try:
            with grpc.insecure_channel(info.grpc_endpoint) as channel:
                pubsub_v1.PublisherClient(
                    transport=PublisherGrpcTransport(channel=channel)
                ).create_topic(name=TOPIC)
                pubsub_v1.SubscriberClient(
                    transport=SubscriberGrpcTransport(channel=channel)
                ).create_subscription(name=SUBSCRIPTION, topic=TOPIC)
            local_rate = publish_rate(
                info.grpc_endpoint, arguments.messages, arguments.size
            )
            baseline_rate = publish_rate(
                baseline_endpoint, arguments.messages, arguments.size
            )
        finally:
            process.terminate(info)
            child.wait()
            baseline.terminate()
            baseline.wait()

    print(f"messages: {arguments.messages} of {arguments.size} bytes")
    print(f"local cloud (1 subscription): {local_rate:10.0f} msgs/s")
    print(f"do-nothing baseline:          {baseline_rate:10.0f} msgs/s")
    print(f"ratio local/baseline:         {local_rate / baseline_rate:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
