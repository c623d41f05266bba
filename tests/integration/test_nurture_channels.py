"""Nurture's channels on the running service: real broker and database, the real SMTP sink
and the fake Twilio on loopback, the service on a real port (the fake provider calls it)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from leadflow.localinfra import free_port
from leadflow.sinks import FakeTwilio, MailSink
from services.nurture.app import create_app
from services.nurture.channels.email import (
    EmailIdentity,
    OutboundEmail,
    SmtpConfig,
    SmtpEmailSender,
)
from services.nurture.channels.rules import SmsRecipient
from services.nurture.channels.runtime import ChannelWebhooks, link_builder
from services.nurture.channels.sms import OutboundSms, TwilioConfig, TwilioSmsSender
from services.nurture.channels.tokens import LinkClaims, TokenKind
from services.nurture.settings import Settings
from shared.events import (
    EngagementRecordedV1,
    Event,
    LeadOptedOutV1,
    MessageStatusUpdatedV1,
)
from shared.topics import EVENT_ON, topic_for
from tests.support.infra import Infra
from tests.support.kafka import read_all, start_group_at_end
from tests.support.services import eventually, settings_for, wait_ready

pytestmark = pytest.mark.integration

FROM_NUMBER = "+15005550006"


@dataclass
class Nurture:
    url: str
    client: httpx.AsyncClient
    channels: ChannelWebhooks
    email: SmtpEmailSender
    sms: TwilioSmsSender
    settings: Settings
    mail: MailSink
    twilio: FakeTwilio
    kafka: str

    def sign(self, path: str, params: dict[str, str]) -> str:
        """X-Twilio-Signature as Twilio computes it (the twilio package's algorithm)."""
        validator = RequestValidator(self.settings.twilio_auth_token.get_secret_value())
        signature: str = validator.compute_signature(self.url + path, params)
        return signature

    async def events(self, lead_id: str, *types: type[Event]) -> list[Event]:
        found: list[Event] = []
        for model in types:
            for value, _ in await read_all(self.kafka, topic_for(model)):
                event = EVENT_ON[topic_for(model)].model_validate_json(value)
                if event.lead_id == lead_id:
                    found.append(event)
        return sorted(found, key=lambda e: e.occurred_at)


@contextlib.asynccontextmanager
async def served(app: FastAPI, port: int) -> AsyncIterator[str]:
    """The app on a loopback port, lifespan included."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        await eventually(
            lambda: asyncio.sleep(0, server.started or task.done()), bool, timeout_s=60
        )
        if task.done():
            task.result()  # raises what stopped it
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
def sinks() -> Iterator[tuple[MailSink, FakeTwilio]]:
    with MailSink() as mail, FakeTwilio(mail_sink=mail) as twilio:
        yield mail, twilio


@pytest.fixture(scope="module")
async def nurture_http(
    infra: Infra, run_id: str, sinks: tuple[MailSink, FakeTwilio]
) -> AsyncIterator[Nurture]:
    mail, twilio = sinks
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = settings_for(
        Settings,
        infra,
        run_id,
        database=f"leadflow_nurture_channels_{run_id}",
        consumer_group=f"nurture-channels-{run_id}",
        public_url=url,
        token_secret="integration-token-secret",
        smtp_port=mail.port,
        twilio_base_url=twilio.base_url,
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        twilio_from_number=FROM_NUMBER,
        scheduler_enabled=False,
    )
    await start_group_at_end(settings.kafka_bootstrap, settings.consumer_group)
    twilio.inbound_url = f"{url}/v1/sms/inbound"
    # The service as it runs (its send loop off: these tests send through the senders
    # themselves), and senders built from the same settings as create_app builds them.
    app = create_app(settings)
    webhooks: ChannelWebhooks = app.state.channel_webhooks
    clock = app.state.clock
    links = link_builder(settings)
    email = SmtpEmailSender(
        SmtpConfig(host=mail.host, port=settings.smtp_port, start_tls=False),
        EmailIdentity(settings.email_from, settings.email_message_id_domain),
        links,
        clock=clock,
    )
    sms = TwilioSmsSender(
        TwilioConfig(
            base_url=settings.twilio_base_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            from_number=settings.twilio_from_number,
        ),
        links,
    )
    async with served(app, port), httpx.AsyncClient(base_url=url) as client:
        await wait_ready(client)
        try:
            yield Nurture(
                url, client, webhooks, email, sms, settings, mail, twilio, infra.kafka_bootstrap
            )
        finally:
            await email.close()
            await sms.close()


def new_lead() -> str:
    return f"lead-{uuid.uuid4().hex[:12]}"


def new_phone() -> str:
    return f"+8210{uuid.uuid4().int % 10**8:08d}"


async def texted(nurture: Nurture, lead_id: str, phone: str) -> tuple[str, str]:
    """Send the lead an SMS as the send loop does: through the sender, then remember who
    has the number; (our message id, Twilio's sid)."""
    message_id = f"m-{uuid.uuid4().hex}"
    sid = await nurture.sms.send(
        OutboundSms(message_id, lead_id, phone, "이번 주 무료 PT 체험 어떠세요?", "seq-sms", 0)
    )
    await nurture.channels.feedback.remember_sms_recipients(
        [SmsRecipient(phone, lead_id, datetime.now(UTC), message_id)]
    )
    return message_id, sid


async def status_of(nurture: Nurture, message_id: str) -> str | None:
    record = (await nurture.channels.store.message_statuses([message_id])).get(message_id)
    return None if record is None else record.status


# --- SMS ------------------------------------------------------------------------------------


async def test_provider_callbacks_take_a_sent_sms_to_delivered(nurture_http: Nurture) -> None:
    lead_id, phone = new_lead(), new_phone()
    message_id, sid = await texted(nurture_http, lead_id, phone)
    await eventually(lambda: status_of(nurture_http, message_id), lambda s: s == "delivered")
    [sms] = [m for m in nurture_http.twilio.messages if m.sid == sid]

    async def answers() -> list[int | str]:
        # Twilio's log gets the answer once the response is back, after nurture stored it.
        return [c["answer"] for c in sms.callbacks]

    assert await eventually(answers, lambda a: len(a) == 3) == [200, 200, 200]
    events = await eventually(
        lambda: nurture_http.events(lead_id, MessageStatusUpdatedV1), lambda e: len(e) == 3
    )
    assert [(e.status, e.message_id, e.sequence_id) for e in events] == [  # type: ignore[attr-defined]
        ("queued", message_id, "seq-sms"),
        ("sent", message_id, "seq-sms"),
        ("delivered", message_id, "seq-sms"),
    ]


async def test_out_of_order_callbacks_never_move_a_status_back(nurture_http: Nurture) -> None:
    lead_id, phone = new_lead(), new_phone()
    nurture_http.twilio.send_callbacks = False
    try:
        message_id, sid = await texted(nurture_http, lead_id, phone)
    finally:
        nurture_http.twilio.send_callbacks = True
    [sms] = [m for m in nurture_http.twilio.messages if m.sid == sid]
    assert sms.status_callback is not None
    path = sms.status_callback.removeprefix(nurture_http.url)

    async def report(status: str) -> httpx.Response:
        params = {"MessageSid": sid, "MessageStatus": status, "To": phone, "From": FROM_NUMBER}
        headers = {"X-Twilio-Signature": nurture_http.sign(path, params)}
        return await nurture_http.client.post(path, data=params, headers=headers)

    answers = [await report(s) for s in ("delivered", "sent", "queued")]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [r.json()["changed"] for r in answers] == [True, False, False]
    # Several at once, in every order: still delivered, still one event.
    await asyncio.gather(*(report(s) for s in ("queued", "sent", "delivered", "sent")))
    assert await status_of(nurture_http, message_id) == "delivered"
    await asyncio.sleep(1.0)  # time for any wrongly published event to reach the topic
    events = await nurture_http.events(lead_id, MessageStatusUpdatedV1)
    assert [e.status for e in events] == ["delivered"]  # type: ignore[attr-defined]


async def test_a_forged_signature_is_refused_and_changes_nothing(nurture_http: Nurture) -> None:
    lead_id, phone = new_lead(), new_phone()
    await texted(nurture_http, lead_id, phone)
    params = {
        "MessageSid": f"SM{uuid.uuid4().hex}",
        "From": phone,
        "To": FROM_NUMBER,
        "Body": "STOP",
    }
    good = nurture_http.sign("/v1/sms/inbound", params)
    forgeries = [
        {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
        {"X-Twilio-Signature": nurture_http.sign("/v1/sms/inbound", {**params, "Body": "hi"})},
        {},
    ]
    for headers in forgeries:
        response = await nurture_http.client.post("/v1/sms/inbound", data=params, headers=headers)
        assert response.status_code == 403, response.text
    # A parameter added to a correctly signed request breaks the signature too.
    tampered = await nurture_http.client.post(
        "/v1/sms/inbound", data={**params, "Extra": "1"}, headers={"X-Twilio-Signature": good}
    )
    assert tampered.status_code == 403
    assert await nurture_http.channels.store.opted_out_channels([lead_id]) == {}
    assert await nurture_http.channels.store.opted_out_phones([phone]) == set()
    await asyncio.sleep(1.0)
    assert await nurture_http.events(lead_id, LeadOptedOutV1) == []


async def test_a_signed_stop_opts_out_of_sms_only(nurture_http: Nurture) -> None:
    lead_id, phone = new_lead(), new_phone()
    await texted(nurture_http, lead_id, phone)
    params = {
        "MessageSid": f"SM{uuid.uuid4().hex}",
        "From": phone,
        "To": FROM_NUMBER,
        "Body": "Stop",
    }
    response = await nurture_http.client.post(
        "/v1/sms/inbound",
        data=params,
        headers={"X-Twilio-Signature": nurture_http.sign("/v1/sms/inbound", params)},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert "<Response>" in response.text
    store = nurture_http.channels.store
    assert await store.opted_out_channels([lead_id]) == {lead_id: frozenset({"sms"})}
    assert await store.opted_out_phones([phone]) == {phone}
    [event] = await eventually(
        lambda: nurture_http.events(lead_id, LeadOptedOutV1), lambda e: len(e) == 1
    )
    assert (event.channel, event.reason) == ("sms", "sms_keyword")  # type: ignore[attr-defined]
    # Email is still allowed: an email to this lead goes out.
    message_id = f"m-{uuid.uuid4().hex}"
    await nurture_http.email.send(
        OutboundEmail(message_id, lead_id, "still@example.com", "Hi", "<p>Hi</p>", "Hi")
    )
    assert any(m.rcpt_tos == ("still@example.com",) for m in nurture_http.mail.messages)


async def test_help_answers_and_start_opts_back_in(nurture_http: Nurture) -> None:
    lead_id, phone = new_lead(), new_phone()
    await texted(nurture_http, lead_id, phone)

    async def text(body: str) -> httpx.Response:
        params = {
            "MessageSid": f"SM{uuid.uuid4().hex}",
            "From": phone,
            "To": FROM_NUMBER,
            "Body": body,
        }
        headers = {"X-Twilio-Signature": nurture_http.sign("/v1/sms/inbound", params)}
        return await nurture_http.client.post("/v1/sms/inbound", data=params, headers=headers)

    help_reply = await text("help")
    assert nurture_http.settings.sms_help_reply.split(":")[0] in help_reply.text
    await text("STOPALL")
    assert await nurture_http.channels.store.opted_out_phones([phone]) == {phone}
    start = await text("unstop")
    assert "<Message>" in start.text
    assert await nurture_http.channels.store.opted_out_phones([phone]) == set()
    assert await nurture_http.channels.store.opted_out_channels([lead_id]) == {}


async def test_a_text_back_through_the_fake_provider_is_a_reply(nurture_http: Nurture) -> None:
    lead_id, phone = new_lead(), new_phone()
    message_id, _ = await texted(nurture_http, lead_id, phone)
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{nurture_http.twilio.base_url}/sink/sms/inbound",
            data={"From": phone, "Body": "토요일 오전에 방문할게요"},
        )
    assert response.json()["webhook_status"] == 200
    [reply] = await nurture_http.channels.store.engagements([lead_id])
    assert (reply.kind, reply.channel, reply.message_id) == ("reply", "sms", message_id)
    [event] = await eventually(
        lambda: nurture_http.events(lead_id, EngagementRecordedV1), lambda e: len(e) == 1
    )
    assert event.kind == "reply"  # type: ignore[attr-defined]


async def test_a_missing_parameter_is_a_422_naming_it(nurture_http: Nurture) -> None:
    params = {"From": new_phone(), "Body": "hi"}
    response = await nurture_http.client.post(
        "/v1/sms/inbound",
        data=params,
        headers={"X-Twilio-Signature": nurture_http.sign("/v1/sms/inbound", params)},
    )
    assert response.status_code == 422
    assert [d["loc"] for d in response.json()["detail"]] == [["body", "MessageSid"]]


# --- email ----------------------------------------------------------------------------------


async def emailed(nurture: Nurture, lead_id: str) -> tuple[str, str]:
    """Send the lead an email through the service's sender; its unsubscribe URL and HTML."""
    await nurture.email.send(
        OutboundEmail(
            f"m-{uuid.uuid4().hex}",
            lead_id,
            f"{lead_id}@example.com",
            "봄 프로모션",
            '<html><body><a href="https://acme.example/offer">offer</a></body></html>',
            "offer: https://acme.example/offer",
            "seq-mail",
            1,
        )
    )
    [mail] = [m for m in nurture.mail.messages if m.rcpt_tos == (f"{lead_id}@example.com",)]
    header = mail.header("List-Unsubscribe")
    html = mail.part("text/html")
    assert header is not None and html is not None
    return header.strip("<>"), html


async def test_one_click_post_unsubscribes_email_with_200_and_no_redirect(
    nurture_http: Nurture,
) -> None:
    lead_id = new_lead()
    url, _ = await emailed(nurture_http, lead_id)
    path = url.removeprefix(nurture_http.url)
    page = await nurture_http.client.get(path)
    assert page.status_code == 200 and "<button>Unsubscribe</button>" in page.text
    assert await nurture_http.channels.store.opted_out_channels([lead_id]) == {}  # GET: nothing

    response = await nurture_http.client.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert "location" not in response.headers and "set-cookie" not in response.headers
    assert await nurture_http.channels.store.opted_out_channels([lead_id]) == {
        lead_id: frozenset({"email"})
    }
    [event] = await eventually(
        lambda: nurture_http.events(lead_id, LeadOptedOutV1), lambda e: len(e) == 1
    )
    assert (event.channel, event.reason, event.sequence_id) == (  # type: ignore[attr-defined]
        "email",
        "one_click",
        "seq-mail",
    )


async def test_one_click_accepts_multipart_and_refuses_other_bodies(nurture_http: Nurture) -> None:
    lead_id = new_lead()
    url, _ = await emailed(nurture_http, lead_id)
    path = url.removeprefix(nurture_http.url)
    wrong = await nurture_http.client.post(path, data={"List-Unsubscribe": "yes"})
    assert wrong.status_code == 422
    assert wrong.json()["detail"][0]["loc"] == ["body", "List-Unsubscribe"]
    assert await nurture_http.channels.store.opted_out_channels([lead_id]) == {}
    multipart = await nurture_http.client.post(
        path, files={"List-Unsubscribe": (None, "One-Click")}
    )
    assert multipart.status_code == 200
    assert await nurture_http.channels.store.opted_out_channels([lead_id]) == {
        lead_id: frozenset({"email"})
    }


async def test_a_forged_unsubscribe_token_changes_nothing(nurture_http: Nurture) -> None:
    lead_id = new_lead()
    url, _ = await emailed(nurture_http, lead_id)
    token = url.rsplit("/", 1)[1]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    response = await nurture_http.client.post(
        f"/u/{forged}", data={"List-Unsubscribe": "One-Click"}
    )
    assert response.status_code == 404
    assert await nurture_http.channels.store.opted_out_channels([lead_id]) == {}


async def test_open_and_click_are_recorded_and_the_click_goes_only_where_signed(
    nurture_http: Nurture,
) -> None:
    lead_id = new_lead()
    _, html = await emailed(nurture_http, lead_id)
    pixel = html.split('<img src="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    click = html.split('href="', 1)[1].split('"', 1)[0]
    opened = await nurture_http.client.get(pixel.removeprefix(nurture_http.url))
    assert opened.status_code == 200 and opened.headers["content-type"] == "image/gif"
    redirect = await nurture_http.client.get(click.removeprefix(nurture_http.url))
    assert redirect.status_code == 302
    assert redirect.headers["location"] == "https://acme.example/offer"
    kinds = [(e.kind, e.url) for e in await nurture_http.channels.store.engagements([lead_id])]
    assert kinds == [("open", None), ("click", "https://acme.example/offer")]

    # A token for another URL cannot be made without the secret; an open token is not a click.
    open_token = pixel.rsplit("/", 1)[1].removesuffix(".gif")
    refused = await nurture_http.client.get(f"/c/{open_token}")
    assert refused.status_code == 404 and "location" not in refused.headers
    other = LinkClaims(TokenKind.CLICK, lead_id, url="https://evil.example/")
    from services.nurture.channels.tokens import TokenSigner  # noqa: PLC0415

    foreign = TokenSigner("not-our-secret").sign(other)
    refused = await nurture_http.client.get(f"/c/{foreign}")
    assert refused.status_code == 404 and "location" not in refused.headers
    events = await eventually(
        lambda: nurture_http.events(lead_id, EngagementRecordedV1), lambda e: len(e) == 2
    )
    assert sorted(e.kind for e in events) == ["click", "open"]  # type: ignore[attr-defined]


async def test_the_sink_page_lists_what_was_sent(nurture_http: Nurture) -> None:
    lead_id, phone = new_lead(), new_phone()
    await texted(nurture_http, lead_id, phone)
    await emailed(nurture_http, lead_id)
    async with httpx.AsyncClient(base_url=nurture_http.twilio.base_url) as client:
        page = await client.get("/")
        sms = (await client.get("/sink/sms")).json()
        mail = (await client.get("/sink/mail")).json()
    assert page.status_code == 200 and phone in page.text and "봄 프로모션" in page.text
    assert any(m["to"] == phone for m in sms)
    assert any(m["rcpt_tos"] == [f"{lead_id}@example.com"] for m in mail)


async def test_a_person_unsubscribes_in_a_browser_by_pressing_the_button(
    nurture_http: Nurture,
) -> None:
    """Debian's chromium, driven by Playwright: the link shows a page, the button does it."""
    from playwright.async_api import async_playwright  # noqa: PLC0415

    lead_id = new_lead()
    url, _ = await emailed(nurture_http, lead_id)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            headless=True,
        )
        try:
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(url)
            assert await page.locator("h1").inner_text() == "Unsubscribe"
            assert await nurture_http.channels.store.opted_out_channels([lead_id]) == {}
            async with page.expect_navigation():
                await page.get_by_role("button", name="Unsubscribe").click()
            assert await page.locator("h1").inner_text() == "Unsubscribed"
            assert page.url == url  # answered in place: no redirect
            assert await context.cookies() == []
        finally:
            await browser.close()
    assert await nurture_http.channels.store.opted_out_channels([lead_id]) == {
        lead_id: frozenset({"email"})
    }
