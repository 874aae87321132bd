"""The local cloud's SMTP sink: storing, indexing, rejecting and listing mail."""

from __future__ import annotations

import dataclasses
import email.policy
import json
import smtplib
import sqlite3
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from taskctl.localcloud.functions.instance import Instance, InstanceSpec
from taskctl.localcloud.runtime import RUNTIME_FILE, RuntimeInfo
from taskctl.localcloud.smtp import INDEX_FILE, MAIL_DIR, SmtpSink, list_mail
from tests.cli.helpers import taskctl

PASSWORD = "s3cret-pa55word-for-the-sink"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    started = SmtpSink(tmp_path, "127.0.0.1")
    started.start()
    yield started
    started.stop()


def make_message(subject: str = "Invoice 42", message_id: str = "<m1@test>") -> bytes:
    message = EmailMessage()
    message["From"] = "billing@example.com"
    message["To"] = "alice@example.com"
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content("Your invoice is attached.\n")
    return message.as_bytes(policy=email.policy.SMTP)


def send(
    port: int, content: bytes, recipients: list[str], *, login: bool = False
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        if login:
            client.login("mailer", PASSWORD)
        return client.sendmail("billing@example.com", recipients, content)


def test_sink_stores_message_and_index(sink: SmtpSink, tmp_path: Path) -> None:
    content = make_message()
    refused = send(sink.port, content, ["alice@example.com"])

    # The index row exists as soon as the client receives its 250.
    stored = list_mail(tmp_path)
    assert refused == {}
    assert len(stored) == 1
    mail = stored[0]
    assert mail.message_id == "<m1@test>"
    assert mail.mail_from == "billing@example.com"
    assert mail.recipients == ("alice@example.com",)
    assert mail.subject == "Invoice 42"
    assert mail.path.parent == tmp_path / MAIL_DIR
    assert mail.path.suffix == ".eml"
    assert mail.path.read_bytes() == content
    assert mail.size == mail.path.stat().st_size


def test_sink_rejects_refused_domain(sink: SmtpSink, tmp_path: Path) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as raised:
        send(sink.port, make_message(), ["bob@refused.invalid"])
    code, reply = raised.value.recipients["bob@refused.invalid"]
    assert code == 550
    assert b"refused.invalid" in reply
    assert list_mail(tmp_path) == []


def test_sink_keeps_accepted_recipients(sink: SmtpSink, tmp_path: Path) -> None:
    refused = send(
        sink.port,
        make_message(),
        ["alice@example.com", "bob@REFUSED.invalid", "carol@example.com"],
    )

    assert set(refused) == {"bob@REFUSED.invalid"}
    assert refused["bob@REFUSED.invalid"][0] == 550
    stored = list_mail(tmp_path)
    assert len(stored) == 1
    assert stored[0].recipients == ("alice@example.com", "carol@example.com")


def test_sink_records_bcc_recipients(sink: SmtpSink, tmp_path: Path) -> None:
    # Bcc recipients are in the envelope only, never in the message's headers.
    send(sink.port, make_message(), ["alice@example.com", "audit@example.com"])

    stored = list_mail(tmp_path)
    assert stored[0].recipients == ("alice@example.com", "audit@example.com")
    assert b"audit@example.com" not in stored[0].path.read_bytes()


def test_sink_accepts_any_credentials(sink: SmtpSink, tmp_path: Path) -> None:
    send(sink.port, make_message(), ["alice@example.com"], login=True)

    stored = list_mail(tmp_path)
    assert len(stored) == 1
    index_bytes = (tmp_path / INDEX_FILE).read_bytes()
    assert PASSWORD.encode() not in index_bytes
    assert PASSWORD.encode() not in stored[0].path.read_bytes()


def test_sink_decodes_encoded_subject(sink: SmtpSink, tmp_path: Path) -> None:
    send(sink.port, make_message(subject="Grüße aus Köln"), ["alice@example.com"])

    assert list_mail(tmp_path)[0].subject == "Grüße aus Köln"


def test_list_mail_newest_first_with_limit(sink: SmtpSink, tmp_path: Path) -> None:
    for number in range(3):
        send(
            sink.port,
            make_message(subject=f"message {number}", message_id=f"<m{number}@test>"),
            ["alice@example.com"],
        )

    newest_two = list_mail(tmp_path, limit=2)
    assert [mail.subject for mail in newest_two] == ["message 2", "message 1"]
    assert len(list_mail(tmp_path)) == 3


def test_list_mail_without_index(tmp_path: Path) -> None:
    assert list_mail(tmp_path) == []


def test_sink_survives_restart(tmp_path: Path) -> None:
    first = SmtpSink(tmp_path, "127.0.0.1")
    first.start()
    try:
        send(first.port, make_message(message_id="<before@test>"), ["a@example.com"])
    finally:
        first.stop()
    second = SmtpSink(tmp_path, "127.0.0.1")
    second.start()
    try:
        send(second.port, make_message(message_id="<after@test>"), ["a@example.com"])
    finally:
        second.stop()

    message_ids = [mail.message_id for mail in list_mail(tmp_path)]
    assert message_ids == ["<after@test>", "<before@test>"]


def test_local_cloud_runs_sink(local_cloud: RuntimeInfo) -> None:
    state_dir = Path(local_cloud.state_dir)
    assert local_cloud.smtp_port > 0
    assert local_cloud.smtp_endpoint == f"127.0.0.1:{local_cloud.smtp_port}"

    marker = "<local-cloud-sink@test>"
    send(
        local_cloud.smtp_port,
        make_message(message_id=marker),
        ["alice@example.com"],
        login=True,
    )

    assert marker in [mail.message_id for mail in list_mail(state_dir, limit=1000)]
    log_text = (state_dir / "localcloud.log").read_text(errors="replace")
    assert PASSWORD not in log_text
    assert "SMTP sink listening on 127.0.0.1:" in log_text


def test_runtime_file_without_smtp_port(tmp_path: Path) -> None:
    old_file = {
        "pid": 1,
        "host": "127.0.0.1",
        "grpc_port": 1,
        "http_port": 2,
        "storage_port": 3,
        "state_dir": str(tmp_path),
        "started_at": 0.0,
    }
    (tmp_path / RUNTIME_FILE).write_text(json.dumps(old_file))

    info = RuntimeInfo.read(tmp_path)
    assert info is not None
    assert info.smtp_port == 0


def test_cli_emails_table_and_json(sink: SmtpSink, tmp_path: Path) -> None:
    send(sink.port, make_message(subject="Welcome aboard"), ["alice@example.com"])
    env = {"TASKCTL_STATE_DIR": str(tmp_path)}

    table = taskctl("local", "emails", env=env, cwd=tmp_path)
    assert table.code == 0, table.stderr
    assert "Welcome aboard" in table.stdout
    assert "billing@example.com" in table.stdout
    assert "alice@example.com" in table.stdout

    listed = taskctl("--json", "local", "emails", "--limit", "1", env=env, cwd=tmp_path)
    assert listed.code == 0, listed.stderr
    entries = listed.json()
    assert len(entries) == 1
    assert entries[0]["subject"] == "Welcome aboard"
    assert entries[0]["recipients"] == ["alice@example.com"]
    assert Path(entries[0]["file"]).is_file()


def test_cli_emails_empty_and_bad_limit(tmp_path: Path) -> None:
    env = {"TASKCTL_STATE_DIR": str(tmp_path)}

    empty = taskctl("local", "emails", env=env, cwd=tmp_path)
    assert empty.code == 0, empty.stderr
    assert "No mail" in empty.stdout

    listed = taskctl("--json", "local", "emails", env=env, cwd=tmp_path)
    assert listed.json() == []

    invalid = taskctl("local", "emails", "--limit", "0", env=env, cwd=tmp_path)
    assert invalid.code == 2


def test_index_row_per_message(sink: SmtpSink, tmp_path: Path) -> None:
    send(sink.port, make_message(), ["alice@example.com"])
    send(sink.port, make_message(), ["alice@example.com"])

    with sqlite3.connect(tmp_path / INDEX_FILE) as connection:
        (count,) = connection.execute("SELECT count(*) FROM messages").fetchone()
    files = sorted((tmp_path / MAIL_DIR).iterdir())
    assert count == 2
    assert len(files) == 2
    assert all(path.suffix == ".eml" for path in files)


def instance_with(environment_variables: dict[str, str], tmp_path: Path) -> Instance:
    fields: dict[str, Any] = {
        "project": "taskctl-test",
        "location": "us-central1",
        "function_id": "mailer",
        "revision_name": "mailer-00001",
        "source_dir": tmp_path,
        "entry_point": "handle_task",
        "signature_type": "cloudevent",
        "timeout_seconds": 60,
        "concurrency": 1,
        "environment_variables": environment_variables,
    }
    # Fields that InstanceSpec gains later (such as max_instances) get 1, because
    # the SMTP variables do not depend on them.
    required = {
        field.name
        for field in dataclasses.fields(InstanceSpec)
        if field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    }
    for name in required - set(fields):
        fields[name] = 1
    spec = InstanceSpec(**fields)
    return Instance(
        spec,
        host="127.0.0.1",
        grpc_endpoint="127.0.0.1:1",
        storage_endpoint="http://127.0.0.1:2",
        container_log=None,
        smtp_port=2525,
    )


def test_instance_environment_names_sink(tmp_path: Path) -> None:
    environment = instance_with({}, tmp_path).environment()

    assert environment["SMTP_HOST"] == "127.0.0.1"
    assert environment["SMTP_PORT"] == "2525"
    assert environment["SMTP_TLS"] == "none"


def test_instance_environment_keeps_own_server(tmp_path: Path) -> None:
    own = {"SMTP_HOST": "mail.example.com", "SMTP_TLS": "starttls"}
    environment = instance_with(own, tmp_path).environment()

    assert environment["SMTP_HOST"] == "mail.example.com"
    assert environment["SMTP_TLS"] == "starttls"
    assert environment.get("SMTP_PORT") != "2525"


def test_sink_reads_smtputf8_headers(sink: SmtpSink, tmp_path: Path) -> None:
    message = EmailMessage()
    message["From"] = "billing@example.com"
    message["To"] = "jörg@münchen.example"
    message["Subject"] = "Grüße aus Köln"
    message.set_content("Hallo\n")

    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
        client.send_message(message)

    stored = list_mail(tmp_path)
    assert stored[0].subject == "Grüße aus Köln"
    assert stored[0].recipients == ("jörg@münchen.example",)


def test_cli_status_shows_smtp_endpoint(
    local_cloud: RuntimeInfo, tmp_path: Path
) -> None:
    env = {"TASKCTL_STATE_DIR": local_cloud.state_dir}

    listed = taskctl("--json", "local", "status", env=env, cwd=tmp_path)
    table = taskctl("local", "status", env=env, cwd=tmp_path)

    assert listed.code == 0, listed.stderr
    assert listed.json()["smtp_endpoint"] == local_cloud.smtp_endpoint
    assert table.code == 0, table.stderr
    assert local_cloud.smtp_endpoint in table.stdout
