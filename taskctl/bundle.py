"""Bundling the worker's source directory into the zip Cloud Functions deploys."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from taskctl.errors import NotFoundError, UsageError
from taskctl.settings import Settings

# A fixed timestamp, so the same files always give the same bytes and hash.
_ZIP_TIMESTAMP = (2020, 1, 1, 0, 0, 0)
_SKIPPED_DIRECTORIES = {
    "__pycache__",
    ".venv",
    "venv",
    ".git",
    ".pytest_cache",
    "tests",
}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}
# Cloud Functions rejects sources over 100 MB (zipped) when uploading.
MAX_ARCHIVE_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class Bundle:
    """A source zip and the SHA-256 of its contents."""

    source_dir: Path
    archive: bytes
    sha256: str
    files: tuple[str, ...]


def default_source_dir() -> Path:
    """Return the worker source shipped beside the taskctl package."""
    return Path(__file__).resolve().parent.parent / "function_src"


def source_dir(settings: Settings) -> Path:
    return (
        Path(settings.function.source)
        if settings.function.source
        else default_source_dir()
    )


def _included(path: Path, root: Path) -> bool:
    relative = path.relative_to(root)
    if any(
        part in _SKIPPED_DIRECTORIES or part.startswith(".") for part in relative.parts
    ):
        return False
    return path.suffix not in _SKIPPED_SUFFIXES


def build(directory: Path) -> Bundle:
    """Zip ``directory`` deterministically; it must contain ``main.py``."""
    if not directory.is_dir():
        raise NotFoundError(
            f"function source directory {directory} not found",
            hint="set function.source in taskctl.toml to the worker's directory",
        )
    if not (directory / "main.py").is_file():
        raise UsageError(
            f"function source {directory} has no main.py",
            hint="the Python runtime loads the entry point from main.py at the root",
        )
    paths = sorted(
        path
        for path in directory.rglob("*")
        if path.is_file() and not path.is_symlink() and _included(path, directory)
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            info = zipfile.ZipInfo(
                path.relative_to(directory).as_posix(), _ZIP_TIMESTAMP
            )
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    if len(data) > MAX_ARCHIVE_BYTES:
        raise UsageError(
            f"function source {directory} zips to {len(data)} bytes, over the "
            f"{MAX_ARCHIVE_BYTES} byte limit",
            hint="remove large files from the source directory",
        )
    names = tuple(path.relative_to(directory).as_posix() for path in paths)
    return Bundle(directory, data, hashlib.sha256(data).hexdigest(), names)
