"""Progress of a long-running operation: its metadata stages and its end."""

from __future__ import annotations

from typing import Any

import grpc
from google.cloud.functions_v2.types import functions as types
from google.protobuf import timestamp_pb2

from taskctl.localcloud.functions.operations import OperationStore


def now_timestamp() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def new_metadata(
    target: str, verb: str, operation_type: int, request: Any, stages: list[int]
) -> Any:
    metadata = types.OperationMetadata.pb()(
        create_time=now_timestamp(),
        target=target,
        verb=verb,
        api_version="v2",
        operation_type=operation_type,
    )
    metadata.request_resource.Pack(request)
    for stage in stages:
        metadata.stages.add(name=stage, state=types.Stage.State.NOT_STARTED)
    return metadata


class DeployError(Exception):
    """A deploy step failed; ``code`` becomes the operation's error code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Progress:
    """The metadata of one running operation, saved at every stage change."""

    def __init__(self, operations: OperationStore, name: str, metadata: Any) -> None:
        self._operations = operations
        self.name = name
        self.metadata = metadata

    def _stage(self, stage_name: int) -> Any:
        for stage in self.metadata.stages:
            if stage.name == stage_name:
                return stage
        return self.metadata.stages.add(name=stage_name)

    def begin(self, stage_name: int, message: str = "") -> None:
        stage = self._stage(stage_name)
        stage.state = types.Stage.State.IN_PROGRESS
        stage.message = message
        self._operations.update_metadata(self.name, self.metadata)

    def complete(
        self, stage_name: int, resource: str = "", resource_uri: str = ""
    ) -> None:
        stage = self._stage(stage_name)
        stage.state = types.Stage.State.COMPLETE
        stage.message = ""
        stage.resource = resource
        stage.resource_uri = resource_uri
        self._operations.update_metadata(self.name, self.metadata)

    def succeed(self, response: Any) -> None:
        self.metadata.end_time.CopyFrom(now_timestamp())
        self._operations.succeed(self.name, self.metadata, response)

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        for stage in self.metadata.stages:
            if stage.state == types.Stage.State.IN_PROGRESS:
                stage.state = types.Stage.State.COMPLETE
                stage.message = message
                stage.state_messages.add(
                    severity=types.StateMessage.Severity.ERROR,
                    type_="DeployError",
                    message=message,
                )
        self.metadata.end_time.CopyFrom(now_timestamp())
        self.metadata.status_detail = message
        self._operations.fail(self.name, self.metadata, code, message)
