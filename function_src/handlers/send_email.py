"""send_email: send one email over SMTP.

Payload::

    {"to": "alice@example.com" or ["Alice <alice@example.com>", ...],
     "subject": "Your invoice", "text": "plain-text body",
     "html": "<p>optional HTML body</p>", "reply_to": "billing@example.com",
     "cc": [...], "bcc": [...]}

``to``, ``cc``, ``bcc`` and ``reply_to`` each take one address or a list. With
``html`` the message is multipart/alternative (text first, then HTML). Bcc
recipients get the message but appear in no header. The Message-ID is derived from
the task's idempotency key, so every attempt at one task sends the same Message-ID
and a resend is recognisable.

The server and credentials come from the function's environment:

- ``SMTP_HOST`` (required), ``SMTP_PORT`` (default 25, 587 or 465 by TLS mode).
- ``SMTP_TLS``: ``none``, ``starttls`` (the default) or ``tls`` (implicit TLS).
- ``SMTP_USERNAME`` and ``SMTP_PASSWORD``: AUTH is used when a user name is set.
- ``MAIL_FROM``: the sender address (default ``taskctl@localhost``).
- ``SMTP_TIMEOUT_SECONDS``: per connection and command (default 30).

A recipient that the server rejects with 5xx, or a message it rejects with 5xx, is
a permanent failure. A connection failure, a timeout or any 4xx reply is transient.
Bodies and credentials are never logged.
"""

from __future__ import annotations

import datetime
import email.errors
import email.policy
import email.utils
import hashlib
import math
import os
import smtplib
import ssl
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

from taskworker import failures
from taskworker.failures import PayloadError, PermanentError, TransientError
from taskworker.registry import TaskContext, TaskResult, TaskType

# RFC 5321 section 4.5.3.1.8: a server must accept at least 100 recipients for one
# message, so a larger list could be cut short by a compliant server.
MAX_RECIPIENTS = 100
TLS_MODES = {"none": 25, "starttls": 587, "tls": 465}
DEFAULT_TLS_MODE = "starttls"
DEFAULT_SENDER = "taskctl@localhost"
DEFAULT_TIMEOUT_SECONDS = 30.0
_PAYLOAD_FIELDS = {"to", "subject", "text", "html", "reply_to", "cc", "bcc"}


class SmtpConfigurationError(TransientError):
    """The function's SMTP settings are missing or invalid.

    Transient, because a redeploy with fixed settings lets a redelivery succeed.
    """


@dataclass(frozen=True)
class EmailJob:
    """A checked send_email payload; addresses keep their display names."""

    to: tuple[Address, ...]
    subject: str
    text: str
    html: str | None
    reply_to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]

    def envelope_recipients(self) -> list[str]:
        """Return the address of every To, Cc and Bcc recipient, each once."""
        recipients: list[str] = []
        seen: set[str] = set()
        for address in (*self.to, *self.cc, *self.bcc):
            if address.addr_spec.lower() not in seen:
                seen.add(address.addr_spec.lower())
                recipients.append(address.addr_spec)
        return recipients


@dataclass(frozen=True)
class SmtpSettings:
    """The SMTP server, credentials and sender, from the function's environment."""

    host: str
    port: int
    tls_mode: str
    username: str | None
    password: str | None
    sender: Address
    timeout: float


def parse_payload(payload: dict[str, Any]) -> EmailJob:
    """Check a send_email payload, raising PayloadError for the first bad field."""
    unknown = sorted(set(payload) - _PAYLOAD_FIELDS)
    if unknown:
        raise PayloadError(unknown[0], "unknown field")

    to = _addresses(payload, "to", required=True)
    subject = payload.get("subject")
    if subject is None:
        raise PayloadError("subject", "is missing")
    if not isinstance(subject, str) or not subject.strip():
        raise PayloadError("subject", "must be a non-empty string")
    if "\r" in subject or "\n" in subject:
        raise PayloadError("subject", "must not contain line breaks")
    text = payload.get("text")
    if text is None:
        raise PayloadError("text", "is missing")
    if not isinstance(text, str):
        raise PayloadError("text", "must be a string")
    html = payload.get("html")
    if html is not None and not isinstance(html, str):
        raise PayloadError("html", "must be a string")

    job = EmailJob(
        to=to,
        subject=subject,
        text=text,
        html=html,
        reply_to=_addresses(payload, "reply_to"),
        cc=_addresses(payload, "cc"),
        bcc=_addresses(payload, "bcc"),
    )
    if len(job.envelope_recipients()) > MAX_RECIPIENTS:
        raise PayloadError(
            "to", f"to, cc and bcc have more than {MAX_RECIPIENTS} recipients"
        )
    return job


