"""Email that comes back, on the running nurture service (a real port): real broker and
database, the send loop mailing the real SMTP sink (aiosmtpd), and the signed inbound-mail
webhook fed the replies and delivery status notifications a relay would post, directly or
from the local sink's page."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest

from leadflow.chassis.auth import Role
from leadflow.sinks import FakeTwilio, MailSink, ReceivedMail
from services.nurture.app import create_app
from services.nurture.channels.inbound_email import SIGNATURE_HEADER, sign_body
from services.nurture.channels.runtime import ChannelWebhooks
from services.nurture.settings import Settings
from shared.events import (
    Attribution,
    Consent,
    Contact,
    EngagementRecordedV1,
    Event,
    LeadReceivedV1,
    MessageFailedV1,
    MessageStatusUpdatedV1,
)
from shared.topics import EVENT_ON, topic_for
from tests.conftest import Keys
from tests.support.infra import Infra
from tests.support.kafka import publish_event, read_all, start_group_at_end
from tests.support.loopback import serve_on_loopback
from tests.support.services import eventually, settings_for, wait_ready

pytestmark = pytest.mark.integration

SECRET = "inbound-integration-secret"
DOMAIN = "nurture-inbound.example"
EMAIL_STEP = {
    "channel": "email",
    "delay_hours": 0,
    "subject": "Spring offer for {{ first_name }}",
    "body": "Hello {{ name }}, our spring classes start soon.",
}


@dataclass
class ShiftedClock:
    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Nurture:
    client: httpx.AsyncClient
    channels: ChannelWebhooks
    clock: ShiftedClock
    keys: Keys
    infra: Infra
    sink: MailSink
    twilio: FakeTwilio

    async def lead(self, address: str | None = None) -> tuple[str, str]:
        lead_id = f"lead-{uuid.uuid4().hex}"
        address = address or f"{lead_id}@example.com"
        await publish_event(
            self.infra.kafka_bootstrap,
            LeadReceivedV1(
                lead_id=lead_id,
                occurred_at=self.clock() - timedelta(minutes=1),
                contact=Contact(name="Dana Kim", email=address, timezone="Asia/Seoul"),
                attribution=Attribution(source="website", channel="web_form"),
                consent=Consent(email=True, sms=False),
            ),
        )
        return lead_id, address

    async def enrolled(self, lead_id: str, *steps: dict[str, Any]) -> None:
        headers = await self.keys.headers(Role.MARKETING)
        sequence_id = f"seq-{uuid.uuid4().hex[:10]}"
        body = {"sequence_id": sequence_id, "name": "Spring", "steps": list(steps)}
        created = await self.client.post("/v1/sequences", json=body, headers=headers)
        assert created.status_code == 201, created.text

        async def attempt() -> list[str]:
            enroll = {"sequence_id": sequence_id, "lead_ids": [lead_id]}
            response = await self.client.post("/v1/enrollments/bulk", json=enroll, headers=headers)
            assert response.status_code == 200, response.text
            refused: list[str] = response.json()["refused_lead_ids"]
            return refused  # not consumed yet: asked again

        await eventually(attempt, lambda refused: not refused, timeout_s=30)

    async def enrollment(self, lead_id: str) -> dict[str, Any]:
        headers = await self.keys.headers(Role.MARKETING)
        response = await self.client.get(f"/v1/enrollments/{lead_id}", headers=headers)
        body: dict[str, Any] = response.json()
        return body

    async def mails_to(self, address: str, count: int = 1) -> list[ReceivedMail]:
        async def arrived() -> list[ReceivedMail]:
            return [m for m in self.sink.messages if address in m.rcpt_tos]

        return await eventually(arrived, lambda found: len(found) >= count, timeout_s=30)

    async def post_mail(
        self, raw: bytes, *, signature: str | None = None, form: bool = False
    ) -> httpx.Response:
        if form:
            request = self.client.build_request(
                "POST", "/v1/email/inbound", files={"message": ("m.eml", raw, "message/rfc822")}
            )
            body = request.read()
        else:
            body = raw
            request = self.client.build_request(
                "POST",
                "/v1/email/inbound",
                content=body,
                headers={"Content-Type": "message/rfc822"},
            )
        if signature != "":  # "": sent with no signature at all
            request.headers[SIGNATURE_HEADER] = signature or sign_body(SECRET, body)
        return await self.client.send(request)

    async def events(self, lead_id: str, model: type[Event]) -> list[Event]:
        records = await read_all(self.infra.kafka_bootstrap, topic_for(model))
        parsed = [EVENT_ON[topic_for(model)].model_validate_json(value) for value, _ in records]
        return [e for e in parsed if e.lead_id == lead_id]


@pytest.fixture(scope="module")
def sink() -> Iterator[MailSink]:
    with MailSink() as mail:
        yield mail


@pytest.fixture(scope="module")
async def nurture(infra: Infra, run_id: str, keys: Keys, sink: MailSink) -> AsyncIterator[Nurture]:
    with FakeTwilio(mail_sink=sink, email_inbound_secret=SECRET) as twilio:
        clock = ShiftedClock()
        settings = settings_for(
            Settings,
            infra,
            run_id,
            database=f"leadflow_nurture_inbound_{run_id}",
            consumer_group=f"leadflow_nurture-inbound-{run_id}",
            smtp_host=sink.host,
            smtp_port=sink.port,
            smtp_starttls=False,
            twilio_base_url=twilio.base_url,
            public_url="http://nurture.test",
            email_message_id_domain=DOMAIN,
            email_inbound_secret=SECRET,
            quiet_hours_start=None,
            email_cap_per_day=100,
            email_cap_per_week=100,
            scheduler_idle_poll_s=0.2,
        )
        await start_group_at_end(settings.kafka_bootstrap, settings.consumer_group)
        app = create_app(settings, clock=clock)
        async with serve_on_loopback(app) as url, httpx.AsyncClient(base_url=url) as client:
            await wait_ready(client)
            twilio.email_inbound_url = f"{url}/v1/email/inbound"
            channels = app.state.channel_webhooks
            yield Nurture(client, channels, clock, keys, infra, sink, twilio)


def automatic(raw: bytes) -> bytes:
    """The same answer, sent by a vacation responder."""
    return b"Auto-Submitted: auto-replied\r\n" + raw


async def test_a_reply_to_a_sent_email_is_a_reply_and_ends_the_enrollment(
    nurture: Nurture,
) -> None:
    lead_id, address = await nurture.lead()
    await nurture.enrolled(lead_id, EMAIL_STEP, {**EMAIL_STEP, "delay_hours": 48})
    [mail] = await nurture.mails_to(address)
    reply = mail.reply("Saturday works.")

    answered = await nurture.post_mail(reply)
    assert answered.status_code == 200, answered.text
    assert answered.json()["kind"] == "reply"
    assert answered.json()["lead_id"] == lead_id
    assert answered.json()["changed"] is True
    again = await nurture.post_mail(reply)  # the relay posts it twice
    assert (again.status_code, again.json()["changed"]) == (200, False)

    [event] = await eventually(
        lambda: nurture.events(lead_id, EngagementRecordedV1), bool, timeout_s=30
    )
    assert isinstance(event, EngagementRecordedV1)
    assert (event.kind, event.channel, event.step) == ("reply", "email", 0)
    ended = await eventually(
        lambda: nurture.enrollment(lead_id), lambda e: e["status"] == "stopped", timeout_s=30
    )
    assert ended["stop_reason"] == "replied"


async def test_an_out_of_office_answer_is_not_a_reply(nurture: Nurture) -> None:
    lead_id, address = await nurture.lead()
    await nurture.enrolled(lead_id, EMAIL_STEP, {**EMAIL_STEP, "delay_hours": 48})
    [mail] = await nurture.mails_to(address)
    answered = await nurture.post_mail(
        automatic(mail.reply("I am away until Monday.")),
        form=True,
    )
    assert answered.status_code == 200, answered.text
    assert (answered.json()["kind"], answered.json()["changed"]) == ("automated", False)
    assert await nurture.channels.store.engagements([lead_id]) == []
    assert (await nurture.enrollment(lead_id))["status"] == "active"


async def test_a_dsn_bounces_the_message_and_no_lead_is_emailed_at_that_address_again(
    nurture: Nurture,
) -> None:
    lead_id, address = await nurture.lead()
    await nurture.enrolled(lead_id, EMAIL_STEP, {**EMAIL_STEP, "delay_hours": 1})
    [mail] = await nurture.mails_to(address)

    bounced = await nurture.post_mail(mail.bounce(), form=True)
    assert bounced.status_code == 200, bounced.text
    ours = (mail.header("Message-ID") or "").strip("<>").split("@")[0]
    assert bounced.json() == {
        "kind": "hard_bounce",
        "lead_id": lead_id,
        "message_id": ours,
        "changed": True,
    }
    [status] = await eventually(
        lambda: nurture.events(lead_id, MessageStatusUpdatedV1), bool, timeout_s=30
    )
    assert isinstance(status, MessageStatusUpdatedV1)
    assert (status.status, status.channel, status.error_code) == ("bounced", "email", "5.1.1")
    assert await nurture.channels.store.suppressed_emails([address]) == {address}
    ended = await eventually(
        lambda: nurture.enrollment(lead_id), lambda e: e["status"] == "stopped", timeout_s=30
    )
    assert ended["stop_reason"] == "bounced"

    # Another lead with the same address: its email is skipped, never handed to the server.
    other_id, _ = await nurture.lead(address)
    await nurture.enrolled(other_id, EMAIL_STEP)
    done = await eventually(
        lambda: nurture.enrollment(other_id), lambda e: e["status"] == "completed", timeout_s=30
    )
    assert done["last_sent_at"] is None
    nurture.clock.offset += timedelta(hours=1, minutes=1)  # the first lead's next step falls due
    await asyncio.sleep(2)
    assert len([m for m in nurture.sink.messages if address in m.rcpt_tos]) == 1


async def test_a_forged_or_missing_signature_is_refused_and_changes_nothing(
    nurture: Nurture,
) -> None:
    lead_id, address = await nurture.lead()
    await nurture.enrolled(lead_id, EMAIL_STEP, {**EMAIL_STEP, "delay_hours": 48})
    [mail] = await nurture.mails_to(address)
    for raw, signature in [
        (mail.reply("hi"), sign_body("not-the-secret", mail.reply("hi"))),
        (mail.bounce(), "sha256=" + "0" * 64),
        (mail.bounce(), ""),
    ]:
        refused = await nurture.post_mail(raw, signature=signature)
        assert refused.status_code == 403, refused.text
    tampered = await nurture.client.post(
        "/v1/email/inbound",
        content=mail.bounce() + b" ",
        headers={"Content-Type": "message/rfc822", SIGNATURE_HEADER: sign_body(SECRET, b"x")},
    )
    assert tampered.status_code == 403
    await asyncio.sleep(1)  # anything stored would be published by now
    assert await nurture.channels.store.engagements([lead_id]) == []
    assert await nurture.channels.store.suppressed_emails([address]) == set()
    assert await nurture.events(lead_id, MessageStatusUpdatedV1) == []
    assert (await nurture.enrollment(lead_id))["status"] == "active"


async def test_an_unreadable_post_names_what_is_wrong(nurture: Nurture) -> None:
    text = b"hello"
    wrong_type = await nurture.client.post(
        "/v1/email/inbound",
        content=text,
        headers={"Content-Type": "text/plain", SIGNATURE_HEADER: sign_body(SECRET, text)},
    )
    assert wrong_type.status_code == 415
    no_field = nurture.client.build_request(
        "POST", "/v1/email/inbound", files={"attachment": ("a.txt", b"x", "text/plain")}
    )
    no_field.headers[SIGNATURE_HEADER] = sign_body(SECRET, no_field.read())
    missing = await nurture.client.send(no_field)
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "message"]
    empty = await nurture.post_mail(b"\r\n")
    assert empty.status_code == 422


async def test_an_smtp_550_at_send_time_bounces_the_message(nurture: Nurture) -> None:
    lead_id, address = await nurture.lead()
    nurture.sink.refused[address.lower()] = 550  # RCPT TO answers "550 5.1.1 no such user"
    await nurture.enrolled(lead_id, EMAIL_STEP, {**EMAIL_STEP, "delay_hours": 1})
    [status] = await eventually(
        lambda: nurture.events(lead_id, MessageStatusUpdatedV1), bool, timeout_s=30
    )
    assert isinstance(status, MessageStatusUpdatedV1)
    assert (status.status, status.error_code, status.step) == ("bounced", "5.1.1", 0)
    [failed] = await eventually(lambda: nurture.events(lead_id, MessageFailedV1), bool)
    assert isinstance(failed, MessageFailedV1) and "550" in failed.error
    assert await nurture.channels.store.suppressed_emails([address]) == {address}
    ended = await eventually(
        lambda: nurture.enrollment(lead_id), lambda e: e["status"] == "stopped", timeout_s=30
    )
    assert ended["stop_reason"] == "bounced"
    assert [m for m in nurture.sink.messages if address in m.rcpt_tos] == []


async def test_the_sink_page_replies_and_bounces_as_the_recipient_would(nurture: Nurture) -> None:
    replying, replying_at = await nurture.lead()
    bouncing, bouncing_at = await nurture.lead()
    for lead_id in (replying, bouncing):
        await nurture.enrolled(lead_id, EMAIL_STEP, {**EMAIL_STEP, "delay_hours": 48})
    await nurture.mails_to(replying_at)
    await nurture.mails_to(bouncing_at)
    index = {m.rcpt_tos[0]: i for i, m in enumerate(nurture.sink.messages)}
    async with httpx.AsyncClient(base_url=nurture.twilio.base_url) as page:
        replied = await page.post(
            f"/sink/mail/{index[replying_at]}/reply", data={"Body": "Call me Monday"}
        )
        bounced = await page.post(f"/sink/mail/{index[bouncing_at]}/bounce")
        listing = await page.get("/")
    assert replied.json()["webhook"]["kind"] == "reply", replied.text
    assert replied.json()["webhook"]["lead_id"] == replying
    assert bounced.json()["webhook"]["kind"] == "hard_bounce", bounced.text
    assert bounced.json()["webhook"]["lead_id"] == bouncing
    assert f"/sink/mail/{index[replying_at]}/reply" in listing.text
    for lead_id, reason in ((replying, "replied"), (bouncing, "bounced")):
        ended = await eventually(
            partial(nurture.enrollment, lead_id), lambda e: e["status"] == "stopped", timeout_s=30
        )
        assert ended["stop_reason"] == reason
