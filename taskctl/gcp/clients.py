"""Google Cloud clients for one profile, pointed at Google Cloud or the local cloud.

This module is the only place that decides which cloud a profile uses: the local
profile gets Google's own client libraries on an insecure gRPC channel to the
local cloud on loopback with anonymous credentials; a GCP profile gets the same
clients with their default endpoints and Application Default Credentials.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskctl.errors import (
    NotFoundError,
    OperationFailed,
    PermissionDeniedError,
    TaskctlError,
    UnavailableError,
)
from taskctl.settings import Settings

if TYPE_CHECKING:
    import grpc
    from google.cloud.eventarc_v1 import EventarcClient
    from google.cloud.functions_v2 import FunctionServiceClient
    from google.cloud.logging_v2.services.logging_service_v2 import (
        LoggingServiceV2Client,
    )
    from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
    from google.cloud.resourcemanager_v3 import ProjectsClient
    from google.cloud.storage import Client as StorageClient


@dataclass(frozen=True)
class LocalEndpoints:
    grpc_endpoint: str
    storage_endpoint: str


def local_endpoints(settings: Settings) -> LocalEndpoints:
    """Return where the profile's local cloud listens, or raise if it is not running."""
    from taskctl.localcloud import process

    info = process.running(settings.state_dir)
    if info is None:
        raise NotFoundError(
            f"the local cloud is not running for state directory {settings.state_dir}",
            hint="start it with 'taskctl local up --detach' (or use 'taskctl demo')",
        )
    return LocalEndpoints(info.grpc_endpoint, info.storage_endpoint)


class Clients:
    """Lazily built clients; tests and commands share one instance per profile."""

    def __init__(
        self, settings: Settings, endpoints: LocalEndpoints | None = None
    ) -> None:
        self.settings = settings
        self._endpoints = endpoints

    @property
    def is_local(self) -> bool:
        return self.settings.local

    @functools.cached_property
    def endpoints(self) -> LocalEndpoints:
        return self._endpoints or local_endpoints(self.settings)

    @functools.cached_property
    def channel(self) -> grpc.Channel:
        import grpc

        return grpc.insecure_channel(
            self.endpoints.grpc_endpoint,
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )

    def _credentials(self) -> Any:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials() if self.is_local else None

    def _gapic(self, client_class: Any, **options: Any) -> Any:
        """Build a Google client: its default endpoint and Application Default
        Credentials, or for the local profile its gRPC transport on the local
        cloud's channel."""
        if not self.is_local:
            return client_class(**options)
        transport_class = client_class.get_transport_class("grpc")
        return client_class(transport=transport_class(channel=self.channel), **options)

    @functools.cached_property
    def publisher(self) -> PublisherClient:
        from google.cloud.pubsub_v1 import PublisherClient

        return self._gapic(PublisherClient)

    @functools.cached_property
    def ordered_publisher(self) -> PublisherClient:
        """A publisher that may send ordering keys (the client rejects them otherwise)."""
        from google.cloud.pubsub_v1 import PublisherClient, types

        options = types.PublisherOptions(enable_message_ordering=True)
        return self._gapic(PublisherClient, publisher_options=options)

    @functools.cached_property
    def subscriber(self) -> SubscriberClient:
        from google.cloud.pubsub_v1 import SubscriberClient

        return self._gapic(SubscriberClient)

    @functools.cached_property
    def functions(self) -> FunctionServiceClient:
        from google.cloud.functions_v2 import FunctionServiceClient

        return self._gapic(FunctionServiceClient)

    @functools.cached_property
    def eventarc(self) -> EventarcClient:
        from google.cloud.eventarc_v1 import EventarcClient

        return self._gapic(EventarcClient)

    @functools.cached_property
    def logging(self) -> LoggingServiceV2Client:
        from google.cloud.logging_v2.services.logging_service_v2 import (
            LoggingServiceV2Client,
        )

        return self._gapic(LoggingServiceV2Client)

    @functools.cached_property
    def projects(self) -> ProjectsClient:
        from google.cloud.resourcemanager_v3 import ProjectsClient

        return self._gapic(ProjectsClient)

    @functools.cached_property
    def firestore(self) -> Any:
        from google.cloud.firestore import Client as FirestoreClient

        if not self.is_local:
            return FirestoreClient(project=self.settings.project)
        # The client switches to an insecure channel with emulator credentials only
        # when FIRESTORE_EMULATOR_HOST is set while it is built.
        import os

        previous = os.environ.get("FIRESTORE_EMULATOR_HOST")
        os.environ["FIRESTORE_EMULATOR_HOST"] = self.endpoints.grpc_endpoint
        try:
            return FirestoreClient(project=self.settings.project)
        finally:
            if previous is None:
                del os.environ["FIRESTORE_EMULATOR_HOST"]
            else:
                os.environ["FIRESTORE_EMULATOR_HOST"] = previous

    @functools.cached_property
    def storage(self) -> StorageClient:
        from google.cloud.storage import Client as StorageClient

        if not self.is_local:
            return StorageClient(project=self.settings.project)
        return StorageClient(
            project=self.settings.project,
            credentials=self._credentials(),
            client_options={"api_endpoint": self.endpoints.storage_endpoint},
        )

    def upload_source(self, upload_url: str, archive: bytes) -> None:
        """PUT a function's source zip to the URL GenerateUploadUrl returned.

        The signed URL carries its own authorisation, so no credentials are sent.
        """
        import requests

        try:
            response = requests.put(
                upload_url,
                data=archive,
                headers={"content-type": "application/zip"},
                timeout=120,
            )
        except requests.RequestException as error:
            raise UnavailableError(
                f"uploading the function source failed: {error}"
            ) from None
        if response.status_code >= 300:
            raise OperationFailed(
                f"uploading the function source failed with HTTP {response.status_code}: "
                f"{response.text.strip()[:200]}"
            )

    def close(self) -> None:
        if "channel" in self.__dict__:
            self.channel.close()


