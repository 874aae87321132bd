"""Measure streaming-pull throughput of the local cloud's Pub/Sub against a baseline.

``google-cloud-pubsub``'s ``SubscriberClient.subscribe()`` receives and acks a
backlog of N small messages from two servers started in this run, each in its
own process:

- the local cloud, after the backlog was published to a pull subscription, so
  every lease and ack is an SQLite transaction;
- a do-nothing gRPC server that streams N prebuilt messages from memory and
  ignores acks and deadline changes.

The ratio (local cloud / baseline) is less sensitive to the machine than the
absolute rates.

    .venv/bin/python bench/bench_streaming_pull.py --messages 20000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

PROJECT = "bench-project"
TOPIC = f"projects/{PROJECT}/topics/bench"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/bench"
BATCH = 1000


def serve_baseline(messages: int, size: int) -> None:
    """Serve a Subscriber that streams ``messages`` prebuilt messages per stream."""
    from google.protobuf import empty_pb2
    from google.pubsub_v1.types import pubsub as types

    from taskctl.localcloud.rpc import Method, add_service

    def batches() -> Iterator[Any]:
        for start in range(0, messages, BATCH):
            response = types.StreamingPullResponse.pb()()
            for index in range(start, min(start + BATCH, messages)):
                received = response.received_messages.add()
                received.ack_id = f"ack-{index}"
                received.message.data = b"x" * size
                received.message.message_id = str(index)
            yield response

    def drain(requests: Iterator[Any]) -> None:
        try:
            for _ in requests:
                pass
        except grpc.RpcError:
            pass  # the client closed the stream

    def streaming_pull(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        next(requests)
        threading.Thread(target=drain, args=(requests,), daemon=True).start()
        yield from batches()
        while context.is_active():
            time.sleep(0.1)

    def ignore(request: object, context: grpc.ServicerContext) -> object:
        return empty_pb2.Empty()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    add_service(
        server,
        "google.pubsub.v1.Subscriber",
        {
            "StreamingPull": Method(
                streaming_pull,
                types.StreamingPullRequest.pb(),
                types.StreamingPullResponse.pb(),
                kind="stream_stream",
            ),
            "Acknowledge": Method(
                ignore, types.AcknowledgeRequest.pb(), empty_pb2.Empty
            ),
            "ModifyAckDeadline": Method(
                ignore, types.ModifyAckDeadlineRequest.pb(), empty_pb2.Empty
            ),
        },
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def receive_rate(endpoint: str, messages: int) -> float:
    """Receive and ack ``messages`` messages with subscribe(); return messages/s."""
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    received: set[str] = set()
    lock = threading.Lock()
    done = threading.Event()

    def callback(message: Any) -> None:
        message.ack()
        with lock:
            received.add(message.message_id)
            if len(received) >= messages:
                done.set()

    with grpc.insecure_channel(endpoint) as channel:
        client = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=channel)
        )
        started = time.perf_counter()
        future = client.subscribe(
            SUBSCRIPTION,
            callback,
            flow_control=pubsub_v1.types.FlowControl(max_messages=BATCH),
        )
        finished = done.wait(300)
        elapsed = time.perf_counter() - started
        future.cancel()
        future.result(timeout=30)
    if not finished:
        raise RuntimeError(
            f"received only {len(received)} of {messages} messages from {endpoint}"
        )
    return messages / elapsed


def preload(endpoint: str, messages: int, size: int) -> None:
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher import PublisherClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    with grpc.insecure_channel(endpoint) as channel:
        publisher = PublisherClient(transport=PublisherGrpcTransport(channel=channel))
        publisher.create_topic(name=TOPIC)
        pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=channel)
        ).create_subscription(name=SUBSCRIPTION, topic=TOPIC)
        for start in range(0, messages, BATCH):
            count = min(BATCH, messages - start)
            publisher.publish(
                request={"topic": TOPIC, "messages": [{"data": b"x" * size}] * count}
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="backlog size")
    parser.add_argument("--size", type=int, default=100, help="message data in bytes")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_baseline:
        serve_baseline(arguments.messages, arguments.size)
        return 0

    from taskctl.localcloud import process

    baseline = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve-baseline",
            "--messages",
            str(arguments.messages),
            "--size",
            str(arguments.size),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert baseline.stdout is not None
    baseline_endpoint = f"127.0.0.1:{baseline.stdout.readline().strip()}"
    with tempfile.TemporaryDirectory() as state_dir:
        child, info = process.spawn(Path(state_dir), log_level="WARNING")
        try:
            preload(info.grpc_endpoint, arguments.messages, arguments.size)
            local_rate = receive_rate(info.grpc_endpoint, arguments.messages)
            baseline_rate = receive_rate(baseline_endpoint, arguments.messages)
        finally:
            process.terminate(info)
            child.wait()
            baseline.terminate()
            baseline.wait()

    print(f"backlog: {arguments.messages} messages of {arguments.size} bytes")
    print(f"local cloud:         {local_rate:10.0f} msgs/s")
    print(f"do-nothing baseline: {baseline_rate:10.0f} msgs/s")
    print(f"ratio local/baseline: {local_rate / baseline_rate:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
