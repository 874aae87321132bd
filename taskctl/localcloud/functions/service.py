"""Cloud Functions v2 FunctionService, its Operations and Eventarc GetTrigger.

Create, Update and Delete return a long-running operation at once and do the
work in a background thread (see ``deploy.py``). Request validation errors are
returned by the RPC itself; a create of an existing function fails through its
operation with ALREADY_EXISTS, as Google's API does.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import grpc
from google.cloud.eventarc_v1.types import eventarc as eventarc_types
from google.cloud.eventarc_v1.types import trigger as trigger_types
from google.cloud.functions_v2.types import functions as types
from google.longrunning import operations_pb2

from taskctl.localcloud.db import Database
from taskctl.localcloud.errors import ServiceError, invalid_argument
from taskctl.localcloud.functions.deploy import Deployer
from taskctl.localcloud.functions.names import (
    check_function_id,
    check_trigger_name,
    parse_function,
    parse_location,
)
from taskctl.localcloud.functions.operations import OperationsService, OperationStore
from taskctl.localcloud.functions.progress import Progress, new_metadata
from taskctl.localcloud.functions.pubsub_bridge import PubSubBridge
from taskctl.localcloud.functions.source import UPLOAD_PATH_PREFIX, UploadStore
from taskctl.localcloud.functions.store import FunctionRecord, FunctionStore
from taskctl.localcloud.functions.validation import (
    merge_update,
    runtime_list,
    validate_function,
)
from taskctl.localcloud.rpc import Method, add_service

log = logging.getLogger("taskctl.localcloud.functions")

INSTANCE_READY_TIMEOUT_SECONDS = 60.0
# At local cloud shutdown instances get less time than on a redeploy, so a
# stop does not outlast the caller's patience.
SHUTDOWN_GRACE_SECONDS = 10.0
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_State = types.Function.State
_Function = types.Function.pb()
_Stage = types.Stage.Name


def _page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_argument(
            f"invalid page_size {requested}; it must not be negative"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _reject_filter(request: Any) -> None:
    # NOTE: Google's list methods take filter and order_by. The local cloud
    # implements neither, so it rejects them instead of ignoring them.
    for field in ("filter", "order_by"):
        value = getattr(request, field, "")
        if value:
            raise invalid_argument(
                f"{field} {value!r} is not supported by the local cloud; omit it"
            )


class FunctionsService:
    def __init__(
        self,
        state_dir: Path,
        *,
        pubsub: Any,
        logging: Any,
        http: Any,
        host: str,
        grpc_endpoint: str,
        storage_endpoint: str,
        smtp_port: int = 0,
    ) -> None:
        self._db = Database(state_dir / "functions.sqlite3")
        self._operations = OperationStore(self._db)
        self._store = FunctionStore(self._db)
        self._uploads = UploadStore(self._db, state_dir / "function-uploads")
        self._bridge = PubSubBridge(pubsub, grpc_endpoint)
        self._http = http
        self._host = host
        self._deployer = Deployer(
            state_dir=state_dir,
            store=self._store,
            operations=self._operations,
            uploads=self._uploads,
            bridge=self._bridge,
            host=host,
            grpc_endpoint=grpc_endpoint,
            storage_endpoint=storage_endpoint,
            smtp_port=smtp_port,
            container_log=logging,
            ready_timeout=INSTANCE_READY_TIMEOUT_SECONDS,
        )
        # Serialises the checks that admit a create, update or delete, so two
        # requests never both start an operation on one function.
        self._admission = threading.Lock()
        http.add_put_route(UPLOAD_PATH_PREFIX, self._uploads.receive)

    # ----- lifecycle ----------------------------------------------------------

    def register(self, server: grpc.Server) -> None:
        F = types
        add_service(
            server,
            "google.cloud.functions.v2.FunctionService",
            {
                "GenerateUploadUrl": Method(
                    self.generate_upload_url,
                    F.GenerateUploadUrlRequest.pb(),
                    F.GenerateUploadUrlResponse.pb(),
                ),
                "ListRuntimes": Method(
                    self.list_runtimes,
                    F.ListRuntimesRequest.pb(),
                    F.ListRuntimesResponse.pb(),
                ),
                "GetFunction": Method(
                    self.get_function, F.GetFunctionRequest.pb(), F.Function.pb()
                ),
                "ListFunctions": Method(
                    self.list_functions,
                    F.ListFunctionsRequest.pb(),
                    F.ListFunctionsResponse.pb(),
                ),
                "CreateFunction": Method(
                    self.create_function,
                    F.CreateFunctionRequest.pb(),
                    operations_pb2.Operation,
                ),
                "UpdateFunction": Method(
                    self.update_function,
                    F.UpdateFunctionRequest.pb(),
                    operations_pb2.Operation,
                ),
                "DeleteFunction": Method(
                    self.delete_function,
                    F.DeleteFunctionRequest.pb(),
                    operations_pb2.Operation,
                ),
            },
        )
        OperationsService(self._operations).register(server)
        add_service(
            server,
            "google.cloud.eventarc.v1.Eventarc",
            {
                "GetTrigger": Method(
                    self.get_trigger,
                    eventarc_types.GetTriggerRequest.pb(),
                    trigger_types.Trigger.pb(),
                ),
                "ListTriggers": Method(
                    self.list_triggers,
                    eventarc_types.ListTriggersRequest.pb(),
                    eventarc_types.ListTriggersResponse.pb(),
                ),
            },
        )

    def start(self) -> None:
        """Abandon operations a previous run left open, then restart ACTIVE functions."""
        self._abandon_unfinished_operations()
        resumers = [
            threading.Thread(
                target=self._deployer.resume,
                args=(record,),
                name=f"resume-{record.revision_name}",
                daemon=True,
            )
            for record in self._store.all()
            if record.function.state == _State.ACTIVE and record.source_dir
        ]
        for resumer in resumers:
            resumer.start()
        for resumer in resumers:
            resumer.join()

    def _abandon_unfinished_operations(self) -> None:
        message = "the local cloud stopped before this operation finished; run it again"
        for operation in self._operations.unfinished():
            metadata = types.OperationMetadata.pb()()
            operation.metadata.Unpack(metadata)
            Progress(self._operations, operation.name, metadata).fail(
                grpc.StatusCode.ABORTED, message
            )
            log.warning(
                "operation=%s abandoned: the local cloud restarted", operation.name
            )
        for record in self._store.all():
            if not record.operation:
                continue
            function = _Function()
            function.CopyFrom(record.function)
            # A revision that served before the interrupted operation serves again.
            function.state = _State.ACTIVE if record.revision_name else _State.FAILED
            function.state_messages.add(
                severity=types.StateMessage.Severity.ERROR,
                type_="OperationAborted",
                message=message,
            )
            updated = record.evolve(function=function, operation="")
            self._store.save(updated)
            self._deployer.discard_leftovers(updated)

    def stop(self) -> None:
        self._deployer.stop_all(SHUTDOWN_GRACE_SECONDS)
        self._bridge.close()
        self._db.close()

    # ----- source upload and runtimes -------------------------------------------

    def generate_upload_url(self, request: Any, context: grpc.ServicerContext) -> Any:
        location = parse_location(request.parent)
        if request.kms_key_name:
            raise invalid_argument(
                "kms_key_name is not supported by the local cloud; omit it"
            )
        upload = self._uploads.create(location.project, location.location)
        response = types.GenerateUploadUrlResponse.pb()(
            upload_url=(
                f"http://{self._host}:{self._http.port}{UPLOAD_PATH_PREFIX}{upload.token}"
            ),
        )
        response.storage_source.bucket = upload.bucket
        response.storage_source.object_ = upload.object
        return response

    def list_runtimes(self, request: Any, context: grpc.ServicerContext) -> Any:
        parse_location(request.parent)
        _reject_filter(request)
        return types.ListRuntimesResponse.pb()(runtimes=runtime_list())

    # ----- reads --------------------------------------------------------------

    def get_function(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = parse_function(request.name)
        record = self._store.require(name.name)
        if request.revision and request.revision != record.revision_name:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                f"revision {request.revision!r} of function {name.name!r} not found; "
                f"the current revision is {record.revision_name!r}",
            )
        return record.function

    def list_functions(self, request: Any, context: grpc.ServicerContext) -> Any:
        location = parse_location(request.parent, wildcard=True)
        _reject_filter(request)
        records, next_token = self._store.page(
            location.project,
            location.location,
            _page_size(request.page_size),
            request.page_token,
        )
        return types.ListFunctionsResponse.pb()(
            functions=[record.function for record in records],
            next_page_token=next_token,
        )

    # ----- create, update, delete -----------------------------------------------

    def create_function(self, request: Any, context: grpc.ServicerContext) -> Any:
        location = parse_location(request.parent)
        check_function_id(request.function_id)
        name = f"{location.name}/functions/{request.function_id}"
        if request.function.name and request.function.name != name:
            raise invalid_argument(
                f"function.name {request.function.name!r} does not match parent and "
                f"function_id ({name!r}); leave it empty"
            )
        desired = _Function()
        desired.CopyFrom(request.function)
        desired.name = name
        validate_function(desired, location, self._bridge.topic_exists)
        stages = [_Stage.BUILD, _Stage.SERVICE] + (
            [_Stage.TRIGGER] if desired.HasField("event_trigger") else []
        )
        metadata = new_metadata(
            name,
            "create",
            types.OperationType.CREATE_FUNCTION,
            request.function,
            stages,
        )

        with self._admission:
            operation = self._operations.create(location.name, metadata)
            if self._store.get(name) is not None:
                message = (
                    f"Function {request.function_id} in region {location.location} in "
                    f"project {location.project} already exists"
                )
                progress = Progress(self._operations, operation.name, metadata)
                progress.fail(grpc.StatusCode.ALREADY_EXISTS, message)
                return self._operations.get(operation.name)
            stored = _Function()
            stored.CopyFrom(desired)
            stored.state = _State.DEPLOYING
            stored.create_time.GetCurrentTime()
            stored.update_time.CopyFrom(stored.create_time)
            desired.create_time.CopyFrom(stored.create_time)
            self._store.insert(
                FunctionRecord(
                    name=name,
                    parent=location.name,
                    function=stored,
                    operation=operation.name,
                )
            )

        log.info("create of function=%s started as operation=%s", name, operation.name)
        progress = Progress(self._operations, operation.name, metadata)
        self._deployer.run_in_background(
            f"deploy-{request.function_id}",
            lambda: self._deployer.deploy(name, desired, progress),
        )
        return operation

    def _check_idle(self, record: FunctionRecord) -> None:
        if record.operation:
            raise ServiceError(
                grpc.StatusCode.ABORTED,
                f"an operation on function {record.name!r} is in progress "
                f"({record.operation}); try again when it finishes",
            )

    def update_function(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = parse_function(request.function.name)
        with self._admission:
            record = self._store.require(name.name)
            self._check_idle(record)
            desired = merge_update(
                record.function, request.function, list(request.update_mask.paths)
            )
            if desired.HasField("event_trigger") != record.function.HasField(
                "event_trigger"
            ):
                raise invalid_argument(
                    "a function's trigger type cannot change between an HTTP and an "
                    "event trigger; delete the function and create it again"
                )
            validate_function(desired, name.parent, self._bridge.topic_exists)
            stages = [_Stage.BUILD, _Stage.SERVICE] + (
                [_Stage.TRIGGER] if desired.HasField("event_trigger") else []
            )
            metadata = new_metadata(
                name.name,
                "update",
                types.OperationType.UPDATE_FUNCTION,
                request.function,
                stages,
            )
            operation = self._operations.create(name.parent.name, metadata)
            stored = _Function()
            stored.CopyFrom(record.function)
            stored.state = _State.DEPLOYING
            self._store.save(record.evolve(function=stored, operation=operation.name))

        log.info(
            "update of function=%s started as operation=%s", name.name, operation.name
        )
        progress = Progress(self._operations, operation.name, metadata)
        self._deployer.run_in_background(
            f"deploy-{name.function_id}",
            lambda: self._deployer.deploy(name.name, desired, progress),
        )
        return operation

    def delete_function(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = parse_function(request.name)
        with self._admission:
            record = self._store.require(name.name)
            self._check_idle(record)
            stages = [_Stage.SERVICE] + (
                [_Stage.TRIGGER] if record.function.HasField("event_trigger") else []
            )
            metadata = new_metadata(
                name.name,
                "delete",
                types.OperationType.DELETE_FUNCTION,
                request,
                stages,
            )
            operation = self._operations.create(name.parent.name, metadata)
            stored = _Function()
            stored.CopyFrom(record.function)
            stored.state = _State.DELETING
            self._store.save(record.evolve(function=stored, operation=operation.name))

        log.info(
            "delete of function=%s started as operation=%s", name.name, operation.name
        )
        progress = Progress(self._operations, operation.name, metadata)
        self._deployer.run_in_background(
            f"delete-{name.function_id}",
            lambda: self._deployer.delete(name.name, progress),
        )
        return operation

    # ----- Eventarc -----------------------------------------------------------

    def get_trigger(self, request: Any, context: grpc.ServicerContext) -> Any:
        check_trigger_name(request.name)
        return self._store.get_trigger(request.name)

    def list_triggers(self, request: Any, context: grpc.ServicerContext) -> Any:
        location = parse_location(request.parent)
        _reject_filter(request)
        triggers, next_token = self._store.trigger_page(
            location.name, _page_size(request.page_size), request.page_token
        )
        return eventarc_types.ListTriggersResponse.pb()(
            triggers=triggers, next_page_token=next_token
        )
