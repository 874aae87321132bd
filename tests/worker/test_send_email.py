"""send_email against the local cloud's SMTP sink, under functions-framework."""

from __future__ import annotations

import datetime
import email
import email.policy
import email.utils
import hashlib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from taskctl.localcloud.children import free_port
from taskctl.localcloud.server import RuntimeInfo
from tests.worker.conftest import (
    SENDER,
    DeadLetterTopic,
    WorkerProcess,
    encode_task,
    mail_with_message_id,
    pull_dead_letters,
    push_body,
)

SENDER_DOMAIN = "taskctl.example"


def email_task(task_id: str, **payload: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "to": "alice@example.com",
        "subject": "Your receipt",
        "text": "Thank you for your order.\n",
    }
    fields.update(payload)
    return {"task_type": "send_email", "payload": fields, "task_id": task_id}


def expected_message_id(task_id: str) -> str:
    digest = hashlib.sha256(f"taskctl:{task_id}".encode()).hexdigest()[:40]
    return f"<{digest}@{SENDER_DOMAIN}>"


def read_eml(local_cloud: RuntimeInfo, task_id: str) -> tuple[Any, EmailMessage]:
    [mail] = mail_with_message_id(local_cloud, expected_message_id(task_id))
    # SMTP carries CRLF line endings, and the sink stores the message as received.
    raw = mail.path.read_bytes().replace(b"\r\n", b"\n")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return mail, parsed


def deliver(
    worker: WorkerProcess, task: dict[str, Any], message_id: str
) -> tuple[int, dict[str, Any]]:
    status, lines = worker.deliver(push_body(encode_task(task), message_id), message_id)
    assert lines, f"no log lines for {message_id}"
    return status, lines[-1]


def test_send_email_multipart_headers(
    worker: WorkerProcess, local_cloud: RuntimeInfo, unique: str
) -> None:
    task_id = f"mail-multipart-{unique}"
    marker = f"body-marker-{unique}"
    task = email_task(
        task_id,
        to=["Alice Example <alice@example.com>", "bob@example.com"],
        cc="carol@example.com",
        bcc=["audit@example.com"],
        reply_to="Billing <billing@example.com>",
        subject="Receipt für Bestellung 42",
        text=f"Plain {marker}\n",
        html=f"<p>HTML {marker}</p>",
    )
    before = datetime.datetime.now(datetime.UTC)

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    assert final["outcome"] == "success"
    message_id = expected_message_id(task_id)
    assert final["outputs"] == [f"mid:{message_id.strip('<>')}"]
    mail, parsed = read_eml(local_cloud, task_id)
    assert mail.mail_from == "worker@taskctl.example"
    assert mail.recipients == (
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "audit@example.com",
    )
    assert parsed["From"] == SENDER
    assert parsed["To"] == "Alice Example <alice@example.com>, bob@example.com"
    assert parsed["Cc"] == "carol@example.com"
    assert parsed["Reply-To"] == "Billing <billing@example.com>"
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "Receipt für Bestellung 42"
    assert parsed["Message-ID"] == message_id
    sent_at = email.utils.parsedate_to_datetime(parsed["Date"])
    assert before - datetime.timedelta(seconds=5) <= sent_at
    assert sent_at <= datetime.datetime.now(datetime.UTC) + datetime.timedelta(
        seconds=5
    )
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content() == f"Plain {marker}\n"
    assert parts[1].get_content().strip() == f"<p>HTML {marker}</p>"
    assert not any(marker in line for line in worker.stdout())
    assert not any(marker in line for line in worker.stderr())


def test_send_email_text_only(
    worker: WorkerProcess, local_cloud: RuntimeInfo, unique: str
) -> None:
    task_id = f"mail-text-{unique}"
    task = email_task(task_id, text="Grüße — ünïcode body\n")

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    assert final["outcome"] == "success"
    mail, parsed = read_eml(local_cloud, task_id)
    assert mail.recipients == ("alice@example.com",)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content() == "Grüße — ünïcode body\n"
    assert parsed["Reply-To"] is None
    assert parsed["Cc"] is None


def test_send_email_duplicate_recipients_once(
    worker: WorkerProcess, local_cloud: RuntimeInfo, unique: str
) -> None:
    task_id = f"mail-dedupe-{unique}"
    task = email_task(
        task_id, to="alice@example.com", cc="Alice@Example.com", bcc="alice@example.com"
    )

    status, _ = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    mail, _ = read_eml(local_cloud, task_id)
    assert mail.recipients == ("alice@example.com",)


def test_send_email_refused_recipient_dead_lettered(
    worker: WorkerProcess,
    local_cloud: RuntimeInfo,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
) -> None:
    task_id = f"mail-refused-{unique}"
    message_id = f"msg-{task_id}"
    task = email_task(task_id, to="nobody@refused.invalid")

    status, final = deliver(worker, task, message_id)

    assert status == 200
    assert final["outcome"] == "permanent_failure"
    assert final["failure_reason"] == "recipient_rejected"
    assert "550" in final["failure_detail"]
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    assert copies[0].attributes["taskctl_failure_reason"] == "recipient_rejected"
    assert mail_with_message_id(local_cloud, expected_message_id(task_id)) == []


