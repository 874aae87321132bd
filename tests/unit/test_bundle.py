"""Bundling the worker source into a deterministic zip."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from taskctl import bundle
from taskctl.errors import NotFoundError, UsageError


def make_source(root: Path) -> Path:
    (root / "handlers").mkdir(parents=True)
    (root / "main.py").write_text("def handle_task(event):\n    pass\n")
    (root / "handlers" / "__init__.py").write_text("")
    (root / "requirements.txt").write_text("functions-framework\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (root / "tests").mkdir()
    (root / "tests" / "test_main.py").write_text("")
    (root / ".env").write_text("SECRET=1\n")
    return root


def test_bundle_skips_caches_tests_and_dotfiles(tmp_path: Path) -> None:
    built = bundle.build(make_source(tmp_path / "src"))
    names = zipfile.ZipFile(io.BytesIO(built.archive)).namelist()
    assert names == ["handlers/__init__.py", "main.py", "requirements.txt"]


def test_bundle_is_deterministic(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    first = bundle.build(source)
    (source / "main.py").touch()
    second = bundle.build(source)
    assert first.sha256 == second.sha256
    (source / "main.py").write_text("def handle_task(event):\n    return 1\n")
    assert bundle.build(source).sha256 != first.sha256


def test_bundle_requires_main_py(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(UsageError, match=r"has no main\.py"):
        bundle.build(tmp_path / "src")


def test_bundle_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        bundle.build(tmp_path / "absent")


def test_shipped_worker_bundles() -> None:
    built = bundle.build(bundle.default_source_dir())
    assert "main.py" in built.files
    assert "requirements.txt" in built.files
    assert not any(name.startswith("tests/") for name in built.files)
