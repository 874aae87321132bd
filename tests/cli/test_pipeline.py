"""The four pipeline commands, run as a user runs them, against the local cloud."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskctl.localcloud.runtime import RuntimeInfo
from tests.cli.helpers import Run, taskctl

PROJECT = "taskctl-local"


@pytest.fixture(scope="module")
def pipeline(
    local_cloud: RuntimeInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A provisioned pipeline of its own (topics, function) on the shared local cloud."""
    suffix = str(int(time.time() * 1000))[-8:]
    env = {
        "TASKCTL_STATE_DIR": local_cloud.state_dir,
        "TASKCTL_TOPIC": f"tasks-{suffix}",
        "TASKCTL_DEAD_LETTER_TOPIC": f"dead-{suffix}",
        "TASKCTL_DEAD_LETTER_SUBSCRIPTION": f"dead-sub-{suffix}",
        "TASKCTL_FUNCTION_NAME": f"worker-{suffix}",
        "TASKCTL_MIN_BACKOFF": "1",
        "TASKCTL_MAX_BACKOFF": "2",
        "TASKCTL_ACK_DEADLINE": "20",
        "TASKCTL_FUNCTION_TIMEOUT": "20",
    }
    cwd = tmp_path_factory.mktemp("cli")
    first = taskctl("--json", "provision", env=env, cwd=cwd)
    assert first.code == 0, first.stderr
    yield {"env": env, "cwd": cwd, "first": first.json(), "suffix": suffix}


def run(pipeline: dict[str, Any], *arguments: str, **extra_env: str) -> Run:
    return taskctl(
        *arguments, env={**pipeline["env"], **extra_env}, cwd=pipeline["cwd"]
    )


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def test_provision_creates_every_resource(pipeline: dict[str, Any]) -> None:
    result = pipeline["first"]
    actions = {(item["kind"], item["action"]) for item in result["items"]}
    assert ("topic", "create") in actions
    assert ("subscription", "create") in actions
    assert ("function", "create") in actions
    assert ("iam", "create") in actions
    assert result["changed"] is True
    assert result["trigger_subscription"].startswith(
        f"projects/{PROJECT}/subscriptions/eventarc-"
    )


def test_provision_second_run_changes_nothing(pipeline: dict[str, Any]) -> None:
    again = run(pipeline, "--json", "provision")
    assert again.code == 0, again.stderr
    result = again.json()
    assert result["changed"] is False
    assert {item["action"] for item in result["items"]} == {"unchanged"}
    human = run(pipeline, "provision")
    assert human.code == 0
    assert "nothing was changed" in human.stdout


def test_trigger_subscription_gets_policies(
    pipeline: dict[str, Any], subscriber: Any
) -> None:
    name = pipeline["first"]["trigger_subscription"]
    subscription = subscriber.get_subscription(request={"subscription": name})
    suffix = pipeline["suffix"]
    assert subscription.dead_letter_policy.dead_letter_topic == (
        f"projects/{PROJECT}/topics/dead-{suffix}"
    )
    assert subscription.dead_letter_policy.max_delivery_attempts == 5
    assert subscription.retry_policy.minimum_backoff.total_seconds() == 1
    assert subscription.retry_policy.maximum_backoff.total_seconds() == 2
    assert subscription.ack_deadline_seconds == 20
    assert subscription.message_retention_duration.total_seconds() == 7 * 86400


def test_service_agent_may_publish_dead_letters(
    pipeline: dict[str, Any], publisher: Any, subscriber: Any
) -> None:
    suffix = pipeline["suffix"]
    topic_policy = publisher.get_iam_policy(
        request={"resource": f"projects/{PROJECT}/topics/dead-{suffix}"}
    )
    members = {
        member
        for binding in topic_policy.bindings
        if binding.role == "roles/pubsub.publisher"
        for member in binding.members
    }
    assert any(
        member.endswith("@gcp-sa-pubsub.iam.gserviceaccount.com") for member in members
    )
    subscription_policy = subscriber.get_iam_policy(
        request={"resource": pipeline["first"]["trigger_subscription"]}
    )
    assert any(
        binding.role == "roles/pubsub.subscriber"
        for binding in subscription_policy.bindings
    )


