"""The senders against real protocol servers on loopback: email to an aiosmtpd SMTP server
(`MailSink`), SMS to the fake Twilio (`FakeTwilio`), reading what arrived."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import dkim  # type: ignore[import-untyped]
import httpx
import pytest

from leadflow.sinks import FakeTwilio, MailSink
from services.nurture.channels.email import (
    DkimKey,
    EmailIdentity,
    OutboundEmail,
    SmtpConfig,
    SmtpEmailSender,
)
from services.nurture.channels.errors import (
    PermanentSendError,
    RecipientOptedOutError,
    RetryableSendError,
)
from services.nurture.channels.sms import OutboundSms, TwilioConfig, TwilioSmsSender
from services.nurture.channels.tokens import LinkBuilder, TokenKind, TokenSigner
from tests.support.nurture_channels import dkim_key_pair
from tests.support.services import eventually

pytestmark = pytest.mark.integration

SIGNER = TokenSigner("integration-secret")
LINKS = LinkBuilder("https://nurture.example.com", SIGNER)
IDENTITY = EmailIdentity(sender="Acme <hello@acme.example>", message_id_domain="acme.example")
FROM_NUMBER = "+15005550006"


@pytest.fixture(scope="module")
def mail_sink() -> Iterator[MailSink]:
    with MailSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


def an_email(to: str = "dana@example.com", **changes: str) -> OutboundEmail:
    fields = {
        "message_id": f"m-{uuid.uuid4().hex}",
        "lead_id": "lead-1",
        "to": to,
        "subject": "회원권 안내",
        "html": "<p>Hi <a href='https://acme.example/x'>x</a></p>",
        "text": "Hi",
    }
    fields.update(changes)
    return OutboundEmail(**fields)  # type: ignore[arg-type]


def email_sender(sink: MailSink, dkim_key: DkimKey | None = None) -> SmtpEmailSender:
    return SmtpEmailSender(
        SmtpConfig(host=sink.host, port=sink.port, start_tls=False, connections=2),
        IDENTITY,
        LINKS,
        clock=lambda: datetime.now(UTC),
        dkim_key=dkim_key,
    )


async def test_an_email_arrives_with_its_headers_and_a_valid_dkim_signature(
    mail_sink: MailSink,
) -> None:
    pair = dkim_key_pair()
    sender = email_sender(mail_sink, DkimKey("s1", "acme.example", pair.private_pem))
    outbound = an_email()
    try:
        message_id = await sender.send(outbound)
    finally:
        await sender.close()
    assert message_id == f"<{outbound.message_id}@acme.example>"
    [arrived] = [m for m in mail_sink.messages if m.header("Message-ID") == message_id]
    assert arrived.rcpt_tos == ("dana@example.com",)
    assert arrived.mail_from == "hello@acme.example"
    assert arrived.header("Subject") == "회원권 안내"
    assert arrived.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    unsubscribe = arrived.header("List-Unsubscribe")
    assert unsubscribe is not None and unsubscribe.startswith("<https://nurture.example.com/u/")
    token = unsubscribe.strip("<>").rsplit("/", 1)[1]
    assert SIGNER.verify(token, TokenKind.UNSUBSCRIBE).message_id == outbound.message_id
    # The bytes as the server stored them still verify: nothing on the way altered them.
    assert dkim.verify(arrived.data, dnsfunc=pair.dns(b"s1._domainkey.acme.example."))


async def test_many_emails_over_kept_open_connections_all_arrive_once(
    mail_sink: MailSink,
) -> None:
    sender = email_sender(mail_sink)
    emails = [an_email(to=f"bulk{i}@example.com") for i in range(40)]
    try:
        ids = await asyncio.gather(*(sender.send(e) for e in emails))
    finally:
        await sender.close()
    arrived = [m.header("Message-ID") for m in mail_sink.messages]
    assert all(arrived.count(message_id) == 1 for message_id in ids)


async def test_a_refused_recipient_is_permanent_and_a_deferral_retryable(
    mail_sink: MailSink,
) -> None:
    mail_sink.refused.update({"gone@example.com": 550, "busy@example.com": 451})
    sender = email_sender(mail_sink)
    try:
        with pytest.raises(PermanentSendError) as permanent:
            await sender.send(an_email(to="gone@example.com"))
        assert not isinstance(permanent.value, RetryableSendError)
        assert permanent.value.code == "550"
        with pytest.raises(RetryableSendError) as deferred:
            await sender.send(an_email(to="busy@example.com"))
        assert deferred.value.code == "451"
        # The connection is still good for the next message.
        await sender.send(an_email(to="fine@example.com"))
    finally:
        await sender.close()
    assert "fine@example.com" in [m.rcpt_tos[0] for m in mail_sink.messages]


async def test_an_unreachable_smtp_server_is_retryable() -> None:
    from leadflow.localinfra import free_port  # noqa: PLC0415

    sender = SmtpEmailSender(
        SmtpConfig(host="127.0.0.1", port=free_port(), timeout_s=2),
        IDENTITY,
        LINKS,
        clock=lambda: datetime.now(UTC),
    )
    with pytest.raises(RetryableSendError):
        await sender.send(an_email())


def sms_sender(twilio: FakeTwilio, **changes: str) -> TwilioSmsSender:
    config = {
        "base_url": twilio.base_url,
        "account_sid": twilio.account_sid,
        "auth_token": twilio.auth_token,
        "from_number": FROM_NUMBER,
    }
    config.update(changes)
    return TwilioSmsSender(TwilioConfig(**config), LINKS)  # type: ignore[arg-type]


def an_sms(to: str, body: str = "안녕하세요, 이번 주 무료 체험 어떠세요?") -> OutboundSms:
    return OutboundSms(message_id=f"m-{uuid.uuid4().hex}", lead_id="lead-9", to=to, body=body)


async def test_an_sms_reaches_the_provider_with_its_parameters(twilio: FakeTwilio) -> None:
    sender = sms_sender(twilio)
    twilio.send_callbacks = False
    sms = an_sms("+821012345678")
    try:
        sid = await sender.send(sms)
    finally:
        await sender.close()
        twilio.send_callbacks = True
    [arrived] = [m for m in twilio.messages if m.sid == sid]
    assert sid.startswith("SM") and len(sid) == 34
    assert (arrived.to, arrived.from_, arrived.body) == ("+821012345678", FROM_NUMBER, sms.body)
    assert (arrived.encoding, arrived.segments) == ("UCS-2", 1)
    assert arrived.status_callback is not None
    assert arrived.status_callback.startswith("https://nurture.example.com/v1/sms/status?m=")
    token = arrived.status_callback.split("m=", 1)[1]
    claims = SIGNER.verify(token, TokenKind.SMS_STATUS)
    assert (claims.lead_id, claims.message_id) == ("lead-9", sms.message_id)


async def test_a_recipient_opted_out_at_the_carrier_is_its_own_error(twilio: FakeTwilio) -> None:
    twilio.opted_out.add("+821099990000")
    sender = sms_sender(twilio)
    try:
        with pytest.raises(RecipientOptedOutError) as refused:
            await sender.send(an_sms("+821099990000"))
    finally:
        await sender.close()
    assert refused.value.code == "21610"
    assert not isinstance(refused.value, RetryableSendError)


async def test_a_provider_500_is_retryable_and_the_retry_goes_through(twilio: FakeTwilio) -> None:
    twilio.fail_next(1, http_status=500)
    sender = sms_sender(twilio)
    sms = an_sms("+821011112222")
    try:
        with pytest.raises(RetryableSendError) as failed:
            await sender.send(sms)
        assert failed.value.code == "20500"
        sid = await sender.send(sms)
    finally:
        await sender.close()
    assert [m.sid for m in twilio.messages if m.to == "+821011112222"] == [sid]


async def test_bad_parameters_and_bad_credentials_are_permanent(twilio: FakeTwilio) -> None:
    sender = sms_sender(twilio)
    wrong_token = sms_sender(twilio, auth_token="nope")
    try:
        with pytest.raises(PermanentSendError) as bad_number:
            await sender.send(an_sms("01012345678"))  # not E.164
        assert bad_number.value.code == "21211"
        with pytest.raises(PermanentSendError) as unauthorised:
            await wrong_token.send(an_sms("+821012345678"))
        assert unauthorised.value.code == "20003"
    finally:
        await sender.close()
        await wrong_token.close()


async def test_an_unreachable_provider_is_retryable() -> None:
    from leadflow.localinfra import free_port  # noqa: PLC0415

    sender = TwilioSmsSender(
        TwilioConfig(
            base_url=f"http://127.0.0.1:{free_port()}",
            account_sid="AC1",
            auth_token="t",
            from_number=FROM_NUMBER,
        ),
        LINKS,
    )
    try:
        with pytest.raises(RetryableSendError):
            await sender.send(an_sms("+821012345678"))
    finally:
        await sender.close()


async def test_the_fake_reports_queued_sent_delivered_signed_to_the_status_callback(
    twilio: FakeTwilio,
) -> None:
    """What the fake posts is what Twilio posts: verified with the twilio package."""
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415
    from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]  # noqa: PLC0415
    from uvicorn import Config, Server  # noqa: PLC0415

    from leadflow.localinfra import free_port  # noqa: PLC0415

    received: list[tuple[str, bool]] = []
    validator = RequestValidator(twilio.auth_token)

    async def status(request: Request) -> Response:
        form = await request.form()
        params = {k: str(v) for k, v in form.items()}
        ok = validator.validate(str(request.url), params, request.headers["X-Twilio-Signature"])
        received.append((params["MessageStatus"], ok))
        return Response(status_code=204)

    port = free_port()
    server = Server(
        Config(
            Starlette(routes=[Route("/status", status, methods=["POST"])]),
            host="127.0.0.1",
            port=port,
            log_config=None,
        )
    )
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: asyncio.sleep(0, server.started), bool, timeout_s=10)
    try:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{twilio.base_url}/2010-04-01/Accounts/{twilio.account_sid}/Messages.json",
                data={
                    "To": "+821055556666",
                    "From": FROM_NUMBER,
                    "Body": "hi",
                    "StatusCallback": f"http://127.0.0.1:{port}/status?m=abc",
                },
                auth=(twilio.account_sid, twilio.auth_token),
            )
        assert response.status_code == 201
        assert response.json()["status"] == "queued"
        await eventually(lambda: asyncio.sleep(0, len(received)), lambda n: n == 3)
    finally:
        server.should_exit = True
        await serving
    assert received == [("queued", True), ("sent", True), ("delivered", True)]


async def test_the_fake_can_be_told_over_http_to_refuse_a_number(twilio: FakeTwilio) -> None:
    async with httpx.AsyncClient(base_url=twilio.base_url) as client:
        told = await client.post(
            "/sink/sms/failures",
            json={"opted_out": ["+821077778888"], "failing": {"+821066667777": 21614}},
        )
        assert told.status_code == 200 and "+821077778888" in told.json()["opted_out"]
        bad = await client.post("/sink/sms/failures", content=b"not json")
        assert bad.status_code == 422
    sender = sms_sender(twilio)
    try:
        with pytest.raises(RecipientOptedOutError):
            await sender.send(an_sms("+821077778888"))
        with pytest.raises(PermanentSendError) as refused:
            await sender.send(an_sms("+821066667777"))
        assert refused.value.code == "21614"
        assert not isinstance(refused.value, RecipientOptedOutError)
    finally:
        await sender.close()


async def test_a_text_back_to_an_unreachable_webhook_is_a_502_not_a_crash(
    twilio: FakeTwilio,
) -> None:
    from leadflow.localinfra import free_port  # noqa: PLC0415

    twilio.inbound_url = f"http://127.0.0.1:{free_port()}/v1/sms/inbound"
    try:
        async with httpx.AsyncClient(base_url=twilio.base_url) as client:
            answer = await client.post(
                "/sink/sms/inbound", data={"From": "+821012345678", "Body": "hi"}
            )
            missing = await client.post("/sink/sms/inbound", data={"Body": "hi"})
    finally:
        twilio.inbound_url = None
    assert answer.status_code == 502 and "did not answer" in answer.json()["detail"]
    assert missing.status_code == 422
