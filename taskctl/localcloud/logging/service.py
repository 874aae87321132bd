"""Cloud Logging v2 ``LoggingServiceV2``: write, list and tail log entries."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
from google.cloud.logging_v2.types import log_entry
from google.cloud.logging_v2.types import logging as logging_types

from taskctl.localcloud.errors import ServiceError, invalid_argument
from taskctl.localcloud.logging.container import container_line_entry
from taskctl.localcloud.logging.query import Filter, FilterError, compile_filter
from taskctl.localcloud.logging.store import Cursor, EntryStore, StoredEntry
from taskctl.localcloud.logging.tail import TailHub
from taskctl.localcloud.logging.values import entry_to_dict
from taskctl.localcloud.rpc import Method, add_service

log = logging.getLogger("taskctl.localcloud.logging")

LogEntry = log_entry.LogEntry.pb()
WriteLogEntriesRequest = logging_types.WriteLogEntriesRequest.pb()
WriteLogEntriesResponse = logging_types.WriteLogEntriesResponse.pb()
ListLogEntriesRequest = logging_types.ListLogEntriesRequest.pb()
ListLogEntriesResponse = logging_types.ListLogEntriesResponse.pb()
TailLogEntriesRequest = logging_types.TailLogEntriesRequest.pb()
TailLogEntriesResponse = logging_types.TailLogEntriesResponse.pb()
ListLogsRequest = logging_types.ListLogsRequest.pb()
ListLogsResponse = logging_types.ListLogsResponse.pb()

# Limits from the Logging API reference (ListLogEntriesRequest,
# TailLogEntriesRequest) and the Logging quotas page.
MAX_RESOURCE_NAMES = 100
MAX_FILTER_LENGTH = 20_000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
DEFAULT_BUFFER_WINDOW_SECONDS = 2.0
MAX_BUFFER_WINDOW_SECONDS = 60.0
MAX_ENTRY_BYTES = 256 * 1024
MAX_LOG_ID_LENGTH = 512
MAX_LABEL_KEY_BYTES = 512
MAX_LABEL_VALUE_BYTES = 64 * 1024

ORDER_BY = {"": False, "timestamp asc": False, "timestamp desc": True}
LOG_NAME = re.compile(r"^projects/([^/]+)/logs/([^/]+)$")
LOG_ID_CHARACTERS = re.compile(r"^[A-Za-z0-9/_\-.]+$")
# Resource names a read may name. Log views of a project read that project.
PROJECT_RESOURCE = re.compile(
    r"^projects/([^/]+)(?:/locations/[^/]+/buckets/[^/]+/views/[^/]+)?$"
)
OTHER_RESOURCE = re.compile(r"^(organizations|folders|billingAccounts)/[^/]+$")


class LoggingService:
    """The local Cloud Logging service; entries live in ``logging.sqlite3``."""

    def __init__(self, state_dir: Path) -> None:
        self.store = EntryStore(state_dir / "logging.sqlite3")
        self.tails = TailHub()

    def register(self, server: grpc.Server) -> None:
        add_service(
            server,
            "google.logging.v2.LoggingServiceV2",
            {
                "WriteLogEntries": Method(
                    self.rpc_write_log_entries,
                    WriteLogEntriesRequest,
                    WriteLogEntriesResponse,
                ),
                "ListLogEntries": Method(
                    self.rpc_list_log_entries,
                    ListLogEntriesRequest,
                    ListLogEntriesResponse,
                ),
                "TailLogEntries": Method(
                    self.rpc_tail_log_entries,
                    TailLogEntriesRequest,
                    TailLogEntriesResponse,
                    kind="stream_stream",
                ),
                "ListLogs": Method(
                    self.rpc_list_logs, ListLogsRequest, ListLogsResponse
                ),
            },
        )

    def start(self) -> None:
        log.info("logging service started, state in %s", self.store.db.path)

    def stop(self) -> None:
        self.tails.close()
        self.store.close()
        log.info("logging service stopped")

    # -- in-process API ------------------------------------------------------

    def write_container_line(
        self,
        *,
        project: str,
        service_name: str,
        revision_name: str,
        location: str,
        stream: str,
        line: str,
        timestamp: float,
    ) -> None:
        """Store one stdout or stderr line of a function instance as Cloud Run does."""
        entry = container_line_entry(
            project=project,
            service_name=service_name,
            revision_name=revision_name,
            location=location,
            stream=stream,
            line=line,
            timestamp=timestamp,
        )
        self.write_entries([entry])

    def write_entries(self, entries: list[Any]) -> None:
        """Validate and store complete raw LogEntry messages, or raise ServiceError."""
        prepared = [self._prepare(entry, index) for index, entry in enumerate(entries)]
        self._commit(prepared)

    # -- RPCs ------------------------------------------------------------------

    def rpc_write_log_entries(self, request: Any, context: grpc.ServicerContext) -> Any:
        prepared: list[StoredEntry] = []
        failures: list[str] = []
        for index, original in enumerate(request.entries):
            entry = LogEntry()
            entry.CopyFrom(original)
            _apply_request_defaults(entry, request)
            try:
                prepared.append(self._prepare(entry, index))
            except ServiceError as error:
                failures.append(error.message)

        if failures and not request.partial_success:
            raise invalid_argument("; ".join(failures) + "; no entries were written")
        if not request.dry_run:
            self._commit(prepared)
        if failures:
            raise invalid_argument(
                f"{len(failures)} of {len(request.entries)} entries were not written: "
                + "; ".join(failures)
            )
        return WriteLogEntriesResponse()

    def rpc_list_log_entries(self, request: Any, context: grpc.ServicerContext) -> Any:
        projects = _read_projects(request.resource_names)
        entry_filter = _compile(request.filter)
        order_by = " ".join(request.order_by.lower().split())
        if order_by not in ORDER_BY:
            raise invalid_argument(
                f"invalid order_by {request.order_by!r}; use 'timestamp asc' or "
                "'timestamp desc'"
            )
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise invalid_argument(
                f"invalid page_size {request.page_size}; it must be between 0 and "
                f"{MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
            )
        fingerprint = _request_fingerprint(request)
        after = _decode_page_token(request.page_token, fingerprint)

        page, last = self.store.list_entries(
            projects,
            entry_filter,
            descending=ORDER_BY[order_by],
            page_size=page_size,
            after=after,
        )
        response = ListLogEntriesResponse(entries=page)
        if last is not None:
            response.next_page_token = _encode_page_token(last, fingerprint)
        return response

    def rpc_tail_log_entries(
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        request = next(requests, None)
        if request is None:
            raise invalid_argument(
                "TailLogEntries needs a first request with resource_names"
            )
        projects = _read_projects(request.resource_names)
        entry_filter = _compile(request.filter)
        buffer_window = DEFAULT_BUFFER_WINDOW_SECONDS
        if request.HasField("buffer_window"):
            buffer_window = request.buffer_window.ToNanoseconds() / 1e9
            if not 0 <= buffer_window <= MAX_BUFFER_WINDOW_SECONDS:
                raise invalid_argument(
                    f"invalid buffer_window {buffer_window:g}s; it must be between "
                    f"0 and {MAX_BUFFER_WINDOW_SECONDS:g} seconds"
                )

        session = self.tails.open(projects, entry_filter, buffer_window)
        context.add_callback(self.tails.wake)
        log.debug(
            "tail started projects=%s filter=%r buffer_window=%ss",
            ",".join(projects),
            request.filter,
            buffer_window,
        )
        # An empty first response tells the client the tail is open. Google's
        # Python client needs one, because its stream wrapper blocks until the
        # first response arrives before returning the stream to the caller.
        try:
            yield TailLogEntriesResponse()
            for batch in self.tails.batches(session, context.is_active):
                yield TailLogEntriesResponse(entries=[stored.entry for stored in batch])
        finally:
            self.tails.discard(session)
            log.debug("tail ended projects=%s", ",".join(projects))

    def rpc_list_logs(self, request: Any, context: grpc.ServicerContext) -> Any:
        names = list(request.resource_names) or (
            [request.parent] if request.parent else []
        )
        projects = _read_projects(names)
        page_size = request.page_size or MAX_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise invalid_argument(
                f"invalid page_size {request.page_size}; it must be between 0 and "
                f"{MAX_PAGE_SIZE}"
            )
        log_names = self.store.log_names(projects)
        start = 0
        if request.page_token:
            try:
                start = int(request.page_token)
            except ValueError:
                raise invalid_argument(
                    f"invalid page_token {request.page_token!r}"
                ) from None
        response = ListLogsResponse(log_names=log_names[start : start + page_size])
        if start + page_size < len(log_names):
            response.next_page_token = str(start + page_size)
        return response

    # -- helpers ---------------------------------------------------------------

    def _prepare(self, entry: Any, index: int) -> StoredEntry:
        """Check ``entry`` against the write rules and fill in what the server sets."""
        project = _validate_entry(entry, index)
        now_ns = time.time_ns()
        if not entry.HasField("timestamp"):
            entry.timestamp.FromNanoseconds(now_ns)
        entry.receive_timestamp.FromNanoseconds(now_ns)
        if not entry.insert_id:
            entry.insert_id = uuid.uuid4().hex
        size = entry.ByteSize()
        if size > MAX_ENTRY_BYTES:
            raise invalid_argument(
                f"entries[{index}] is {size} bytes; a log entry may be at most "
                f"{MAX_ENTRY_BYTES} bytes"
            )
        return StoredEntry(project, entry, entry_to_dict(entry))

    def _commit(self, prepared: Sequence[StoredEntry]) -> None:
        if not prepared:
            return
        inserted = self.store.insert(prepared)
        if len(inserted) < len(prepared):
            log.debug("dropped %s duplicate log entries", len(prepared) - len(inserted))
        self.tails.publish(inserted)


def _apply_request_defaults(entry: Any, request: Any) -> None:
    """Give ``entry`` the request's log name, resource and labels where it has none."""
    if not entry.log_name:
        entry.log_name = request.log_name
    if not entry.HasField("resource") and request.HasField("resource"):
        entry.resource.CopyFrom(request.resource)
    for key, value in request.labels.items():
        if key not in entry.labels:
            entry.labels[key] = value


