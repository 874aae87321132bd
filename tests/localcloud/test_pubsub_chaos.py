"""SIGKILL at random points while publishing, delivering, acking and dead-lettering.

Rule: after any number of kills and restarts, every message whose publish was
confirmed is eventually acknowledged or dead-lettered, and no message comes back
after its acknowledgement was confirmed.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import pytest
from google.api_core import exceptions

from tests.conftest import PROJECT
from tests.localcloud.test_pubsub_durability import (  # noqa: F401 (fixture)
    Clients,
    kill_and_restart,
    restartable,
)

pytestmark = pytest.mark.filterwarnings("ignore:The return_immediately flag")

TOPIC = f"projects/{PROJECT}/topics/chaos"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/chaos"
DEAD_LETTER_TOPIC = f"projects/{PROJECT}/topics/chaos-dlq"
DEAD_LETTER_SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/chaos-dlq"
ROUNDS = 4
# Every fourth message is always nacked, so it is dead-lettered after 5 deliveries.
POISON_EVERY = 4


class Ledger:
    """What the clients received: confirmed publishes, confirmed acks, dead letters."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published: set[str] = set()
        self.acked: set[str] = set()
        self.dead_lettered: set[str] = set()
        self.violations: list[str] = []
        self.counter = 0

    def next_batch(self, size: int) -> list[bytes]:
        with self.lock:
            start = self.counter
            self.counter += size
        return [f"m-{number}".encode() for number in range(start, start + size)]


def is_poison(data: bytes) -> bool:
    return int(data.decode().split("-")[1]) % POISON_EVERY == 0


def publish_until(clients: Clients, ledger: Ledger, stop: threading.Event) -> None:
    while not stop.is_set():
        batch = ledger.next_batch(20)
        try:
            clients.raw_publisher.publish(
                topic=TOPIC, messages=[{"data": data} for data in batch], timeout=5
            )
        except (exceptions.GoogleAPICallError, ValueError):
            # The process was killed (or its channel closed for the restart).
            return
        with ledger.lock:
            ledger.published.update(data.decode() for data in batch)


def consume_once(clients: Clients, ledger: Ledger) -> int:
    response = clients.subscriber.pull(
        subscription=SUBSCRIPTION, max_messages=100, return_immediately=True, timeout=5
    )
    ack_ids, nack_ids, acking = [], [], []
    for received in response.received_messages:
        name = received.message.data.decode()
        with ledger.lock:
            if name in ledger.acked:
                ledger.violations.append(
                    f"{name} was delivered after its ack was answered"
                )
        if is_poison(received.message.data):
            nack_ids.append(received.ack_id)
        else:
            ack_ids.append(received.ack_id)
            acking.append(name)
    if nack_ids:
        clients.subscriber.modify_ack_deadline(
            subscription=SUBSCRIPTION, ack_ids=nack_ids, ack_deadline_seconds=0
        )
    if ack_ids:
        clients.subscriber.acknowledge(subscription=SUBSCRIPTION, ack_ids=ack_ids)
        with ledger.lock:
            ledger.acked.update(acking)
    dead = clients.subscriber.pull(
        subscription=DEAD_LETTER_SUBSCRIPTION,
        max_messages=100,
        return_immediately=True,
        timeout=5,
    )
    if dead.received_messages:
        clients.subscriber.acknowledge(
            subscription=DEAD_LETTER_SUBSCRIPTION,
            ack_ids=[item.ack_id for item in dead.received_messages],
        )
        with ledger.lock:
            ledger.dead_lettered.update(
                item.message.data.decode() for item in dead.received_messages
            )
    return len(response.received_messages) + len(dead.received_messages)


def consume_until(clients: Clients, ledger: Ledger, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if consume_once(clients, ledger) == 0:
                time.sleep(0.02)
        except (exceptions.GoogleAPICallError, ValueError):
            # The process was killed (or its channel closed for the restart).
            return


def create_resources(clients: Clients) -> None:
    clients.publisher.create_topic(name=TOPIC)
    clients.publisher.create_topic(name=DEAD_LETTER_TOPIC)
    clients.subscriber.create_subscription(
        request={"name": DEAD_LETTER_SUBSCRIPTION, "topic": DEAD_LETTER_TOPIC}
    )
    clients.subscriber.create_subscription(
        request={
            "name": SUBSCRIPTION,
            "topic": TOPIC,
            "ack_deadline_seconds": 10,
            "retry_policy": {
                "minimum_backoff": {"seconds": 0},
                "maximum_backoff": {"seconds": 0},
            },
            "dead_letter_policy": {
                "dead_letter_topic": DEAD_LETTER_TOPIC,
                "max_delivery_attempts": 5,
            },
        }
    )


def test_random_kills_lose_nothing(restartable: dict[str, Any]) -> None:  # noqa: F811
    # CHAOS_SEED replays a failed run's kill timings.
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1_000_000))
    chance = random.Random(seed)
    ledger = Ledger()
    clients: Clients = restartable["clients"]
    create_resources(clients)

    for _ in range(ROUNDS):
        stop = threading.Event()
        workers = [
            threading.Thread(target=publish_until, args=(clients, ledger, stop)),
            threading.Thread(target=consume_until, args=(clients, ledger, stop)),
        ]
        for worker in workers:
            worker.start()
        time.sleep(chance.uniform(0.3, 2.0))
        clients = kill_and_restart(restartable)
        stop.set()
        for worker in workers:
            worker.join(timeout=30)

    # Settling can take a while on a loaded machine: every always-nacked message
    # needs five deliveries. The bound only matters when something was lost.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        consume_once(clients, ledger)
        with ledger.lock:
            settled = ledger.acked | ledger.dead_lettered
            if ledger.published <= settled:
                break
        time.sleep(0.05)

    with ledger.lock:
        missing = sorted(ledger.published - ledger.acked - ledger.dead_lettered)
        poison_acked = sorted(name for name in ledger.acked if is_poison(name.encode()))
        assert len(ledger.published) > 100, f"seed {seed}: too little traffic"
        assert missing == [], (
            f"seed {seed}: answered publishes never settled: {missing[:10]}"
        )
        assert ledger.violations == [], f"seed {seed}: {ledger.violations[:5]}"
        assert poison_acked == [], f"seed {seed}: always-nacked messages acked"