def one_line(text: str) -> str:
    """Shorten a multi-line service message (a deploy's captured traceback, say) to
    its first line and its last, which for a traceback names the exception."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) <= 1:
        return text.strip()
    return f"{lines[0]} ... {lines[-1]} ({len(lines) - 2} more lines in taskctl logs)"


@contextmanager
def api_errors(action: str) -> Iterator[None]:
    """Translate Google API errors raised inside the block into taskctl errors.

    ``action`` names what was being done, e.g. ``"creating topic projects/p/topics/t"``.
    """
    from google.api_core import exceptions

    try:
        yield
    except TaskctlError:
        raise
    except exceptions.NotFound as error:
        raise NotFoundError(f"{action} failed: not found ({error.message})") from None
    except exceptions.PermissionDenied as error:
        text = str(error.message)
        if (
            "SERVICE_DISABLED" in text
            or "has not been used" in text
            or "disabled" in text
        ):
            raise PermissionDeniedError(
                f"{action} failed: the API is disabled in this project ({text})",
                hint="enable it with 'gcloud services enable SERVICE'",
            ) from None
        raise PermissionDeniedError(
            f"{action} failed: permission denied ({text})",
            hint="check the roles of the account in 'gcloud auth list'",
        ) from None
    except exceptions.Unauthenticated as error:
        raise PermissionDeniedError(
            f"{action} failed: not authenticated ({error.message})",
            hint="run 'gcloud auth application-default login'",
        ) from None
    except (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded) as error:
        raise UnavailableError(f"{action} failed: {error.message}") from None
    except exceptions.RetryError as error:
        raise UnavailableError(f"{action} failed: gave up retrying ({error})") from None
    except exceptions.GoogleAPICallError as error:
        code = getattr(error, "grpc_status_code", None)
        name = code.name if code is not None else type(error).__name__
        raise OperationFailed(
            f"{action} failed: {name}: {one_line(str(error.message))}"
        ) from None
    except TimeoutError as error:
        raise UnavailableError(f"{action} timed out ({error})") from None
    except Exception as error:
        # google-auth raises DefaultCredentialsError when no credentials are found.
        if type(error).__name__ == "DefaultCredentialsError":
            raise PermissionDeniedError(
                f"{action} failed: no Application Default Credentials were found",
                hint="run 'gcloud auth application-default login'",
            ) from None
        raise
