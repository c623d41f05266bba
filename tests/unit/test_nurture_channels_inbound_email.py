"""Inbound email, read without I/O: DSNs (RFC 3464), replies and auto-replies, which of our
messages they name, the relay's signature; hard-bounce rules for SMTP refusals and DSN
statuses; and the inbound flow on the in-memory channel store."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime

import pytest

from services.nurture.channels.bounces import (
    dsn_is_hard_bounce,
    email_key,
    smtp_refusal_is_hard_bounce,
)
from services.nurture.channels.inbound_email import (
    BadInboundMailError,
    MailKind,
    our_message_ids,
    read_inbound,
    send_key_of,
    sign_body,
    signature_valid,
)
from services.nurture.channels.usecases import InboundEmails
from services.nurture.rules import SendRecord, SendStatus, send_key
from services.nurture.sending import message_id_of
from shared.events import EngagementRecordedV1, MessageStatusUpdatedV1
from tests.fakes.nurture_channels import InMemoryChannelStore

DOMAIN = "leadflow.example"
NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def dsn(
    *,
    action: str = "failed",
    status: str = "5.1.1",
    recipient: str = "Dana@Example.com",
    original: str = "text/rfc822-headers",
    original_id: str = f"<enr1.0@{DOMAIN}>",
) -> bytes:
    returned = f"From: leadflow <nurture@{DOMAIN}>\r\nTo: {recipient}\r\nSubject: Hi\r\n"
    returned += f"Message-ID: {original_id}\r\n"
    if original == "message/rfc822":
        returned += "Content-Type: text/plain\r\n\r\nHello Dana\r\n"
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        f"To: bounces@{DOMAIN}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.example.net>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type="delivery-status"; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n"
        "Arrival-Date: Wed, 2 Dec 2026 02:00:00 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected\r\n"
        f"\r\n--B\r\nContent-Type: {original}\r\n\r\n{returned}\r\n--B--\r\n"
    ).encode()


def mail(*headers: str, body: str = "Saturday works for me.") -> bytes:
    base = ["From: Dana Kim <dana@example.com>", f"To: nurture@{DOMAIN}"]
    if not any(h.lower().startswith("subject:") for h in headers):
        base.append("Subject: Re: Spring offer")
    return ("\r\n".join([*base, *headers]) + "\r\n\r\n" + body + "\r\n").encode()


# --- delivery status notifications ----------------------------------------------------------


@pytest.mark.parametrize("original", ["text/rfc822-headers", "message/rfc822"])
def test_a_failed_permanent_dsn_is_a_hard_bounce_naming_our_message(original: str) -> None:
    read = read_inbound(dsn(original=original), message_id_domain=DOMAIN)
    assert read.kind is MailKind.HARD_BOUNCE
    assert read.our_message_ids == ("enr1.0",)
    [recipient] = read.hard_bounced
    assert (recipient.address, recipient.action, recipient.status) == (
        "dana@example.com",
        "failed",
        "5.1.1",
    )
    assert recipient.diagnostic is not None and "550 5.1.1" in recipient.diagnostic
    assert read.inbound_id == "<dsn-1@mx.example.net>"


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("delayed", "4.4.7"),  # still trying
        ("failed", "4.2.2"),  # a transient status, whatever the action says
        ("failed", "5.7.1"),  # refused as spam / by policy: not the address's fault
        ("delivered", "2.0.0"),
    ],
)
def test_a_dsn_that_is_no_hard_bounce_is_only_a_report(action: str, status: str) -> None:
    read = read_inbound(dsn(action=action, status=status), message_id_domain=DOMAIN)
    assert read.kind is MailKind.DELIVERY_REPORT
    assert read.hard_bounced == ()
    assert read.our_message_ids == ("enr1.0",)


def test_a_dsn_about_someone_elses_message_names_none_of_ours() -> None:
    read = read_inbound(dsn(original_id="<abc@other.example>"), message_id_domain=DOMAIN)
    assert (read.kind, read.our_message_ids) == (MailKind.HARD_BOUNCE, ())


# --- replies and auto-replies ---------------------------------------------------------------


def test_a_reply_names_our_message_from_in_reply_to_then_references_newest_first() -> None:
    read = read_inbound(
        mail(
            "Message-ID: <CAF+reply@mail.example.com>",
            f"In-Reply-To: <enr2.1@{DOMAIN}>",
            f"References: <enr2.0@{DOMAIN}> <x@other.example>\r\n <enr2.1@{DOMAIN.upper()}>",
        ),
        message_id_domain=DOMAIN,
    )
    assert read.kind is MailKind.REPLY
    assert read.our_message_ids == ("enr2.1", "enr2.0")
    assert (read.inbound_id, read.sender) == ("<CAF+reply@mail.example.com>", "dana@example.com")


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-replied",
        "Auto-Submitted: auto-generated; owner-email=it@example.com",
        "X-Autoreply: yes",
        "Precedence: bulk",
        "List-Id: <news.example.com>",
        "Subject: Automatic reply: Spring offer",
        "Subject: Out of Office: Spring offer",
        "Subject: =?UTF-8?B?7J6Q64+ZIO2ajOyLoDog67O0IOyViOuCtA==?=",  # "자동 회신: 봄 안내"
        "Subject: =?UTF-8?B?6Ieq5Yqo5Zue5aSNOiDmmKXlraPkvJjmg6A=?=",  # "自动回复: 春季优惠"
    ],
)
def test_automatic_answers_are_not_replies(header: str) -> None:
    read = read_inbound(mail(header, f"In-Reply-To: <enr3.0@{DOMAIN}>"), message_id_domain=DOMAIN)
    assert read.kind is MailKind.AUTOMATED, read.why
    assert read.our_message_ids == ("enr3.0",)


def test_auto_submitted_no_is_a_person() -> None:
    read = read_inbound(
        mail("Auto-Submitted: no", f"In-Reply-To: <enr3.0@{DOMAIN}>"), message_id_domain=DOMAIN
    )
    assert read.kind is MailKind.REPLY


def test_a_bounce_that_is_not_rfc_3464_is_not_a_reply() -> None:
    raw = mail(f"In-Reply-To: <enr4.0@{DOMAIN}>", body="550 user unknown").replace(
        b"Dana Kim <dana@example.com>", b"MAILER-DAEMON@mx.example.net"
    )
    assert read_inbound(raw, message_id_domain=DOMAIN).kind is MailKind.AUTOMATED


def test_a_message_with_no_message_id_is_known_by_its_bytes() -> None:
    raw = mail(f"In-Reply-To: <enr5.0@{DOMAIN}>")
    first, again = (read_inbound(raw, message_id_domain=DOMAIN) for _ in range(2))
    assert first.inbound_id.startswith("sha256:") and first.inbound_id == again.inbound_id


@pytest.mark.parametrize("raw", [b"", b"   \r\n", b"\r\n\r\njust a body"])
def test_bytes_with_no_header_are_refused(raw: bytes) -> None:
    with pytest.raises(BadInboundMailError):
        read_inbound(raw, message_id_domain=DOMAIN)


def test_our_message_ids_keep_our_domain_only_and_each_once() -> None:
    assert our_message_ids([f"<a.0@{DOMAIN}> <b@x.example> <a.0@{DOMAIN}>", ""], DOMAIN) == ("a.0",)


def test_a_message_id_maps_back_to_its_send_record_key() -> None:
    assert send_key_of(message_id_of("0f3a", 2)) == send_key("0f3a", 2)
    assert send_key_of("no-step") is None
    assert send_key_of("enr.x") is None


# --- the relay's signature ------------------------------------------------------------------


def test_the_signature_covers_the_exact_body_under_a_current_or_previous_secret() -> None:
    body = mail("Message-ID: <s@example.com>")
    signed = sign_body("current", body)
    assert signed.startswith("sha256=")
    assert signature_valid(["current"], body, signed)
    assert signature_valid(["current", "old"], body, sign_body("old", body))
    assert not signature_valid(["current"], body + b" ", signed)
    assert not signature_valid(["current"], body, sign_body("guess", body))
    assert not signature_valid(["current"], body, None)
    assert not signature_valid(["current"], body, "sha256=" + "0" * 64)
    assert not signature_valid(["current"], body, "ünïcode")


# --- hard-bounce rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reply", "at_recipient", "hard"),
    [
        (550, "5.1.1 no such user", True, True),
        (550, "no such user", True, True),
        (553, "mailbox name not allowed", True, True),
        (550, "5.7.1 relay access denied", True, False),  # our problem, not the address
        (554, "transaction failed", True, False),
        (552, "5.3.4 message too big", False, False),
        (554, "5.1.1 recipient rejected after DATA", False, True),
        (550, "5.6.0 content rejected", False, False),
        (450, "4.2.1 try later", True, False),
    ],
)
def test_which_smtp_refusals_are_hard_bounces(
    code: int, reply: str, at_recipient: bool, hard: bool
) -> None:
    assert smtp_refusal_is_hard_bounce(code, reply, at_recipient=at_recipient) is hard


@pytest.mark.parametrize(
    ("action", "status", "hard"),
    [
        ("failed", "5.1.1", True),
        ("Failed", "5.0.0", True),
        ("failed", "5.4.4", True),  # no route to the domain
        ("failed", "5.7.1", False),
        ("failed", "4.4.7", False),
        ("delayed", "5.1.1", False),
        ("failed", "garbage", False),
    ],
)
def test_which_dsn_recipients_are_hard_bounces(action: str, status: str, hard: bool) -> None:
    assert dsn_is_hard_bounce(action, status) is hard


def test_addresses_are_suppressed_case_insensitively() -> None:
    assert email_key(" <Dana@Example.COM> ") == email_key("dana@example.com")


# --- the inbound flow (in memory) -----------------------------------------------------------


class SendRecords:
    def __init__(self, *records: SendRecord) -> None:
        self.records = {r.key: r for r in records}
        self.reads = 0

    async def send_records(self, keys: Collection[str]) -> Mapping[str, SendRecord]:
        self.reads += 1
        return {k: self.records[k] for k in keys if k in self.records}


def sent(enrollment_id: str, step: int, lead_id: str) -> SendRecord:
    return SendRecord(
        key=send_key(enrollment_id, step),
        lead_id=lead_id,
        enrollment_id=enrollment_id,
        sequence_id="spring",
        step=step,
        channel="email",
        status=SendStatus.SENT,
        reserved_at=NOW,
        sent_at=NOW,
    )


async def test_replies_and_bounces_in_one_batch_each_count_once() -> None:
    store = InMemoryChannelStore()
    records = SendRecords(sent("enr1", 0, "lead-bounced"), sent("enr6", 1, "lead-replied"))
    inbound = InboundEmails(store, records, clock=lambda: NOW)
    reply = read_inbound(
        mail("Message-ID: <r1@example.com>", f"In-Reply-To: <enr6.1@{DOMAIN}>"),
        message_id_domain=DOMAIN,
    )
    auto = read_inbound(
        mail("Auto-Submitted: auto-replied", f"In-Reply-To: <enr6.1@{DOMAIN}>"),
        message_id_domain=DOMAIN,
    )
    stranger = read_inbound(
        mail("Message-ID: <r2@example.com>", f"In-Reply-To: <nobody.0@{DOMAIN}>"),
        message_id_domain=DOMAIN,
    )
    bounce = read_inbound(dsn(), message_id_domain=DOMAIN)

    outcomes = await inbound.record([reply, auto, stranger, bounce, reply])
    assert [(o.kind, o.lead_id, o.message_id, o.changed) for o in outcomes] == [
        (MailKind.REPLY, "lead-replied", "enr6.1", True),
        (MailKind.AUTOMATED, "lead-replied", "enr6.1", False),  # whose, but no engagement
        (MailKind.REPLY, None, None, False),  # names no message we sent
        (MailKind.HARD_BOUNCE, "lead-bounced", "enr1.0", True),
        (MailKind.REPLY, "lead-replied", "enr6.1", False),  # the same email posted twice
    ]
    assert records.reads == 1
    events = list(store.ledger.outbox)
    assert [type(e) for e in events] == [EngagementRecordedV1, MessageStatusUpdatedV1]
    engagement, status = events
    assert isinstance(engagement, EngagementRecordedV1)
    assert (engagement.kind, engagement.channel, engagement.sequence_id, engagement.step) == (
        "reply",
        "email",
        "spring",
        1,
    )
    assert isinstance(status, MessageStatusUpdatedV1)
    assert (status.lead_id, status.status, status.error_code) == (
        "lead-bounced",
        "bounced",
        "5.1.1",
    )
    assert await store.suppressed_emails(["dana@example.com"]) == {"dana@example.com"}

    again = await inbound.record([bounce])
    assert not again[0].changed
    assert len(store.ledger.outbox) == 2
