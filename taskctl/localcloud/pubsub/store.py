"""Pub/Sub state in SQLite: topics, subscriptions, messages and their leases.

A published message is stored once per topic (``messages``) and referenced by
one ``deliveries`` row per subscription that was attached when it was published.
A delivery row carries the whole delivery state:

- ``available_at``: wall-clock time from which the message may be delivered;
- ``lease_expires``: end of the current lease (0 when it was never leased);
- ``attempts``: how many times it was leased, so the delivery attempt survives a
  restart.

Leasing sets ``lease_expires`` and moves ``available_at`` past the lease plus the
retry backoff for the case that the lease ends without an ack, so an expired
lease needs no bookkeeping to become deliverable again. An ack ID names the
subscription, the message and the attempt it was handed out for, so an ack for
an older attempt, or after the lease ended, matches no row and does nothing.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.iam.v1 import policy_pb2
from google.protobuf import timestamp_pb2
from google.pubsub_v1.types import PubsubMessage, ReceivedMessage, Subscription, Topic

from taskctl.localcloud.db import Database
from taskctl.localcloud.errors import ServiceError, invalid_argument, not_found
from taskctl.localcloud.pubsub import filters
from taskctl.localcloud.pubsub.validation import DELETED_TOPIC, seconds

log = logging.getLogger("taskctl.localcloud.pubsub")

TopicPb = Topic.pb()
SubscriptionPb = Subscription.pb()
MessagePb = PubsubMessage.pb()
ReceivedMessagePb = ReceivedMessage.pb()

# Ack IDs looked up per statement, well under SQLite's limit on parameters.
LOOKUP_CHUNK = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    proto BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    proto BLOB NOT NULL,
    cloud_event INTEGER NOT NULL,
    retry_failed_pushes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    subscription INTEGER NOT NULL,
    message INTEGER NOT NULL,
    available_at REAL NOT NULL,
    lease_expires REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    ordering_key TEXT NOT NULL,
    publish_time REAL NOT NULL,
    PRIMARY KEY (subscription, message)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (subscription, available_at);
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries (message);
CREATE INDEX IF NOT EXISTS deliveries_key
    ON deliveries (subscription, ordering_key, message);
-- Only rows with at least 5 attempts (the lowest max_delivery_attempts) can be
-- due for dead-lettering, so the sweep does not scan a fresh backlog.
CREATE INDEX IF NOT EXISTS deliveries_retried
    ON deliveries (subscription, available_at) WHERE attempts >= 5;
-- The last message ID handed out, kept even when no row was stored for it
-- (a topic without subscriptions), so IDs are never reused after a restart.
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS iam_policies (
    resource TEXT PRIMARY KEY,
    policy BLOB NOT NULL
);
"""


@dataclass
class SubscriptionState:
    """A subscription's settings as cached in memory, plus its row ID."""

    id: int
    proto: Any
    cloud_event: bool
    retry_failed_pushes: bool
    filter: filters.Filter | None = field(default=None)

    @property
    def name(self) -> str:
        return str(self.proto.name)

    @property
    def is_push(self) -> bool:
        return bool(self.proto.push_config.push_endpoint)

    @property
    def has_dead_letter_policy(self) -> bool:
        return bool(self.proto.dead_letter_policy.dead_letter_topic)

    def backoff(self, failures: int) -> float:
        """Return how long a message waits after its ``failures``-th failed attempt."""
        if not self.proto.HasField("retry_policy") or failures < 1:
            return 0.0
        minimum = seconds(self.proto.retry_policy.minimum_backoff)
        maximum = seconds(self.proto.retry_policy.maximum_backoff)
        return float(min(maximum, minimum * 2 ** min(failures - 1, 30)))

    def is_last_attempt(self, attempts: int) -> bool:
        return (
            self.has_dead_letter_policy
            and attempts >= self.proto.dead_letter_policy.max_delivery_attempts
        )


@dataclass(frozen=True)
class Lease:
    """A message handed out to a subscriber."""

    ack_id: str
    message_id: int
    received: Any  # ReceivedMessage (raw protobuf)
    deadline: float


def make_ack_id(subscription_id: int, message_id: int, attempt: int) -> str:
    return f"{subscription_id:x}-{message_id:x}-{attempt:x}"


