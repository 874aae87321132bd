"""Registering protobuf request handlers on a gRPC server without generated stubs.

The services' message types come from Google's client libraries (their ``_pb2``
modules or the raw classes behind the proto-plus types), so the local cloud speaks
exactly the wire format those libraries send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from taskctl.localcloud.errors import ServiceError

log = logging.getLogger("taskctl.localcloud.rpc")


@dataclass(frozen=True)
class Method:
    """One RPC: its handler and the raw protobuf classes of its messages."""

    handler: Callable[..., Any]
    request_type: Any
    response_type: Any
    kind: str = "unary_unary"  # or "unary_stream", "stream_stream"


def _guard_unary(method_name: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(request, context)
        except ServiceError as error:
            context.abort(error.code, error.message)
        except Exception:
            log.exception("rpc=%s failed with an internal error", method_name)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method_name}")

    return run


def _guard_stream(method_name: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from handler(request, context)
        except ServiceError as error:
            context.abort(error.code, error.message)
        except Exception:
            log.exception("rpc=%s failed with an internal error", method_name)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method_name}")

    return run


def add_service(
    server: grpc.Server, service_name: str, methods: dict[str, Method]
) -> None:
    """Register ``methods`` under the fully qualified ``service_name``.

    A handler may raise :class:`ServiceError`; it becomes the RPC's status.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for name, method in methods.items():
        full_name = f"{service_name}/{name}"
        serialize = method.response_type.SerializeToString
        deserialize = method.request_type.FromString
        if method.kind == "unary_unary":
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                _guard_unary(full_name, method.handler),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        elif method.kind == "unary_stream":
            handlers[name] = grpc.unary_stream_rpc_method_handler(
                _guard_stream(full_name, method.handler),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        elif method.kind == "stream_stream":
            handlers[name] = grpc.stream_stream_rpc_method_handler(
                _guard_stream(full_name, method.handler),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        else:
            raise ValueError(f"unknown RPC kind {method.kind!r} for {full_name}")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service_name, handlers),)
    )
