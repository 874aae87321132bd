"""An SMTP sink for the local cloud: it stores the mail that functions send.

Nothing is relayed. Each accepted message is written to ``state_dir/mail/`` as an
``.eml`` file, exactly as the client sent it, and indexed in ``state_dir/mail.sqlite3``
before the sink returns 250. The envelope recipients are kept in the index, because
Bcc recipients appear nowhere in the message itself.

Recipients in the domain ``refused.invalid`` are rejected with 550, so a test or a
demo can exercise a refused recipient. AUTH is offered without TLS and accepts any
credentials, which are never stored or logged.
"""

from __future__ import annotations

import email.errors
import email.header
import email.parser
import email.policy
import json
import logging
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from taskctl.localcloud.children import free_port
from taskctl.localcloud.db import Database

log = logging.getLogger("taskctl.localcloud.smtp")

MAIL_DIR = "mail"
INDEX_FILE = "mail.sqlite3"
REFUSED_DOMAIN = "refused.invalid"
# aiosmtpd's default limit on a message, 32 MiB, advertised with EHLO's SIZE.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT,
    mail_from TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT,
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    file TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_received_at ON messages (received_at);
"""


@dataclass(frozen=True)
class ReceivedMail:
    """One message the sink accepted, as recorded in its index."""

    message_id: str | None
    mail_from: str
    recipients: tuple[str, ...]
    subject: str | None
    received_at: float
    size: int
    path: Path


class SmtpSink:
    """An aiosmtpd server on a free loopback port, run in its own thread."""

    def __init__(self, state_dir: Path, host: str, port: int = 0) -> None:
        self.host = host
        # A free port (for 0) is chosen now, so the functions service can hand it
        # to instances before start.
        self.port = port or free_port(host)
        self._mail_dir = state_dir / MAIL_DIR
        self._index_path = state_dir / INDEX_FILE
        self._db: Database | None = None
        self._controller: Controller | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self._mail_dir.mkdir(mode=0o700, exist_ok=True)
        self._db = Database(self._index_path)
        self._db.migrate(_SCHEMA)
        # aiosmtpd logs each command line at INFO on "mail.log". It masks the AUTH
        # line itself, but not the replies to AUTH LOGIN's prompts, which are the
        # base64 user name and password. Its WARNING for every successful AUTH
        # (a deprecation notice in 1.4) is noise, so only errors get through.
        logging.getLogger("mail.log").setLevel(logging.ERROR)

        self._controller = Controller(
            _MailHandler(self._db, self._mail_dir),
            hostname=self.host,
            port=self.port,
            server_hostname="localcloud.invalid",
            data_size_limit=MAX_MESSAGE_BYTES,
            enable_SMTPUTF8=True,
            authenticator=_accept_any_credentials,
            auth_require_tls=False,
        )
        self._controller.start()
        log.info("SMTP sink listening on %s, mail in %s", self.endpoint, self._mail_dir)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
            log.info("SMTP sink stopped")
        if self._db is not None:
            self._db.close()
            self._db = None


def _accept_any_credentials(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    # No auth_data in the result, so the credentials are not kept on the session.
    return AuthResult(success=True)


class _MailHandler:
    """aiosmtpd hooks: reject refused recipients, store each message."""

    def __init__(self, db: Database, mail_dir: Path) -> None:
        self._db = db
        self._mail_dir = mail_dir

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        domain = address.rpartition("@")[2].lower()
        if domain == REFUSED_DOMAIN:
            log.info("rejected recipient %s", address)
            return f"550 5.1.1 <{address}>: recipient rejected ({REFUSED_DOMAIN})"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        message_id, subject = _read_headers(content)
        received_at = time.time()
        file_name = f"{int(received_at * 1000):013d}-{uuid.uuid4().hex[:12]}.eml"
        path = self._mail_dir / file_name
        try:
            with self._db.transaction() as connection:
                # The file is written inside the transaction, so a failed write
                # leaves no index row and the client gets 451 and may retry.
                _write_file(path, content)
                connection.execute(
                    "INSERT INTO messages (message_id, mail_from, recipients,"
                    " subject, received_at, size, file)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        message_id,
                        envelope.mail_from or "",
                        json.dumps(list(envelope.rcpt_tos)),
                        subject,
                        received_at,
                        len(content),
                        file_name,
                    ),
                )
        except (OSError, sqlite3.Error) as error:
            path.unlink(missing_ok=True)
            log.error("storing a message from %s failed: %s", envelope.mail_from, error)
            return "451 4.3.0 the message could not be stored; try again later"
        log.info(
            "stored message_id=%s from=%s recipients=%d size=%d in %s",
            message_id,
            envelope.mail_from,
            len(envelope.rcpt_tos),
            len(content),
            file_name,
        )
        return f"250 2.0.0 OK stored as {file_name}"


def _write_file(path: Path, content: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    with temporary.open("xb") as file:
        file.write(content)
    temporary.chmod(0o600)
    temporary.replace(path)


def _read_headers(content: bytes) -> tuple[str | None, str | None]:
    """Return the Message-ID and the decoded Subject, or None for each one missing."""
    # Headers are UTF-8 when the client used SMTPUTF8 (RFC 6532), and ASCII
    # otherwise, which UTF-8 decoding keeps as it is.
    header_block = re.split(rb"\r?\n\r?\n", content, maxsplit=1)[0]
    # compat32 keeps header values as raw strings, so a malformed header cannot
    # raise here, as it can with email.policy.default.
    headers = email.parser.Parser(policy=email.policy.compat32).parsestr(
        header_block.decode("utf-8", errors="replace"), headersonly=True
    )
    message_id = headers.get("Message-ID")
    subject = headers.get("Subject")
    if subject is not None:
        try:
            subject = str(email.header.make_header(email.header.decode_header(subject)))
        except (email.errors.HeaderParseError, LookupError, UnicodeError):
            subject = str(subject)
    return (
        str(message_id).strip() if message_id is not None else None,
        subject,
    )


def list_mail(state_dir: Path, limit: int = 20) -> list[ReceivedMail]:
    """Return the newest ``limit`` messages in the sink's index, newest first.

    Returns an empty list when the sink never received a message.
    """
    index_path = state_dir / INDEX_FILE
    if not index_path.exists():
        return []
    # A read-only connection, because the CLI must not create or migrate the index
    # that the running local cloud owns.
    connection = sqlite3.connect(f"{index_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT message_id, mail_from, recipients, subject, received_at, size,"
            " file FROM messages ORDER BY received_at DESC, id DESC LIMIT ?",
            (limit,),
        ).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return []
        raise
    finally:
        connection.close()
    return [
        ReceivedMail(
            message_id=row[0],
            mail_from=row[1],
            recipients=tuple(json.loads(row[2])),
            subject=row[3],
            received_at=row[4],
            size=row[5],
            path=state_dir / MAIL_DIR / row[6],
        )
        for row in rows
    ]
