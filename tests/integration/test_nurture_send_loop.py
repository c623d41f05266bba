"""Nurture sending on the real broker and database, to a real SMTP server (`MailSink`) and
the fake Twilio on loopback: what arrives, how often, and what stops it."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from leadflow.chassis.auth import Role
from leadflow.sinks import FakeTwilio, MailSink
from services.nurture.app import create_app
from services.nurture.channels.runtime import link_builder
from services.nurture.channels.tokens import LinkClaims, TokenKind, TokenSigner
from services.nurture.settings import Settings
from shared.events import (
    Attribution,
    Consent,
    Contact,
    EngagementRecordedV1,
    LeadReceivedV1,
    LeadRequalifiedV1,
    MessageSentV1,
    Profile,
)
from shared.topics import topic_for
from tests.conftest import Keys
from tests.support.infra import Infra
from tests.support.kafka import publish_event, read_topic, start_group_at_end
from tests.support.services import eventually, serve, settings_for

pytestmark = pytest.mark.integration

PUBLIC_URL = "http://nurture.test"


@pytest.fixture(scope="module")
def mail_sink() -> Iterator[MailSink]:
    with MailSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        fake.send_callbacks = False  # nurture is not listening on a port here
        yield fake


@dataclass
class ShiftedClock:
    """The real time plus an offset the test moves: hours pass in no time."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def new_nurture_settings(
    infra: Infra, run_id: str, sink: MailSink, twilio: FakeTwilio, name: str, **more: Any
) -> Settings:
    """Settings for a nurture of its own (database and consumer group), its group starting
    at the end of the session's topics: it reads the events its test publishes."""
    settings = nurture_settings(infra, run_id, sink, twilio, name, **more)
    await start_group_at_end(settings.kafka_bootstrap, settings.consumer_group)
    return settings


def nurture_settings(
    infra: Infra, run_id: str, sink: MailSink, twilio: FakeTwilio, name: str, **more: Any
) -> Settings:
    return settings_for(
        Settings,
        infra,
        run_id,
        database=f"leadflow_nurture_{run_id}_{name}",
        consumer_group=f"leadflow_nurture-{run_id}-{name}",
        smtp_host=sink.host,
        smtp_port=sink.port,
        smtp_starttls=False,
        twilio_base_url=twilio.base_url,
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        public_url=PUBLIC_URL,
        quiet_hours_start=None,
        email_cap_per_day=100,
        email_cap_per_week=100,
        sms_cap_per_day=100,
        sms_cap_per_week=100,
        scheduler_idle_poll_s=0.2,
        **more,
    )


@dataclass
class Nurture:
    client: httpx.AsyncClient
    clock: ShiftedClock
    keys: Keys
    infra: Infra

    async def marketing(self) -> dict[str, str]:
        return await self.keys.headers(Role.MARKETING)

    async def known_lead(self, *, phone: str | None = None, zone: str = "Asia/Seoul") -> str:
        """A lead nurture has consumed from Kafka (its contact and consent)."""
        lead_id = f"lead-{uuid.uuid4().hex}"
        event = LeadReceivedV1(
            lead_id=lead_id,
            occurred_at=self.clock() - timedelta(minutes=1),
            contact=Contact(
                name="Dana Kim", email=f"{lead_id}@example.com", phone=phone, timezone=zone
            ),
            attribution=Attribution(source="website", channel="web_form"),
            consent=Consent(email=True, sms=phone is not None),
        )
        await publish_event(self.infra.kafka_bootstrap, event)
        return lead_id

    async def sequence(self, *steps: dict[str, Any]) -> str:
        sequence_id = f"seq-{uuid.uuid4().hex[:10]}"
        body = {"sequence_id": sequence_id, "name": "Spring", "steps": list(steps)}
        created = await self.client.post("/v1/sequences", json=body, headers=await self.marketing())
        assert created.status_code == 201, created.text
        return sequence_id

    async def enroll(self, lead_ids: list[str], sequence_id: str) -> None:
        """Enroll each lead once nurture has consumed it (an unknown lead is refused, and
        asked for again)."""
        headers = await self.marketing()
        waiting = list(lead_ids)

        async def attempt() -> list[str]:
            body = {"sequence_id": sequence_id, "lead_ids": waiting}
            response = await self.client.post("/v1/enrollments/bulk", json=body, headers=headers)
            assert response.status_code == 200, response.text
            waiting[:] = response.json()["refused_lead_ids"]
            return waiting

        await eventually(attempt, lambda left: not left, timeout_s=30)

    async def enrollment(self, lead_id: str) -> dict[str, Any]:
        response = await self.client.get(
            f"/v1/enrollments/{lead_id}", headers=await self.marketing()
        )
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
async def nurture(
    infra: Infra, run_id: str, keys: Keys, mail_sink: MailSink, twilio: FakeTwilio
) -> AsyncIterator[Nurture]:
    clock = ShiftedClock()
    name = uuid.uuid4().hex[:6]
    settings = await new_nurture_settings(infra, run_id, mail_sink, twilio, name)
    async with serve(create_app(settings, clock=clock)) as client:
        yield Nurture(client, clock, keys, infra)


