"""The object every command receives: how to load settings, and the renderer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from taskctl import settings as settings_module
from taskctl.gcp.clients import Clients
from taskctl.render import Renderer
from taskctl.settings import Settings


@dataclass
class AppContext:
    config_path: Path | None = None
    profile: str | None = None
    global_overrides: dict[str, Any] = field(default_factory=dict)
    json_output: bool = False
    debug: bool = False
    renderer: Renderer = field(default_factory=Renderer)

    def settings(self, **overrides: Any) -> Settings:
        """Load the profile, with the command's flags (None means not given) on top."""
        given = {key: value for key, value in overrides.items() if value is not None}
        function = {
            key.removeprefix("function_"): given.pop(key)
            for key in list(given)
            if key.startswith("function_")
        }
        if function:
            given["function"] = function
        return settings_module.load(
            config_path=self.config_path,
            profile=self.profile,
            overrides={**self.global_overrides, **given},
        )

    def clients(self, settings: Settings) -> Clients:
        return Clients(settings)


# Accepted after any command as well as before it: `taskctl logs --json`.
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print results as JSON for scripts.")
]


def app_context(ctx: typer.Context, json_output: bool = False) -> AppContext:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppContext):
        obj = AppContext()
        ctx.find_root().obj = obj
    if json_output:
        obj.json_output = True
        obj.renderer.json_output = True
    return obj
