"""Push delivery: POSTs due messages of push subscriptions to their endpoints."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from taskctl.localcloud.pubsub.push_http import PushConnection
from taskctl.localcloud.pubsub.store import Lease, Store, SubscriptionState

log = logging.getLogger("taskctl.localcloud.pubsub")

# Statuses Pub/Sub treats as an ack of a push. Every other response is a nack.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
MAX_IN_FLIGHT_PER_SUBSCRIPTION = 16
MAX_PUSH_THREADS = 64
CLOUD_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
# After a nacked push the subscription's pushes pause, from 0.1 s doubling up to
# 10 s while failures continue, so a down endpoint does not get a tight retry
# loop when the retry policy allows immediate redelivery.
# NOTE: Google adapts the push rate to the success rate but publishes no
# figures; these bounds are the local cloud's own choice.
FIRST_PUSH_PAUSE_SECONDS = 0.1
MAX_PUSH_PAUSE_SECONDS = 10.0


def message_json(message: Any) -> dict[str, Any]:
    """Return the JSON form of a PubsubMessage that push bodies carry."""
    publish_time = message.publish_time.ToJsonString()
    body: dict[str, Any] = {
        "data": base64.b64encode(message.data).decode(),
        "attributes": dict(message.attributes),
        "messageId": message.message_id,
        "message_id": message.message_id,
        "publishTime": publish_time,
        "publish_time": publish_time,
    }
    if message.ordering_key:
        body["orderingKey"] = message.ordering_key
    return body


def build_request(
    state: SubscriptionState, lease: Lease
) -> tuple[dict[str, str], bytes]:
    """Return the headers and body of the push request for ``lease``."""
    received = lease.received
    message = received.message
    push_config = state.proto.push_config
    if push_config.HasField("no_wrapper") and not state.cloud_event:
        headers = {"content-type": "application/octet-stream"}
        if push_config.no_wrapper.write_metadata:
            headers.update(
                {
                    "x-goog-pubsub-subscription-name": state.name,
                    "x-goog-pubsub-message-id": message.message_id,
                    "x-goog-pubsub-publish-time": message.publish_time.ToJsonString(),
                }
            )
            if message.ordering_key:
                headers["x-goog-pubsub-ordering-key"] = message.ordering_key
            headers.update(message.attributes)
        return headers, bytes(message.data)

    envelope: dict[str, Any] = {
        "message": message_json(message),
        "subscription": state.name,
    }
    if state.has_dead_letter_policy:
        envelope["deliveryAttempt"] = received.delivery_attempt
    headers = {"content-type": "application/json"}
    if state.cloud_event:
        headers.update(
            {
                "ce-id": message.message_id,
                "ce-source": f"//pubsub.googleapis.com/{state.proto.topic}",
                "ce-type": CLOUD_EVENT_TYPE,
                "ce-specversion": "1.0",
                "ce-time": envelope["message"]["publishTime"],
            }
        )
    return headers, json.dumps(envelope).encode()


class _Connections(threading.local):
    """Keep-alive connections of one push thread, by (scheme, host, port)."""

    def __init__(self) -> None:
        self.by_origin: dict[tuple[str, str, int], PushConnection] = {}


@dataclass(frozen=True)
class _Outcome:
    """The result of one POST, waiting for the dispatcher to store it."""

    state: SubscriptionState
    lease: Lease
    acked: bool
    description: str


class PushDispatcher:
    """One thread that leases due push messages and a pool that POSTs them.

    The pool threads only send requests and queue each result for the
    dispatcher thread. That thread acknowledges a subscription's queued
    successes in the same transaction that leases its next messages, and frees
    the in-flight slots only after that commit, so a push counts against the
    subscription's in-flight bound until its outcome is stored.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._stopping = threading.Event()
        self._in_flight: dict[int, int] = {}
        self._failure_streaks: dict[int, int] = {}
        self._paused_until: dict[int, float] = {}
        self._outcomes: list[_Outcome] = []
        self._outcomes_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            MAX_PUSH_THREADS, thread_name_prefix="pubsub-push"
        )
        self._connections = _Connections()
        self._thread = threading.Thread(
            target=self._run, name="pubsub-push-dispatcher", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.store.notify()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        # Results that arrived after the last dispatch are still stored, unless
        # the dispatcher thread is stuck. Pushes that finish later are not, so
        # their leases end and the messages are delivered again after a restart.
        if not self._thread.is_alive():
            for group in self._take_outcomes().values():
                state = group[0].state
                self._store_outcomes(state, group, self._store_failures(state, group))

    def _run(self) -> None:
        generation = self.store.generation
        while not self._stopping.is_set():
            try:
                wait = self._dispatch_once()
            except Exception:
                log.exception("push dispatcher failed; retrying in 1 s")
                wait = 1.0
            generation = self.store.wait_for_change(generation, wait)

    def _take_outcomes(self) -> dict[int, list[_Outcome]]:
        """Remove the queued push results and return them by subscription ID."""
        with self._outcomes_lock:
            outcomes, self._outcomes = self._outcomes, []
        by_subscription: dict[int, list[_Outcome]] = {}
        for outcome in outcomes:
            by_subscription.setdefault(outcome.state.id, []).append(outcome)
        return by_subscription

    def _dispatch_once(self) -> float:
        """Store push results and start pushes; return how long to wait for more."""
        finished = self._take_outcomes()
        wait = 1.0
        now = time.time()
        for state in list(self.store.subscriptions.values()):
            group = finished.pop(state.id, [])
            if state.is_push or group:
                wait = min(wait, self._dispatch_subscription(state, group, now))
        # Results of subscriptions deleted since their push started.
        for group in finished.values():
            state = group[0].state
            self._store_outcomes(state, group, self._store_failures(state, group))
        return wait

    def _dispatch_subscription(
        self, state: SubscriptionState, group: list[_Outcome], now: float
    ) -> float:
        """Store ``group``'s results, lease into the free slots, return the wait."""
        acks = self._store_failures(state, group)
        paused_until = self._paused_until.get(state.id, 0.0)
        if not state.is_push or paused_until > now:
            self._store_outcomes(state, group, acks)
            return max(0.0, paused_until - now) if state.is_push else 1.0
        free = (
            MAX_IN_FLIGHT_PER_SUBSCRIPTION
            - self._in_flight.get(state.id, 0)
            + len(group)
        )
        if free <= 0:
            self._store_outcomes(state, group, acks)
            return 1.0

        leases: list[Lease] = []
        try:
            leases = self.store.lease(
                state,
                free,
                state.proto.ack_deadline_seconds,
                acknowledge_first=acks,
            )
        except Exception:
            log.exception(
                "acking %s pushed messages and leasing more on %s failed",
                len(acks),
                state.name,
            )
        self._in_flight[state.id] = (
            self._in_flight.get(state.id, 0) - len(group) + len(leases)
        )
        for lease in leases:
            self._pool.submit(self._push, state, lease)

        # Each push result and each publish wakes the dispatcher, so it needs no
        # pass before then, and the 1 s wait only bounds a missed wake-up.
        if leases:
            return 1.0
        due = self.store.next_due(state)
        return 1.0 if due is None else max(0.005, due - now)

    def _push(self, state: SubscriptionState, lease: Lease) -> None:
        message_id = lease.received.message.message_id
        try:
            status = self._post(state, lease)
            outcome = _Outcome(state, lease, status in ACK_STATUSES, f"status {status}")
        except (OSError, http.client.HTTPException, ValueError) as error:
            # ValueError: the push client rejects a header built from an
            # attribute that is not a valid HTTP header name or value.
            outcome = _Outcome(state, lease, False, f"error {error!r}")
        except Exception as error:
            log.exception("push of message %s to %s failed", message_id, state.name)
            outcome = _Outcome(state, lease, False, f"error {error!r}")
        with self._outcomes_lock:
            first = not self._outcomes
            self._outcomes.append(outcome)
        # Only the first result queued since the dispatcher last took the queue
        # wakes it. A later one is taken along, because the dispatcher either has
        # not taken the queue yet or passes again after that first wake-up.
        if first:
            self.store.notify()

    def _store_failures(
        self, state: SubscriptionState, group: list[_Outcome]
    ) -> list[str]:
        """Nack or drop ``group``'s failures; return the ack IDs still to ack.

        Also records every outcome for the pause after failures.
        """
        acks = []
        nacks = []
        for outcome in group:
            message_id = outcome.lease.received.message.message_id
            if outcome.acked:
                acks.append(outcome.lease.ack_id)
            elif not state.retry_failed_pushes:
                log.info(
                    "push of message %s to subscription %s failed (%s); dropping it "
                    "because the subscription does not retry failed pushes",
                    message_id,
                    state.name,
                    outcome.description,
                )
                acks.append(outcome.lease.ack_id)
            else:
                log.info(
                    "push of message %s to subscription %s failed (%s); nacking it",
                    message_id,
                    state.name,
                    outcome.description,
                )
                nacks.append(outcome.lease.ack_id)
            # A dropped failure needs no pause, because nothing is retried.
            self._record_outcome(state, outcome.acked or not state.retry_failed_pushes)
        if nacks:
            try:
                self.store.modify_ack_deadline(state, nacks, 0)
            except Exception:
                log.exception(
                    "nacking %s pushed messages on %s failed", len(nacks), state.name
                )
        return acks

    def _store_outcomes(
        self, state: SubscriptionState, group: list[_Outcome], acks: list[str]
    ) -> None:
        """Ack ``acks`` and then free the in-flight slots of ``group``."""
        try:
            if acks:
                self.store.acknowledge(state, acks)
        except Exception:
            log.exception(
                "acking %s pushed messages on %s failed", len(acks), state.name
            )
        self._in_flight[state.id] = self._in_flight.get(state.id, 0) - len(group)

    def _record_outcome(self, state: SubscriptionState, acked: bool) -> None:
        if acked:
            self._failure_streaks.pop(state.id, None)
            self._paused_until.pop(state.id, None)
            return
        streak = self._failure_streaks.get(state.id, 0) + 1
        self._failure_streaks[state.id] = streak
        pause = min(
            MAX_PUSH_PAUSE_SECONDS,
            FIRST_PUSH_PAUSE_SECONDS * 2 ** min(streak - 1, 30),
        )
        self._paused_until[state.id] = time.time() + pause

    def _post(self, state: SubscriptionState, lease: Lease) -> int:
        endpoint = urlsplit(state.proto.push_config.push_endpoint)
        headers, body = build_request(state, lease)
        timeout = max(0.1, lease.deadline - time.time())
        origin = (endpoint.scheme, endpoint.hostname or "", endpoint.port or 0)
        path = endpoint.path or "/"
        if endpoint.query:
            path = f"{path}?{endpoint.query}"

        connection = self._connections.by_origin.get(origin)
        if connection is None:
            connection = PushConnection(*origin)
            self._connections.by_origin[origin] = connection
        reused = connection.is_open

        try:
            return connection.post(path, headers, body, timeout)
        except (
            http.client.RemoteDisconnected,
            BrokenPipeError,
            ConnectionResetError,
        ):
            connection.close()
            if not reused:
                raise
        except BaseException:
            connection.close()
            raise

        # A kept-alive connection the server already closed: retry once on a
        # fresh connection.
        try:
            return connection.post(path, headers, body, timeout)
        except BaseException:
            connection.close()
            raise
