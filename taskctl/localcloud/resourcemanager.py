"""Resource Manager v3 ``projects.get`` for local projects.

Every project ID is accepted, and its number is derived from the ID, so the
Pub/Sub service agent's address (``service-NUMBER@gcp-sa-pubsub...``) can be
built the way it is in Google Cloud.
"""

from __future__ import annotations

import hashlib
import re

import grpc
from google.cloud.resourcemanager_v3.types import projects

from taskctl.localcloud.errors import invalid_argument
from taskctl.localcloud.rpc import Method, add_service

# Project IDs: 6 to 30 characters, lowercase letters, digits and hyphens, starting
# with a letter and not ending with a hyphen.
PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")


def project_number(project_id: str) -> int:
    """Return the stable 12-digit number the local cloud gives ``project_id``."""
    digest = hashlib.sha256(project_id.encode()).digest()
    return 100_000_000_000 + int.from_bytes(digest[:8], "big") % 900_000_000_000


class ResourceManagerService:
    def register(self, server: grpc.Server) -> None:
        add_service(
            server,
            "google.cloud.resourcemanager.v3.Projects",
            {
                "GetProject": Method(
                    self.get_project,
                    projects.GetProjectRequest.pb(),
                    projects.Project.pb(),
                )
            },
        )

    def get_project(self, request: object, context: grpc.ServicerContext) -> object:
        name: str = request.name  # type: ignore[attr-defined]
        identifier = name.removeprefix("projects/")
        if identifier.isdigit():
            raise invalid_argument(
                f"project {name!r}: the local cloud looks projects up by ID, not number"
            )
        if not PROJECT_ID.match(identifier):
            raise invalid_argument(f"invalid project ID {identifier!r}")
        project = projects.Project.pb()(
            name=f"projects/{project_number(identifier)}",
            project_id=identifier,
            display_name=identifier,
            state=projects.Project.State.ACTIVE,
        )
        return project