def run(job: EmailJob, context: TaskContext) -> TaskResult:
    """Build the message and send it; return its ``mid:`` URL (RFC 2392)."""
    settings = smtp_settings()
    message = build_message(job, settings.sender, context.task_id)
    recipients = job.envelope_recipients()

    refused = _send(settings, message, recipients)
    message_id = message["Message-ID"].strip("<>")
    if refused:
        # The others have the message, so a retry would send it to them again.
        context.log.warning(
            "the server rejected %d of %d recipients; sent to the rest",
            len(refused),
            len(recipients),
            rejected_recipients={
                address: f"{code} {reply.decode(errors='replace')}"
                for address, (code, reply) in refused.items()
            },
        )
    context.log.info(
        "sent email %s to %d recipients via %s:%d",
        message_id,
        len(recipients) - len(refused),
        settings.host,
        settings.port,
        email_message_id=message_id,
        recipients=len(recipients) - len(refused),
    )
    return TaskResult(outputs=[f"mid:{message_id}"])


TASK_TYPE = TaskType(name="send_email", parse_payload=parse_payload, run=run)


def build_message(job: EmailJob, sender: Address, idempotency_key: str) -> EmailMessage:
    """Build the message, with a Message-ID that depends only on the key and sender."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = job.to
    if job.cc:
        message["Cc"] = job.cc
    if job.reply_to:
        message["Reply-To"] = job.reply_to
    message["Subject"] = job.subject
    message["Date"] = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
    message["Message-ID"] = message_id_for(idempotency_key, sender)
    message.set_content(job.text)
    if job.html is not None:
        message.add_alternative(job.html, subtype="html")
    return message


def message_id_for(idempotency_key: str, sender: Address) -> str:
    """Return ``<digest@domain>``, stable for one key and sender domain.

    The key is hashed because a task ID may contain characters a Message-ID cannot.
    """
    digest = hashlib.sha256(f"taskctl:{idempotency_key}".encode()).hexdigest()[:40]
    domain = sender.domain if sender.domain.isascii() else "taskctl.invalid"
    return f"<{digest}@{domain}>"


def smtp_settings() -> SmtpSettings:
    """Read the SMTP settings from the environment, or raise SmtpConfigurationError."""
    host = os.environ.get("SMTP_HOST", "").strip()
    if not host:
        raise SmtpConfigurationError(
            "SMTP_HOST is not set, so no email can be sent; set it on the function"
        )
    tls_mode = os.environ.get("SMTP_TLS", DEFAULT_TLS_MODE).strip().lower()
    if tls_mode not in TLS_MODES:
        raise SmtpConfigurationError(
            f"SMTP_TLS={tls_mode!r} is invalid; use one of {', '.join(TLS_MODES)}"
        )

    sender_text = os.environ.get("MAIL_FROM", "").strip() or DEFAULT_SENDER
    sender = parse_address(sender_text)
    if sender is None:
        raise SmtpConfigurationError(
            f"MAIL_FROM={sender_text!r} is not an email address"
        )

    return SmtpSettings(
        host=host,
        port=_port_setting(default=TLS_MODES[tls_mode]),
        tls_mode=tls_mode,
        username=os.environ.get("SMTP_USERNAME") or None,
        password=os.environ.get("SMTP_PASSWORD") or None,
        sender=sender,
        timeout=_timeout_setting(),
    )


def _port_setting(default: int) -> int:
    text = os.environ.get("SMTP_PORT", "").strip()
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise SmtpConfigurationError(
            f"SMTP_PORT={text!r} is not a port number from 1 to 65535"
        )
    return int(text)


def _timeout_setting() -> float:
    text = os.environ.get("SMTP_TIMEOUT_SECONDS", "").strip()
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        timeout = float(text)
    except ValueError:
        timeout = 0.0
    if not (timeout > 0 and math.isfinite(timeout)):
        raise SmtpConfigurationError(
            f"SMTP_TIMEOUT_SECONDS={text!r} is not a positive, finite number"
        )
    return timeout


def _send(
    settings: SmtpSettings, message: EmailMessage, recipients: list[str]
) -> dict[str, tuple[int, bytes]]:
    """Send over one connection; return the recipients the server rejected.

    Raises PermanentError or TransientError for a failure, classified by its reply.
    """
    try:
        client = _connect(settings)
    except smtplib.SMTPNotSupportedError:
        raise SmtpConfigurationError(
            f"{_server(settings)} does not offer STARTTLS; set SMTP_TLS to match it"
        ) from None
    except smtplib.SMTPException as error:
        # Includes a 5xx greeting: the server may accept mail again later.
        raise TransientError(
            f"connecting to {_server(settings)} failed: {error}"
        ) from None
    except (OSError, ssl.SSLError) as error:
        raise TransientError(
            f"connecting to {_server(settings)} failed: {type(error).__name__}: {error}"
        ) from None

    try:
        if settings.username:
            _login(client, settings)
        return client.send_message(
            message, from_addr=settings.sender.addr_spec, to_addrs=recipients
        )
    except smtplib.SMTPNotSupportedError:
        # send_message raises this when non-ASCII addresses need SMTPUTF8.
        raise PermanentError(
            f"{_server(settings)} does not support SMTPUTF8, which the message's "
            "non-ASCII addresses need",
            failures.MESSAGE_REJECTED,
        ) from None
    except smtplib.SMTPRecipientsRefused as error:
        raise _recipients_failure(error.recipients) from None
    except smtplib.SMTPAuthenticationError as error:
        # Retried, because fixing the credentials needs no change to the task.
        raise SmtpConfigurationError(
            f"{_server(settings)} rejected the SMTP credentials ({error.smtp_code})"
        ) from None
    except smtplib.SMTPResponseException as error:
        raise _reply_failure(settings, error.smtp_code, error.smtp_error) from None
    except (smtplib.SMTPException, OSError) as error:
        raise TransientError(
            f"sending to {_server(settings)} failed: {type(error).__name__}: {error}"
        ) from None
    finally:
        _close(client)


def _login(client: smtplib.SMTP, settings: SmtpSettings) -> None:
    try:
        client.login(settings.username or "", settings.password or "")
    except smtplib.SMTPNotSupportedError:
        raise SmtpConfigurationError(
            f"{_server(settings)} does not offer AUTH, but SMTP_USERNAME is set"
        ) from None


def _connect(settings: SmtpSettings) -> smtplib.SMTP:
    if settings.tls_mode == "tls":
        return smtplib.SMTP_SSL(
            settings.host,
            settings.port,
            timeout=settings.timeout,
            context=ssl.create_default_context(),
        )
    client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
    if settings.tls_mode == "starttls":
        try:
            client.starttls(context=ssl.create_default_context())
        except BaseException:
            _close(client)
            raise
    return client


def _close(client: smtplib.SMTP) -> None:
    # Once the server accepted the message, a failed QUIT must not make the
    # task fail, or the retry would send the message a second time.
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def _recipients_failure(refused: dict[str, tuple[int, bytes]]) -> Exception:
    codes = sorted({code for code, _ in refused.values()})
    summary = ", ".join(str(code) for code in codes)
    if all(code >= 500 for code in codes):
        return PermanentError(
            f"the SMTP server rejected all {len(refused)} recipients ({summary})",
            failures.RECIPIENT_REJECTED,
        )
    return TransientError(
        f"the SMTP server deferred the recipients ({summary}); retrying later"
    )


def _reply_failure(settings: SmtpSettings, code: int, reply: bytes | str) -> Exception:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    described = f"{_server(settings)} replied {code} {text}"
    if 500 <= code < 600:
        return PermanentError(
            f"the message was rejected: {described}", failures.MESSAGE_REJECTED
        )
    return TransientError(f"sending was deferred: {described}")


def _server(settings: SmtpSettings) -> str:
    return f"SMTP server {settings.host}:{settings.port} ({settings.tls_mode})"


def _addresses(
    payload: dict[str, Any], field: str, *, required: bool = False
) -> tuple[Address, ...]:
    value = payload.get(field)
    if value is None:
        if required:
            raise PayloadError(field, "is missing")
        return ()
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or (required and not entries):
        raise PayloadError(field, "must be an address or a non-empty list of them")
    addresses: list[Address] = []
    for index, entry in enumerate(entries):
        label = field if isinstance(value, str) else f"{field}[{index}]"
        address = parse_address(entry) if isinstance(entry, str) else None
        if address is None:
            # The message leaves the address out, because it is personal data.
            raise PayloadError(label, "is not a valid email address")
        addresses.append(address)
    return tuple(addresses)


def parse_address(text: str) -> Address | None:
    """Parse one mailbox (``a@example.com`` or ``Name <a@example.com>``), or None.

    Groups, lists, address literals and malformed addresses are rejected. A
    non-ASCII local part is allowed, because SMTPUTF8 servers accept it.
    """
    if "\r" in text or "\n" in text:
        return None
    try:
        header = email.policy.default.header_factory("To", text)
    except (email.errors.HeaderParseError, IndexError, ValueError):
        # Python 3.11's address parser raises IndexError for input such as "a@".
        return None
    defects = [
        defect
        for defect in header.defects
        if not isinstance(defect, email.errors.NonASCIILocalPartDefect)
    ]
    if defects or len(header.groups) != 1 or header.groups[0].display_name:
        return None
    if len(header.addresses) != 1:
        return None
    address: Address = header.addresses[0]
    if not address.username or not _is_host_name(address.domain):
        return None
    return address


def _is_host_name(domain: str) -> bool:
    labels = domain.split(".")
    return all(
        label
        and label.replace("-", "").isalnum()
        and not label.startswith("-")
        and not label.endswith("-")
        for label in labels
    )