def _validate_entry(entry: Any, index: int) -> str:
    """Return the project in ``entry``'s log name, or raise INVALID_ARGUMENT."""
    where = f"entries[{index}]"
    if not entry.log_name:
        raise invalid_argument(
            f"{where}: log_name is missing; set it on the entry or request"
        )
    match = LOG_NAME.match(entry.log_name)
    if match is None:
        raise invalid_argument(
            f"{where}: invalid log_name {entry.log_name!r}; expected "
            "projects/PROJECT_ID/logs/LOG_ID with the log ID URL-encoded"
        )
    log_id = unquote(match.group(2))
    if len(log_id) > MAX_LOG_ID_LENGTH or not LOG_ID_CHARACTERS.match(log_id):
        raise invalid_argument(
            f"{where}: invalid log ID {log_id!r}; it may have at most "
            f"{MAX_LOG_ID_LENGTH} letters, digits and the characters / _ - ."
        )
    if not entry.resource.type:
        raise invalid_argument(
            f"{where}: resource is missing; set a monitored resource such as "
            "{type: global} on the entry or request"
        )
    for key, value in entry.labels.items():
        if len(key.encode()) > MAX_LABEL_KEY_BYTES:
            raise invalid_argument(
                f"{where}: label key {key[:40]!r}... is longer than "
                f"{MAX_LABEL_KEY_BYTES} bytes"
            )
        if len(value.encode()) > MAX_LABEL_VALUE_BYTES:
            raise invalid_argument(
                f"{where}: label {key!r} has a value longer than "
                f"{MAX_LABEL_VALUE_BYTES} bytes"
            )
    return match.group(1)