def test_dry_run_plans_without_changing(
    pipeline: dict[str, Any], subscriber: Any
) -> None:
    planned = run(
        pipeline, "--json", "provision", "--dry-run", "--max-delivery-attempts", "7"
    )
    assert planned.code == 0, planned.stderr
    result = planned.json()
    assert result["applied"] is False
    updates = [item for item in result["items"] if item["action"] == "update"]
    assert len(updates) == 1
    assert updates[0]["changes"] == [
        {
            "field": "dead_letter_policy.max_delivery_attempts",
            "current": "5",
            "desired": "7",
        }
    ]
    subscription = subscriber.get_subscription(
        request={"subscription": pipeline["first"]["trigger_subscription"]}
    )
    assert subscription.dead_letter_policy.max_delivery_attempts == 5


def test_out_of_range_flag_exits_2(pipeline: dict[str, Any]) -> None:
    result = run(pipeline, "provision", "--ack-deadline", "5")
    assert result.code == 2
    assert "ack_deadline is 5s, outside the allowed range 10s to 10m" in result.stderr
    assert result.stderr.count("\n") == 1


def test_publish_bad_file_publishes_nothing(
    pipeline: dict[str, Any], tmp_path: Path, publisher: Any, subscriber: Any
) -> None:
    suffix = pipeline["suffix"]
    probe = f"projects/{PROJECT}/subscriptions/probe-{suffix}"
    subscriber.create_subscription(
        request={"name": probe, "topic": f"projects/{PROJECT}/topics/tasks-{suffix}"}
    )
    good = json.dumps({"task_type": "noop", "payload": {}})
    bad = json.dumps({"task_type": "noop", "payload": "not an object"})
    path = tmp_path / "tasks.jsonl"
    path.write_text(f"{good}\n{good}\n{bad}\n")
    try:
        result = run(pipeline, "publish", str(path))
        assert result.code == 2
        assert f"{path}:3: payload must be a JSON object" in result.stderr
        pulled = subscriber.pull(
            request={"subscription": probe, "max_messages": 10}, timeout=3
        )
        assert list(pulled.received_messages) == []
    finally:
        subscriber.delete_subscription(request={"subscription": probe})


