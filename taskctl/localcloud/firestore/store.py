"""Firestore documents in SQLite, one row per document.

``fields`` holds a serialized ``google.firestore.v1.MapValue``; times are whole
microseconds since the epoch, the precision Firestore keeps. Each commit gets a
time later than every earlier commit, so an ``update_time`` identifies one
version of a document, which preconditions and transactions rely on.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.cloud.firestore_v1.types import document as document_types
from google.protobuf import timestamp_pb2

from taskctl.localcloud.db import Database

MapValue = document_types.MapValue.pb()
DocumentPb = document_types.Document.pb()

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    name TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    collection_id TEXT NOT NULL,
    fields BLOB NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_collection
    ON documents (parent, collection_id, name);
CREATE INDEX IF NOT EXISTS documents_group ON documents (collection_id, name);
"""


def timestamp(microseconds: int) -> Any:
    return timestamp_pb2.Timestamp(
        seconds=microseconds // 1_000_000, nanos=microseconds % 1_000_000 * 1000
    )


def microseconds(stamp: Any) -> int:
    return int(stamp.seconds) * 1_000_000 + int(stamp.nanos) // 1000


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """Return a half-open range of names that start with ``prefix + "/"``."""
    # "0" is the character after "/", so every name below prefix + "0" and at or
    # above prefix + "/" starts with prefix + "/".
    return f"{prefix}/", f"{prefix}0"


@dataclass
class StoredDocument:
    name: str
    fields: Any  # a google.firestore.v1.MapValue
    create_time: int
    update_time: int

    def to_pb(self, mask: Any | None = None) -> Any:
        """Return the ``google.firestore.v1.Document``, its fields under ``mask``."""
        fields = self.fields if mask is None else mask(self.fields)
        return DocumentPb(
            name=self.name,
            fields=fields.fields,
            create_time=timestamp(self.create_time),
            update_time=timestamp(self.update_time),
        )


def _from_row(row: sqlite3.Row) -> StoredDocument:
    return StoredDocument(
        name=row["name"],
        fields=MapValue.FromString(row["fields"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


class DocumentStore:
    """The documents of every project and database in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        self.db.migrate(SCHEMA)
        self._clock_lock = threading.Lock()
        rows = self.db.query("SELECT MAX(update_time) AS latest FROM documents")
        self._last_commit = int(rows[0]["latest"] or 0)

    def close(self) -> None:
        self.db.close()

    def next_commit_time(self) -> int:
        """Return a commit time later than every earlier one, in microseconds."""
        with self._clock_lock:
            now = time.time_ns() // 1000
            self._last_commit = max(now, self._last_commit + 1)
            return self._last_commit

    def read_time(self) -> int:
        """Return a read time no earlier than the last commit, in microseconds."""
        with self._clock_lock:
            return max(time.time_ns() // 1000, self._last_commit)

    def get(
        self, connection: sqlite3.Connection | None, name: str
    ) -> StoredDocument | None:
        sql = "SELECT * FROM documents WHERE name = ?"
        if connection is None:
            rows = self.db.query(sql, (name,))
        else:
            rows = connection.execute(sql, (name,)).fetchall()
        return _from_row(rows[0]) if rows else None

    def get_many(self, names: Iterable[str]) -> dict[str, StoredDocument]:
        found: dict[str, StoredDocument] = {}
        unique_names = list(dict.fromkeys(names))
        # Chunks stay well under SQLite's limit on bound parameters.
        for start in range(0, len(unique_names), 500):
            chunk = unique_names[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.query(
                f"SELECT * FROM documents WHERE name IN ({marks})", tuple(chunk)
            )
            for row in rows:
                found[row["name"]] = _from_row(row)
        return found

    def put(
        self,
        connection: sqlite3.Connection,
        document: StoredDocument,
        parent: str,
        collection_id: str,
    ) -> None:
        connection.execute(
            "INSERT INTO documents (name, parent, collection_id, fields, create_time,"
            " update_time) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " fields = excluded.fields, create_time = excluded.create_time,"
            " update_time = excluded.update_time",
            (
                document.name,
                parent,
                collection_id,
                document.fields.SerializeToString(deterministic=True),
                document.create_time,
                document.update_time,
            ),
        )

    def delete(self, connection: sqlite3.Connection, name: str) -> None:
        connection.execute("DELETE FROM documents WHERE name = ?", (name,))

    def collection(
        self,
        parent: str,
        collection_id: str | None,
        after: str = "",
        limit: int = -1,
    ) -> list[StoredDocument]:
        """Return the documents directly in ``parent``'s collection, by name.

        ``collection_id=None`` returns the documents of all of its collections;
        ``limit=-1`` returns every one.
        """
        if collection_id is None:
            rows = self.db.query(
                "SELECT * FROM documents WHERE parent = ? AND name > ? ORDER BY name"
                " LIMIT ?",
                (parent, after, limit),
            )
        else:
            rows = self.db.query(
                "SELECT * FROM documents WHERE parent = ? AND collection_id = ?"
                " AND name > ? ORDER BY name LIMIT ?",
                (parent, collection_id, after, limit),
            )
        return [_from_row(row) for row in rows]

    def collection_group(
        self, parent: str, collection_id: str | None
    ) -> list[StoredDocument]:
        """Return every document below ``parent`` in collections ``collection_id``.

        ``collection_id=None`` returns every document below ``parent``.
        """
        low, high = prefix_bounds(parent)
        if collection_id is None:
            rows = self.db.query(
                "SELECT * FROM documents WHERE name >= ? AND name < ?", (low, high)
            )
        else:
            rows = self.db.query(
                "SELECT * FROM documents WHERE collection_id = ? AND name >= ?"
                " AND name < ?",
                (collection_id, low, high),
            )
        return [_from_row(row) for row in rows]

    def names_under(self, prefix: str) -> list[str]:
        """Return the names of all documents below ``prefix``, sorted."""
        low, high = prefix_bounds(prefix)
        rows = self.db.query(
            "SELECT name FROM documents WHERE name >= ? AND name < ? ORDER BY name",
            (low, high),
        )
        return [row["name"] for row in rows]
