"""Firestore resource names and field paths: parsing and Google's naming rules."""

from __future__ import annotations

import re
from dataclasses import dataclass

from taskctl.localcloud.errors import invalid_argument

# Limits from Firestore's "Quotas and limits" page (cloud.google.com/firestore/quotas).
# Collection and document IDs and field paths are at most 1,500 bytes each, and
# a document name at most 6 KiB. Subcollections nest at most 100 deep.
MAX_ID_BYTES = 1500
MAX_NAME_BYTES = 6 * 1024
MAX_SUBCOLLECTION_DEPTH = 100
MAX_FIELD_PATH_BYTES = 1500

DATABASE_NAME = re.compile(r"^projects/([^/]+)/databases/([^/]+)$")
# "(default)" or 4 to 63 lowercase letters, digits and hyphens, starting with a
# letter and not ending with a hyphen.
DATABASE_ID = re.compile(r"^(\(default\)|[a-z][a-z0-9-]{2,61}[a-z0-9])$")
RESERVED_ID = re.compile(r"^__.*__$")
SIMPLE_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")

NAME_FIELD = "__name__"

FieldPath = tuple[str, ...]


@dataclass(frozen=True)
class DocumentName:
    """A parsed document name: its database and its collection/document segments."""

    database: str
    segments: tuple[str, ...]

    @property
    def root(self) -> str:
        return f"{self.database}/documents"

    @property
    def name(self) -> str:
        return f"{self.root}/{'/'.join(self.segments)}"

    @property
    def parent(self) -> str:
        """The document root or the parent document's name."""
        if len(self.segments) == 2:
            return self.root
        return f"{self.root}/{'/'.join(self.segments[:-2])}"

    @property
    def collection_id(self) -> str:
        return self.segments[-2]

    @property
    def document_id(self) -> str:
        return self.segments[-1]


def parse_database(name: str) -> str:
    """Validate ``projects/P/databases/D`` and return it unchanged."""
    match = DATABASE_NAME.match(name)
    if match is None:
        raise invalid_argument(
            f'invalid database name "{name}": expected projects/PROJECT/databases/DATABASE'
        )
    if not DATABASE_ID.match(match.group(2)):
        raise invalid_argument(
            f'invalid database ID "{match.group(2)}": use "(default)" or 4 to 63 '
            "lowercase letters, digits and hyphens starting with a letter"
        )
    return name


def _check_id(kind: str, identifier: str, name: str) -> None:
    if not identifier:
        raise invalid_argument(f'{kind} name "{name}" has an empty segment')
    if "/" in identifier:
        raise invalid_argument(f'{kind} ID "{identifier}" must not contain "/"')
    if identifier in (".", ".."):
        raise invalid_argument(f'{kind} ID "{identifier}" in "{name}" is not allowed')
    if RESERVED_ID.match(identifier):
        raise invalid_argument(
            f'{kind} ID "{identifier}" in "{name}" is reserved: IDs matching __.*__ '
            "are not allowed"
        )
    if len(identifier.encode()) > MAX_ID_BYTES:
        raise invalid_argument(
            f'{kind} ID in "{name[:100]}..." is longer than {MAX_ID_BYTES} bytes'
        )


