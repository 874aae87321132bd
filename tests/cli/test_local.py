"""taskctl local: up, status, env and down, as a user runs them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from taskctl.localcloud.runtime import RuntimeInfo
from tests.cli.helpers import taskctl


def test_local_lifecycle(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"TASKCTL_STATE_DIR": str(state)}

    stopped = taskctl("local", "status", env=env, cwd=tmp_path)
    assert stopped.code == 3
    assert "not running" in stopped.stdout

    started = taskctl(
        "--json", "local", "up", "--detach", "--port", "0", env=env, cwd=tmp_path
    )
    assert started.code == 0, started.stderr
    status = started.json()
    try:
        assert status["running"] is True
        assert status["grpc_endpoint"].startswith("127.0.0.1:")
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700

        again = taskctl("local", "up", "--detach", env=env, cwd=tmp_path)
        assert again.code == 1
        assert "already runs" in again.stderr

        exported = taskctl("local", "env", env=env, cwd=tmp_path)
        assert exported.code == 0
        assert (
            f"export PUBSUB_EMULATOR_HOST={status['grpc_endpoint']}" in exported.stdout
        )
        assert "export STORAGE_EMULATOR_HOST=http://127.0.0.1:" in exported.stdout

        log = (state / "localcloud.log").read_text()
        assert "loopback only" in log
    finally:
        stopped_now = taskctl("local", "down", env=env, cwd=tmp_path)
    assert stopped_now.code == 0
    assert taskctl("local", "status", env=env, cwd=tmp_path).code == 3
    assert taskctl("local", "down", env=env, cwd=tmp_path).code == 3


def test_commands_need_running_local_cloud(tmp_path: Path) -> None:
    env = {"TASKCTL_STATE_DIR": str(tmp_path / "nothing")}
    for arguments in (["provision"], ["logs"], ["replay-dlq"], ["local", "env"]):
        result = taskctl(*arguments, env=env, cwd=tmp_path)
        assert result.code == 3, arguments
        assert "local cloud is not running" in result.stderr
        assert "taskctl local up" in result.stderr


def test_help_lists_every_command() -> None:
    result = taskctl("--help")
    assert result.code == 0
    for command in ("provision", "publish", "logs", "replay-dlq", "demo", "local"):
        assert command in result.stdout
    for command in ("provision", "publish", "logs", "replay-dlq", "demo"):
        help_text = taskctl(command, "--help")
        assert help_text.code == 0, command
        assert "Example:" in help_text.stdout, command
    for command in ("up", "status", "down", "env"):
        help_text = taskctl("local", command, "--help")
        assert help_text.code == 0, command
        assert "Example:" in help_text.stdout, command


def test_readme_names_every_command() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for command in (
        "provision",
        "publish",
        "logs",
        "replay-dlq",
        "demo",
        "local up",
        "local status",
        "local down",
        "local env",
    ):
        assert f"taskctl {command}" in readme, command


def test_unknown_option_exits_2(tmp_path: Path) -> None:
    result = taskctl("publish", "--no-such-flag", cwd=tmp_path)
    assert result.code == 2
    assert "No such option" in result.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    env = {"TASKCTL_STATE_DIR": str(tmp_path / "nothing")}
    plain = taskctl("logs", env=env, cwd=tmp_path)
    assert "Traceback" not in plain.stderr
    debug = taskctl("--debug", "logs", env=env, cwd=tmp_path)
    assert debug.code == 3
    assert "Traceback" in debug.stderr


def test_local_upload_creates_bucket(
    local_cloud: RuntimeInfo, tmp_path: Path, unique: str
) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.storage import Client

    env = {"TASKCTL_STATE_DIR": local_cloud.state_dir}
    image = Path(__file__).resolve().parents[2] / "examples" / "images" / "harbour.jpg"
    url = f"gs://upload-{unique}/uploads/harbour.jpg"
    result = taskctl(
        "--json", "local", "upload", str(image), url, env=env, cwd=tmp_path
    )
    assert result.code == 0, result.stderr
    uploaded = result.json()
    assert uploaded["bucket_created"] is True
    assert uploaded["content_type"] == "image/jpeg"

    storage = Client(
        project="taskctl-local",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": local_cloud.storage_endpoint},
    )
    blob = storage.bucket(f"upload-{unique}").get_blob("uploads/harbour.jpg")
    assert blob is not None
    assert blob.download_as_bytes() == image.read_bytes()

    again = taskctl("--json", "local", "upload", str(image), url, env=env, cwd=tmp_path)
    assert again.json()["bucket_created"] is False


def test_local_upload_rejects_bad_input(
    local_cloud: RuntimeInfo, tmp_path: Path
) -> None:
    env = {"TASKCTL_STATE_DIR": local_cloud.state_dir}
    bad_url = taskctl(
        "local", "upload", __file__, "s3://bucket/key", env=env, cwd=tmp_path
    )
    assert bad_url.code == 2
    assert "invalid Cloud Storage URL 's3://bucket/key'" in bad_url.stderr
    missing = taskctl(
        "local",
        "upload",
        str(tmp_path / "absent.jpg"),
        "gs://bucket-x/a.jpg",
        env=env,
        cwd=tmp_path,
    )
    assert missing.code == 3
    assert "not found" in missing.stderr


def test_stale_runtime_file_never_signals_other_process(tmp_path: Path) -> None:
    import json
    import subprocess

    state = tmp_path / "state"
    state.mkdir()
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (state / "runtime.json").write_text(
            json.dumps(
                {
                    "pid": stranger.pid,
                    "host": "127.0.0.1",
                    "grpc_port": 1,
                    "http_port": 1,
                    "storage_port": 1,
                    "state_dir": str(state),
                    "started_at": 0,
                }
            )
        )
        env = {"TASKCTL_STATE_DIR": str(state)}
        assert taskctl("local", "status", env=env, cwd=tmp_path).code == 3
        assert taskctl("local", "down", env=env, cwd=tmp_path).code == 3
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "not-a-dir"
    target.write_text("")
    result = taskctl(
        "local", "up", "--detach", "--state-dir", str(target), cwd=tmp_path
    )
    assert result.code == 2
    assert "is a file, not a directory" in result.stderr
