"""Function source: the upload URL, unpacking the zip and checking requirements.

The local cloud runs every function with its own interpreter and installs
nothing, so a deploy fails when ``requirements.txt`` names a distribution that
interpreter's environment lacks.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import stat
import zipfile
from dataclasses import dataclass
from http import HTTPStatus
from importlib import metadata
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement

from taskctl.localcloud.db import Database
from taskctl.localcloud.errors import invalid_argument
from taskctl.localcloud.resourcemanager import project_number

log = logging.getLogger("taskctl.localcloud.functions")

SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    token TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    object TEXT NOT NULL,
    uploaded INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS uploads_by_object ON uploads (bucket, object);
"""

UPLOAD_PATH_PREFIX = "/upload/"
# Cloud Functions limits a function's unpacked source to 500 MB; the local cloud
# takes at most 100 MB, which also bounds what one zip can write to disk.
MAX_UNPACKED_BYTES = 100 * 1024 * 1024
_COPY_CHUNK_BYTES = 1024 * 1024
# The local cloud's own limit on a zip entry's name. It keeps the unpacked path,
# state directory included, well under Linux's PATH_MAX of 4096 bytes.
MAX_ENTRY_NAME_BYTES = 1024
# Linux's NAME_MAX: the maximum length in bytes of one path component.
MAX_NAME_COMPONENT_BYTES = 255


class SourceError(Exception):
    """A function's source cannot be deployed, for the reason in the message."""


@dataclass(frozen=True)
class Upload:
    token: str
    bucket: str
    object: str


class UploadStore:
    """Uploaded source zips, kept under ``root`` and named by upload token."""

    def __init__(self, db: Database, root: Path) -> None:
        self._db = db
        self._root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        db.migrate(SCHEMA)

    def create(self, project: str, location: str) -> Upload:
        token = secrets.token_hex(16)
        # Named like the bucket and object GenerateUploadUrl returns in Google Cloud.
        upload = Upload(
            token=token,
            bucket=f"gcf-v2-uploads-{project_number(project)}-{location}",
            object=f"{token}.zip",
        )
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO uploads (token, bucket, object) VALUES (?, ?, ?)",
                (upload.token, upload.bucket, upload.object),
            )
        return upload

    def receive(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        """Store the body of a PUT to an upload URL (an ``HttpServer`` handler)."""
        token = path.removeprefix(UPLOAD_PATH_PREFIX).split("?", 1)[0]
        rows = self._db.query("SELECT token FROM uploads WHERE token = ?", (token,))
        if not rows:
            return HTTPStatus.NOT_FOUND, "text/plain", b"no such upload URL\n"

        # Google's signed upload URL is signed for this content type, so any other
        # one fails the signature check.
        content_type = headers.get("content-type", "")
        if content_type != "application/zip":
            log.warning(
                "upload token=%s rejected: content-type %r", token, content_type
            )
            message = (
                f"upload rejected: content-type must be 'application/zip', "
                f"got {content_type!r}\n"
            )
            return HTTPStatus.FORBIDDEN, "text/plain", message.encode()

        temporary = self._root / f"{token}.zip.tmp"
        temporary.write_bytes(body)
        temporary.replace(self.path_of(token))
        with self._db.transaction() as conn:
            conn.execute("UPDATE uploads SET uploaded = 1 WHERE token = ?", (token,))
        log.info("upload token=%s received %s bytes", token, len(body))
        return HTTPStatus.OK, "text/plain", b""

    def path_of(self, token: str) -> Path:
        return self._root / f"{token}.zip"

    def find(self, bucket: str, object_name: str) -> Path:
        """Return the stored zip of ``gs://bucket/object``; raise if absent."""
        rows = self._db.query(
            "SELECT token, uploaded FROM uploads WHERE bucket = ? AND object = ?",
            (bucket, object_name),
        )
        if not rows:
            raise invalid_argument(
                f"source gs://{bucket}/{object_name} not found; get an upload URL "
                "with GenerateUploadUrl and PUT the zip to it"
            )
        if not rows[0]["uploaded"]:
            raise invalid_argument(
                f"source gs://{bucket}/{object_name} was never uploaded; PUT the zip "
                "to the URL GenerateUploadUrl returned"
            )
        return self.path_of(rows[0]["token"])


def _describe_entry(name: str) -> str:
    """Quote a zip entry name for a message, shortening very long ones."""
    if len(name) <= 200:
        return repr(name)
    return f"{name[:200]!r}... ({len(name)} characters)"


def _checked_member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if not path.parts or path.parts == (".",):
        raise SourceError(
            f"source zip entry {info.filename!r} has an empty name; rebuild the zip "
            "without it"
        )
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise SourceError(f"source zip entry {info.filename!r} has an absolute path")
    if ".." in path.parts:
        raise SourceError(f"source zip entry {info.filename!r} contains '..'")
    name_bytes = len(name.encode())
    if name_bytes > MAX_ENTRY_NAME_BYTES:
        raise SourceError(
            f"source zip entry {_describe_entry(info.filename)} has a name of "
            f"{name_bytes} bytes; the local cloud accepts at most "
            f"{MAX_ENTRY_NAME_BYTES}"
        )
    for part in path.parts:
        if len(part.encode()) > MAX_NAME_COMPONENT_BYTES:
            raise SourceError(
                f"source zip entry {_describe_entry(info.filename)} has a file or "
                f"directory name longer than {MAX_NAME_COMPONENT_BYTES} bytes"
            )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise SourceError(f"source zip entry {info.filename!r} is a symbolic link")
    return path


def _check_no_clashes(archive: zipfile.ZipFile) -> None:
    """Reject a zip where one entry is a file and another needs it as a directory."""
    files: dict[PurePosixPath, str] = {}
    directories: dict[PurePosixPath, str] = {}
    for info in archive.infolist():
        path = _checked_member_path(info)
        if info.is_dir():
            directories.setdefault(path, info.filename)
        else:
            files.setdefault(path, info.filename)
        for parent in path.parents:
            if parent.parts:
                directories.setdefault(parent, info.filename)
    for path, file_entry in files.items():
        directory_entry = directories.get(path)
        if directory_entry is not None:
            raise SourceError(
                f"source zip entry {_describe_entry(file_entry)} is a file, but entry "
                f"{_describe_entry(directory_entry)} needs a directory of that name"
            )


def _too_large() -> SourceError:
    return SourceError(
        f"source zip unpacks to more than {MAX_UNPACKED_BYTES // (1024 * 1024)} MB"
    )


def _extract(archive: zipfile.ZipFile, destination: Path) -> None:
    declared = sum(info.file_size for info in archive.infolist())
    if declared > MAX_UNPACKED_BYTES:
        raise _too_large()

    # Sizes in the zip's headers can lie, so the written bytes are counted too.
    written = 0
    for info in archive.infolist():
        relative = _checked_member_path(info)
        target = destination.joinpath(*relative.parts)
        try:
            written += _extract_member(archive, info, target, written)
        except OSError as error:
            # The file system may still reject a name the checks above accept.
            raise SourceError(
                f"source zip entry {_describe_entry(info.filename)} cannot be "
                f"unpacked: {error.strerror or error}"
            ) from error


def _extract_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int
) -> int:
    """Write one entry to ``target`` and return the number of bytes written."""
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with archive.open(info) as member, target.open("wb") as output:
        while chunk := member.read(_COPY_CHUNK_BYTES):
            size += len(chunk)
            if written + size > MAX_UNPACKED_BYTES:
                raise _too_large()
            output.write(chunk)
    return size