def parse_ack_id(ack_id: str) -> tuple[int, int, int]:
    try:
        subscription_id, message_id, attempt = (
            int(part, 16) for part in ack_id.split("-")
        )
    except ValueError:
        raise invalid_argument(f"invalid ack ID {ack_id!r}") from None
    return subscription_id, message_id, attempt


def _timestamp(when: float) -> timestamp_pb2.Timestamp:
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromNanoseconds(int(when * 1e9))
    return timestamp


class Store:
    """All Pub/Sub state.

    Every method that changes state commits before it returns, in one
    transaction except :meth:`sweep`, which uses one per subscription.
    """

    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        self.db.migrate(SCHEMA)
        # Waiters (pulls, streams, the push dispatcher) wait on this for new work.
        self.changed = threading.Condition()
        self.generation = 0
        self.topics: dict[str, Any] = {}
        self.subscriptions: dict[str, SubscriptionState] = {}
        self._by_id: dict[int, SubscriptionState] = {}
        self._missing_dead_letter_topics: set[str] = set()
        self._load()

    # -- start-up -----------------------------------------------------------------

    def _load(self) -> None:
        for row in self.db.query("SELECT proto FROM topics"):
            topic = TopicPb.FromString(row["proto"])
            self.topics[topic.name] = topic
        for row in self.db.query("SELECT * FROM subscriptions"):
            self._cache_subscription(
                SubscriptionState(
                    id=row["id"],
                    proto=SubscriptionPb.FromString(row["proto"]),
                    cloud_event=bool(row["cloud_event"]),
                    retry_failed_pushes=bool(row["retry_failed_pushes"]),
                )
            )
        rows = self.db.query("SELECT seq FROM sqlite_sequence WHERE name = 'messages'")
        counters = self.db.query(
            "SELECT value FROM counters WHERE name = 'last_message_id'"
        )
        last_message_id = max(
            rows[0]["seq"] if rows else 0, counters[0]["value"] if counters else 0
        )
        self._next_message_id = last_message_id + 1
        now = time.time()
        with self.db.transaction() as conn:
            # Leases do not survive a restart, because the subscribers' streams are
            # gone. Every leased message is deliverable again and keeps its attempts.
            released = conn.execute(
                "UPDATE deliveries SET lease_expires = ?, available_at = ?"
                " WHERE lease_expires > ?",
                (now, now, now),
            ).rowcount
        if released:
            log.info("released %s leases held before the restart", released)

    def _cache_subscription(self, state: SubscriptionState) -> None:
        if state.proto.filter:
            state.filter = filters.parse(state.proto.filter)
        self.subscriptions[state.name] = state
        self._by_id[state.id] = state

    def notify(self) -> None:
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def wait_for_change(self, generation: int, timeout: float) -> int:
        """Wait for a :meth:`notify` after ``generation``; return the new generation.

        Comparing generations keeps a notification that came while the caller
        was busy from being lost.
        """
        with self.changed:
            if self.generation == generation and timeout > 0:
                self.changed.wait(timeout)
            return self.generation

    def is_current(self, state: SubscriptionState) -> bool:
        """Return False once ``state``'s subscription was deleted, even if recreated."""
        return self.subscriptions.get(state.name) is state

    def subscriptions_of(self, topic: str) -> list[SubscriptionState]:
        # list() copies the values in one step, so a subscription created or
        # deleted by another thread cannot break the iteration.
        states = list(self.subscriptions.values())
        return [state for state in states if state.proto.topic == topic]

    # -- topics -------------------------------------------------------------------

    def get_topic(self, name: str) -> Any:
        topic = self.topics.get(name)
        if topic is None:
            raise not_found(f"topic {name!r} not found")
        return topic

    def put_topic(self, topic: Any, *, create: bool) -> None:
        with self.db.transaction() as conn:
            if create and topic.name in self.topics:
                raise ServiceError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"topic {topic.name!r} already exists",
                )
            conn.execute(
                "INSERT OR REPLACE INTO topics (name, proto) VALUES (?, ?)",
                (topic.name, topic.SerializeToString()),
            )
            self.topics[topic.name] = topic

    def delete_topic(self, name: str) -> None:
        with self.db.transaction() as conn:
            self.get_topic(name)
            conn.execute("DELETE FROM topics WHERE name = ?", (name,))
            conn.execute("DELETE FROM iam_policies WHERE resource = ?", (name,))
            for state in self.subscriptions_of(name):
                state.proto.topic = DELETED_TOPIC
                conn.execute(
                    "UPDATE subscriptions SET topic = ?, proto = ? WHERE id = ?",
                    (DELETED_TOPIC, state.proto.SerializeToString(), state.id),
                )
            del self.topics[name]

    # -- subscriptions ------------------------------------------------------------

    def get_subscription(self, name: str) -> SubscriptionState:
        state = self.subscriptions.get(name)
        if state is None:
            raise not_found(f"subscription {name!r} not found")
        return state

    def create_subscription(
        self, subscription: Any, *, cloud_event: bool, retry_failed_pushes: bool
    ) -> SubscriptionState:
        with self.db.transaction() as conn:
            if subscription.name in self.subscriptions:
                raise ServiceError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"subscription {subscription.name!r} already exists",
                )
            self.get_topic(subscription.topic)
            dead_letter_topic = subscription.dead_letter_policy.dead_letter_topic
            if dead_letter_topic:
                self.get_topic(dead_letter_topic)
            cursor = conn.execute(
                "INSERT INTO subscriptions"
                " (name, topic, proto, cloud_event, retry_failed_pushes)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    subscription.name,
                    subscription.topic,
                    subscription.SerializeToString(),
                    int(cloud_event),
                    int(retry_failed_pushes),
                ),
            )
            state = SubscriptionState(
                id=int(cursor.lastrowid or 0),
                proto=subscription,
                cloud_event=cloud_event,
                retry_failed_pushes=retry_failed_pushes,
            )
            self._cache_subscription(state)
        self.notify()
        return state

    def replace_subscription(self, state: SubscriptionState, subscription: Any) -> None:
        dead_letter_topic = subscription.dead_letter_policy.dead_letter_topic
        with self.db.transaction() as conn:
            if dead_letter_topic:
                self.get_topic(dead_letter_topic)
            conn.execute(
                "UPDATE subscriptions SET proto = ? WHERE id = ?",
                (subscription.SerializeToString(), state.id),
            )
            state.proto = subscription
        self.notify()

    def delete_subscription(self, name: str) -> None:
        with self.db.transaction() as conn:
            state = self.get_subscription(name)
            topics = {
                row["topic"]
                for row in conn.execute(
                    "SELECT DISTINCT m.topic FROM deliveries d"
                    " JOIN messages m ON m.id = d.message WHERE d.subscription = ?",
                    (state.id,),
                )
            }
            conn.execute("DELETE FROM deliveries WHERE subscription = ?", (state.id,))
            for topic in topics:
                conn.execute(
                    "DELETE FROM messages WHERE topic = ? AND NOT EXISTS"
                    " (SELECT 1 FROM deliveries WHERE message = messages.id)",
                    (topic,),
                )
            conn.execute("DELETE FROM subscriptions WHERE id = ?", (state.id,))
            conn.execute("DELETE FROM iam_policies WHERE resource = ?", (name,))
            del self.subscriptions[name]
            del self._by_id[state.id]
        self.notify()

    # -- publishing ---------------------------------------------------------------

    def publish(self, topic: str, messages: list[Any]) -> list[str]:
        """Store ``messages`` for every subscription of ``topic``; return their IDs."""
        with self.db.transaction() as conn:
            self.get_topic(topic)
            ids = self._insert_messages(conn, topic, messages, time.time())
        self.notify()
        return [str(message_id) for message_id in ids]

    def _insert_messages(
        self, conn: sqlite3.Connection, topic: str, messages: list[Any], now: float
    ) -> list[int]:
        targets = self.subscriptions_of(topic)
        ids = list(range(self._next_message_id, self._next_message_id + len(messages)))
        self._next_message_id += len(messages)
        conn.execute(
            "INSERT OR REPLACE INTO counters (name, value) VALUES ('last_message_id', ?)",
            (ids[-1],),
        )

        if not targets:
            # Google drops messages published to a topic without subscriptions.
            return ids

        message_rows = []
        delivery_rows = []
        publish_time = _timestamp(now)
        for message_id, message in zip(ids, messages, strict=True):
            message.message_id = str(message_id)
            message.publish_time.CopyFrom(publish_time)
            message_rows.append((message_id, topic, message.SerializeToString()))
            for state in targets:
                if state.filter is not None and not state.filter.matches(
                    message.attributes
                ):
                    # Google acknowledges messages that do not match the filter.
                    continue
                ordering_key = (
                    message.ordering_key if state.proto.enable_message_ordering else ""
                )
                delivery_rows.append((state.id, message_id, now, ordering_key, now))

        conn.executemany(
            "INSERT INTO messages (id, topic, body) VALUES (?, ?, ?)", message_rows
        )
        conn.executemany(
            "INSERT INTO deliveries"
            " (subscription, message, available_at, ordering_key, publish_time)"
            " VALUES (?, ?, ?, ?, ?)",
            delivery_rows,
        )
        if len(delivery_rows) < len(message_rows) * len(targets):
            self._drop_orphans(conn, ids)
        return ids

    def _drop_orphans(
        self, conn: sqlite3.Connection, message_ids: Iterable[int]
    ) -> None:
        conn.executemany(
            "DELETE FROM messages WHERE id = ? AND NOT EXISTS"
            " (SELECT 1 FROM deliveries WHERE message = ?)",
            [(message_id, message_id) for message_id in message_ids],
        )

    # -- leasing ------------------------------------------------------------------

    def lease(
        self,
        state: SubscriptionState,
        max_messages: int,
        deadline: int,
        max_bytes: int = 10 * 1024 * 1024,
        *,
        oversized_first: bool = True,
        acknowledge_first: Iterable[str] = (),
    ) -> list[Lease]:
        """Lease up to ``max_messages`` due messages for ``deadline`` seconds.

        Stops before the message that would take the batch past ``max_bytes``.
        With ``oversized_first`` the first message is leased even when it is
        larger than that, so a big message cannot block the subscription.
        The ack IDs in ``acknowledge_first`` are acknowledged in the same
        transaction before leasing, as :meth:`acknowledge` would.
        """
        now = time.time()
        leases: list[Lease] = []
        dead_lettered = False
        total_bytes = 0
        updates: list[tuple[int, float, float, int, int]] = []
        with self.db.transaction() as conn:
            if not self.is_current(state):
                return []
            self._acknowledge(conn, state, acknowledge_first, now)
            for row in self._due_rows(conn, state, max_messages, now):
                if state.is_last_attempt(row["attempts"]):
                    dead_lettered |= self._dead_letter(conn, state, row)
                    continue
                total_bytes += len(row["body"])
                if total_bytes > max_bytes and (leases or not oversized_first):
                    break
                leases.append(self._lease_row(conn, state, row, deadline, now, updates))
            conn.executemany(
                "UPDATE deliveries"
                " SET attempts = ?, lease_expires = ?, available_at = ?"
                " WHERE subscription = ? AND message = ?",
                updates,
            )
        if dead_lettered:
            self.notify()
        return leases

    def _due_rows(
        self, conn: sqlite3.Connection, state: SubscriptionState, limit: int, now: float
    ) -> list[sqlite3.Row]:
        query = (
            "SELECT d.message, d.attempts, d.ordering_key, m.body FROM deliveries d"
            " JOIN messages m ON m.id = d.message"
            " WHERE d.subscription = ? AND d.available_at <= ?"
            " ORDER BY d.available_at, d.message LIMIT ?"
        )
        if not state.proto.enable_message_ordering:
            return conn.execute(query, (state.id, now, limit)).fetchall()

        candidates = conn.execute(query, (state.id, now, limit * 4)).fetchall()
        return self._in_key_order(conn, state, candidates, limit, now)

    def _in_key_order(
        self,
        conn: sqlite3.Connection,
        state: SubscriptionState,
        candidates: list[sqlite3.Row],
        limit: int,
        now: float,
    ) -> list[sqlite3.Row]:
        """Keep the candidates whose earlier messages of the same key are leased.

        A nacked or expired message thus holds back the later ones of its key.
        Candidates are walked in publish order, so a blocked key holds back only
        messages published after the one that blocks it. Push sends requests in
        parallel, so for a push subscription any earlier message of the key,
        leased or not, holds back the later ones, and one message per key is due.
        """
        due: list[sqlite3.Row] = []
        last_due: dict[str, int] = {}
        blocked: set[str] = set()
        for row in sorted(candidates, key=lambda candidate: candidate["message"]):
            key = row["ordering_key"]
            if key in blocked:
                continue
            if key:
                earlier = conn.execute(
                    "SELECT 1 FROM deliveries INDEXED BY deliveries_key"
                    " WHERE subscription = ? AND ordering_key = ?"
                    " AND message > ? AND message < ?"
                    " AND (lease_expires <= ? OR ?) LIMIT 1",
                    (
                        state.id,
                        key,
                        last_due.get(key, -1),
                        row["message"],
                        now,
                        int(state.is_push),
                    ),
                ).fetchone()
                if earlier is not None:
                    blocked.add(key)
                    continue
                last_due[key] = row["message"]
                if state.is_push:
                    blocked.add(key)

            due.append(row)
            if len(due) == limit:
                break
        return due

    def _lease_row(
        self,
        conn: sqlite3.Connection,
        state: SubscriptionState,
        row: sqlite3.Row,
        deadline: int,
        now: float,
        updates: list[tuple[int, float, float, int, int]],
    ) -> Lease:
        """Build the lease for ``row`` and queue its row update in ``updates``."""
        attempt = row["attempts"] + 1
        lease_expires = now + deadline
        # The message becomes due again when the lease ends, after the backoff
        # for this attempt failing; a last attempt is dead-lettered at once.
        backoff = 0.0 if state.is_last_attempt(attempt) else state.backoff(attempt)
        updates.append(
            (attempt, lease_expires, lease_expires + backoff, state.id, row["message"])
        )
        ack_id = make_ack_id(state.id, row["message"], attempt)
        received = ReceivedMessagePb(ack_id=ack_id)
        received.message.MergeFromString(row["body"])
        if state.has_dead_letter_policy:
            received.delivery_attempt = attempt
        return Lease(ack_id, row["message"], received, lease_expires)

    # -- acks and deadlines -------------------------------------------------------

    def _matching(
        self, state: SubscriptionState, ack_ids: Iterable[str]
    ) -> list[tuple[str, int, int]]:
        matching = []
        for ack_id in ack_ids:
            subscription_id, message_id, attempt = parse_ack_id(ack_id)
            if subscription_id == state.id:
                matching.append((ack_id, message_id, attempt))
        return matching

    def _valid_leases(
        self,
        conn: sqlite3.Connection,
        state: SubscriptionState,
        ack_ids: Iterable[str],
        now: float,
    ) -> list[tuple[str, int, int]]:
        """Return (ack ID, message, attempt) for the ack IDs whose lease is current."""
        matching = self._matching(state, ack_ids)
        current: set[tuple[int, int]] = set()
        for start in range(0, len(matching), LOOKUP_CHUNK):
            chunk = matching[start : start + LOOKUP_CHUNK]
            placeholders = ",".join("?" * len(chunk))
            current.update(
                (row["message"], row["attempts"])
                for row in conn.execute(
                    "SELECT message, attempts FROM deliveries WHERE subscription = ?"
                    f" AND lease_expires > ? AND message IN ({placeholders})",
                    (state.id, now, *(message_id for _, message_id, _ in chunk)),
                )
            )
        return [
            (ack_id, message_id, attempt)
            for ack_id, message_id, attempt in matching
            if (message_id, attempt) in current
        ]

    def acknowledge(
        self, state: SubscriptionState, ack_ids: Iterable[str]
    ) -> list[str]:
        """Remove the leased messages; return the ack IDs that were still valid."""
        with self.db.transaction() as conn:
            return self._acknowledge(conn, state, ack_ids, time.time())

    def _acknowledge(
        self,
        conn: sqlite3.Connection,
        state: SubscriptionState,
        ack_ids: Iterable[str],
        now: float,
    ) -> list[str]:
        valid = self._valid_leases(conn, state, ack_ids, now)
        message_ids = sorted({message_id for _, message_id, _ in valid})
        conn.executemany(
            "DELETE FROM deliveries WHERE subscription = ? AND message = ?",
            [(state.id, message_id) for message_id in message_ids],
        )
        self._drop_orphans(conn, message_ids)
        return [ack_id for ack_id, _, _ in valid]

    def modify_ack_deadline(
        self, state: SubscriptionState, ack_ids: Iterable[str], deadline: int
    ) -> list[tuple[str, float]]:
        """Extend leases, or end them when ``deadline`` is 0 (a nack).

        Returns the ack IDs that were still valid with their new lease end.
        """
        changed: list[tuple[str, float]] = []
        updates: list[tuple[float, float, int, int]] = []
        now = time.time()
        lease_expires = now + deadline
        with self.db.transaction() as conn:
            for ack_id, message_id, attempt in self._valid_leases(
                conn, state, ack_ids, now
            ):
                changed.append((ack_id, lease_expires))
                if deadline == 0 and state.is_last_attempt(attempt):
                    row = self._delivery(conn, state, message_id)
                    if self._dead_letter(conn, state, row):
                        continue
                backoff = (
                    0.0 if state.is_last_attempt(attempt) else state.backoff(attempt)
                )
                updates.append(
                    (lease_expires, lease_expires + backoff, state.id, message_id)
                )
            conn.executemany(
                "UPDATE deliveries SET lease_expires = ?, available_at = ?"
                " WHERE subscription = ? AND message = ?",
                updates,
            )
        if deadline == 0 and changed:
            self.notify()
        return changed

    @staticmethod
    def _delivery(
        conn: sqlite3.Connection, state: SubscriptionState, message_id: int
    ) -> sqlite3.Row:
        row: sqlite3.Row = conn.execute(
            "SELECT d.message, d.attempts, m.body FROM deliveries d"
            " JOIN messages m ON m.id = d.message"
            " WHERE d.subscription = ? AND d.message = ?",
            (state.id, message_id),
        ).fetchone()
        return row

    # -- dead-lettering -----------------------------------------------------------

    def _dead_letter(
        self, conn: sqlite3.Connection, state: SubscriptionState, row: sqlite3.Row
    ) -> bool:
        """Move a message to the dead-letter topic inside the caller's transaction."""
        dead_letter_topic = state.proto.dead_letter_policy.dead_letter_topic
        if dead_letter_topic not in self.topics:
            if state.name not in self._missing_dead_letter_topics:
                self._missing_dead_letter_topics.add(state.name)
                log.warning(
                    "dead-letter topic %s of subscription %s not found; keeping "
                    "message %s and later ones on the subscription until it exists",
                    dead_letter_topic,
                    state.name,
                    row["message"],
                )
            return False
        self._missing_dead_letter_topics.discard(state.name)

        original = MessagePb.FromString(row["body"])
        forwarded = MessagePb(data=original.data, ordering_key=original.ordering_key)
        forwarded.attributes.update(original.attributes)
        project, subscription_id = state.name.split("/")[1], state.name.split("/")[3]
        forwarded.attributes.update(
            {
                "CloudPubSubDeadLetterSourceDeliveryCount": str(row["attempts"]),
                "CloudPubSubDeadLetterSourceSubscription": subscription_id,
                "CloudPubSubDeadLetterSourceSubscriptionProject": project,
                "CloudPubSubDeadLetterSourceTopicPublishTime": (
                    original.publish_time.ToJsonString()
                ),
            }
        )

        new_ids = self._insert_messages(
            conn, dead_letter_topic, [forwarded], time.time()
        )
        conn.execute(
            "DELETE FROM deliveries WHERE subscription = ? AND message = ?",
            (state.id, row["message"]),
        )
        self._drop_orphans(conn, [row["message"]])
        log.info(
            "dead-lettered message %s of subscription %s after %s attempts to %s as %s",
            row["message"],
            state.name,
            row["attempts"],
            dead_letter_topic,
            new_ids[0],
        )
        return True

    def sweep(self) -> None:
        """Dead-letter messages whose last lease expired and drop expired ones."""
        now = time.time()
        changed = False
        for state in list(self.subscriptions.values()):
            with self.db.transaction() as conn:
                if not self.is_current(state):
                    continue
                if state.has_dead_letter_policy:
                    rows = conn.execute(
                        "SELECT d.message, d.attempts, m.body"
                        " FROM deliveries d INDEXED BY deliveries_retried"
                        " JOIN messages m ON m.id = d.message"
                        " WHERE d.subscription = ? AND d.available_at <= ?"
                        " AND d.attempts >= 5 AND d.attempts >= ? LIMIT 1000",
                        (
                            state.id,
                            now,
                            state.proto.dead_letter_policy.max_delivery_attempts,
                        ),
                    ).fetchall()
                    for row in rows:
                        changed |= self._dead_letter(conn, state, row)
                changed |= self._expire_retention(conn, state, now)
        if changed:
            self.notify()

    def _expire_retention(
        self, conn: sqlite3.Connection, state: SubscriptionState, now: float
    ) -> bool:
        retention = seconds(state.proto.message_retention_duration)
        if retention <= 0:
            return False
        # Message IDs are assigned in publish order, so the expired rows of a
        # subscription come first in primary-key order.
        cutoff = now - retention
        expired = []
        for row in conn.execute(
            "SELECT message, publish_time FROM deliveries WHERE subscription = ?"
            " ORDER BY message LIMIT 10000",
            (state.id,),
        ):
            if row["publish_time"] >= cutoff:
                break
            expired.append(row["message"])
        if not expired:
            return False
        conn.executemany(
            "DELETE FROM deliveries WHERE subscription = ? AND message = ?",
            [(state.id, message_id) for message_id in expired],
        )
        self._drop_orphans(conn, expired)
        log.info(
            "dropped %s messages of subscription %s older than its retention of %ss",
            len(expired),
            state.name,
            retention,
        )
        return True

    def seek(self, state: SubscriptionState, when: float) -> int:
        """Acknowledge messages published before ``when`` and release the rest.

        Returns how many messages were acknowledged.
        """
        now = time.time()
        with self.db.transaction() as conn:
            if not self.is_current(state):
                raise not_found(f"subscription {state.name!r} not found")
            older = [
                row["message"]
                for row in conn.execute(
                    "SELECT message FROM deliveries"
                    " WHERE subscription = ? AND publish_time < ?",
                    (state.id, when),
                )
            ]
            conn.executemany(
                "DELETE FROM deliveries WHERE subscription = ? AND message = ?",
                [(state.id, message_id) for message_id in older],
            )
            self._drop_orphans(conn, older)
            # Ending every lease makes the outstanding ack IDs stale, so every
            # remaining message is delivered again.
            conn.execute(
                "UPDATE deliveries SET lease_expires = MIN(lease_expires, ?),"
                " available_at = ? WHERE subscription = ?",
                (now, now, state.id),
            )
        self.notify()
        return len(older)

    def next_due(self, state: SubscriptionState) -> float | None:
        """Return when the subscription's next message becomes due, if it has one."""
        rows = self.db.query(
            "SELECT MIN(available_at) AS due FROM deliveries WHERE subscription = ?",
            (state.id,),
        )
        due = rows[0]["due"] if rows else None
        return None if due is None else float(due)

    def backlog(self, state: SubscriptionState) -> int:
        rows = self.db.query(
            "SELECT COUNT(*) AS n FROM deliveries WHERE subscription = ?", (state.id,)
        )
        return int(rows[0]["n"])

    # -- IAM ----------------------------------------------------------------------

    def get_policy(self, resource: str) -> Any:
        rows = self.db.query(
            "SELECT policy FROM iam_policies WHERE resource = ?", (resource,)
        )
        if not rows:
            return policy_pb2.Policy(etag=b"\x00")
        return policy_pb2.Policy.FromString(rows[0]["policy"])

    def set_policy(self, resource: str, policy: Any) -> Any:
        with self.db.transaction() as conn:
            current = self.get_policy(resource)
            if policy.etag and policy.etag != current.etag:
                raise ServiceError(
                    grpc.StatusCode.ABORTED,
                    f"the policy of {resource!r} changed since it was read (etag "
                    "mismatch); read it again and retry",
                )
            stored = policy_pb2.Policy()
            stored.CopyFrom(policy)
            generation = int.from_bytes(current.etag, "big") + 1
            stored.etag = generation.to_bytes(8, "big")
            if not stored.version:
                stored.version = 1
            conn.execute(
                "INSERT OR REPLACE INTO iam_policies (resource, policy) VALUES (?, ?)",
                (resource, stored.SerializeToString()),
            )
        return stored

    def close(self) -> None:
        self.db.close()
