"""The main job: ``taskctl demo`` runs the whole story on its own local cloud."""

from __future__ import annotations

from pathlib import Path

from tests.cli.helpers import taskctl


def test_demo_story_runs_end_to_end(tmp_path: Path) -> None:
    result = taskctl("--json", "demo", cwd=tmp_path, timeout=400)
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["succeeded_story"] is True
    assert summary["published"] == 4
    assert summary["succeeded"] == 4
    assert summary["dead_lettered"] == 1
    assert summary["replayed"] == 1
    assert summary["failing_task_id"] == "resize-lighthouse"
    assert summary["delivery_attempts"] == summary["max_delivery_attempts"] == 5
    assert summary["failing_task_succeeded"] is True
    assert (
        "gs://taskctl-demo-images/thumbnails/lighthouse_256x256.jpg"
        in summary["outputs"]
    )
    copied = sorted(path.name for path in Path(summary["output_dir"]).iterdir())
    assert len(copied) == len(summary["outputs"])
    assert summary["state_dir"] is None


def test_demo_rejects_other_profiles(tmp_path: Path) -> None:
    result = taskctl("--profile", "prod", "demo", cwd=tmp_path)
    assert result.code == 2
    assert "runs on its own local cloud only" in result.stderr