def test_send_email_partial_refusal_succeeds(
    worker: WorkerProcess, local_cloud: RuntimeInfo, unique: str
) -> None:
    task_id = f"mail-partial-{unique}"
    message_id = f"msg-{task_id}"
    task = email_task(task_id, to=["alice@example.com", "nobody@refused.invalid"])

    status, final = deliver(worker, task, message_id)

    assert status == 200
    assert final["outcome"] == "success"
    mail, _ = read_eml(local_cloud, task_id)
    assert mail.recipients == ("alice@example.com",)
    warnings = [
        line for line in worker.log_lines(message_id) if line["severity"] == "WARNING"
    ]
    assert len(warnings) == 1
    assert "rejected 1 of 2 recipients" in warnings[0]["message"]
    assert list(warnings[0]["rejected_recipients"]) == ["nobody@refused.invalid"]


def test_send_email_smtp_down_returns_500(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    unique: str,
) -> None:
    # Nothing listens on this loopback port, so the connection is refused.
    worker = worker_factory(dead_letter_topic.topic, SMTP_PORT=str(free_port()))
    task_id = f"mail-down-{unique}"

    status, final = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == 500
    assert final["outcome"] == "transient_failure"
    assert final["known_transient"] is True
    assert final["error_type"] == "TransientError"
    assert "connecting to SMTP server 127.0.0.1:" in final["error"]


def test_send_email_missing_host_returns_500(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    unique: str,
) -> None:
    worker = worker_factory(dead_letter_topic.topic, SMTP_HOST="")
    task_id = f"mail-no-host-{unique}"

    status, final = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == 500
    assert final["error_type"] == "SmtpConfigurationError"
    assert "SMTP_HOST is not set" in final["error"]


def test_send_email_credentials_not_logged(
    worker_factory,  # type: ignore[no-untyped-def]
    local_cloud: RuntimeInfo,
    dead_letter_topic: DeadLetterTopic,
    unique: str,
) -> None:
    password = f"pw-{unique}-do-not-log"
    worker = worker_factory(
        dead_letter_topic.topic, SMTP_USERNAME="mailer", SMTP_PASSWORD=password
    )
    task_id = f"mail-auth-{unique}"

    status, final = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == 200
    assert final["outcome"] == "success"
    assert len(mail_with_message_id(local_cloud, expected_message_id(task_id))) == 1
    assert not any(password in line for line in worker.stdout())
    assert not any(password in line for line in worker.stderr())
    log_path = Path(local_cloud.state_dir) / "localcloud.log"
    assert password not in log_path.read_text(errors="replace")


INVALID_PAYLOADS = [
    # (case id, payload fields to change, field named in the detail)
    ("to_missing", {"to": None}, "payload.to"),
    ("to_empty_list", {"to": []}, "payload.to"),
    ("to_not_address", {"to": "alice.example.com"}, "payload.to"),
    ("to_two_in_one", {"to": "a@example.com, b@example.com"}, "payload.to"),
    ("to_header_injection", {"to": "a@example.com\r\nBcc: x@y.z"}, "payload.to"),
    ("cc_entry_number", {"cc": ["a@example.com", 7]}, "payload.cc[1]"),
    ("bcc_bad_domain", {"bcc": "a@-example.com"}, "payload.bcc"),
    ("reply_to_group", {"reply_to": "team: a@example.com;"}, "payload.reply_to"),
    ("subject_missing", {"subject": None}, "payload.subject"),
    ("subject_blank", {"subject": "  "}, "payload.subject"),
    ("subject_line_break", {"subject": "Hi\r\nBcc: x@y.z"}, "payload.subject"),
    ("text_missing", {"text": None}, "payload.text"),
    ("html_number", {"html": 5}, "payload.html"),
    ("unknown_field", {"attachments": []}, "payload.attachments"),
    (
        "too_many_recipients",
        {"to": [f"user{number}@example.com" for number in range(101)]},
        "payload.to",
    ),
]


@pytest.mark.parametrize(
    ("case", "changes", "field"),
    INVALID_PAYLOADS,
    ids=[case[0] for case in INVALID_PAYLOADS],
)
def test_send_email_invalid_payload(
    worker: WorkerProcess,
    local_cloud: RuntimeInfo,
    unique: str,
    case: str,
    changes: dict[str, Any],
    field: str,
) -> None:
    task_id = f"mail-invalid-{case}-{unique}"
    task = email_task(task_id, **changes)
    task["payload"] = {
        key: value for key, value in task["payload"].items() if value is not None
    }

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 200
    assert final["outcome"] == "permanent_failure"
    assert final["failure_reason"] == "invalid_payload"
    assert final["failure_detail"].startswith(f"{field}:")
    assert "example.com" not in final["failure_detail"]
    assert mail_with_message_id(local_cloud, expected_message_id(task_id)) == []


class ScriptedHandler:
    """aiosmtpd hooks that reply to DATA with a fixed status line."""

    def __init__(self, data_reply: str) -> None:
        self.data_reply = data_reply
        self.received: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply.startswith("250"):
            self.received.append(envelope.original_content)
        return self.data_reply


