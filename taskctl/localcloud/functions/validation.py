"""Checks Cloud Functions v2 applies to a function before deploying it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from google.cloud.functions_v2.types import functions as types
from google.protobuf import field_mask_pb2

from taskctl.localcloud.errors import invalid_argument
from taskctl.localcloud.functions.names import TOPIC_NAME, Location

PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
DEFAULT_MEMORY = "256M"
DEFAULT_TIMEOUT_SECONDS = 60
MAX_EVENT_TIMEOUT_SECONDS = 540
MAX_HTTP_TIMEOUT_SECONDS = 3600
MAX_REQUEST_CONCURRENCY = 1000
# NOTE: gen2 memory bounds as the local cloud applies them (128 MiB to 32 GiB);
# Google also ties larger sizes to available_cpu, which is not checked here.
MIN_MEMORY_BYTES = 128 * 1000 * 1000
MAX_MEMORY_BYTES = 32 * 1024**3

_Runtime = types.ListRuntimesResponse.Runtime
_Stage = types.ListRuntimesResponse.RuntimeStage
# The Python runtimes, all run by the local cloud's own interpreter.
# NOTE: the stages of python38 and python39 are the local cloud's assumption.
RUNTIMES: list[tuple[str, str, int]] = [
    ("python38", "Python 3.8", _Stage.DECOMMISSIONED),
    ("python39", "Python 3.9", _Stage.DEPRECATED),
    ("python310", "Python 3.10", _Stage.GA),
    ("python311", "Python 3.11", _Stage.GA),
    ("python312", "Python 3.12", _Stage.GA),
    ("python313", "Python 3.13", _Stage.GA),
]

_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(k|M|G|Mi|Gi)?$")
_MEMORY_UNITS = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "Mi": 1024**2,
    "Gi": 1024**3,
}
_ENVIRONMENT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Set by the platform for every instance, so a function may not set them.
RESERVED_ENVIRONMENT_KEYS = frozenset(
    {
        "PORT",
        "K_SERVICE",
        "K_REVISION",
        "K_CONFIGURATION",
        "FUNCTION_TARGET",
        "FUNCTION_SIGNATURE_TYPE",
    }
)

# Output-only fields of Function: ignored in an update without a mask, rejected
# in an update mask.
OUTPUT_ONLY_PATHS = frozenset(
    {
        "state",
        "update_time",
        "create_time",
        "state_messages",
        "url",
        "satisfies_pzs",
        "build_config.build",
        "build_config.source_provenance",
        "service_config.service",
        "service_config.uri",
        "service_config.revision",
        "event_trigger.trigger",
    }
)
IMMUTABLE_PATHS = frozenset({"name", "environment"})


def runtime_list() -> list[Any]:
    runtime_pb = _Runtime.pb()
    return [
        runtime_pb(
            name=name,
            display_name=display_name,
            stage=stage,
            environment=types.Environment.GEN_2,
        )
        for name, display_name, stage in RUNTIMES
    ]


def memory_bytes(value: str) -> int:
    match = _MEMORY.match(value)
    if match is None:
        raise invalid_argument(
            f"invalid service_config.available_memory {value!r}; use a number with "
            "one of the units k, M, G, Mi, Gi, such as '256Mi'"
        )
    number, unit = match.groups()
    return int(float(number) * _MEMORY_UNITS[unit or ""])


def _check_runtime(runtime: str) -> None:
    known = {name: stage for name, _, stage in RUNTIMES}
    if not runtime:
        raise invalid_argument("build_config.runtime is required, such as 'python312'")
    if runtime not in known:
        usable = [
            name for name, stage in known.items() if stage != _Stage.DECOMMISSIONED
        ]
        raise invalid_argument(
            f"invalid build_config.runtime {runtime!r}; the local cloud runs "
            f"{', '.join(usable)}"
        )
    if known[runtime] == _Stage.DECOMMISSIONED:
        raise invalid_argument(
            f"runtime {runtime!r} is decommissioned; choose a newer one"
        )


def _check_service_config(config: Any, *, event_driven: bool) -> None:
    if config.available_memory:
        size = memory_bytes(config.available_memory)
        if not MIN_MEMORY_BYTES <= size <= MAX_MEMORY_BYTES:
            raise invalid_argument(
                f"service_config.available_memory {config.available_memory!r} is out "
                "of range; gen2 functions take 128Mi to 32Gi"
            )
    else:
        config.available_memory = DEFAULT_MEMORY

    limit = MAX_EVENT_TIMEOUT_SECONDS if event_driven else MAX_HTTP_TIMEOUT_SECONDS
    timeout = config.timeout_seconds
    if timeout == 0:
        config.timeout_seconds = DEFAULT_TIMEOUT_SECONDS
    elif not 1 <= timeout <= limit:
        kind = "event-driven" if event_driven else "HTTP"
        raise invalid_argument(
            f"invalid service_config.timeout_seconds {timeout}; {kind} functions "
            f"take 1 to {limit} seconds"
        )

    concurrency = config.max_instance_request_concurrency
    if not 0 <= concurrency <= MAX_REQUEST_CONCURRENCY:
        raise invalid_argument(
            f"invalid service_config.max_instance_request_concurrency {concurrency}; "
            f"use 1 to {MAX_REQUEST_CONCURRENCY}"
        )
    if config.max_instance_count < 0 or config.min_instance_count < 0:
        raise invalid_argument("instance counts in service_config must not be negative")
    # Running without the secrets would hide the problem until the function
    # reads them, so the deploy is rejected up front.
    if config.secret_environment_variables or config.secret_volumes:
        raise invalid_argument(
            "service_config.secret_environment_variables and secret_volumes are not "
            "supported by the local cloud; pass such values as environment_variables"
        )

    for key in config.environment_variables:
        if not _ENVIRONMENT_KEY.match(key):
            raise invalid_argument(
                f"invalid environment variable name {key!r}; use letters, digits "
                "and underscores, not starting with a digit"
            )
        if key in RESERVED_ENVIRONMENT_KEYS or key.startswith("X_GOOGLE_"):
            raise invalid_argument(
                f"environment variable {key!r} is reserved and set by the platform"
            )


def _check_event_trigger(
    trigger: Any, location: Location, topic_exists: Callable[[str], bool]
) -> None:
    event_type = trigger.event_type
    if event_type != PUBSUB_EVENT_TYPE:
        raise invalid_argument(
            f"invalid event_trigger.event_type {event_type!r}; the local cloud "
            f"supports {PUBSUB_EVENT_TYPE!r}"
        )
    if trigger.event_filters:
        raise invalid_argument(
            f"event_trigger.event_filters are not allowed for {PUBSUB_EVENT_TYPE!r}"
        )

    topic = trigger.pubsub_topic
    if not topic:
        # NOTE: Google creates a topic for the trigger when none is given; the
        # local cloud needs an existing one.
        raise invalid_argument(
            "event_trigger.pubsub_topic is required by the local cloud; create the "
            "topic first and name it as 'projects/PROJECT/topics/TOPIC'"
        )
    match = TOPIC_NAME.match(topic)
    if match is None:
        raise invalid_argument(
            f"invalid event_trigger.pubsub_topic {topic!r}; expected "
            "'projects/PROJECT/topics/TOPIC'"
        )
    if match.group(1) != location.project:
        raise invalid_argument(
            f"event_trigger.pubsub_topic {topic!r} must be in the function's project "
            f"{location.project!r}"
        )
    if not topic_exists(topic):
        raise invalid_argument(
            f"event_trigger.pubsub_topic {topic!r} not found; create it first"
        )

    if trigger.trigger_region and trigger.trigger_region != location.location:
        raise invalid_argument(
            f"event_trigger.trigger_region {trigger.trigger_region!r} differs from "
            f"the function's region {location.location!r}; the local cloud delivers "
            "events only within one region"
        )
    trigger.trigger_region = location.location
    if trigger.retry_policy == types.EventTrigger.RetryPolicy.RETRY_POLICY_UNSPECIFIED:
        # An unset policy ignores failures, which is what DO_NOT_RETRY does.
        trigger.retry_policy = types.EventTrigger.RetryPolicy.RETRY_POLICY_DO_NOT_RETRY


def validate_function(
    function: Any, location: Location, topic_exists: Callable[[str], bool]
) -> None:
    """Check a raw ``Function`` and fill in Google's defaults in place."""
    if function.environment not in (
        types.Environment.ENVIRONMENT_UNSPECIFIED,
        types.Environment.GEN_2,
    ):
        raise invalid_argument("the local cloud deploys 2nd gen functions only (GEN_2)")
    function.environment = types.Environment.GEN_2

    build = function.build_config
    _check_runtime(build.runtime)
    source = build.source
    if source.HasField("repo_source") or source.git_uri:
        raise invalid_argument(
            "the local cloud deploys from build_config.source.storage_source only"
        )
    if not source.storage_source.bucket or not source.storage_source.object_:
        raise invalid_argument(
            "build_config.source.storage_source needs bucket and object; take them "
            "from GenerateUploadUrl"
        )

    event_driven = function.HasField("event_trigger")
    _check_service_config(function.service_config, event_driven=event_driven)
    if event_driven:
        _check_event_trigger(function.event_trigger, location, topic_exists)