def unpack(zip_path: Path, destination: Path) -> None:
    """Unpack a function's source zip into ``destination`` (which must not exist).

    Raises :class:`SourceError` for entries with empty names, absolute paths,
    ``..``, symbolic links or a file where another entry needs a directory, for an
    entry the file system cannot store, for more than ``MAX_UNPACKED_BYTES`` unpacked, and for a zip
    without ``main.py`` at its root. Nothing is left behind on failure.
    """
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                _check_no_clashes(archive)
                _extract(archive, staging)
        except zipfile.BadZipFile as error:
            raise SourceError(f"source is not a valid zip archive: {error}") from error
        if not (staging / "main.py").is_file():
            raise SourceError(
                "source zip has no main.py at its root; the Python runtime loads "
                "the function from main.py"
            )
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    pending = ""
    pending_number = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            pending_number = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        lines.append((pending_number, pending + raw))
        pending = ""
    if pending:
        lines.append((pending_number, pending))
    return lines


_INCLUDE = re.compile(r"^(?:-r|--requirement)(?:\s+|=|(?=[^\s=]))(?P<file>.+)$")


def _requirement_lines(
    path: Path, root: Path, seen: set[Path]
) -> list[tuple[str, str]]:
    """Return (where, requirement text) for each requirement, following ``-r``.

    ``path`` and ``root`` are resolved paths, and ``path`` lies under ``root``.
    """
    seen.add(path)
    found: list[tuple[str, str]] = []
    for number, line in _logical_lines(path.read_text(errors="replace")):
        where = f"{path.relative_to(root)} line {number}"
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            continue
        include = _INCLUDE.match(text)
        if include is not None:
            included = include.group("file").strip()
            nested = (path.parent / included).resolve()
            if not nested.is_relative_to(root) or not nested.is_file():
                raise SourceError(
                    f"{where}: included file {included!r} not found in the source"
                )
            if nested not in seen:
                found.extend(_requirement_lines(nested, root, seen))
            continue
        if text.startswith("-"):
            # Options such as --index-url or -c only matter to pip.
            continue
        found.append((where, text.split(" --", 1)[0].strip()))
    return found


def check_requirements(source_dir: Path) -> None:
    """Raise :class:`SourceError` unless every requirement is installed here."""
    requirements_file = source_dir / "requirements.txt"
    if not requirements_file.is_file():
        return

    problems: list[str] = []
    root = source_dir.resolve()
    for where, text in _requirement_lines(requirements_file.resolve(), root, set()):
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            raise SourceError(
                f"requirements.txt: {where}: invalid requirement {text!r}: {error}"
            ) from error
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed ({where})")
            continue
        if requirement.specifier and not requirement.specifier.contains(
            installed, prereleases=True
        ):
            problems.append(
                f"{requirement.name} {installed} is installed but {text!r} is "
                f"required ({where})"
            )
    if problems:
        raise SourceError(
            "requirements.txt cannot be met by the local cloud's Python environment, "
            "which installs nothing: "
            + "; ".join(problems)
            + ". Install them into that environment and deploy again"
        )