def mails_to(sink: MailSink, address: str) -> list[Any]:
    return [m for m in sink.messages if address in m.rcpt_tos]


def texts_to(twilio: FakeTwilio, phone: str) -> list[Any]:
    return [s for s in twilio.messages if s.direction == "outbound-api" and s.to == phone]


async def sent_events(infra: Infra, lead_id: str) -> list[MessageSentV1]:
    records = await read_topic(
        infra.kafka_bootstrap, topic_for(MessageSentV1), until=1_000_000, timeout_s=3
    )
    events = [MessageSentV1.model_validate_json(value) for value, _ in records]
    return [e for e in events if e.lead_id == lead_id]


EMAIL_NOW = {
    "channel": "email",
    "delay_hours": 0,
    "subject": "Hi {{ first_name }}",
    "body": "Hello {{ name }}, see you soon.",
    "html": "<p>Hello <b>{{ name }}</b>, <a href='https://acme.example/pricing'>prices</a></p>",
}


async def test_marketing_builds_a_sequence_over_http_and_watches_it_send(
    nurture: Nurture, mail_sink: MailSink, twilio: FakeTwilio
) -> None:
    phone = "+821055500001"
    lead_id = await nurture.known_lead(phone=phone)
    sequence_id = await nurture.sequence(
        EMAIL_NOW, {"channel": "sms", "delay_hours": 0, "body": "안녕하세요 {{ name }}님"}
    )
    preview = await nurture.client.post(
        f"/v1/sequences/{sequence_id}/preview",
        json={"step": 1, "lead": {"name": "Dana Kim"}},
        headers=await nurture.marketing(),
    )
    assert preview.json()["text"] == "안녕하세요 Dana Kim님"
    assert preview.json()["sms"]["encoding"] == "UCS-2"

    await nurture.enroll([lead_id], sequence_id)

    address = f"{lead_id}@example.com"
    [mail] = (await eventually(lambda: _async(mails_to(mail_sink, address)), bool))[:1]
    assert mail.header("Subject") == "Hi Dana"
    assert mail.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert "<b>Dana Kim</b>" in (mail.part("text/html") or "")
    [text] = await eventually(lambda: _async(texts_to(twilio, phone)), bool)
    assert text.body == "안녕하세요 Dana Kim님"
    done = await eventually(
        lambda: nurture.enrollment(lead_id), lambda e: e["status"] == "completed"
    )
    assert done["current_step"] == 2
    events = await eventually(lambda: sent_events(nurture.infra, lead_id), lambda e: len(e) == 2)
    assert sorted((e.step, e.channel) for e in events) == [(0, "email"), (1, "sms")]


async def _async(value: Any) -> Any:
    return value


