"""The worker deployed by taskctl provision on the local cloud, fed through Pub/Sub.

These tests run the whole path: taskctl publish, the Eventarc push subscription,
the function instance with the local cloud's SMTP and Firestore, and taskctl's
logs and local emails commands.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskctl.localcloud.runtime import RuntimeInfo
from tests.cli.helpers import Run, taskctl


@pytest.fixture(scope="module")
def pipeline(
    local_cloud: RuntimeInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A provisioned pipeline of its own on the shared local cloud."""
    suffix = str(int(time.time() * 1000))[-8:]
    env = {
        "TASKCTL_STATE_DIR": local_cloud.state_dir,
        "TASKCTL_TOPIC": f"mail-tasks-{suffix}",
        "TASKCTL_DEAD_LETTER_TOPIC": f"mail-dead-{suffix}",
        "TASKCTL_DEAD_LETTER_SUBSCRIPTION": f"mail-dead-sub-{suffix}",
        "TASKCTL_FUNCTION_NAME": f"mailer-{suffix}",
        "TASKCTL_MIN_BACKOFF": "1",
        "TASKCTL_MAX_BACKOFF": "2",
        "TASKCTL_ACK_DEADLINE": "20",
        "TASKCTL_FUNCTION_TIMEOUT": "20",
    }
    cwd = tmp_path_factory.mktemp("deployed")
    provisioned = taskctl("--json", "provision", env=env, cwd=cwd)
    assert provisioned.code == 0, provisioned.stderr
    yield {"env": env, "cwd": cwd}


def run(pipeline: dict[str, Any], *arguments: str) -> Run:
    return taskctl(*arguments, env=pipeline["env"], cwd=pipeline["cwd"])


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def emails_with_subject(pipeline: dict[str, Any], subject: str) -> list[Any]:
    listed = run(pipeline, "--json", "local", "emails", "--limit", "1000")
    assert listed.code == 0, listed.stderr
    return [entry for entry in listed.json() if entry["subject"] == subject]


def outcomes(pipeline: dict[str, Any], task_id: str) -> list[str]:
    logs = run(pipeline, "--json", "logs", "--task-id", task_id)
    assert logs.code == 0, logs.stderr
    records = [json.loads(line) for line in logs.stdout.splitlines()]
    return [
        record["fields"]["outcome"]
        for record in records
        if record["fields"].get("outcome")
    ]


def test_deployed_send_email_once(
    pipeline: dict[str, Any], tmp_path: Path, unique: str
) -> None:
    task_id = f"deployed-mail-{unique}"
    subject = f"Deployed {unique}"
    path = tmp_path / "task.json"
    path.write_text(
        json.dumps(
            {
                "task_id": task_id,
                "task_type": "send_email",
                "payload": {
                    "to": "ada@example.com",
                    "subject": subject,
                    "text": "Sent by the deployed worker.\n",
                },
            }
        )
    )

    first = run(pipeline, "publish", str(path))
    delivered = wait_for(lambda: emails_with_subject(pipeline, subject))
    wait_for(lambda: "success" in outcomes(pipeline, task_id))
    # The same task again, as an application retrying its publish would send it.
    second = run(pipeline, "publish", str(path))
    wait_for(lambda: "duplicate" in outcomes(pipeline, task_id))

    assert first.code == 0, first.stderr
    assert second.code == 0, second.stderr
    assert len(delivered) == 1
    assert delivered[0]["recipients"] == ["ada@example.com"]
    assert len(emails_with_subject(pipeline, subject)) == 1
    assert outcomes(pipeline, task_id).count("success") == 1
    table = run(pipeline, "local", "emails")
    assert subject in table.stdout