def _read_projects(resource_names: Sequence[str]) -> list[str]:
    """Return the projects that ``resource_names`` read, or raise INVALID_ARGUMENT."""
    if not resource_names:
        raise invalid_argument(
            "resource_names is missing; name at least one projects/PROJECT_ID"
        )
    if len(resource_names) > MAX_RESOURCE_NAMES:
        raise invalid_argument(
            f"{len(resource_names)} resource_names given; at most {MAX_RESOURCE_NAMES} "
            "are allowed"
        )
    projects: list[str] = []
    for name in resource_names:
        match = PROJECT_RESOURCE.match(name)
        if match is not None:
            projects.append(match.group(1))
        elif OTHER_RESOURCE.match(name) is None:
            raise invalid_argument(
                f"invalid resource name {name!r}; expected projects/PROJECT_ID, "
                "organizations/ID, folders/ID or billingAccounts/ID"
            )
        # NOTE: organizations, folders and billing accounts are accepted but
        # hold no entries here, because the local cloud writes project logs only.
    return sorted(set(projects))


def _compile(text: str) -> Filter:
    if len(text) > MAX_FILTER_LENGTH:
        raise invalid_argument(
            f"the filter is {len(text)} characters long; at most {MAX_FILTER_LENGTH} "
            "are allowed"
        )
    try:
        return compile_filter(text)
    except FilterError as error:
        raise invalid_argument(str(error)) from None


def _request_fingerprint(request: Any) -> str:
    """Identify the query a page token belongs to, so it is not reused for another."""
    key = json.dumps(
        [sorted(request.resource_names), request.filter, request.order_by.lower()]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _encode_page_token(cursor: Cursor, fingerprint: str) -> str:
    payload = json.dumps(
        [fingerprint, cursor.timestamp_ns, cursor.insert_id, cursor.sequence],
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(payload.encode()).decode()


def _decode_page_token(token: str, fingerprint: str) -> Cursor | None:
    if not token:
        return None
    try:
        saved, timestamp_ns, insert_id, sequence = json.loads(
            base64.urlsafe_b64decode(token)
        )
        cursor = Cursor(int(timestamp_ns), str(insert_id), int(sequence))
    except (ValueError, TypeError):
        raise invalid_argument(f"invalid page_token {token[:40]!r}") from None
    if saved != fingerprint:
        raise invalid_argument(
            "page_token belongs to a request with other resource_names, filter or "
            "order_by; repeat those with the token"
        )
    return cursor