@asynccontextmanager
async def scheduler_down(
    infra: Infra,
    run_id: str,
    keys: Keys,
    sink: MailSink,
    twilio: FakeTwilio,
    *,
    name: str,
    clock: ShiftedClock,
) -> AsyncIterator[Nurture]:
    """A nurture of its own (`name`) whose send loop is not running: marketing's API only."""
    settings = await new_nurture_settings(
        infra, run_id, sink, twilio, name, scheduler_enabled=False
    )
    async with serve(create_app(settings, clock=clock)) as client:
        yield Nurture(client, clock, keys, infra)


async def inbound_text(nurture: Nurture, twilio: FakeTwilio, phone: str, body: str) -> None:
    """A text from `phone`, posted by Twilio, signed, to nurture's inbound webhook."""
    params = {"MessageSid": f"SM{uuid.uuid4().hex}", "From": phone, "Body": body}
    url = f"{PUBLIC_URL}/v1/sms/inbound"
    answered = await nurture.client.post(
        "/v1/sms/inbound", data=params, headers={"X-Twilio-Signature": twilio.sign(url, params)}
    )
    assert answered.status_code == 200, answered.text


async def test_stop_by_text_stops_sms_but_email_goes_on(
    nurture: Nurture, mail_sink: MailSink, twilio: FakeTwilio
) -> None:
    phone = "+821055500002"
    lead_id = await nurture.known_lead(phone=phone)
    sequence_id = await nurture.sequence(
        {"channel": "sms", "delay_hours": 0, "body": "Hi {{ first_name }}, 10% off this week"},
        {"channel": "sms", "delay_hours": 1, "body": "Last chance!"},
        {**EMAIL_NOW, "delay_hours": 0},
    )
    await nurture.enroll([lead_id], sequence_id)
    await eventually(lambda: _async(texts_to(twilio, phone)), bool)

    # The lead answers STOP; Twilio posts it, signed, to nurture's inbound webhook.
    await inbound_text(nurture, twilio, phone, "stop")
    # Through the channels' outbox, Kafka and nurture's consumer: slow on a loaded machine.
    await eventually(
        lambda: nurture.enrollment(lead_id), lambda e: e["channels"] == ["email"], timeout_s=60
    )

    nurture.clock.offset += timedelta(hours=1, minutes=1)
    await eventually(lambda: _async(mails_to(mail_sink, f"{lead_id}@example.com")), bool)
    assert len(texts_to(twilio, phone)) == 1  # the second text was never sent


async def test_start_after_stop_lets_the_next_sms_step_go_out(
    nurture: Nurture, mail_sink: MailSink, twilio: FakeTwilio
) -> None:
    phone = "+821055500007"
    lead_id = await nurture.known_lead(phone=phone)
    sequence_id = await nurture.sequence(
        {"channel": "sms", "delay_hours": 0, "body": "Hi {{ first_name }}"},
        {"channel": "sms", "delay_hours": 1, "body": "Welcome back"},
        {**EMAIL_NOW, "delay_hours": 1},
    )
    await nurture.enroll([lead_id], sequence_id)
    await eventually(lambda: _async(texts_to(twilio, phone)), bool)

    await inbound_text(nurture, twilio, phone, "STOP")
    await eventually(
        lambda: nurture.enrollment(lead_id), lambda e: e["channels"] == ["email"], timeout_s=60
    )
    await inbound_text(nurture, twilio, phone, "unstop")
    # nurture.lead-opted-in.v1 through the outbox, Kafka and nurture's own consumer.
    await eventually(
        lambda: nurture.enrollment(lead_id),
        lambda e: e["channels"] == ["email", "sms"],
        timeout_s=60,
    )

    nurture.clock.offset += timedelta(hours=1, minutes=1)
    texts = await eventually(lambda: _async(texts_to(twilio, phone)), lambda t: len(t) == 2)
    assert [t.body for t in texts] == ["Hi Dana", "Welcome back"]