def _present_paths(message: Any, prefix: str = "") -> list[str]:
    paths: list[str] = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        is_plain_message = (
            field.message_type is not None
            and not field.is_repeated
            and field.message_type.full_name.startswith("google.cloud.functions.v2.")
        )
        nested = _present_paths(value, f"{path}.") if is_plain_message else []
        paths.extend(nested or [path])
    return paths


def _check_mask_path(path: str) -> None:
    descriptor = types.Function.pb().DESCRIPTOR
    for part in path.split("."):
        if descriptor is None or part not in descriptor.fields_by_name:
            raise invalid_argument(f"invalid update_mask path {path!r}: no such field")
        descriptor = descriptor.fields_by_name[part].message_type
    if path in IMMUTABLE_PATHS:
        raise invalid_argument(f"update_mask path {path!r} cannot be updated")
    if path in OUTPUT_ONLY_PATHS or any(
        path.startswith(output + ".") for output in OUTPUT_ONLY_PATHS
    ):
        raise invalid_argument(f"update_mask path {path!r} is output only")


def merge_update(current: Any, update: Any, mask_paths: list[str]) -> Any:
    """Return ``current`` with the masked fields taken from ``update``.

    Without a mask every field present in ``update`` is taken, except output-only
    and immutable ones, which clients often send back unchanged.
    """
    if mask_paths:
        for path in mask_paths:
            _check_mask_path(path)
        paths = list(mask_paths)
    else:
        paths = [
            path
            for path in _present_paths(update)
            if path not in IMMUTABLE_PATHS
            and not any(
                path == output or path.startswith(output + ".")
                for output in OUTPUT_ONLY_PATHS
            )
        ]
        if update.environment not in (
            types.Environment.ENVIRONMENT_UNSPECIFIED,
            current.environment,
        ):
            raise invalid_argument("a function's environment cannot be changed")

    merged = type(current)()
    merged.CopyFrom(current)
    mask = field_mask_pb2.FieldMask(paths=paths)
    mask.MergeMessage(
        update, merged, replace_message_field=True, replace_repeated_field=True
    )
    return merged
