"""Resource Manager v3 projects.get on the local cloud."""

from __future__ import annotations

import grpc
import pytest
from google.api_core import exceptions
from google.cloud.resourcemanager_v3 import ProjectsClient
from google.cloud.resourcemanager_v3.services.projects.transports import (
    ProjectsGrpcTransport,
)


@pytest.fixture
def projects(channel: grpc.Channel) -> ProjectsClient:
    return ProjectsClient(transport=ProjectsGrpcTransport(channel=channel))


def test_get_project_returns_stable_number(projects: ProjectsClient) -> None:
    first = projects.get_project(name="projects/taskctl-local")
    second = projects.get_project(name="projects/taskctl-local")
    assert first.project_id == "taskctl-local"
    number = first.name.removeprefix("projects/")
    assert number.isdigit()
    assert len(number) == 12
    assert second.name == first.name
    assert first.state.name == "ACTIVE"


def test_projects_get_different_numbers(projects: ProjectsClient) -> None:
    one = projects.get_project(name="projects/taskctl-local").name
    other = projects.get_project(name="projects/another-project").name
    assert one != other


def test_invalid_project_id_rejected(projects: ProjectsClient) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="invalid project ID"):
        projects.get_project(name="projects/Bad_Project")
