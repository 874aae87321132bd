"""Resident memory of the local cloud holding a large backlog.

Starts a local cloud, measures its resident set size idle (the baseline), then
publishes a backlog of small messages to a topic with one subscription and
measures it again at checkpoints. Messages live in SQLite on disk, so memory
should stay close to the baseline however long the backlog grows.

    .venv/bin/python bench/bench_memory.py [--messages 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import grpc
from google.pubsub_v1.types import pubsub as pubsub_types

from taskctl.localcloud import process
from taskctl.localcloud.runtime import RuntimeInfo

PROJECT = "bench-memory"
BATCH = 1000  # messages per PublishRequest, Pub/Sub's maximum


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as directory:
        child, info = process.spawn(Path(directory) / "state", log_level="WARNING")
        try:
            run(info, arguments.messages)
        finally:
            process.terminate(info)
            child.wait()


def run(info: RuntimeInfo, total: int) -> None:
    channel = grpc.insecure_channel(info.grpc_endpoint)
    topic = f"projects/{PROJECT}/topics/backlog"
    subscription = f"projects/{PROJECT}/subscriptions/backlog-sub"
    create_topic = channel.unary_unary(
        "/google.pubsub.v1.Publisher/CreateTopic",
        request_serializer=pubsub_types.Topic.pb().SerializeToString,
        response_deserializer=pubsub_types.Topic.pb().FromString,
    )
    create_subscription = channel.unary_unary(
        "/google.pubsub.v1.Subscriber/CreateSubscription",
        request_serializer=pubsub_types.Subscription.pb().SerializeToString,
        response_deserializer=pubsub_types.Subscription.pb().FromString,
    )
    publish = channel.unary_unary(
        "/google.pubsub.v1.Publisher/Publish",
        request_serializer=pubsub_types.PublishRequest.pb().SerializeToString,
        response_deserializer=pubsub_types.PublishResponse.pb().FromString,
    )
    create_topic(pubsub_types.Topic.pb()(name=topic))
    create_subscription(pubsub_types.Subscription.pb()(name=subscription, topic=topic))

    time.sleep(1)
    baseline = resident_bytes(info.pid)
    print(f"idle local cloud: {baseline / 2**20:.1f} MiB resident (baseline)")

    message_type = pubsub_types.PubsubMessage.pb()
    batch = [
        message_type(data=b'{"task_type":"noop","payload":{}}') for _ in range(BATCH)
    ]
    request = pubsub_types.PublishRequest.pb()(topic=topic, messages=batch)
    checkpoints = {total // 10, total // 2, total}
    started = time.perf_counter()
    for sent in range(BATCH, total + 1, BATCH):
        publish(request, timeout=60)
        if sent in checkpoints:
            rss = resident_bytes(info.pid)
            elapsed = time.perf_counter() - started
            print(
                f"backlog {sent:>9,}: {rss / 2**20:7.1f} MiB resident, "
                f"ratio {rss / baseline:.2f} to idle, {sent / elapsed:,.0f} msg/s published"
            )
    channel.close()


if __name__ == "__main__":
    main()
