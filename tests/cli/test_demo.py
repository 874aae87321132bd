"""The main job: ``taskctl demo`` runs the whole story on its own local cloud."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.helpers import REPOSITORY, taskctl


def test_demo_story_runs_end_to_end(tmp_path: Path) -> None:
    result = taskctl("--json", "demo", cwd=tmp_path, timeout=400)
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["succeeded_story"] is True
    assert summary["published"] == 6
    assert summary["succeeded"] == 6
    assert summary["dead_lettered"] == 1
    assert summary["replayed"] == 1
    assert summary["failing_task_id"] == "resize-lighthouse"
    assert summary["delivery_attempts"] == summary["max_delivery_attempts"] == 5
    assert summary["failing_task_succeeded"] is True
    assert (
        "gs://taskctl-demo-images/thumbnails/lighthouse_256x256.jpg"
        in summary["outputs"]
    )
    images = [url for url in summary["outputs"] if url.startswith("gs://")]
    copied = sorted(path.name for path in Path(summary["output_dir"]).iterdir())
    assert len([name for name in copied if not name.endswith(".eml")]) == len(images)
    [email] = summary["emails"]
    assert email["recipients"] == ["ops@example.com"]
    assert email["subject"] == "Your harbour thumbnails are ready"
    assert (
        Path(email["file"])
        .read_text()
        .count("Subject: Your harbour thumbnails are ready")
        == 1
    )
    [report] = summary["reports"]
    assert report["path"] == "reports/weekly-orders-report-2026-11-01"
    assert report["days"] == 7
    orders = json.loads((REPOSITORY / "examples" / "data" / "orders.json").read_text())
    assert report["record_count"] == len(orders)
    assert report["total_amount"] == pytest.approx(
        sum(order["amount"] for order in orders)
    )
    assert summary["state_dir"] is None


def test_demo_rejects_other_profiles(tmp_path: Path) -> None:
    result = taskctl("--profile", "prod", "demo", cwd=tmp_path)
    assert result.code == 2
    assert "runs on its own local cloud only" in result.stderr
