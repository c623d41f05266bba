"""The senders against real protocol servers on loopback: an SMTP server (aiosmtpd) and
an HTTP receiver that checks the signature with its own HMAC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import httpx
import pytest

from leadflow.localinfra import LOOPBACK, free_port
from leadflow.sinks import MailSink
from services.assignment.notifications.channels import (
    DeliveryError,
    EmailSender,
    SmtpServer,
    WebhookSender,
)
from services.assignment.notifications.rules import (
    Notice,
    NoticeKind,
    Preferences,
    email_for,
    webhook_request,
)
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.unit

NOTICE = Notice(
    notice_id="evt-1:lead-assigned:rita",
    kind=NoticeKind.ASSIGNED,
    person_id="rita",
    lead_id="lead-1",
    at=datetime(2026, 5, 4, 9, 0, tzinfo=UTC),
    text="New lead lead-1 is yours.",
    details={"pool_id": "seoul"},
)


@pytest.fixture
def sink() -> Iterator[MailSink]:
    with MailSink() as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver("s3cret").running() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def smtp(port: int) -> EmailSender:
    return EmailSender(SmtpServer(LOOPBACK, port, "leadflow@example.com", timeout_s=2))


async def test_an_email_arrives_at_the_smtp_server_with_subject_body_and_message_id(
    sink: MailSink,
) -> None:
    message = email_for(NOTICE, "rita@example.com", delivery_id="evt-1:...:email")

    await smtp(sink.port).send(message)

    [mail] = sink.messages
    assert mail.rcpt_tos == ("rita@example.com",)
    assert mail.mail_from == "leadflow@example.com"
    assert mail.header("Subject") == "[leadflow] New lead lead-1 is yours."
    assert mail.header("Message-ID") == message.message_id
    assert "pool_id: seoul" in (mail.part("text/plain") or "")


async def test_a_mailbox_refused_for_good_is_a_permanent_failure(sink: MailSink) -> None:
    sink.refused["gone@example.com"] = 550

    with pytest.raises(DeliveryError) as refused:
        await smtp(sink.port).send(email_for(NOTICE, "gone@example.com", delivery_id="d"))

    assert refused.value.permanent
    assert "550" in refused.value.reason
    assert sink.messages == []


async def test_a_mailbox_refused_for_now_is_retried(sink: MailSink) -> None:
    sink.refused["busy@example.com"] = 451

    with pytest.raises(DeliveryError) as refused:
        await smtp(sink.port).send(email_for(NOTICE, "busy@example.com", delivery_id="d"))

    assert not refused.value.permanent


async def test_an_smtp_server_that_is_down_is_a_temporary_failure() -> None:
    with pytest.raises(DeliveryError) as down:
        await smtp(free_port()).send(email_for(NOTICE, "rita@example.com", delivery_id="d"))

    assert not down.value.permanent


async def test_a_signed_webhook_is_accepted_by_a_receiver_checking_the_hmac(
    receiver: WebhookReceiver, http: httpx.AsyncClient
) -> None:
    preferences = Preferences(webhook_url=receiver.url, webhook_secret="s3cret")
    request = webhook_request(NOTICE, preferences, delivery_id="d-1", now=datetime.now(UTC))

    await WebhookSender(http, timeout_s=2).send(request)

    [received] = receiver.received
    assert received.signed_ok
    assert received.delivery_id == "d-1"
    assert received.json()["text"] == "New lead lead-1 is yours."


async def test_a_webhook_signed_with_another_secret_is_refused_for_good(
    receiver: WebhookReceiver, http: httpx.AsyncClient
) -> None:
    preferences = Preferences(webhook_url=receiver.url, webhook_secret="not-theirs")
    request = webhook_request(NOTICE, preferences, delivery_id="d-1", now=datetime.now(UTC))

    with pytest.raises(DeliveryError) as refused:
        await WebhookSender(http, timeout_s=2).send(request)

    assert refused.value.permanent
    assert [r.status for r in receiver.received] == [401]


async def test_a_webhook_answering_503_is_retried(
    receiver: WebhookReceiver, http: httpx.AsyncClient
) -> None:
    receiver.set_mode("fail")
    preferences = Preferences(webhook_url=receiver.url, webhook_secret="s3cret")
    request = webhook_request(NOTICE, preferences, delivery_id="d-1", now=datetime.now(UTC))

    with pytest.raises(DeliveryError) as failed:
        await WebhookSender(http, timeout_s=2).send(request)

    assert not failed.value.permanent


async def test_a_webhook_that_never_answers_times_out_as_a_temporary_failure(
    receiver: WebhookReceiver, http: httpx.AsyncClient
) -> None:
    receiver.set_mode("hang")
    preferences = Preferences(webhook_url=receiver.url, webhook_secret="s3cret")
    request = webhook_request(NOTICE, preferences, delivery_id="d-1", now=datetime.now(UTC))
    started = time.monotonic()

    with pytest.raises(DeliveryError) as failed:
        await WebhookSender(http, timeout_s=0.5).send(request)

    assert not failed.value.permanent
    assert time.monotonic() - started < 2
    await asyncio.sleep(0)  # the receiver still holds the request; the fixture releases it