def _split_under_root(name: str, database: str | None) -> tuple[str, list[str]]:
    """Split ``projects/P/databases/D/documents/...`` into the database and segments."""
    parts = name.split("/")
    if len(parts) < 5 or parts[0] != "projects" or parts[2] != "databases":
        raise invalid_argument(
            f'invalid resource name "{name}": expected '
            "projects/PROJECT/databases/DATABASE/documents/..."
        )
    if parts[4] != "documents":
        raise invalid_argument(
            f'invalid resource name "{name}": the segment after the database must be '
            '"documents"'
        )
    found_database = "/".join(parts[:4])
    parse_database(found_database)
    if database is not None and found_database != database:
        raise invalid_argument(
            f'resource name "{name}" is not in the request\'s database "{database}"'
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise invalid_argument(
            f'resource name "{name[:100]}..." is longer than {MAX_NAME_BYTES} bytes'
        )
    return found_database, parts[5:]


def parse_document_name(name: str, database: str | None = None) -> DocumentName:
    """Validate a document name; ``database``, when given, must contain it."""
    found_database, segments = _split_under_root(name, database)
    if not segments or len(segments) % 2 != 0:
        raise invalid_argument(
            f'invalid document name "{name}": a document path needs an even number '
            "of segments (collection ID, document ID, ...)"
        )
    if len(segments) // 2 - 1 > MAX_SUBCOLLECTION_DEPTH:
        raise invalid_argument(
            f'document name "{name[:100]}..." is nested more than '
            f"{MAX_SUBCOLLECTION_DEPTH} subcollections deep"
        )
    for index, segment in enumerate(segments):
        _check_id("collection" if index % 2 == 0 else "document", segment, name)
    return DocumentName(found_database, tuple(segments))


def parse_parent(name: str, database: str | None = None) -> tuple[str, str]:
    """Validate a query or listing parent: the document root or a document.

    Returns the database and the parent's name.
    """
    found_database, segments = _split_under_root(name, database)
    if not segments:
        return found_database, f"{found_database}/documents"
    return found_database, parse_document_name(name, database).name


def check_collection_id(collection_id: str, context: str) -> None:
    _check_id("collection", collection_id, context)


def check_document_id(document_id: str, context: str) -> None:
    _check_id("document", document_id, context)


def parse_field_path(text: str) -> FieldPath:
    """Parse a dotted field path in which backquotes quote a segment.

    ``a.b`` is two segments; ``a.`x.y``` is ``a`` then ``x.y``; inside backquotes
    a backslash escapes the next character.
    """
    if not text:
        raise invalid_argument("invalid field path: it is empty")
    if len(text.encode()) > MAX_FIELD_PATH_BYTES:
        raise invalid_argument(
            f'field path "{text[:100]}..." is longer than {MAX_FIELD_PATH_BYTES} bytes'
        )
    segments: list[str] = []
    index = 0
    while index <= len(text):
        if index < len(text) and text[index] == "`":
            segment, index = _read_quoted(text, index)
        else:
            end = text.find(".", index)
            end = len(text) if end == -1 else end
            segment = text[index:end]
            if not SIMPLE_FIELD_NAME.match(segment):
                raise invalid_argument(
                    f'invalid field path "{text}": segment "{segment}" must be quoted '
                    "with backquotes unless it is letters, digits and underscores "
                    "not starting with a digit"
                )
            index = end
        segments.append(segment)
        if index == len(text):
            break
        if text[index] != ".":
            raise invalid_argument(
                f'invalid field path "{text}": expected "." after a quoted segment'
            )
        index += 1
        if index == len(text):
            raise invalid_argument(f'invalid field path "{text}": it ends with "."')
    return tuple(segments)


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    characters: list[str] = []
    index = start + 1
    while index < len(text):
        character = text[index]
        if character == "\\" and index + 1 < len(text):
            characters.append(text[index + 1])
            index += 2
        elif character == "`":
            if not characters:
                raise invalid_argument(
                    f'invalid field path "{text}": a quoted segment is empty'
                )
            return "".join(characters), index + 1
        else:
            characters.append(character)
            index += 1
    raise invalid_argument(f'invalid field path "{text}": unterminated backquote')


def format_field_path(path: FieldPath) -> str:
    """Render ``path`` the way Firestore writes field paths, quoting where needed."""
    rendered = []
    for segment in path:
        if SIMPLE_FIELD_NAME.match(segment):
            rendered.append(segment)
        else:
            escaped = segment.replace("\\", "\\\\").replace("`", "\\`")
            rendered.append(f"`{escaped}`")
    return ".".join(rendered)
