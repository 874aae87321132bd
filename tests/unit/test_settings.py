"""Settings: profiles, precedence and the ranges checked before any API call."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskctl import settings
from taskctl.errors import ExitCode, UsageError


def write_config(directory: Path, text: str) -> Path:
    path = directory / "taskctl.toml"
    path.write_text(text)
    return path


def test_defaults_use_local_profile(tmp_path: Path) -> None:
    loaded = settings.load(environ={}, cwd=tmp_path)
    assert loaded.profile == "local"
    assert loaded.local is True
    assert loaded.project == settings.LOCAL_PROJECT
    assert loaded.max_delivery_attempts == 5


def test_profile_with_project_is_gcp(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        '[profiles.prod]\nproject = "my-project"\nregion = "europe-west1"\n',
    )
    loaded = settings.load(config_path=config, profile="prod", environ={})
    assert loaded.local is False
    assert loaded.project == "my-project"
    assert loaded.function_path == (
        "projects/my-project/locations/europe-west1/functions/taskctl-worker"
    )


def test_default_profile_from_file(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        'default_profile = "staging"\n[profiles.staging]\nproject = "staging-proj"\n',
    )
    assert settings.load(environ={}, cwd=tmp_path).profile == "staging"


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[profiles.local]\nmax_delivery_attempts = 7\n")
    from_file = settings.load(config_path=config, environ={})
    from_env = settings.load(
        config_path=config, environ={"TASKCTL_MAX_DELIVERY_ATTEMPTS": "9"}
    )
    from_flag = settings.load(
        config_path=config,
        environ={"TASKCTL_MAX_DELIVERY_ATTEMPTS": "9"},
        overrides={"max_delivery_attempts": 11},
    )
    assert from_file.max_delivery_attempts == 7
    assert from_env.max_delivery_attempts == 9
    assert from_flag.max_delivery_attempts == 11


def test_function_settings_from_env(tmp_path: Path) -> None:
    loaded = settings.load(
        environ={"TASKCTL_FUNCTION_TIMEOUT": "2m", "TASKCTL_FUNCTION_MEMORY": "1Gi"},
        cwd=tmp_path,
    )
    assert loaded.function.timeout == 120
    assert loaded.function.memory == "1Gi"


def test_durations_accept_units() -> None:
    assert settings.parse_duration("90s", "x") == 90
    assert settings.parse_duration("10m", "x") == 600
    assert settings.parse_duration("24h", "x") == 86400
    assert settings.parse_duration("7d", "x") == 604800
    assert settings.parse_duration(15, "x") == 15
    with pytest.raises(UsageError, match="invalid x"):
        settings.parse_duration("ten minutes", "x")


def test_relative_paths_follow_config_file(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        '[profiles.local]\nstate_dir = "state"\n[profiles.local.function]\nsource = "worker"\n',
    )
    loaded = settings.load(config_path=config, environ={})
    assert loaded.state_dir == tmp_path / "state"
    assert loaded.function.source == str(tmp_path / "worker")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"max_delivery_attempts": 4},
            "max_delivery_attempts is 4, outside the allowed range 5 to 100",
        ),
        (
            {"max_delivery_attempts": 101},
            "max_delivery_attempts is 101, outside the allowed range 5 to 100",
        ),
        (
            {"min_backoff": -1},
            "min_backoff is -1s, outside the allowed range 0s to 10m",
        ),
        (
            {"max_backoff": 601},
            "max_backoff is 601s, outside the allowed range 0s to 10m",
        ),
        (
            {"min_backoff": 30, "max_backoff": 20},
            "min_backoff (30 s) is above max_backoff (20 s)",
        ),
        (
            {"ack_deadline": 9},
            "ack_deadline is 9s, outside the allowed range 10s to 10m",
        ),
        (
            {"ack_deadline": 601},
            "ack_deadline is 601s, outside the allowed range 10s to 10m",
        ),
        (
            {"function": {"timeout": 541}},
            "function.timeout is 541s, outside the allowed range 1s to 9m",
        ),
        (
            {"retention": 599},
            "retention is 599s, outside the allowed range 10m to 31d",
        ),
        ({"function": {"memory": "512MB"}}, "invalid function.memory '512MB'"),
        ({"function": {"name": "Bad_Name"}}, "invalid function.name 'Bad_Name'"),
        ({"topic": "goog-tasks"}, "invalid topic 'goog-tasks'"),
        ({"topic": "ab"}, "invalid topic 'ab'"),
        (
            {"dead_letter_topic": "tasks"},
            "topic and dead_letter_topic are both 'tasks'",
        ),
        (
            {"function": {"environment": {"PORT": "1"}}},
            "invalid function.environment name 'PORT'",
        ),
    ],
)
def test_out_of_range_values_rejected(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        settings.load(environ={}, cwd=tmp_path, overrides=overrides)
    assert message in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE


def test_unknown_setting_rejected(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[profiles.local]\nmax_attempts = 5\n")
    with pytest.raises(UsageError, match="unknown setting 'max_attempts'"):
        settings.load(config_path=config, environ={})


def test_unknown_profile_lists_found(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[profiles.prod]\nproject = "my-project"\n')
    with pytest.raises(
        UsageError, match=r"profile 'staging' not found .*\(found: prod\)"
    ):
        settings.load(config_path=config, profile="staging", environ={})


def test_invalid_toml_rejected(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[profiles.local\n")
    with pytest.raises(UsageError, match="invalid TOML"):
        settings.load(config_path=config, environ={})


def test_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "taskctl.toml"
    for profile in ("local", "prod"):
        loaded = settings.load(config_path=example, profile=profile, environ={})
        assert loaded.profile == profile


def test_unknown_environment_variable_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match="unknown environment variable TASKCTL_MAX_ATTEMPTS"
    ):
        settings.load(environ={"TASKCTL_MAX_ATTEMPTS": "5"}, cwd=tmp_path)


def test_invalid_local_flag_rejected(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid TASKCTL_LOCAL 'maybe'"):
        settings.load(environ={"TASKCTL_LOCAL": "maybe"}, cwd=tmp_path)


def test_format_duration_units() -> None:
    assert settings.format_duration(600) == "10m"
    assert settings.format_duration(90) == "90s"
    assert settings.format_duration(86400 * 31) == "31d"
    assert settings.format_duration(0) == "0s"


def test_environment_error_names_variable(tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match=r"\(from the environment: TASKCTL_MAX_DELIVERY_ATTEMPTS\)"
    ):
        settings.load(environ={"TASKCTL_MAX_DELIVERY_ATTEMPTS": "abc"}, cwd=tmp_path)


@pytest.mark.parametrize("value", ["1_0", "\u0661\u0660", "1.5", ""])
def test_whole_numbers_are_ascii_digits(tmp_path: Path, value: str) -> None:
    with pytest.raises(UsageError, match="expected a whole number"):
        settings.load(environ={"TASKCTL_MAX_DELIVERY_ATTEMPTS": value}, cwd=tmp_path)


def test_default_profile_must_be_a_name(tmp_path: Path) -> None:
    write_config(tmp_path, "default_profile = 5\n")
    with pytest.raises(UsageError, match="invalid default_profile 5"):
        settings.load(environ={}, cwd=tmp_path)


def test_environment_values_must_be_scalars(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "[profiles.local.function.environment]\nA = 1\nB = [1, 2]\n"
    )
    with pytest.raises(
        UsageError, match=r"invalid function\.environment\.B .*not list"
    ):
        settings.load(config_path=config, environ={})