async def test_a_nurtured_lead_visiting_pricing_is_handed_back_to_sales(
    nurture: Nurture, infra: Infra
) -> None:
    lead_id = await nurture.known_lead()
    sequence_id = await nurture.sequence({**EMAIL_NOW, "delay_hours": 48})
    await nurture.enroll([lead_id], sequence_id)
    visit = {"lead_id": lead_id, "url": "https://acme.example/pricing?plan=gold"}
    recorded = await nurture.client.post(
        "/v1/web-visits", json=visit, headers=await nurture.keys.headers(Role.INGEST)
    )
    assert recorded.status_code == 202, recorded.text

    async def requalified() -> list[LeadRequalifiedV1]:
        records = await read_topic(
            infra.kafka_bootstrap, topic_for(LeadRequalifiedV1), until=1_000_000, timeout_s=2
        )
        events = [LeadRequalifiedV1.model_validate_json(value) for value, _ in records]
        return [e for e in events if e.lead_id == lead_id]

    [event] = await eventually(requalified, bool, timeout_s=30)
    assert "/pricing" in event.reason
    assert event.sequence_id == sequence_id
    ended = await eventually(
        lambda: nurture.enrollment(lead_id), lambda e: e["status"] == "stopped"
    )
    assert ended["stop_reason"] == "requalified"


SITE = "https://acme.example"


async def web_visits(infra: Infra, lead_id: str) -> list[EngagementRecordedV1]:
    records = await read_topic(
        infra.kafka_bootstrap, topic_for(EngagementRecordedV1), until=1_000_000, timeout_s=2
    )
    events = [EngagementRecordedV1.model_validate_json(value) for value, _ in records]
    return [e for e in events if e.lead_id == lead_id and e.kind == "web_visit"]


async def test_a_browser_on_our_site_records_visits_with_the_token_the_click_carried(
    infra: Infra, run_id: str, keys: Keys, mail_sink: MailSink, twilio: FakeTwilio
) -> None:
    clock = ShiftedClock()
    settings = await new_nurture_settings(
        infra, run_id, mail_sink, twilio, f"site{uuid.uuid4().hex[:6]}", site_origins=(SITE,)
    )
    async with serve(create_app(settings, clock=clock)) as client:
        nurture = Nurture(client, clock, keys, infra)
        lead_id = await nurture.known_lead()
        sequence_id = await nurture.sequence({**EMAIL_NOW, "delay_hours": 48})
        await nurture.enroll([lead_id], sequence_id)

        # The lead clicks a link in our email to our own site: it lands with its visit token.
        links = link_builder(settings)
        claims = LinkClaims(TokenKind.CLICK, lead_id, "m-1", "email", sequence_id, 0)
        click_url = links.click_url(claims, f"{SITE}/offer?plan=gold")
        clicked = await client.get(click_url.removeprefix(PUBLIC_URL))
        assert clicked.status_code == 302
        landing = httpx.URL(clicked.headers["location"])
        assert (landing.host, landing.path, landing.params["plan"]) == (
            "acme.example",
            "/offer",
            "gold",
        )
        token = landing.params["lf"]
        # A link to anyone else's site never carries it.
        elsewhere = links.click_url(claims, "https://elsewhere.example/a")
        away = await client.get(elsewhere.removeprefix(PUBLIC_URL))
        assert away.headers["location"] == "https://elsewhere.example/a"

        # Forged tokens, and tokens of another kind, record nothing.
        forged = TokenSigner("not-our-secret").sign(LinkClaims(TokenKind.VISIT, lead_id))
        click_token = click_url.rsplit("/", 1)[1]
        for bad in (forged, click_token):
            body = {"token": bad, "url": f"{SITE}/pricing"}
            refused = await client.post("/v1/web-visits/beacon", json=body)
            assert refused.status_code == 403, refused.text
            pixel = await client.get(f"/v/{bad}.gif", params={"path": "/pricing"})
            assert pixel.status_code == 403

        # Pages of our site may call the beacon cross-origin; other sites' pages may not.
        asked = {"Access-Control-Request-Method": "POST"}
        preflight = await client.options("/v1/web-visits/beacon", headers={**asked, "Origin": SITE})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == SITE
        stranger = await client.options(
            "/v1/web-visits/beacon", headers={**asked, "Origin": "https://evil.example"}
        )
        assert stranger.status_code == 403
        assert "access-control-allow-origin" not in stranger.headers

        beacon = await client.post(
            "/v1/web-visits/beacon",
            json={"token": token, "url": f"{SITE}/blog/spring"},
            headers={"Origin": SITE},
        )
        assert beacon.status_code == 202, beacon.text
        assert beacon.headers["access-control-allow-origin"] == SITE
        pixel = await client.get(f"/v/{token}.gif", params={"path": "/pricing"})
        assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
        bad_path = await client.get(f"/v/{token}.gif", params={"path": "javascript:x"})
        assert bad_path.status_code == 422 and "path" in bad_path.text

        visits = await eventually(lambda: web_visits(infra, lead_id), lambda v: len(v) >= 2)
        assert sorted(v.url or "" for v in visits) == ["/pricing", f"{SITE}/blog/spring"]
        # The pricing page is high-intent: the lead goes back to sales.
        ended = await eventually(
            lambda: nurture.enrollment(lead_id), lambda e: e["status"] == "stopped"
        )
        assert ended["stop_reason"] == "requalified"
        assert len(await web_visits(infra, lead_id)) == 2


