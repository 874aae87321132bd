"""Firestore documents survive a restart of the local cloud."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from taskctl.localcloud import process
from taskctl.localcloud.runtime import RuntimeInfo
from tests.conftest import PROJECT


def connect(info: RuntimeInfo, monkeypatch: pytest.MonkeyPatch) -> firestore.Client:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", info.grpc_endpoint)
    return firestore.Client(project=PROJECT, credentials=AnonymousCredentials())


class Restarter:
    """Stops the local cloud and starts a new one on the same state directory."""

    def __init__(self, info: RuntimeInfo) -> None:
        self.info = info
        self.children: list[subprocess.Popen[bytes]] = []

    def restart(self) -> RuntimeInfo:
        assert process.terminate(self.info)
        child, self.info = process.spawn(Path(self.info.state_dir))
        self.children.append(child)
        return self.info

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                process.terminate(self.info)
            if child.poll() is None:
                child.kill()
            child.wait()


@pytest.fixture
def restarter(fresh_local_cloud: RuntimeInfo) -> Iterator[Restarter]:
    restarts = Restarter(fresh_local_cloud)
    yield restarts
    restarts.close()


def test_documents_survive_restart(
    restarter: Restarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = connect(restarter.info, monkeypatch)
    reference = first.collection("processed_tasks").document("task-1")
    written = reference.create({"status": "done", "at": firestore.SERVER_TIMESTAMP})
    first.collection("processed_tasks").document("task-2").set({"status": "open"})
    before = reference.get()
    first.close()

    second = connect(restarter.restart(), monkeypatch)
    after = second.document(reference.path).get()
    listed = [ref.id for ref in second.collection("processed_tasks").list_documents()]
    rewritten = second.document(reference.path).update({"status": "again"})
    second.close()

    assert after.to_dict() == before.to_dict()
    assert after.create_time == written.update_time
    assert after.update_time == written.update_time
    assert listed == ["task-1", "task-2"]
    assert rewritten.update_time > written.update_time
