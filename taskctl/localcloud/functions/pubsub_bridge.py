"""The calls Cloud Functions makes into the local Pub/Sub service.

Eventarc owns a function's push subscription; the local cloud creates it
through Pub/Sub's in-process API, so it can mark deliveries as CloudEvents.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub as pubsub_types

from taskctl.localcloud.errors import ServiceError

log = logging.getLogger("taskctl.localcloud.functions")

_Topic = pubsub_types.Topic.pb()
_GetTopicRequest = pubsub_types.GetTopicRequest.pb()
_ModifyPushConfigRequest = pubsub_types.ModifyPushConfigRequest.pb()
_PushConfig = pubsub_types.PushConfig.pb()


class PubSubBridge:
    """Calls ``PubSubService`` directly, or through its gRPC API on loopback.

    The in-process API has no topic lookup or push-config change, so those two
    go through the local cloud's own gRPC port.
    """

    def __init__(self, pubsub: Any, grpc_endpoint: str) -> None:
        self._pubsub = pubsub
        self._grpc_endpoint = grpc_endpoint
        self._channel: grpc.Channel | None = None
        self._channel_lock = threading.Lock()

    def _call(self, method: str, request: Any, response_type: Any) -> Any:
        with self._channel_lock:
            if self._channel is None:
                self._channel = grpc.insecure_channel(self._grpc_endpoint)
        rpc = self._channel.unary_unary(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return rpc(request, timeout=30)
        except grpc.RpcError as error:
            raise ServiceError(error.code(), error.details() or str(error)) from error

    def topic_exists(self, topic: str) -> bool:
        try:
            self._call(
                "/google.pubsub.v1.Publisher/GetTopic",
                _GetTopicRequest(topic=topic),
                _Topic,
            )
        except ServiceError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def create_subscription(
        self, subscription: Any, *, retry_failed_pushes: bool
    ) -> Any:
        return self._pubsub.create_subscription(
            subscription, cloud_event=True, retry_failed_pushes=retry_failed_pushes
        )

    def get_subscription(self, name: str) -> Any:
        return self._pubsub.get_subscription(name)

    def set_push_endpoint(self, subscription: str, endpoint: str) -> None:
        """Point ``subscription`` at ``endpoint``, keeping every other setting."""
        self._call(
            "/google.pubsub.v1.Subscriber/ModifyPushConfig",
            _ModifyPushConfigRequest(
                subscription=subscription,
                push_config=_PushConfig(push_endpoint=endpoint),
            ),
            empty_pb2.Empty,
        )

    def delete_subscription(self, name: str) -> None:
        """Delete ``name``; a subscription someone already deleted is not an error."""
        try:
            self._pubsub.delete_subscription(name)
        except ServiceError as error:
            if error.code != grpc.StatusCode.NOT_FOUND:
                raise
            log.info("subscription=%s was already deleted", name)

    def close(self) -> None:
        with self._channel_lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
