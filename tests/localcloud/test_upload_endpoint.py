"""The upload URL that GenerateUploadUrl hands out: only bounded, typed PUTs."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import grpc
import pytest
from google.cloud.functions_v2 import FunctionServiceClient
from google.cloud.functions_v2.services.function_service.transports import (
    FunctionServiceGrpcTransport,
)

from tests.conftest import PROJECT


@pytest.fixture
def upload_url(channel: grpc.Channel) -> str:
    client = FunctionServiceClient(
        transport=FunctionServiceGrpcTransport(channel=channel)
    )
    response = client.generate_upload_url(
        request={"parent": f"projects/{PROJECT}/locations/us-central1"}
    )
    return str(response.upload_url)


def put(url: str, headers: dict[str, str], body: bytes) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "", parts.port, timeout=10
    )
    try:
        connection.putrequest("PUT", parts.path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        connection.send(body)
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.mark.parametrize("length", ["-1", "abc", "1.5"])
def test_invalid_content_length_rejected(upload_url: str, length: str) -> None:
    status = put(
        upload_url, {"Content-Type": "application/zip", "Content-Length": length}, b"PK"
    )
    assert status == 411


def test_missing_content_length_rejected(upload_url: str) -> None:
    assert put(upload_url, {"Content-Type": "application/zip"}, b"PK") == 411


def test_oversized_upload_rejected(upload_url: str) -> None:
    status = put(
        upload_url,
        {"Content-Type": "application/zip", "Content-Length": str(101 * 1024 * 1024)},
        b"",
    )
    assert status == 413