def test_publish_unknown_type_is_dead_lettered(
    pipeline: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "task.json"
    path.write_text(
        json.dumps(
            {"task_id": "cli-unknown-1", "task_type": "resize_video", "payload": {}}
        )
    )
    published = run(pipeline, "--json", "publish", str(path))
    assert published.code == 0, published.stderr
    items = published.json()["published"]
    assert [item["task_id"] for item in items] == ["cli-unknown-1"]
    assert items[0]["message_id"]

    def permanent_failure_logged() -> list[Any]:
        logs = run(pipeline, "--json", "logs", "--task-id", "cli-unknown-1")
        assert logs.code == 0, logs.stderr
        records = [json.loads(line) for line in logs.stdout.splitlines()]
        return [r for r in records if r["fields"].get("outcome") == "permanent_failure"]

    failures = wait_for(permanent_failure_logged)
    assert failures[0]["labels"]["task_id"] == "cli-unknown-1"
    assert failures[0]["severity"] in ("WARNING", "ERROR")

    listed = wait_for(
        lambda: run(pipeline, "--json", "replay-dlq", "--dry-run").json()[
            "would_replay"
        ]
    )
    assert listed == 1


def test_logs_human_output_and_filters(pipeline: dict[str, Any]) -> None:
    wait_for(lambda: run(pipeline, "logs", "--task-id", "cli-unknown-1").stdout)
    human = run(pipeline, "logs", "--task-id", "cli-unknown-1", "--since", "1h")
    assert human.code == 0
    assert "task received" in human.stdout
    assert "task_id=cli-unknown-1" in human.stdout
    errors_only = run(
        pipeline, "--json", "logs", "--task-id", "cli-unknown-1", "--severity", "ERROR"
    )
    severities = {
        json.loads(line)["severity"] for line in errors_only.stdout.splitlines()
    }
    assert severities <= {"ERROR", "CRITICAL", "ALERT", "EMERGENCY"}
    nothing = run(pipeline, "--json", "logs", "--task-id", "no-such-task")
    assert nothing.code == 0
    assert nothing.stdout == ""


def test_logs_invalid_options_exit_2(pipeline: dict[str, Any]) -> None:
    bad_severity = run(pipeline, "logs", "--severity", "LOUD")
    assert bad_severity.code == 2
    assert "invalid --severity 'LOUD'" in bad_severity.stderr
    bad_since = run(pipeline, "logs", "--since", "yesterday")
    assert bad_since.code == 2
    assert "invalid --since 'yesterday'" in bad_since.stderr


def test_logs_follow_prints_new_entries(
    pipeline: dict[str, Any], tmp_path: Path
) -> None:
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskctl",
            "--json",
            "logs",
            "--follow",
            "--task-id",
            "cli-follow-1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **pipeline["env"]},
        cwd=pipeline["cwd"],
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            lines.put(line)

    threading.Thread(target=read_lines, daemon=True).start()
    try:
        time.sleep(2)
        path = tmp_path / "task.json"
        path.write_text(
            json.dumps(
                {"task_id": "cli-follow-1", "task_type": "resize_video", "payload": {}}
            )
        )
        assert run(pipeline, "publish", str(path)).code == 0
        first = json.loads(lines.get(timeout=60))
        assert first["labels"]["task_id"] == "cli-follow-1"
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_redeploy_reapplies_subscription_policies(
    pipeline: dict[str, Any], tmp_path: Path, subscriber: Any
) -> None:
    import shutil

    from taskctl.bundle import default_source_dir

    source = tmp_path / "worker"
    shutil.copytree(
        default_source_dir(), source, ignore=shutil.ignore_patterns("__pycache__")
    )
    with (source / "main.py").open("a") as handle:
        handle.write("\n# a change, so the source hash differs\n")
    result = run(
        pipeline,
        "--json",
        "provision",
        "--source",
        str(source),
        "--memory",
        "1Gi",
    )
    assert result.code == 0, result.stderr
    plan = result.json()
    [function] = [item for item in plan["items"] if item["kind"] == "function"]
    assert function["action"] == "update"
    changed_fields = {change["field"] for change in function["changes"]}
    assert changed_fields == {"source sha256", "service_config.available_memory"}

    subscription = subscriber.get_subscription(
        request={"subscription": plan["trigger_subscription"]}
    )
    assert subscription.dead_letter_policy.max_delivery_attempts == 5
    assert subscription.retry_policy.minimum_backoff.total_seconds() == 1

    again = run(
        pipeline, "--json", "provision", "--source", str(source), "--memory", "1Gi"
    )
    assert again.json()["changed"] is False


def test_bad_source_fails_in_one_line(pipeline: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "broken"
    source.mkdir()
    (source / "main.py").write_text("raise ZeroDivisionError('broken at import')\n")
    result = run(pipeline, "provision", "--source", str(source))
    assert result.code == 1
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("taskctl: error:")
    ]
    assert len(errors) == 1, result.stderr
    assert "ZeroDivisionError: broken at import" in errors[0]
    assert "Traceback" not in result.stderr


def test_logs_filter_keeps_non_ascii_ids(
    pipeline: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "task.json"
    path.write_text(
        json.dumps({"task_id": "café-1", "task_type": "resize_video", "payload": {}}),
        encoding="utf-8",
    )
    assert run(pipeline, "publish", str(path)).code == 0
    found = wait_for(
        lambda: run(pipeline, "--json", "logs", "--task-id", "café-1").stdout
    )
    assert json.loads(found.splitlines()[0])["labels"]["task_id"] == "café-1"


def test_sigterm_during_follow_exits_130(pipeline: dict[str, Any]) -> None:
    import signal

    follower = subprocess.Popen(
        [sys.executable, "-m", "taskctl", "logs", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **pipeline["env"]},
        cwd=pipeline["cwd"],
    )
    time.sleep(3)
    follower.send_signal(signal.SIGTERM)
    _, stderr = follower.communicate(timeout=30)
    assert follower.returncode == 130
    assert "interrupted" in stderr


def test_since_too_far_back_exits_2(pipeline: dict[str, Any]) -> None:
    result = run(pipeline, "logs", "--since", "99999999999d")
    assert result.code == 2
    assert "invalid --since" in result.stderr
