"""Eventarc triggers of functions and the push subscriptions behind them."""

from __future__ import annotations

import logging
import random
import string
import uuid
from typing import Any

from google.cloud.eventarc_v1.types import trigger as trigger_types
from google.cloud.functions_v2.types import functions as types
from google.pubsub_v1.types import pubsub as pubsub_types

from taskctl.localcloud.errors import ServiceError
from taskctl.localcloud.functions.names import FunctionName
from taskctl.localcloud.functions.progress import now_timestamp
from taskctl.localcloud.functions.pubsub_bridge import PubSubBridge
from taskctl.localcloud.functions.store import FunctionStore
from taskctl.localcloud.functions.validation import PUBSUB_EVENT_TYPE
from taskctl.localcloud.resourcemanager import project_number

log = logging.getLogger("taskctl.localcloud.functions")

_RetryPolicy = types.EventTrigger.RetryPolicy

# The subscription Eventarc creates for a Pub/Sub trigger. Eventarc documents
# the 24 h retention and the absence of a dead-letter policy. The 10 s to 600 s
# backoff is the retry window Google describes for gen2 functions. The 600 s
# ack deadline, which is also the push request timeout, is the local cloud's
# choice, so a function may run for its 540 s maximum before a push fails.
TRIGGER_ACK_DEADLINE_SECONDS = 600
TRIGGER_RETENTION_SECONDS = 24 * 3600
TRIGGER_MIN_BACKOFF_SECONDS = 10
TRIGGER_MAX_BACKOFF_SECONDS = 600


def _random_digits(length: int) -> str:
    return "".join(random.choices(string.digits, k=length))


def default_service_account(name: FunctionName) -> str:
    return f"{project_number(name.project)}-compute@developer.gserviceaccount.com"


class Triggers:
    """Creates and deletes a function's trigger together with its subscription."""

    def __init__(self, store: FunctionStore, bridge: PubSubBridge) -> None:
        self._store = store
        self._bridge = bridge

    def create(
        self, name: FunctionName, desired: Any, endpoint: str
    ) -> tuple[str, str]:
        """Create a trigger pushing to ``endpoint`` and return it and its subscription."""
        trigger_id = f"{name.function_id}-{_random_digits(6)}"
        trigger_name = f"{name.parent.name}/triggers/{trigger_id}"
        subscription_name = (
            f"projects/{name.project}/subscriptions/"
            f"eventarc-{name.location}-{trigger_id}-sub-{_random_digits(3)}"
        )
        trigger = desired.event_trigger
        subscription = pubsub_types.Subscription.pb()(
            name=subscription_name,
            topic=trigger.pubsub_topic,
            push_config=pubsub_types.PushConfig.pb()(push_endpoint=endpoint),
            ack_deadline_seconds=TRIGGER_ACK_DEADLINE_SECONDS,
        )
        subscription.message_retention_duration.FromSeconds(TRIGGER_RETENTION_SECONDS)
        subscription.retry_policy.minimum_backoff.FromSeconds(
            TRIGGER_MIN_BACKOFF_SECONDS
        )
        subscription.retry_policy.maximum_backoff.FromSeconds(
            TRIGGER_MAX_BACKOFF_SECONDS
        )
        self._bridge.create_subscription(
            subscription,
            retry_failed_pushes=trigger.retry_policy == _RetryPolicy.RETRY_POLICY_RETRY,
        )

        created = now_timestamp()
        eventarc_trigger = trigger_types.Trigger.pb()(
            name=trigger_name,
            uid=str(uuid.uuid4()),
            service_account=trigger.service_account_email
            or default_service_account(name),
            labels={"goog-managed-by": "cloudfunctions"},
            event_data_content_type="application/json",
            etag=uuid.uuid4().hex,
        )
        eventarc_trigger.create_time.CopyFrom(created)
        eventarc_trigger.update_time.CopyFrom(created)
        eventarc_trigger.event_filters.add(attribute="type", value=PUBSUB_EVENT_TYPE)
        eventarc_trigger.destination.cloud_run.service = name.function_id
        eventarc_trigger.destination.cloud_run.region = name.location
        eventarc_trigger.destination.cloud_run.path = "/"
        eventarc_trigger.transport.pubsub.topic = trigger.pubsub_topic
        eventarc_trigger.transport.pubsub.subscription = subscription_name
        try:
            self._store.put_trigger(eventarc_trigger, desired.name)
        except Exception:
            self.delete("", subscription_name)
            raise
        log.info(
            "trigger=%s created with subscription=%s on topic=%s",
            trigger_name,
            subscription_name,
            trigger.pubsub_topic,
        )
        return trigger_name, subscription_name

    def repoint(self, subscription: str, endpoint: str) -> None:
        self._bridge.set_push_endpoint(subscription, endpoint)

    def delete(self, trigger_name: str, subscription: str) -> None:
        """Delete the subscription, then the trigger, logging a subscription failure."""
        try:
            self._bridge.delete_subscription(subscription)
        except ServiceError as error:
            log.error(
                "deleting subscription=%s of trigger=%s failed: %s",
                subscription,
                trigger_name,
                error.message,
            )
        if trigger_name:
            self._store.delete_trigger(trigger_name)