async def test_two_scheduler_replicas_send_every_step_exactly_once(
    infra: Infra, run_id: str, keys: Keys, mail_sink: MailSink, twilio: FakeTwilio
) -> None:
    clock = ShiftedClock()
    settings = await new_nurture_settings(
        infra, run_id, mail_sink, twilio, "pair", scheduler_batch_size=20, send_concurrency=8
    )
    async with (
        serve(create_app(settings, clock=clock)) as first,
        serve(create_app(settings, clock=clock)) as _second,
    ):
        one = Nurture(first, clock, keys, infra)
        leads = list(await asyncio.gather(*(one.known_lead() for _ in range(60))))
        sequence_id = await one.sequence(EMAIL_NOW, {**EMAIL_NOW, "subject": "Again"})
        await one.enroll(leads, sequence_id)
        addresses = {f"{lead_id}@example.com" for lead_id in leads}

        def arrived() -> Counter[str]:
            return Counter(
                rcpt for m in mail_sink.messages for rcpt in m.rcpt_tos if rcpt in addresses
            )

        await eventually(lambda: _async(arrived()), lambda c: sum(c.values()) >= 120, timeout_s=60)
        await asyncio.sleep(2)  # anything doubled would have arrived by now
        counts = arrived()
        assert set(counts) == addresses
        assert set(counts.values()) == {2}  # two steps each, never a third copy


async def test_after_downtime_late_steps_within_the_limit_go_and_older_ones_are_skipped(
    infra: Infra, run_id: str, keys: Keys, mail_sink: MailSink, twilio: FakeTwilio
) -> None:
    clock = ShiftedClock()
    name = "catch-up"
    async with scheduler_down(
        infra, run_id, keys, mail_sink, twilio, name=name, clock=clock
    ) as before:
        skipped_lead, sent_lead = await before.known_lead(), await before.known_lead()
        at_once = await before.sequence({**EMAIL_NOW, "subject": "Too late"})
        in_two_hours = await before.sequence(
            {**EMAIL_NOW, "subject": "Still fine", "delay_hours": 2}
        )
        await before.enroll([skipped_lead], at_once)
        await before.enroll([sent_lead], in_two_hours)

    clock.offset = timedelta(hours=7)  # the scheduler was down 7 hours; the limit is 6
    up = nurture_settings(infra, run_id, mail_sink, twilio, name, send_max_lateness_s=6 * 3600)
    async with serve(create_app(up, clock=clock)) as client:
        after = Nurture(client, clock, keys, infra)
        await eventually(
            lambda: _async(mails_to(mail_sink, f"{sent_lead}@example.com")), bool, timeout_s=30
        )
        skipped = await eventually(
            lambda: after.enrollment(skipped_lead), lambda e: e["status"] == "completed"
        )
        assert skipped["last_sent_at"] is None
        assert mails_to(mail_sink, f"{skipped_lead}@example.com") == []


