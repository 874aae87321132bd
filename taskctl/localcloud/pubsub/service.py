"""gRPC handlers of the Pub/Sub v1 Publisher, Subscriber and IAMPolicy services."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub as types

from taskctl.localcloud.errors import ServiceError, invalid_argument, not_found
from taskctl.localcloud.pubsub import filters, validation
from taskctl.localcloud.pubsub.push import PushDispatcher
from taskctl.localcloud.pubsub.store import Store, SubscriptionState
from taskctl.localcloud.rpc import Method, add_service

log = logging.getLogger("taskctl.localcloud.pubsub")

Empty = empty_pb2.Empty
TopicPb = types.Topic.pb()
SubscriptionPb = types.Subscription.pb()

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# A Pull without return_immediately waits at most this long for messages.
MAX_PULL_WAIT_SECONDS = 20.0
# Responses stay well under gRPC's message size limit.
MAX_RESPONSE_BYTES = 10 * 1024 * 1024
MAX_MESSAGES_PER_RESPONSE = 1000
SWEEP_INTERVAL_SECONDS = 0.5

TOPIC_UPDATABLE = frozenset(
    {
        "labels",
        "message_retention_duration",
        "message_storage_policy",
        "kms_key_name",
        "schema_settings",
        "ingestion_data_source_settings",
        "message_transforms",
    }
)
SUBSCRIPTION_UPDATABLE = frozenset(
    {
        "ack_deadline_seconds",
        "retry_policy",
        "dead_letter_policy",
        "message_retention_duration",
        "push_config",
        "labels",
        "retain_acked_messages",
        "expiration_policy",
        "enable_exactly_once_delivery",
        "bigquery_config",
        "cloud_storage_config",
        "detached",
    }
)


@dataclass
class _Stream:
    """One StreamingPull stream: its settings and the leases it handed out."""

    state: SubscriptionState
    ack_deadline: int
    max_outstanding_messages: int
    max_outstanding_bytes: int
    # Ack ID -> lease end, and ack ID -> message size in bytes.
    outstanding: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    closed: threading.Event = field(default_factory=threading.Event)


def _page(names: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    if page_size < 0:
        raise invalid_argument(
            f"invalid page_size {page_size}: it must not be negative"
        )
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    remaining = sorted(name for name in names if name > page_token)
    page = remaining[:size]
    token = page[-1] if len(remaining) > size else ""
    return page, token


def _apply_mask(target: Any, source: Any, paths: list[str]) -> None:
    """Copy the top-level fields named in ``paths`` from ``source`` to ``target``."""
    for path in paths:
        descriptor = source.DESCRIPTOR.fields_by_name[path]
        target.ClearField(path)
        if descriptor.message_type is None:
            setattr(target, path, getattr(source, path))
        elif descriptor.message_type.GetOptions().map_entry:
            getattr(target, path).update(getattr(source, path))
        elif source.HasField(path):
            getattr(target, path).CopyFrom(getattr(source, path))


class PubSubService:
    """Pub/Sub v1 on the local cloud, with state in ``state_dir/pubsub.sqlite3``."""

    def __init__(self, state_dir: Path) -> None:
        self.store = Store(state_dir / "pubsub.sqlite3")
        self.push = PushDispatcher(self.store)
        self._stopping = threading.Event()
        self._streams_lock = threading.Lock()
        self._lease_owners: dict[str, _Stream] = {}
        self._sweeper = threading.Thread(
            target=self._sweep_forever, name="pubsub-sweeper", daemon=True
        )

    # -- lifecycle ----------------------------------------------------------------

    def register(self, server: grpc.Server) -> None:
        def unary(handler: Any, request: Any, response: Any) -> Method:
            # Pub/Sub's types are proto-plus wrappers, IAM's are plain protobuf.
            request_type = request.pb() if hasattr(request, "pb") else request
            response_type = response.pb() if hasattr(response, "pb") else response
            return Method(handler, request_type, response_type)

        add_service(
            server,
            "google.pubsub.v1.Publisher",
            {
                "CreateTopic": unary(self.rpc_create_topic, types.Topic, types.Topic),
                "UpdateTopic": unary(
                    self.rpc_update_topic, types.UpdateTopicRequest, types.Topic
                ),
                "Publish": unary(
                    self.rpc_publish, types.PublishRequest, types.PublishResponse
                ),
                "GetTopic": unary(
                    self.rpc_get_topic, types.GetTopicRequest, types.Topic
                ),
                "ListTopics": unary(
                    self.rpc_list_topics,
                    types.ListTopicsRequest,
                    types.ListTopicsResponse,
                ),
                "ListTopicSubscriptions": unary(
                    self.rpc_list_topic_subscriptions,
                    types.ListTopicSubscriptionsRequest,
                    types.ListTopicSubscriptionsResponse,
                ),
                "ListTopicSnapshots": unary(
                    self.rpc_list_topic_snapshots,
                    types.ListTopicSnapshotsRequest,
                    types.ListTopicSnapshotsResponse,
                ),
                "DeleteTopic": unary(
                    self.rpc_delete_topic, types.DeleteTopicRequest, Empty
                ),
                "DetachSubscription": unary(
                    self.rpc_detach_subscription,
                    types.DetachSubscriptionRequest,
                    types.DetachSubscriptionResponse,
                ),
            },
        )
        add_service(
            server,
            "google.pubsub.v1.Subscriber",
            {
                "CreateSubscription": unary(
                    self.rpc_create_subscription, types.Subscription, types.Subscription
                ),
                "GetSubscription": unary(
                    self.rpc_get_subscription,
                    types.GetSubscriptionRequest,
                    types.Subscription,
                ),
                "UpdateSubscription": unary(
                    self.rpc_update_subscription,
                    types.UpdateSubscriptionRequest,
                    types.Subscription,
                ),
                "ListSubscriptions": unary(
                    self.rpc_list_subscriptions,
                    types.ListSubscriptionsRequest,
                    types.ListSubscriptionsResponse,
                ),
                "DeleteSubscription": unary(
                    self.rpc_delete_subscription, types.DeleteSubscriptionRequest, Empty
                ),
                "ModifyAckDeadline": unary(
                    self.rpc_modify_ack_deadline, types.ModifyAckDeadlineRequest, Empty
                ),
                "Acknowledge": unary(
                    self.rpc_acknowledge, types.AcknowledgeRequest, Empty
                ),
                "Pull": unary(self.rpc_pull, types.PullRequest, types.PullResponse),
                "StreamingPull": Method(
                    self.rpc_streaming_pull,
                    types.StreamingPullRequest.pb(),
                    types.StreamingPullResponse.pb(),
                    kind="stream_stream",
                ),
                "ModifyPushConfig": unary(
                    self.rpc_modify_push_config, types.ModifyPushConfigRequest, Empty
                ),
                "Seek": unary(self.rpc_seek, types.SeekRequest, types.SeekResponse),
            },
        )
        add_service(
            server,
            "google.iam.v1.IAMPolicy",
            {
                "SetIamPolicy": unary(
                    self.rpc_set_iam_policy,
                    iam_policy_pb2.SetIamPolicyRequest,
                    policy_pb2.Policy,
                ),
                "GetIamPolicy": unary(
                    self.rpc_get_iam_policy,
                    iam_policy_pb2.GetIamPolicyRequest,
                    policy_pb2.Policy,
                ),
                "TestIamPermissions": unary(
                    self.rpc_test_iam_permissions,
                    iam_policy_pb2.TestIamPermissionsRequest,
                    iam_policy_pb2.TestIamPermissionsResponse,
                ),
            },
        )

    def start(self) -> None:
        self.push.start()
        self._sweeper.start()
        log.info(
            "pubsub service started with %s topics and %s subscriptions, state in %s",
            len(self.store.topics),
            len(self.store.subscriptions),
            self.store.db.path,
        )

    def stop(self) -> None:
        self._stopping.set()
        self.store.notify()
        self.push.stop()
        self._sweeper.join(timeout=5)
        self.store.close()
        log.info("pubsub service stopped")

    def _sweep_forever(self) -> None:
        while not self._stopping.wait(SWEEP_INTERVAL_SECONDS):
            try:
                self.store.sweep()
            except Exception:
                log.exception("sweeping expired and dead-letter messages failed")

    # -- internal API for other services ------------------------------------------

    def create_subscription(
        self,
        subscription: Any,
        *,
        cloud_event: bool = False,
        retry_failed_pushes: bool = True,
    ) -> Any:
        """Create a subscription as CreateSubscription does; raise ServiceError.

        ``cloud_event`` makes pushes binary-mode CloudEvents, and
        ``retry_failed_pushes=False`` acknowledges a message whose push failed.
        """
        request = SubscriptionPb()
        request.CopyFrom(subscription)
        validation.parse_name("subscription", request.name)
        validation.parse_name("topic", request.topic)
        validation.normalize_subscription(request)
        if request.filter:
            filters.parse(request.filter)
        state = self.store.create_subscription(
            request, cloud_event=cloud_event, retry_failed_pushes=retry_failed_pushes
        )
        log.info(
            "created subscription %s on %s (push=%s, cloud_event=%s)",
            request.name,
            request.topic,
            state.is_push,
            cloud_event,
        )
        return self._copy(state.proto)

    def delete_subscription(self, name: str) -> None:
        validation.parse_name("subscription", name)
        # Open streams on it notice the deletion when the store wakes them.
        self.store.delete_subscription(name)
        log.info("deleted subscription %s", name)

    def get_subscription(self, name: str) -> Any:
        validation.parse_name("subscription", name)
        return self._copy(self.store.get_subscription(name).proto)

    @staticmethod
    def _copy(message: Any) -> Any:
        copy = type(message)()
        copy.CopyFrom(message)
        return copy

    # -- Publisher ----------------------------------------------------------------

    def rpc_create_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        validation.parse_name("topic", request.name)
        self._check_topic_settings(request)
        topic = self._copy(request)
        self.store.put_topic(topic, create=True)
        log.info("created topic %s", topic.name)
        return self._copy(topic)

    @staticmethod
    def _check_topic_settings(topic: Any) -> None:
        if topic.HasField("message_retention_duration"):
            validation.check_retention(
                topic.message_retention_duration, "message_retention_duration"
            )

    def rpc_get_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        validation.parse_name("topic", request.topic)
        return self._copy(self.store.get_topic(request.topic))

    def rpc_update_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        validation.parse_name("topic", request.topic.name)
        paths = list(request.update_mask.paths)
        if not paths:
            raise invalid_argument("update_mask is empty: name at least one field")
        for path in paths:
            if path not in TOPIC_UPDATABLE:
                raise invalid_argument(f"invalid update_mask path {path!r} for a topic")
        updated = self._copy(self.store.get_topic(request.topic.name))
        _apply_mask(updated, request.topic, paths)
        self._check_topic_settings(updated)
        self.store.put_topic(updated, create=False)
        return self._copy(updated)

    def rpc_publish(self, request: Any, context: grpc.ServicerContext) -> Any:
        validation.parse_name("topic", request.topic)
        count = len(request.messages)
        if count == 0:
            raise invalid_argument("the publish request contains no messages")
        if count > validation.MAX_MESSAGES_PER_PUBLISH:
            raise invalid_argument(
                f"the publish request contains {count} messages; the limit is "
                f"{validation.MAX_MESSAGES_PER_PUBLISH}"
            )
        size = request.ByteSize()
        if size > validation.MAX_PUBLISH_REQUEST_BYTES:
            raise invalid_argument(
                f"the publish request is {size} bytes; the limit is "
                f"{validation.MAX_PUBLISH_REQUEST_BYTES} bytes"
            )
        for index, message in enumerate(request.messages):
            validation.check_message(message, index)
        ordering_keys = {message.ordering_key for message in request.messages}
        if len(ordering_keys) > 1:
            raise invalid_argument(
                "the messages of one publish request must share one ordering_key; "
                f"found {len(ordering_keys)} different keys"
            )
        message_ids = self.store.publish(request.topic, list(request.messages))
        return types.PublishResponse.pb()(message_ids=message_ids)

    def rpc_list_topics(self, request: Any, context: grpc.ServicerContext) -> Any:
        project = validation.parse_project(request.project)
        prefix = f"projects/{project}/topics/"
        names = [name for name in list(self.store.topics) if name.startswith(prefix)]
        page, token = _page(names, request.page_size, request.page_token)
        response = types.ListTopicsResponse.pb()(next_page_token=token)
        for name in page:
            topic = self.store.topics.get(name)
            if topic is not None:  # skip one deleted since the names were read
                response.topics.append(topic)
        return response

    def rpc_list_topic_subscriptions(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        validation.parse_name("topic", request.topic)
        self.store.get_topic(request.topic)
        names = [state.name for state in self.store.subscriptions_of(request.topic)]
        page, token = _page(names, request.page_size, request.page_token)
        return types.ListTopicSubscriptionsResponse.pb()(
            subscriptions=page, next_page_token=token
        )

    def rpc_list_topic_snapshots(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        validation.parse_name("topic", request.topic)
        self.store.get_topic(request.topic)
        return types.ListTopicSnapshotsResponse.pb()()

    def rpc_delete_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        validation.parse_name("topic", request.topic)
        self.store.delete_topic(request.topic)
        log.info("deleted topic %s", request.topic)
        return Empty()

    def rpc_detach_subscription(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        validation.parse_name("subscription", request.subscription)
        state = self.store.get_subscription(request.subscription)
        # NOTE: a detached subscription keeps its backlog here; Google drops it.
        updated = self._copy(state.proto)
        updated.detached = True
        self.store.replace_subscription(state, updated)
        return types.DetachSubscriptionResponse.pb()()

    # -- Subscriber: administration -----------------------------------------------

    def rpc_create_subscription(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        return self.create_subscription(request)

    def rpc_get_subscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.get_subscription(request.subscription)

    def rpc_update_subscription(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        name = request.subscription.name
        validation.parse_name("subscription", name)
        paths = list(request.update_mask.paths)
        if not paths:
            raise invalid_argument("update_mask is empty: name at least one field")
        for path in paths:
            if path in ("topic", "filter", "enable_message_ordering", "name"):
                raise invalid_argument(
                    f"invalid update_mask path {path!r}: {path} cannot be changed "
                    "after the subscription is created"
                )
            if path not in SUBSCRIPTION_UPDATABLE:
                raise invalid_argument(
                    f"invalid update_mask path {path!r} for a subscription"
                )
        state = self.store.get_subscription(name)
        updated = self._copy(state.proto)
        _apply_mask(updated, request.subscription, paths)
        validation.normalize_subscription(updated)
        self.store.replace_subscription(state, updated)
        log.info("updated subscription %s fields %s", name, ",".join(paths))
        return self._copy(updated)

    def rpc_list_subscriptions(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        project = validation.parse_project(request.project)
        prefix = f"projects/{project}/subscriptions/"
        names = [
            name for name in list(self.store.subscriptions) if name.startswith(prefix)
        ]
        page, token = _page(names, request.page_size, request.page_token)
        response = types.ListSubscriptionsResponse.pb()(next_page_token=token)
        for name in page:
            state = self.store.subscriptions.get(name)
            if state is not None:  # skip one deleted since the names were read
                response.subscriptions.append(state.proto)
        return response

    def rpc_delete_subscription(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        self.delete_subscription(request.subscription)
        return Empty()

    def rpc_modify_push_config(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        validation.parse_name("subscription", request.subscription)
        if request.push_config.push_endpoint:
            validation.check_push_endpoint(request.push_config.push_endpoint)
        state = self.store.get_subscription(request.subscription)
        updated = self._copy(state.proto)
        updated.push_config.CopyFrom(request.push_config)
        self.store.replace_subscription(state, updated)
        return Empty()

    def rpc_seek(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = self._subscription(request.subscription)
        target = request.WhichOneof("target")
        if target == "snapshot":
            raise ServiceError(
                grpc.StatusCode.UNIMPLEMENTED,
                "the local cloud has no snapshots; seek to a time instead",
            )
        if target != "time":
            raise invalid_argument(
                "the seek request names neither a time nor a snapshot"
            )
        # NOTE: acknowledged messages are deleted at once (retain_acked_messages
        # is not honoured), so seeking to an earlier time cannot bring them back.
        acked = self.store.seek(state, request.time.ToNanoseconds() / 1e9)
        log.info(
            "seek on subscription %s to %s acknowledged %s older messages",
            state.name,
            request.time.ToJsonString(),
            acked,
        )
        return types.SeekResponse.pb()()

    # -- Subscriber: delivery -----------------------------------------------------

    def _subscription(self, name: str) -> SubscriptionState:
        validation.parse_name("subscription", name)
        return self.store.get_subscription(name)

    def _release(self, ack_ids: list[str]) -> None:
        freed = False
        with self._streams_lock:
            for ack_id in ack_ids:
                stream = self._lease_owners.pop(ack_id, None)
                if stream is not None:
                    stream.outstanding.pop(ack_id, None)
                    stream.sizes.pop(ack_id, None)
                    freed = True
        if freed:
            # A stream at max_outstanding_messages can send more now.
            self.store.notify()

    def _extend(self, changed: list[tuple[str, float]], deadline: int) -> None:
        if deadline == 0:
            self._release([ack_id for ack_id, _ in changed])
            return
        with self._streams_lock:
            for ack_id, lease_expires in changed:
                stream = self._lease_owners.get(ack_id)
                if stream is not None and ack_id in stream.outstanding:
                    stream.outstanding[ack_id] = lease_expires

    def _acknowledge(self, state: SubscriptionState, ack_ids: list[str]) -> None:
        if ack_ids:
            self._release(self.store.acknowledge(state, ack_ids))

    def _modify(
        self, state: SubscriptionState, ack_ids: list[str], deadline: int
    ) -> None:
        if not ack_ids:
            return
        if not 0 <= deadline <= validation.MAX_ACK_DEADLINE_SECONDS:
            raise invalid_argument(
                f"invalid ack_deadline_seconds {deadline}: it must be between 0 and "
                f"{validation.MAX_ACK_DEADLINE_SECONDS}"
            )
        self._extend(self.store.modify_ack_deadline(state, ack_ids, deadline), deadline)

    def rpc_acknowledge(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = self._subscription(request.subscription)
        if not request.ack_ids:
            raise invalid_argument("the acknowledge request contains no ack IDs")
        self._acknowledge(state, list(request.ack_ids))
        return Empty()

    def rpc_modify_ack_deadline(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        state = self._subscription(request.subscription)
        if not request.ack_ids:
            raise invalid_argument(
                "the modify ack deadline request contains no ack IDs"
            )
        self._modify(state, list(request.ack_ids), request.ack_deadline_seconds)
        return Empty()

    def rpc_pull(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = self._subscription(request.subscription)
        if request.max_messages <= 0:
            raise invalid_argument(
                f"invalid max_messages {request.max_messages}: it must be positive"
            )
        limit = min(request.max_messages, MAX_MESSAGES_PER_RESPONSE)
        remaining = context.time_remaining()
        wait_until = time.monotonic() + min(
            MAX_PULL_WAIT_SECONDS,
            (remaining - 0.5) if remaining else MAX_PULL_WAIT_SECONDS,
        )
        generation = self.store.generation
        while True:
            leases = self.store.lease(
                state, limit, state.proto.ack_deadline_seconds, MAX_RESPONSE_BYTES
            )
            left = wait_until - time.monotonic()
            if (
                leases
                or request.return_immediately
                or left <= 0
                or self._stopping.is_set()
            ):
                break
            if not self.store.is_current(state):
                raise not_found(f"subscription {state.name!r} not found")
            generation = self.store.wait_for_change(
                generation, min(left, self._time_to_due(state))
            )
        response = types.PullResponse.pb()()
        response.received_messages.extend(lease.received for lease in leases)
        return response

    def _time_to_due(self, state: SubscriptionState) -> float:
        due = self.store.next_due(state)
        if due is None:
            return 1.0
        return min(1.0, max(0.005, due - time.time()))

    def rpc_streaming_pull(
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        try:
            first = next(requests)
        except StopIteration:
            return
        state = self._subscription(first.subscription)
        deadline = first.stream_ack_deadline_seconds
        if (
            not validation.MIN_ACK_DEADLINE_SECONDS
            <= deadline
            <= (validation.MAX_ACK_DEADLINE_SECONDS)
        ):
            raise invalid_argument(
                f"invalid stream_ack_deadline_seconds {deadline}: it must be between "
                f"{validation.MIN_ACK_DEADLINE_SECONDS} and "
                f"{validation.MAX_ACK_DEADLINE_SECONDS}"
            )
        if first.max_outstanding_messages < 0 or first.max_outstanding_bytes < 0:
            raise invalid_argument(
                "max_outstanding_messages and max_outstanding_bytes must not be negative"
            )
        stream = _Stream(
            state,
            deadline,
            first.max_outstanding_messages,
            first.max_outstanding_bytes,
        )
        self._handle_stream_request(stream, first)
        reader = threading.Thread(
            target=self._read_stream,
            args=(stream, requests),
            name="pubsub-stream-reader",
            daemon=True,
        )
        reader.start()
        log.debug("streaming pull opened on %s (deadline %ss)", state.name, deadline)
        try:
            yield from self._stream_responses(stream, context)
        finally:
            stream.closed.set()
            with self._streams_lock:
                for ack_id in stream.outstanding:
                    self._lease_owners.pop(ack_id, None)
            log.debug("streaming pull closed on %s", state.name)

    def _handle_stream_request(self, stream: _Stream, request: Any) -> None:
        if request.stream_ack_deadline_seconds:
            stream.ack_deadline = validation.check_ack_deadline(
                request.stream_ack_deadline_seconds, "stream_ack_deadline_seconds"
            )
        self._acknowledge(stream.state, list(request.ack_ids))
        if len(request.modify_deadline_ack_ids) != len(request.modify_deadline_seconds):
            raise invalid_argument(
                "modify_deadline_ack_ids and modify_deadline_seconds differ in length"
            )
        by_deadline: dict[int, list[str]] = {}
        for ack_id, seconds in zip(
            request.modify_deadline_ack_ids,
            request.modify_deadline_seconds,
            strict=True,
        ):
            by_deadline.setdefault(seconds, []).append(ack_id)
        for seconds, ack_ids in by_deadline.items():
            self._modify(stream.state, ack_ids, seconds)

    def _read_stream(self, stream: _Stream, requests: Iterator[Any]) -> None:
        try:
            for request in requests:
                try:
                    self._handle_stream_request(stream, request)
                except ServiceError as error:
                    log.info(
                        "ignored an invalid streaming pull request on %s: %s",
                        stream.state.name,
                        error.message,
                    )
        except grpc.RpcError:
            pass
        except Exception:
            log.exception(
                "reading streaming pull requests on %s failed", stream.state.name
            )
        finally:
            stream.closed.set()
            self.store.notify()

    def _stream_responses(
        self, stream: _Stream, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        state = stream.state
        generation = self.store.generation
        while not stream.closed.is_set() and not self._stopping.is_set():
            if not context.is_active():
                return
            if not self.store.is_current(state):
                raise not_found(f"subscription {state.name!r} not found")
            free, free_bytes, outstanding = self._free_slots(stream)
            leases = []
            if free > 0 and free_bytes > 0:
                # A message larger than the byte limit still goes to a stream
                # that holds nothing, so it cannot block the subscription.
                leases = self.store.lease(
                    state,
                    free,
                    stream.ack_deadline,
                    free_bytes,
                    oversized_first=outstanding == 0,
                )
            if leases:
                with self._streams_lock:
                    for lease in leases:
                        stream.outstanding[lease.ack_id] = lease.deadline
                        stream.sizes[lease.ack_id] = lease.received.message.ByteSize()
                        self._lease_owners[lease.ack_id] = stream
                response = types.StreamingPullResponse.pb()()
                response.received_messages.extend(lease.received for lease in leases)
                # NOTE: exactly-once delivery is accepted on subscriptions but not
                # provided, so streams always report it as off and clients fall
                # back to at-least-once acks.
                properties = response.subscription_properties
                properties.message_ordering_enabled = (
                    state.proto.enable_message_ordering
                )
                yield response
                continue
            has_room = free > 0 and free_bytes > 0
            timeout = self._time_to_due(state) if has_room else 1.0
            generation = self.store.wait_for_change(generation, timeout)

    def _free_slots(self, stream: _Stream) -> tuple[int, int, int]:
        """Return the messages and bytes the stream may still be sent, and held.

        Expired leases no longer count, because their messages can go to
        another subscriber.
        """
        now = time.time()
        with self._streams_lock:
            for ack_id, lease_expires in list(stream.outstanding.items()):
                if lease_expires <= now:
                    del stream.outstanding[ack_id]
                    stream.sizes.pop(ack_id, None)
                    self._lease_owners.pop(ack_id, None)
            outstanding = len(stream.outstanding)
            outstanding_bytes = sum(stream.sizes.values())
        messages = MAX_MESSAGES_PER_RESPONSE
        if stream.max_outstanding_messages:
            messages = min(messages, stream.max_outstanding_messages - outstanding)
        free_bytes = MAX_RESPONSE_BYTES
        if stream.max_outstanding_bytes:
            free_bytes = min(
                free_bytes, stream.max_outstanding_bytes - outstanding_bytes
            )
        return messages, free_bytes, outstanding

    # -- IAMPolicy ----------------------------------------------------------------

    def _iam_resource(self, resource: str) -> str:
        if "/subscriptions/" in resource:
            self._subscription(resource)
        elif "/topics/" in resource:
            validation.parse_name("topic", resource)
            self.store.get_topic(resource)
        else:
            raise invalid_argument(
                f"invalid resource {resource!r}: expected a topic or subscription name"
            )
        return resource

    def rpc_get_iam_policy(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.store.get_policy(self._iam_resource(request.resource))

    def rpc_set_iam_policy(self, request: Any, context: grpc.ServicerContext) -> Any:
        resource = self._iam_resource(request.resource)
        for binding in request.policy.bindings:
            if not binding.role.startswith("roles/"):
                raise invalid_argument(
                    f"invalid role {binding.role!r}: role names start with 'roles/'"
                )
        return self.store.set_policy(resource, request.policy)

    def rpc_test_iam_permissions(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        self._iam_resource(request.resource)
        # The local caller owns every local project, so it has every permission.
        return iam_policy_pb2.TestIamPermissionsResponse(
            permissions=list(request.permissions)
        )
