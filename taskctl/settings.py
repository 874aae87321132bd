"""Settings: named profiles in ``taskctl.toml``, overridden by environment and flags.

Precedence, highest first: command-line flags, ``TASKCTL_*`` environment variables,
the selected profile in the settings file, built-in defaults. Every value is
checked here, before any API call, against the ranges Google enforces.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from taskctl.errors import UsageError

CONFIG_FILE = "taskctl.toml"
LOCAL_PROFILE = "local"
LOCAL_PROJECT = "taskctl-local"
DEFAULT_LOCAL_PORT = 8086

# Pub/Sub topic and subscription IDs: 3-255 characters, starting with a letter, from
# letters, digits and - _ . ~ + %, and not starting with "goog".
RESOURCE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
# Cloud Functions IDs: 4-63 lowercase letters, digits and hyphens, starting with a
# letter and not ending with a hyphen (the local cloud enforces the same rule).
FUNCTION_ID = re.compile(r"^[a-z][a-z0-9-]{2,61}[a-z0-9]$")
PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
MEMORY = re.compile(r"^[1-9][0-9]*(k|M|G|Mi|Gi)$")
RUNTIME = re.compile(r"^python3[0-9]{1,2}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DURATION = re.compile(r"^\s*([0-9]+)\s*(s|m|h|d)?\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}

# Environment variables that Cloud Functions reserves and a function may not set.
RESERVED_ENVIRONMENT = {"K_SERVICE", "K_REVISION", "K_CONFIGURATION", "PORT"}
# Variables taskctl sets on the function from other settings.
MANAGED_ENVIRONMENT = {
    "DEAD_LETTER_TOPIC": "dead_letter_topic",
    "FUNCTION_TIMEOUT_SECONDS": "function.timeout",
}


@dataclass(frozen=True)
class FunctionSettings:
    """The worker's deployment: the Cloud Functions v2 ``Function`` taskctl manages."""

    name: str = "taskctl-worker"
    runtime: str = "python311"
    entry_point: str = "handle_task"
    memory: str = "512Mi"
    timeout: int = 60  # seconds
    max_instances: int = 10
    source: str = ""  # directory; empty means the bundled function_src/
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """One resolved profile."""

    profile: str = LOCAL_PROFILE
    local: bool = True
    project: str = LOCAL_PROJECT
    region: str = "us-central1"
    topic: str = "tasks"
    dead_letter_topic: str = "tasks-dead-letter"
    dead_letter_subscription: str = "tasks-dead-letter-sub"
    max_delivery_attempts: int = 5
    min_backoff: int = 10  # seconds
    max_backoff: int = 600  # seconds
    ack_deadline: int = 60  # seconds
    retention: int = 7 * 86400  # seconds, on the subscription feeding the function
    dead_letter_retention: int = 7 * 86400  # seconds
    max_replays: int = 3
    state_dir: Path = Path(".taskctl")
    port: int = DEFAULT_LOCAL_PORT
    function: FunctionSettings = field(default_factory=FunctionSettings)
    config_path: Path | None = None

    def topic_path(self, topic: str | None = None) -> str:
        return f"projects/{self.project}/topics/{topic or self.topic}"

    @property
    def dead_letter_topic_path(self) -> str:
        return self.topic_path(self.dead_letter_topic)

    @property
    def dead_letter_subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.dead_letter_subscription}"

    @property
    def location_path(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def function_path(self) -> str:
        return f"{self.location_path}/functions/{self.function.name}"


def parse_duration(value: object, setting: str) -> int:
    """Return ``value`` (seconds, or a string such as ``90s``, ``10m``, ``24h``, ``7d``)
    as whole seconds."""
    if isinstance(value, bool):
        raise UsageError(
            f"invalid {setting} {value!r}: expected seconds or e.g. 10m, 24h"
        )
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    match = DURATION.match(str(value))
    if not match:
        raise UsageError(
            f"invalid {setting} {value!r}: expected whole seconds or a number with "
            "s, m, h or d (e.g. 10m, 24h)"
        )
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


_DURATION_SETTINGS = {
    "min_backoff",
    "max_backoff",
    "ack_deadline",
    "retention",
    "dead_letter_retention",
}
_INT_SETTINGS = {"max_delivery_attempts", "max_replays", "port"}
_STR_SETTINGS = {
    "project",
    "region",
    "topic",
    "dead_letter_topic",
    "dead_letter_subscription",
}
_FUNCTION_INT = {"max_instances"}
_FUNCTION_STR = {"name", "runtime", "entry_point", "memory", "source"}


_WHOLE_NUMBER = re.compile(r"^[+-]?[0-9]+$")


def _as_int(value: object, setting: str) -> int:
    if isinstance(value, bool):
        raise UsageError(f"invalid {setting} {value!r}: expected a whole number")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    # int() would also take "1_0" and non-ASCII digits.
    if not _WHOLE_NUMBER.match(text):
        raise UsageError(f"invalid {setting} {value!r}: expected a whole number")
    return int(text)


def _as_str(value: object, setting: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"invalid {setting} {value!r}: expected a non-empty string")
    return value.strip()


def _coerce(values: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Turn raw profile values into typed keyword arguments for :class:`Settings`."""
    known = {item.name for item in fields(Settings)} - {"profile", "config_path"}
    result: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise UsageError(
                f"unknown setting {key!r} in {origin}",
                hint=f"known settings: {', '.join(sorted(known))}",
            )
        if key in _DURATION_SETTINGS:
            result[key] = parse_duration(value, key)
        elif key in _INT_SETTINGS:
            result[key] = _as_int(value, key)
        elif key in _STR_SETTINGS:
            result[key] = _as_str(value, key)
        elif key == "local":
            if not isinstance(value, bool):
                raise UsageError(
                    f"invalid local {value!r} in {origin}: expected true or false"
                )
            result[key] = value
        elif key == "state_dir":
            result[key] = (
                value if isinstance(value, Path) else Path(_as_str(value, key))
            )
        elif key == "function":
            if not isinstance(value, Mapping):
                raise UsageError(
                    f"invalid function settings in {origin}: expected a table"
                )
            result[key] = _coerce_function(value, origin)
    return result


def _coerce_function(values: Mapping[str, Any], origin: str) -> dict[str, Any]:
    known = {item.name for item in fields(FunctionSettings)}
    result: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise UsageError(
                f"unknown setting function.{key} in {origin}",
                hint=f"known function settings: {', '.join(sorted(known))}",
            )
        setting = f"function.{key}"
        if key == "timeout":
            result[key] = parse_duration(value, setting)
        elif key in _FUNCTION_INT:
            result[key] = _as_int(value, setting)
        elif key in _FUNCTION_STR:
            result[key] = (
                value if key == "source" and value == "" else _as_str(value, setting)
            )
        elif key == "environment":
            if not isinstance(value, Mapping):
                raise UsageError(f"invalid {setting} in {origin}: expected a table")
            for name, item in value.items():
                if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                    raise UsageError(
                        f"invalid {setting}.{name} in {origin}: expected a string or a "
                        f"number, not {type(item).__name__}"
                    )
            result[key] = {str(name): str(item) for name, item in value.items()}
    return result


# TASKCTL_* variables that are not settings of a profile.
_OTHER_VARIABLES = {"TASKCTL_CONFIG", "TASKCTL_PROFILE"}


def _known_variables() -> set[str]:
    names = {
        f"TASKCTL_{item.name.upper()}"
        for item in fields(Settings)
        if item.name not in ("function", "profile", "config_path")
    }
    names |= {
        f"TASKCTL_FUNCTION_{item.name.upper()}"
        for item in fields(FunctionSettings)
        if item.name != "environment"
    }
    return names | _OTHER_VARIABLES


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    known = _known_variables()
    unknown = sorted(
        name for name in environ if name.startswith("TASKCTL_") and name not in known
    )
    if unknown:
        raise UsageError(
            f"unknown environment variable {unknown[0]}",
            hint=f"taskctl reads {', '.join(sorted(known))}",
        )
    values: dict[str, Any] = {}
    function_values: dict[str, Any] = {}
    for item in fields(Settings):
        variable = f"TASKCTL_{item.name.upper()}"
        if (
            item.name in ("function", "profile", "config_path")
            or variable not in environ
        ):
            continue
        raw: Any = environ[variable]
        if item.name == "local":
            flag = raw.strip().lower()
            if flag not in ("1", "true", "yes", "0", "false", "no"):
                raise UsageError(f"invalid {variable} {raw!r}: expected true or false")
            raw = flag in ("1", "true", "yes")
        values[item.name] = raw
    for item in fields(FunctionSettings):
        variable = f"TASKCTL_FUNCTION_{item.name.upper()}"
        if item.name != "environment" and variable in environ:
            function_values[item.name] = environ[variable]
    if function_values:
        values["function"] = function_values
    return values


def _coerce_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Coerce TASKCTL_* overrides, naming the variable when a value is invalid."""
    raw = _environment_overrides(environ)
    try:
        return _coerce(raw, "the environment")
    except UsageError as error:
        variables = [f"TASKCTL_{key.upper()}" for key in raw if key != "function"] + [
            f"TASKCTL_FUNCTION_{key.upper()}" for key in raw.get("function", {})
        ]
        raise UsageError(
            f"{error.message} (from the environment: {', '.join(variables)})",
            hint=error.hint,
        ) from None


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key == "function" and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def find_config(start: Path) -> Path | None:
    """Return the nearest ``taskctl.toml`` in ``start`` or a parent directory."""
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(
            f"settings file {path} not found", hint="check --config"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"invalid TOML in {path}: {error}") from None


def load(
    *,
    config_path: Path | None = None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Resolve the settings of one profile and validate them."""
    environ = os.environ if environ is None else environ
    if config_path is None and environ.get("TASKCTL_CONFIG"):
        config_path = Path(environ["TASKCTL_CONFIG"])
    if config_path is None:
        config_path = find_config(cwd or Path.cwd())
    document = read_config(config_path) if config_path else {}

    profiles = document.get("profiles", {})
    if not isinstance(profiles, Mapping):
        raise UsageError(f"invalid [profiles] in {config_path}: expected tables")
    unknown_top = set(document) - {"profiles", "default_profile"}
    if unknown_top:
        raise UsageError(
            f"unknown top-level key {sorted(unknown_top)[0]!r} in {config_path}",
            hint="settings belong under [profiles.NAME]",
        )
    default_profile = document.get("default_profile")
    if default_profile is not None and not isinstance(default_profile, str):
        raise UsageError(
            f"invalid default_profile {default_profile!r} in {config_path}: expected "
            "a profile name"
        )
    name = profile or environ.get("TASKCTL_PROFILE") or default_profile
    name = name or LOCAL_PROFILE
    if name not in profiles and name != LOCAL_PROFILE:
        found = ", ".join(sorted(profiles)) or "none"
        raise UsageError(
            f"profile {name!r} not found in {config_path or 'any taskctl.toml'} "
            f"(found: {found})",
            hint="add [profiles." + name + "] or pick another with --profile",
        )
    raw_profile = profiles.get(name, {})
    if not isinstance(raw_profile, Mapping):
        raise UsageError(
            f"invalid [profiles.{name}] in {config_path}: expected a table"
        )

    origin = f"[profiles.{name}] of {config_path}"
    values = _coerce(raw_profile, origin)
    values = _merge(values, _coerce_environment(environ))
    values = _merge(values, _coerce(dict(overrides or {}), "the command line"))

    is_local = values.get("local", name == LOCAL_PROFILE or "project" not in values)
    values["local"] = is_local
    function_values = values.pop("function", {})
    settings = Settings(
        profile=name,
        config_path=config_path,
        function=FunctionSettings(**function_values),
        **values,
    )
    if config_path is not None and not settings.state_dir.is_absolute():
        settings = replace(settings, state_dir=config_path.parent / settings.state_dir)
    if config_path is not None and settings.function.source:
        source = Path(settings.function.source)
        if not source.is_absolute():
            source = config_path.parent / source
        settings = replace(
            settings, function=replace(settings.function, source=str(source))
        )
    validate(settings)
    return settings


def format_duration(seconds: int) -> str:
    """Return ``seconds`` in the largest unit that divides it: 600 -> 10m."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _check_range(name: str, value: int, low: int, high: int, unit: str = "") -> None:
    if low <= value <= high:
        return
    if unit == "s":
        shown, low_text, high_text = (
            format_duration(value) if value >= 0 else f"{value}s",
            format_duration(low),
            format_duration(high),
        )
        raise UsageError(
            f"{name} is {shown}, outside the allowed range {low_text} to {high_text}",
            hint=f"set {name} between {low_text} and {high_text}",
        )
    raise UsageError(
        f"{name} is {value}, outside the allowed range {low} to {high}",
        hint=f"set {name} between {low} and {high}",
    )


def _check_id(name: str, value: str, pattern: re.Pattern[str], rule: str) -> None:
    if not pattern.match(value) or value.lower().startswith("goog"):
        raise UsageError(f"invalid {name} {value!r}: {rule}")


def validate(settings: Settings) -> None:
    """Raise :class:`UsageError` naming the first setting outside Google's limits."""
    resource_rule = (
        "3-255 characters, starting with a letter, from letters, digits and - _ . ~ + %, "
        "not starting with 'goog'"
    )
    _check_id(
        "project",
        settings.project,
        PROJECT_ID,
        "6-30 lowercase letters, digits and hyphens, starting with a letter",
    )
    if not REGION.match(settings.region):
        raise UsageError(
            f"invalid region {settings.region!r}: expected e.g. us-central1"
        )
    for name in ("topic", "dead_letter_topic", "dead_letter_subscription"):
        _check_id(name, getattr(settings, name), RESOURCE_ID, resource_rule)
    if settings.topic == settings.dead_letter_topic:
        raise UsageError(
            f"topic and dead_letter_topic are both {settings.topic!r}",
            hint="dead letters must go to a topic of their own",
        )

    _check_range("max_delivery_attempts", settings.max_delivery_attempts, 5, 100)
    _check_range("min_backoff", settings.min_backoff, 0, 600, "s")
    _check_range("max_backoff", settings.max_backoff, 0, 600, "s")
    if settings.min_backoff > settings.max_backoff:
        raise UsageError(
            f"min_backoff ({settings.min_backoff} s) is above max_backoff "
            f"({settings.max_backoff} s)",
            hint="set min_backoff at or below max_backoff",
        )
    _check_range("ack_deadline", settings.ack_deadline, 10, 600, "s")
    _check_range("retention", settings.retention, 600, 31 * 86400, "s")
    _check_range(
        "dead_letter_retention", settings.dead_letter_retention, 600, 31 * 86400, "s"
    )
    _check_range("max_replays", settings.max_replays, 1, 1000)
    _check_range("port", settings.port, 0, 65535)

    function = settings.function
    _check_id(
        "function.name",
        function.name,
        FUNCTION_ID,
        "4-63 lowercase letters, digits and hyphens, starting with a letter, "
        "not ending with a hyphen",
    )
    if not RUNTIME.match(function.runtime):
        raise UsageError(
            f"invalid function.runtime {function.runtime!r}: expected e.g. python312"
        )
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", function.entry_point):
        raise UsageError(
            f"invalid function.entry_point {function.entry_point!r}: expected a Python name"
        )
    if not MEMORY.match(function.memory):
        raise UsageError(
            f"invalid function.memory {function.memory!r}: expected a number with a unit "
            "k, M, G, Mi or Gi (e.g. 512Mi)"
        )
    # Event-driven (Pub/Sub-triggered) functions may run for at most 540 s.
    _check_range("function.timeout", function.timeout, 1, 540, "s")
    _check_range("function.max_instances", function.max_instances, 1, 1000)
    for name in function.environment:
        if name in MANAGED_ENVIRONMENT:
            raise UsageError(
                f"function.environment sets {name}, which taskctl sets from "
                f"{MANAGED_ENVIRONMENT[name]}",
                hint=f"remove it and set {MANAGED_ENVIRONMENT[name]} instead",
            )
        if not ENV_NAME.match(name) or name in RESERVED_ENVIRONMENT:
            raise UsageError(
                f"invalid function.environment name {name!r}",
                hint="use letters, digits and underscores; K_SERVICE, K_REVISION, "
                "K_CONFIGURATION and PORT are reserved",
            )
