"""Resource names of Cloud Functions v2 and Eventarc, parsed and checked."""

from __future__ import annotations

import re
from dataclasses import dataclass

from taskctl.localcloud.errors import invalid_argument

# Function IDs: 4 to 63 characters, lowercase letters, digits and hyphens, starting
# with a letter and not ending with a hyphen.
FUNCTION_ID = re.compile(r"^[a-z][a-z0-9-]{2,61}[a-z0-9]$")
PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
LOCATION = re.compile(r"^[a-z]+(-[a-z]+)*[0-9]+$")
TOPIC_NAME = re.compile(r"^projects/([^/]+)/topics/([^/]+)$")

_PARENT = re.compile(r"^projects/([^/]+)/locations/([^/]+)$")
_FUNCTION = re.compile(r"^projects/([^/]+)/locations/([^/]+)/functions/([^/]+)$")
_TRIGGER = re.compile(r"^projects/([^/]+)/locations/([^/]+)/triggers/([^/]+)$")
_OPERATION = re.compile(r"^projects/([^/]+)/locations/([^/]+)/operations/([^/]+)$")


@dataclass(frozen=True)
class Location:
    project: str
    location: str

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"


@dataclass(frozen=True)
class FunctionName:
    project: str
    location: str
    function_id: str

    @property
    def name(self) -> str:
        return f"{self.parent.name}/functions/{self.function_id}"

    @property
    def parent(self) -> Location:
        return Location(self.project, self.location)


def _check_project(project: str, value: str) -> None:
    if not PROJECT_ID.match(project):
        raise invalid_argument(f"invalid project ID {project!r} in {value!r}")


def _check_location(location: str, value: str, *, wildcard: bool) -> None:
    if wildcard and location == "-":
        return
    if not LOCATION.match(location):
        raise invalid_argument(
            f"invalid location {location!r} in {value!r}; expected a region "
            "such as 'us-central1'"
        )


def parse_location(value: str, *, wildcard: bool = False) -> Location:
    """Parse ``projects/P/locations/R``; ``-`` as R only when ``wildcard``."""
    match = _PARENT.match(value)
    if match is None:
        raise invalid_argument(
            f"invalid parent {value!r}; expected 'projects/PROJECT/locations/REGION'"
        )
    project, location = match.groups()
    _check_project(project, value)
    _check_location(location, value, wildcard=wildcard)
    return Location(project, location)


def check_function_id(function_id: str) -> None:
    if not FUNCTION_ID.match(function_id):
        raise invalid_argument(
            f"invalid function ID {function_id!r}: it must be 4 to 63 characters of "
            "lowercase letters, digits and hyphens, start with a letter and not "
            "end with a hyphen"
        )


def parse_function(value: str) -> FunctionName:
    """Parse ``projects/P/locations/R/functions/F``."""
    match = _FUNCTION.match(value)
    if match is None:
        raise invalid_argument(
            f"invalid function name {value!r}; expected "
            "'projects/PROJECT/locations/REGION/functions/FUNCTION_ID'"
        )
    project, location, function_id = match.groups()
    _check_project(project, value)
    _check_location(location, value, wildcard=False)
    check_function_id(function_id)
    return FunctionName(project, location, function_id)


def check_trigger_name(value: str) -> None:
    if _TRIGGER.match(value) is None:
        raise invalid_argument(
            f"invalid trigger name {value!r}; expected "
            "'projects/PROJECT/locations/REGION/triggers/TRIGGER_ID'"
        )


def check_operation_name(value: str) -> None:
    if _OPERATION.match(value) is None:
        raise invalid_argument(
            f"invalid operation name {value!r}; expected "
            "'projects/PROJECT/locations/REGION/operations/OPERATION_ID'"
        )
