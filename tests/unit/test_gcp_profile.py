"""A GCP profile builds Google's clients for Google's endpoints.

No request reaches Google from here; these tests check where each client would
send its requests and which credentials it would use, and that the local profile
never goes there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskctl import settings
from taskctl.gcp.clients import Clients, LocalEndpoints


@pytest.fixture
def service_account_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Application Default Credentials from a key file that is never used to sign in."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "key.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "my-project",
                "private_key_id": "0",
                "private_key": pem,
                "client_email": "taskctl@my-project.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    for variable in (
        "PUBSUB_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "FIRESTORE_EMULATOR_HOST",
    ):
        monkeypatch.delenv(variable, raising=False)
    return path


def gcp_settings(tmp_path: Path) -> settings.Settings:
    config = tmp_path / "taskctl.toml"
    config.write_text(
        '[profiles.prod]\nproject = "my-project"\nregion = "europe-west1"\n'
    )
    return settings.load(config_path=config, profile="prod", environ={})


def test_gcp_profile_targets_google_endpoints(
    tmp_path: Path, service_account_file: Path
) -> None:
    clients = Clients(gcp_settings(tmp_path))
    assert clients.is_local is False
    hosts = {
        "publisher": clients.publisher._transport._host,
        "subscriber": clients.subscriber._transport._host,
        "functions": clients.functions._transport._host,
        "eventarc": clients.eventarc._transport._host,
        "logging": clients.logging._transport._host,
        "projects": clients.projects._transport._host,
    }
    assert hosts == {
        "publisher": "pubsub.googleapis.com:443",
        "subscriber": "pubsub.googleapis.com:443",
        "functions": "cloudfunctions.googleapis.com:443",
        "eventarc": "eventarc.googleapis.com:443",
        "logging": "logging.googleapis.com:443",
        "projects": "cloudresourcemanager.googleapis.com:443",
    }
    credentials = clients.functions._transport._credentials
    assert getattr(credentials, "service_account_email", "") == (
        "taskctl@my-project.iam.gserviceaccount.com"
    )
    assert "channel" not in clients.__dict__


def test_local_profile_uses_loopback_channel(tmp_path: Path) -> None:
    local = settings.load(environ={}, cwd=tmp_path)
    clients = Clients(local, LocalEndpoints("127.0.0.1:1", "http://127.0.0.1:2"))
    assert clients.is_local is True
    transport = clients.publisher._transport
    assert transport._grpc_channel is clients.channel
    assert clients.storage._connection.API_BASE_URL == "http://127.0.0.1:2"
    clients.close()