async def test_a_step_claimed_before_it_falls_due_reaches_the_mail_server_when_due(
    infra: Infra, run_id: str, keys: Keys, mail_sink: MailSink, twilio: FakeTwilio
) -> None:
    """The scheduler claims and prepares steps up to its look-ahead before they fall due;
    the message still leaves at its due time, never before."""
    clock = ShiftedClock()
    name = "ahead"
    async with scheduler_down(
        infra, run_id, keys, mail_sink, twilio, name=name, clock=clock
    ) as before:
        lead_id = await before.known_lead()
        sequence_id = await before.sequence(EMAIL_NOW)
        clock.offset = timedelta(seconds=5)  # enrolled "5 s from now": due then
        await before.enroll([lead_id], sequence_id)
        due = datetime.fromisoformat((await before.enrollment(lead_id))["next_send_at"])
    clock.offset = timedelta(0)

    sending = nurture_settings(infra, run_id, mail_sink, twilio, name, scheduler_lookahead_s=2.0)
    async with serve(create_app(sending, clock=clock)):
        [mail] = await eventually(
            lambda: _async(mails_to(mail_sink, f"{lead_id}@example.com")), bool, timeout_s=30
        )
    arrived = datetime.fromisoformat(mail.received_at)
    assert due <= arrived < due + timedelta(seconds=10), (due, arrived)


async def test_a_warmed_lead_is_handed_back_and_assignment_routes_it_to_sales(
    nurture: Nurture, assignment: httpx.AsyncClient, infra: Infra
) -> None:
    manager = await nurture.keys.headers(Role.MANAGER)
    rep_id, pool_id, region = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("rep", "pool", "region"))
    made = await assignment.post(
        "/v1/reps", json={"rep_id": rep_id, "name": "Rep"}, headers=manager
    )
    assert made.status_code == 201, made.text
    pool = {
        "pool_id": pool_id,
        "name": "Requalified",
        "rep_ids": [rep_id],
        "match": {"region": region},
        "priority": 10,
    }
    made = await assignment.post("/v1/pools", json=pool, headers=manager)
    assert made.status_code == 201, made.text
    lead_id = f"lead-{uuid.uuid4().hex}"
    await publish_event(
        infra.kafka_bootstrap,
        LeadReceivedV1(
            lead_id=lead_id,
            contact=Contact(name="Dana Kim", email=f"{lead_id}@example.com", timezone="UTC"),
            attribution=Attribution(source="website", channel="web_form"),
            consent=Consent(email=True),
            profile=Profile(region=region),
        ),
    )

    async def lead() -> dict[str, Any]:
        response = await assignment.get(f"/v1/leads/{lead_id}", headers=manager)
        body: dict[str, Any] = response.json() if response.status_code == 200 else {}
        return body

    await eventually(lead, lambda found: found.get("status") == "assigned", timeout_s=30)
    lost = await assignment.post(
        f"/v1/leads/{lead_id}/lost", json={"level": 3, "reason": "busy"}, headers=manager
    )
    assert lost.status_code == 200, lost.text
    enrolled = await eventually(
        lambda: nurture.enrollment(lead_id),
        lambda e: e.get("status") == "active" and e.get("sequence_id") == "loss-level-3",
        timeout_s=30,
    )
    assert enrolled["reason"] == "lost-level-3"

    # The lead comes back to the website's pricing page.
    visit = {"lead_id": lead_id, "url": "https://acme.example/pricing"}
    recorded = await nurture.client.post(
        "/v1/web-visits", json=visit, headers=await nurture.keys.headers(Role.INGEST)
    )
    assert recorded.status_code == 202, recorded.text

    back = await eventually(
        lead,
        lambda found: (
            found.get("status") in {"assigned", "requalified"} and found.get("rep_id") == rep_id
        ),
        timeout_s=40,
    )
    assert back["pool_id"] == pool_id
    stopped = await nurture.enrollment(lead_id)
    assert (stopped["status"], stopped["stop_reason"]) == ("stopped", "requalified")
