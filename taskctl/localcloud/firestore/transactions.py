"""Open Firestore transactions and the document versions they have read.

Read-write transactions are optimistic: every read records the document's
``update_time`` (or that it was missing), and the commit fails with ABORTED when
any of them changed since. Google's Firestore locks documents read in a
read-write transaction instead, so contention shows up at a different moment,
but the client sees the same ABORTED and retries the same way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from taskctl.localcloud.errors import ServiceError, invalid_argument
from taskctl.localcloud.firestore.store import StoredDocument

log = logging.getLogger("taskctl.localcloud.firestore")

# Firestore ends a transaction after 270 seconds, or after 60 seconds without a
# request, according to its transactions documentation.
MAX_LIFETIME_SECONDS = 270.0
MAX_IDLE_SECONDS = 60.0
# Ended transaction IDs remembered so a late Rollback of one succeeds.
ENDED_REMEMBERED = 10_000


@dataclass
class Transaction:
    identifier: bytes
    database: str
    read_only: bool
    started: float
    last_used: float
    # Document name -> update_time when first read, or None if it was missing.
    reads: dict[str, int | None] = field(default_factory=dict)


class TransactionRegistry:
    """The open transactions of the process, kept in memory only.

    A restart ends every open transaction, so a commit after it fails with
    INVALID_ARGUMENT, as it would for an expired one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[bytes, Transaction] = {}
        self._ended: OrderedDict[bytes, None] = OrderedDict()

    def begin(self, database: str, *, read_only: bool) -> Transaction:
        now = time.monotonic()
        transaction = Transaction(os.urandom(16), database, read_only, now, now)
        with self._lock:
            self._expire(now)
            self._open[transaction.identifier] = transaction
        log.debug(
            "began transaction=%s database=%s read_only=%s",
            transaction.identifier.hex(),
            database,
            read_only,
        )
        return transaction

    def get(self, identifier: bytes, database: str) -> Transaction:
        """Return the open transaction ``identifier`` or raise INVALID_ARGUMENT."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            transaction = self._open.get(identifier)
            if transaction is None or transaction.database != database:
                raise invalid_argument(
                    f"transaction {identifier.hex() or '(empty)'} has expired or is "
                    "no longer valid; begin a new transaction"
                )
            transaction.last_used = now
            return transaction

    def record_reads(
        self,
        transaction: Transaction | None,
        names: Iterable[str],
        found: dict[str, StoredDocument],
    ) -> None:
        if transaction is None or transaction.read_only:
            return
        with self._lock:
            for name in names:
                if name not in transaction.reads:
                    document = found.get(name)
                    transaction.reads[name] = (
                        document.update_time if document is not None else None
                    )

    def end(self, identifier: bytes) -> None:
        with self._lock:
            self._open.pop(identifier, None)
            self._remember_ended(identifier)

    def rollback(self, identifier: bytes, database: str) -> None:
        with self._lock:
            if identifier in self._ended:
                return
            transaction = self._open.pop(identifier, None)
            if transaction is None or transaction.database != database:
                raise invalid_argument(
                    f"transaction {identifier.hex() or '(empty)'} has expired or is "
                    "no longer valid"
                )
            self._remember_ended(identifier)
        log.debug("rolled back transaction=%s", identifier.hex())

    def _remember_ended(self, identifier: bytes) -> None:
        self._ended[identifier] = None
        while len(self._ended) > ENDED_REMEMBERED:
            self._ended.popitem(last=False)

    def _expire(self, now: float) -> None:
        expired = [
            transaction.identifier
            for transaction in self._open.values()
            if now - transaction.started > MAX_LIFETIME_SECONDS
            or now - transaction.last_used > MAX_IDLE_SECONDS
        ]
        for identifier in expired:
            del self._open[identifier]
            self._remember_ended(identifier)
            log.info("transaction=%s expired", identifier.hex())


def contention(transaction: Transaction, name: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.ABORTED,
        f"Transaction contention: document {name} changed after transaction "
        f"{transaction.identifier.hex()} read it; retry the transaction",
    )
