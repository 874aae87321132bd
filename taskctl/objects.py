"""Uploading files to Cloud Storage, for trying tasks on the local cloud."""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

from taskctl.errors import NotFoundError, UsageError
from taskctl.gcp.clients import Clients, api_errors

# gs://BUCKET/OBJECT, with bucket names of 3-63 lowercase letters, digits, - _ .
GCS_URL = re.compile(r"^gs://([a-z0-9][a-z0-9._-]{1,61}[a-z0-9])/(.+)$")


@dataclass(frozen=True)
class Uploaded:
    url: str
    size: int
    content_type: str
    bucket_created: bool


def parse_url(url: str) -> tuple[str, str]:
    match = GCS_URL.match(url)
    if not match:
        raise UsageError(
            f"invalid Cloud Storage URL {url!r}",
            hint="use gs://BUCKET/OBJECT, e.g. gs://taskctl-demo-images/uploads/cat.jpg",
        )
    return match.group(1), match.group(2)


def upload(clients: Clients, path: Path, url: str) -> Uploaded:
    """Upload ``path`` to ``url``, creating the bucket when it does not exist."""
    from google.api_core import exceptions

    bucket_name, object_name = parse_url(url)
    if not path.is_file():
        raise NotFoundError(f"file {path} not found")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    storage = clients.storage
    created = False
    with api_errors(f"uploading {path} to {url}"):
        try:
            bucket = storage.get_bucket(bucket_name)
        except exceptions.NotFound:
            bucket = storage.create_bucket(bucket_name)
            created = True
        bucket.blob(object_name).upload_from_filename(
            str(path), content_type=content_type
        )
    return Uploaded(url, path.stat().st_size, content_type, created)
