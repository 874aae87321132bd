"""The worker's Firestore client, and document IDs made from arbitrary keys."""

from __future__ import annotations

import hashlib
import re
import threading

from google.auth.exceptions import GoogleAuthError
from google.cloud import firestore

from taskworker.failures import TransientError

# Firestore document IDs may not contain "/", be "." or "..", or match __.*__, and
# are at most 1,500 bytes. Keys outside this narrower pattern are hashed instead.
_SAFE_DOCUMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}$")
# A collection ID follows the document ID rules; this pattern is narrower still.
_COLLECTION_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
# One or more simple field names joined by dots, each a valid unquoted name.
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

DATABASE = "(default)"
_REST_ROOT = "https://firestore.googleapis.com/v1"

_client_lock = threading.Lock()
_client: firestore.Client | None = None


def client() -> firestore.Client:
    """Return the process's Firestore client, creating it on first use.

    One client per process, because it owns a gRPC channel and is thread-safe.
    With FIRESTORE_EMULATOR_HOST set it uses anonymous credentials and the project
    from GOOGLE_CLOUD_PROJECT.
    """
    global _client
    with _client_lock:
        if _client is None:
            try:
                _client = firestore.Client(database=DATABASE)
            except GoogleAuthError as error:
                raise TransientError(
                    f"no Firestore client: {error}; give the function a service "
                    "account, or set FIRESTORE_EMULATOR_HOST for a local Firestore"
                ) from error
        return _client


def document_url(reference: firestore.DocumentReference) -> str:
    """Return the document's Firestore REST URL, which names it uniquely."""
    project = client().project
    return f"{_REST_ROOT}/projects/{project}/databases/{DATABASE}/documents/{reference.path}"


def document_id(key: str) -> str:
    """Return a document ID for ``key``: the key itself when it is a safe ID.

    Any other key becomes ``sha256-`` and its hex digest, so the ID is stable.
    """
    if _SAFE_DOCUMENT_ID.match(key) and not _is_reserved(key):
        return key
    return "sha256-" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_collection_id(name: str) -> bool:
    """Return whether ``name`` is a collection ID that this worker accepts."""
    return bool(_COLLECTION_ID.match(name)) and not _is_reserved(name)


def is_field_path(path: str) -> bool:
    """Return whether ``path`` is a dotted path of simple field names."""
    return bool(_FIELD_PATH.match(path)) and not any(
        _is_reserved(part) for part in path.split(".")
    )


def _is_reserved(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")
