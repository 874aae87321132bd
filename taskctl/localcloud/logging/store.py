"""Log entries in SQLite, listed in timestamp order with keyset paging."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.cloud.logging_v2.types import log_entry

from taskctl.localcloud.db import Database
from taskctl.localcloud.logging.query import Filter

LogEntry = log_entry.LogEntry.pb()

# Cloud Logging drops an entry whose insert ID and timestamp repeat an earlier
# one in the same project, and the unique key does the same here.
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    log_name TEXT NOT NULL,
    insert_id TEXT NOT NULL,
    timestamp_ns INTEGER NOT NULL,
    receive_timestamp_ns INTEGER NOT NULL,
    entry BLOB NOT NULL,
    entry_json TEXT NOT NULL,
    UNIQUE (project, insert_id, timestamp_ns)
);
CREATE INDEX IF NOT EXISTS entries_by_timestamp
    ON entries (project, timestamp_ns, insert_id, sequence);
CREATE INDEX IF NOT EXISTS entries_by_receive_timestamp
    ON entries (receive_timestamp_ns);
"""

# Rows read per query while scanning for entries that match a filter.
SCAN_BATCH = 500


@dataclass(frozen=True)
class StoredEntry:
    """An entry as written: its raw LogEntry, JSON form and sort key."""

    project: str
    entry: Any
    data: dict[str, Any]

    @property
    def timestamp_ns(self) -> int:
        return int(self.entry.timestamp.ToNanoseconds())


@dataclass(frozen=True)
class Cursor:
    """The sort key of the last entry on a page: where the next page starts."""

    timestamp_ns: int
    insert_id: str
    sequence: int


class EntryStore:
    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        self.db.migrate(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def insert(self, entries: Sequence[StoredEntry]) -> list[StoredEntry]:
        """Store ``entries`` in one transaction and return the ones that were new."""
        inserted: list[StoredEntry] = []
        with self.db.transaction() as connection:
            for stored in entries:
                entry = stored.entry
                cursor = connection.execute(
                    "INSERT OR IGNORE INTO entries (project, log_name, insert_id,"
                    " timestamp_ns, receive_timestamp_ns, entry, entry_json)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        stored.project,
                        entry.log_name,
                        entry.insert_id,
                        stored.timestamp_ns,
                        entry.receive_timestamp.ToNanoseconds(),
                        entry.SerializeToString(),
                        json.dumps(stored.data, separators=(",", ":")),
                    ),
                )
                if cursor.rowcount == 1:
                    inserted.append(stored)
        return inserted

    def list_entries(
        self,
        projects: Sequence[str],
        entry_filter: Filter,
        *,
        descending: bool,
        page_size: int,
        after: Cursor | None,
    ) -> tuple[list[Any], Cursor | None]:
        """Return a page of up to ``page_size`` matching entries and the next cursor.

        The cursor is None when no matching entry follows the page.
        """
        page: list[Any] = []
        last: Cursor | None = None
        for cursor, row in self._scan(projects, entry_filter, descending, after):
            if not entry_filter.matches(json.loads(row["entry_json"])):
                continue
            if len(page) == page_size:
                return page, last
            page.append(LogEntry.FromString(row["entry"]))
            last = cursor
        return page, None

    def _scan(
        self,
        projects: Sequence[str],
        entry_filter: Filter,
        descending: bool,
        after: Cursor | None,
    ) -> Iterator[tuple[Cursor, sqlite3.Row]]:
        if not projects:
            return
        bounds = entry_filter.timestamp_range()
        direction = "DESC" if descending else "ASC"
        keyset = "<" if descending else ">"
        conditions = [f"project IN ({', '.join('?' for _ in projects)})"]
        base_parameters: list[object] = list(projects)
        if bounds.lower is not None:
            conditions.append("timestamp_ns >= ?")
            base_parameters.append(bounds.lower)
        if bounds.upper is not None:
            conditions.append("timestamp_ns <= ?")
            base_parameters.append(bounds.upper)

        while True:
            parameters = list(base_parameters)
            where = list(conditions)
            if after is not None:
                where.append(f"(timestamp_ns, insert_id, sequence) {keyset} (?, ?, ?)")
                parameters += [after.timestamp_ns, after.insert_id, after.sequence]
            rows = self.db.query(
                "SELECT sequence, insert_id, timestamp_ns, entry, entry_json"
                f" FROM entries WHERE {' AND '.join(where)}"
                f" ORDER BY timestamp_ns {direction}, insert_id {direction},"
                f" sequence {direction} LIMIT {SCAN_BATCH}",
                tuple(parameters),
            )
            for row in rows:
                after = Cursor(row["timestamp_ns"], row["insert_id"], row["sequence"])
                yield after, row
            if len(rows) < SCAN_BATCH:
                return

    def log_names(self, projects: Sequence[str]) -> list[str]:
        """Return the distinct log names with entries in ``projects``, sorted."""
        if not projects:
            return []
        rows = self.db.query(
            "SELECT DISTINCT log_name FROM entries"
            f" WHERE project IN ({', '.join('?' for _ in projects)}) ORDER BY log_name",
            tuple(projects),
        )
        return [row["log_name"] for row in rows]