@pytest.fixture
def smtp_server() -> Iterator[Any]:
    """Start aiosmtpd servers of the test's own: ``start(handler, **options)``."""
    controllers: list[Controller] = []

    def start(handler: Any, **options: Any) -> int:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


def test_send_email_non_ascii_address(
    worker: WorkerProcess, local_cloud: RuntimeInfo, unique: str
) -> None:
    task_id = f"mail-utf8-{unique}"
    task = email_task(task_id, to="Jörg <jörg@münchen.example>")

    status, final = deliver(worker, task, f"msg-{task_id}")

    assert status == 200, final
    mail, parsed = read_eml(local_cloud, task_id)
    assert mail.recipients == ("jörg@münchen.example",)
    assert parsed["To"] == "Jörg <jörg@münchen.example>"


def test_send_email_without_smtputf8_dead_lettered(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    smtp_server: Any,
    unique: str,
) -> None:
    handler = ScriptedHandler("250 OK")
    port = smtp_server(handler, enable_SMTPUTF8=False)
    worker = worker_factory(dead_letter_topic.topic, SMTP_PORT=str(port))
    task_id = f"mail-no-utf8-{unique}"

    status, final = deliver(
        worker, email_task(task_id, to="jörg@münchen.example"), f"msg-{task_id}"
    )

    assert status == 200
    assert final["outcome"] == "permanent_failure"
    assert final["failure_reason"] == "message_rejected"
    assert "SMTPUTF8" in final["failure_detail"]
    assert handler.received == []


@pytest.mark.parametrize(
    ("reply", "status_code", "outcome"),
    [
        ("451 4.3.0 Try again later", 500, "transient_failure"),
        ("554 5.6.0 Message content rejected", 200, "permanent_failure"),
    ],
    ids=["data_451", "data_554"],
)
def test_send_email_data_reply_classified(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    smtp_server: Any,
    unique: str,
    reply: str,
    status_code: int,
    outcome: str,
) -> None:
    port = smtp_server(ScriptedHandler(reply))
    worker = worker_factory(dead_letter_topic.topic, SMTP_PORT=str(port))
    task_id = f"mail-reply-{reply[:3]}-{unique}"

    status, final = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == status_code
    assert final["outcome"] == outcome
    if outcome == "permanent_failure":
        assert final["failure_reason"] == "message_rejected"
        assert "554" in final["failure_detail"]
    else:
        assert "451" in final["error"]


def test_send_email_starttls_not_offered(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    unique: str,
) -> None:
    # The local cloud's sink offers no STARTTLS.
    worker = worker_factory(dead_letter_topic.topic, SMTP_TLS="starttls")
    task_id = f"mail-starttls-{unique}"

    status, final = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == 500
    assert final["error_type"] == "SmtpConfigurationError"
    assert "does not offer STARTTLS" in final["error"]


def test_send_email_implicit_tls_fails_transiently(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    unique: str,
) -> None:
    # The sink speaks plain SMTP, so the TLS handshake fails.
    worker = worker_factory(dead_letter_topic.topic, SMTP_TLS="tls")
    task_id = f"mail-tls-{unique}"

    status, final = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == 500
    assert final["outcome"] == "transient_failure"
    assert final["error_type"] == "TransientError"
    assert "(tls) failed" in final["error"]


def test_send_email_auth_not_offered(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    smtp_server: Any,
    unique: str,
) -> None:
    handler = ScriptedHandler("250 OK")
    port = smtp_server(handler)
    worker = worker_factory(
        dead_letter_topic.topic,
        SMTP_PORT=str(port),
        SMTP_USERNAME="mailer",
        SMTP_PASSWORD="secret",
    )
    task_id = f"mail-no-auth-{unique}"

    status, final = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == 500
    assert final["error_type"] == "SmtpConfigurationError"
    assert "does not offer AUTH" in final["error"]
    assert handler.received == []


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SMTP_TLS", "ssl", "SMTP_TLS='ssl' is invalid"),
        ("SMTP_PORT", "70000", "SMTP_PORT='70000' is not a port number"),
        ("SMTP_TIMEOUT_SECONDS", "-1", "SMTP_TIMEOUT_SECONDS='-1' is not a positive"),
        ("SMTP_TIMEOUT_SECONDS", "inf", "SMTP_TIMEOUT_SECONDS='inf' is not a positive"),
        ("MAIL_FROM", "not-an-address", "MAIL_FROM='not-an-address' is not an email"),
    ],
    ids=["tls_mode", "port", "timeout", "infinite_timeout", "sender"],
)
def test_send_email_invalid_setting_returns_500(
    worker_factory,  # type: ignore[no-untyped-def]
    dead_letter_topic: DeadLetterTopic,
    unique: str,
    variable: str,
    value: str,
    expected: str,
) -> None:
    worker = worker_factory(dead_letter_topic.topic, **{variable: value})
    task_id = f"mail-setting-{variable}-{unique}"

    status, final = deliver(worker, email_task(task_id), f"msg-{task_id}")

    assert status == 500
    assert final["error_type"] == "SmtpConfigurationError"
    assert expected in final["error"]
