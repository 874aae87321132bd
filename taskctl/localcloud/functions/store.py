"""Functions and their Eventarc triggers in ``functions.sqlite3``."""

from __future__ import annotations

import base64
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

from google.cloud.eventarc_v1.types import trigger as trigger_types
from google.cloud.functions_v2.types import functions as types

from taskctl.localcloud.db import Database
from taskctl.localcloud.errors import already_exists, invalid_argument, not_found

SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    body BLOB NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    revision_name TEXT NOT NULL DEFAULT '',
    source_dir TEXT NOT NULL DEFAULT '',
    port INTEGER NOT NULL DEFAULT 0,
    subscription TEXT NOT NULL DEFAULT '',
    operation TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS triggers (
    name TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    function_name TEXT NOT NULL,
    body BLOB NOT NULL
);
"""

Function = types.Function.pb()
Trigger = trigger_types.Trigger.pb()


@dataclass(frozen=True)
class FunctionRecord:
    """A function as stored, with what the local cloud needs to run it.

    ``revision`` counts deployed revisions. ``source_dir``, ``port`` and
    ``subscription`` describe the revision that serves now, and are empty when
    none does. ``operation`` names the operation changing the function, if any.
    """

    name: str
    parent: str
    function: Any
    revision: int = 0
    revision_name: str = ""
    source_dir: str = ""
    port: int = 0
    subscription: str = ""
    operation: str = ""

    def evolve(self, **changes: Any) -> FunctionRecord:
        return replace(self, **changes)


def _record(row: sqlite3.Row) -> FunctionRecord:
    return FunctionRecord(
        name=row["name"],
        parent=row["parent"],
        function=Function.FromString(row["body"]),
        revision=row["revision"],
        revision_name=row["revision_name"],
        source_dir=row["source_dir"],
        port=row["port"],
        subscription=row["subscription"],
        operation=row["operation"],
    )


def encode_page_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def decode_page_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid_argument(f"invalid page_token {token!r}") from error


class FunctionStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        db.migrate(SCHEMA)

    def get(self, name: str) -> FunctionRecord | None:
        rows = self._db.query("SELECT * FROM functions WHERE name = ?", (name,))
        return _record(rows[0]) if rows else None

    def require(self, name: str) -> FunctionRecord:
        record = self.get(name)
        if record is None:
            raise not_found(f"function {name!r} not found")
        return record

    def insert(self, record: FunctionRecord) -> None:
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO functions (name, parent, body, operation) "
                    "VALUES (?, ?, ?, ?)",
                    (
                        record.name,
                        record.parent,
                        record.function.SerializeToString(),
                        record.operation,
                    ),
                )
        except sqlite3.IntegrityError as error:
            raise already_exists(f"function {record.name!r} already exists") from error

    def save(self, record: FunctionRecord) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE functions SET body = ?, revision = ?, revision_name = ?, "
                "source_dir = ?, port = ?, subscription = ?, operation = ? "
                "WHERE name = ?",
                (
                    record.function.SerializeToString(),
                    record.revision,
                    record.revision_name,
                    record.source_dir,
                    record.port,
                    record.subscription,
                    record.operation,
                    record.name,
                ),
            )

    def delete(self, name: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM triggers WHERE function_name = ?", (name,))
            conn.execute("DELETE FROM functions WHERE name = ?", (name,))

    def all(self) -> list[FunctionRecord]:
        return [_record(row) for row in self._db.query("SELECT * FROM functions")]

    def page(
        self, project: str, location: str, page_size: int, page_token: str
    ) -> tuple[list[FunctionRecord], str]:
        """Return one page of functions in ``project``, of every location for ``-``."""
        after = decode_page_token(page_token) if page_token else ""
        if location == "-":
            where, parameters = "parent LIKE ?", (f"projects/{project}/locations/%",)
        else:
            where, parameters = (
                "parent = ?",
                (f"projects/{project}/locations/{location}",),
            )
        rows = self._db.query(
            f"SELECT * FROM functions WHERE {where} AND name > ? ORDER BY name LIMIT ?",
            (*parameters, after, page_size + 1),
        )
        records = [_record(row) for row in rows]
        if len(records) <= page_size:
            return records, ""
        records = records[:page_size]
        return records, encode_page_token(records[-1].name)

    def put_trigger(self, trigger: Any, function_name: str) -> None:
        parent = trigger.name.rsplit("/triggers/", 1)[0]
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO triggers (name, parent, function_name, body) "
                "VALUES (?, ?, ?, ?)",
                (trigger.name, parent, function_name, trigger.SerializeToString()),
            )

    def delete_trigger(self, name: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM triggers WHERE name = ?", (name,))

    def triggers_of(self, function_name: str) -> list[Any]:
        rows = self._db.query(
            "SELECT body FROM triggers WHERE function_name = ?", (function_name,)
        )
        return [Trigger.FromString(row["body"]) for row in rows]

    def get_trigger(self, name: str) -> Any:
        rows = self._db.query("SELECT body FROM triggers WHERE name = ?", (name,))
        if not rows:
            raise not_found(f"trigger {name!r} not found")
        return Trigger.FromString(rows[0]["body"])

    def trigger_page(
        self, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Any], str]:
        after = decode_page_token(page_token) if page_token else ""
        rows = self._db.query(
            "SELECT name, body FROM triggers WHERE parent = ? AND name > ? "
            "ORDER BY name LIMIT ?",
            (parent, after, page_size + 1),
        )
        triggers = [Trigger.FromString(row["body"]) for row in rows]
        if len(triggers) <= page_size:
            return triggers, ""
        triggers = triggers[:page_size]
        return triggers, encode_page_token(triggers[-1].name)
