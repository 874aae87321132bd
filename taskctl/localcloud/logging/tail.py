"""Live tailing: writers hand new entries to every open tail session."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from taskctl.localcloud.logging.query import Filter
from taskctl.localcloud.logging.store import StoredEntry

# How often a session with nothing to send checks whether its client is gone.
IDLE_CHECK_SECONDS = 0.25


@dataclass(eq=False)
class TailSession:
    projects: frozenset[str]
    entry_filter: Filter
    buffer_window: float
    inbox: list[StoredEntry] = field(default_factory=list)


class TailHub:
    """Open tail sessions and the condition variable that wakes them on writes."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._sessions: set[TailSession] = set()
        self._closed = False

    def publish(self, entries: Sequence[StoredEntry]) -> None:
        """Queue committed ``entries`` for every session and wake the sessions."""
        if not entries:
            return
        with self._condition:
            for session in self._sessions:
                session.inbox.extend(
                    stored for stored in entries if stored.project in session.projects
                )
            self._condition.notify_all()

    def wake(self) -> None:
        with self._condition:
            self._condition.notify_all()

    def close(self) -> None:
        """End every session, as when the server stops."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def open(
        self, projects: Sequence[str], entry_filter: Filter, buffer_window: float
    ) -> TailSession:
        session = TailSession(frozenset(projects), entry_filter, buffer_window)
        with self._condition:
            self._sessions.add(session)
        return session

    def batches(
        self, session: TailSession, is_active: Callable[[], bool]
    ) -> Iterator[list[StoredEntry]]:
        """Yield the session's matching entries, each batch sorted by timestamp.

        An entry is held back until its timestamp is one buffer window old, so an
        entry that arrives late with an earlier timestamp is still sent first.
        The hold is counted from the arrival instead when the timestamp is
        later than that, so entries stamped in the future are not held back longer.
        The iterator ends when ``is_active`` turns false or the hub closes.
        """
        pending: list[tuple[int, StoredEntry]] = []
        window_ns = int(session.buffer_window * 1_000_000_000)
        try:
            while True:
                with self._condition:
                    if self._closed or not is_active():
                        return
                    if not session.inbox:
                        self._condition.wait(_wait_seconds(pending))
                    arrivals, session.inbox = session.inbox, []
                arrived_ns = time.time_ns()
                pending.extend(
                    (min(stored.timestamp_ns, arrived_ns) + window_ns, stored)
                    for stored in arrivals
                    if session.entry_filter.matches(stored.data)
                )
                now_ns = time.time_ns()
                ready = [
                    stored for release_ns, stored in pending if release_ns <= now_ns
                ]
                if ready:
                    pending = [item for item in pending if item[0] > now_ns]
                    ready.sort(
                        key=lambda stored: (stored.timestamp_ns, stored.entry.insert_id)
                    )
                    yield ready
        finally:
            self.discard(session)

    def discard(self, session: TailSession) -> None:
        """Stop queueing entries for ``session``; closing it twice is harmless."""
        with self._condition:
            self._sessions.discard(session)


def _wait_seconds(pending: list[tuple[int, StoredEntry]]) -> float:
    if not pending:
        return IDLE_CHECK_SECONDS
    release_ns = min(release for release, _ in pending)
    return max(0.0, min(IDLE_CHECK_SECONDS, (release_ns - time.time_ns()) / 1e9))
