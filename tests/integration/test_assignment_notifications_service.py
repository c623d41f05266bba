"""Notifications through the running assignment service: a lead published to Kafka is
routed, and the rep hears of it by email (a real SMTP server), by signed webhook (a real
receiver) and on their live stream (an httpx client on `GET /v1/me/stream`, over uvicorn).
A webhook that is dead does not hold routing up, and is delivered once it is back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from leadflow.chassis.auth import Role
from leadflow.sinks import MailSink, ReceivedMail
from services.assignment.app import create_app
from services.assignment.settings import Settings
from shared.events import Attribution, Contact, LeadMergedV1, LeadReceivedV1, Profile
from tests.conftest import Keys
from tests.support.infra import Infra
from tests.support.kafka import publish_event, start_group_at_end
from tests.support.services import eventually, settings_for
from tests.support.sse import events_until, over_http, read_events
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

SECRET = "a-receiver-secret-of-16+"
Json = dict[str, Any]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Service:
    client: httpx.AsyncClient
    manager: dict[str, str]
    sink: MailSink
    receiver: WebhookReceiver
    bootstrap: str
    settings: Settings

    async def rep(self, *, webhook: bool) -> str:
        rep_id = unique("rep")
        notify: Json = {"email": f"{rep_id}@example.com", "channels": ["email", "sse"]}
        if webhook:
            notify.update(webhook_url=self.receiver.url, webhook_secret=SECRET)
            notify["channels"].append("webhook")
        body = {"rep_id": rep_id, "name": rep_id.title(), "notify": notify}
        response = await self.client.post("/v1/reps", json=body, headers=self.manager)
        assert response.status_code == 201, response.text
        return rep_id

    async def pool(self, rep_ids: list[str]) -> str:
        """A pool of `rep_ids` taking the leads of its own region; returns the region."""
        region = unique("region")
        body = {
            "pool_id": unique("pool"),
            "name": "Test pool",
            "rep_ids": rep_ids,
            "match": {"region": region},
            "priority": 10,
        }
        response = await self.client.post("/v1/pools", json=body, headers=self.manager)
        assert response.status_code == 201, response.text
        return region

    async def send_lead(self, region: str) -> str:
        lead = LeadReceivedV1(
            lead_id=unique("lead"),
            contact=Contact(name="Dana Kim", phone="+14155550100"),
            attribution=Attribution(source="website", channel="web_form"),
            profile=Profile(region=region),
        )
        await publish_event(self.bootstrap, lead)
        return lead.lead_id

    async def lead(self, lead_id: str) -> Json:
        response = await self.client.get(f"/v1/leads/{lead_id}", headers=self.manager)
        return dict(response.json()) if response.status_code == 200 else {}

    def mails_to(self, address: str) -> list[ReceivedMail]:
        return [mail for mail in self.sink.messages if address in mail.rcpt_tos]

    async def assigned(self, lead_id: str) -> Json:
        return await eventually(
            lambda: self.lead(lead_id), lambda lead: lead.get("status") == "assigned"
        )

    async def notifications(self, rep_id: str) -> list[Json]:
        response = await self.client.get(
            "/v1/notifications", params={"rep_id": rep_id, "limit": 500}, headers=self.manager
        )
        assert response.status_code == 200, response.text
        return list(response.json())


@pytest.fixture(scope="module")
def sink() -> Iterator[MailSink]:
    with MailSink() as running:
        yield running


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(SECRET).running() as running:
        yield running


@pytest.fixture(scope="module")
async def service(
    infra: Infra, run_id: str, keys: Keys, sink: MailSink, receiver: WebhookReceiver
) -> AsyncIterator[Service]:
    settings = settings_for(
        Settings,
        infra,
        run_id,
        database=f"leadflow_assignment_{run_id}_notify",
        consumer_group=f"leadflow-assignment-{run_id}-notify",
        smtp_host=sink.host,
        smtp_port=sink.port,
        # Long enough that routing waiting on a dead webhook would show.
        webhook_timeout_s=30.0,
        notify_retry_base_s=0.3,
        notify_retry_max_s=1.0,
        notify_poll_s=0.2,
        stream_poll_interval_s=0.1,
        stream_heartbeat_s=1.0,
    )
    await start_group_at_end(settings.kafka_bootstrap, settings.consumer_group)
    async with over_http(create_app(settings)) as client:
        await eventually(lambda: _ready(client), lambda ready: ready, timeout_s=60)
        manager = await keys.headers(Role.MANAGER)
        yield Service(client, manager, sink, receiver, infra.kafka_bootstrap, settings)


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def test_a_routed_lead_reaches_the_rep_by_email_webhook_and_live_stream(
    service: Service, keys: Keys
) -> None:
    rita = await service.rep(webhook=True)
    region = await service.pool([rita])
    headers = await keys.headers(Role.REP, rep_id=rita)

    async with service.client.stream("GET", "/v1/me/stream", headers=headers) as stream:
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        await asyncio.sleep(0.5)  # following before the lead exists
        lead_id = await service.send_lead(region)
        seen = await asyncio.wait_for(
            events_until(lines, lambda e: e.data.get("lead_id") == lead_id), timeout=30
        )

    assert (seen[-1].event, seen[-1].data["how"]) == ("lead-assigned", "routed")
    assert (await service.lead(lead_id))["rep_id"] == rita
    delivered = await eventually(
        lambda: service.notifications(rita),
        lambda found: [n["status"] for n in found] == ["sent", "sent"],
    )
    assert {n["channel"] for n in delivered} == {"email", "webhook"}
    [mail] = service.mails_to(f"{rita}@example.com")
    assert mail.header("Subject") == f"[leadflow] New lead {lead_id} is yours."
    [hook] = [r for r in service.receiver.accepted() if r.json().get("person_id") == rita]
    assert hook.signed_ok
    assert hook.json()["lead_id"] == lead_id


async def test_a_dead_webhook_does_not_hold_up_routing_and_gets_each_notice_once_back(
    service: Service,
) -> None:
    sam = await service.rep(webhook=True)
    region = await service.pool([sam])
    receiver = service.receiver
    before = len(receiver.received)
    receiver.set_mode("hang")  # accepts the connection, never answers (timeout: 30 s)

    lead_ids = [await service.send_lead(region) for _ in range(8)]
    started = asyncio.get_running_loop().time()
    await asyncio.gather(*(service.assigned(lead_id) for lead_id in lead_ids))
    routed_in = asyncio.get_running_loop().time() - started
    await eventually(lambda: _value(lambda: receiver.arrived), lambda n: n > 0)

    # Every lead was routed while the webhook held its requests (its timeout is 30 s).
    assert routed_in < 20
    assert len(receiver.received) == before  # not one request answered yet
    emails = await eventually(
        lambda: _value(lambda: len(service.mails_to(f"{sam}@example.com"))),
        lambda n: n == len(lead_ids),
    )
    assert emails == len(lead_ids)

    receiver.set_mode("fail")  # the held requests get 503: retried with back-off
    await eventually(lambda: _value(lambda: len(receiver.received) - before), lambda n: n >= 12)
    receiver.set_mode("ok")
    await eventually(
        lambda: service.notifications(sam),
        lambda found: Counter(n["status"] for n in found) == Counter(sent=2 * len(lead_ids)),
        timeout_s=30,
    )
    await asyncio.sleep(1.5)  # time for a second delivery to show

    accepted = [r for r in receiver.accepted() if r.json().get("person_id") == sam]
    assert sorted(r.json()["lead_id"] for r in accepted) == sorted(lead_ids)
    assert len({r.delivery_id for r in accepted}) == len(lead_ids)
    assert all(r.signed_ok for r in accepted)


async def _value(read: Callable[[], int]) -> int:
    return read()


async def test_a_second_replica_streams_what_either_routed_and_each_email_goes_once(
    service: Service, keys: Keys
) -> None:
    ana = await service.rep(webhook=False)
    region = await service.pool([ana])
    headers = await keys.headers(Role.REP, rep_id=ana)

    # Same database and consumer group: the two split the partitions, so either may route
    # and plan a lead; the stream is followed on the second one.
    async with over_http(create_app(service.settings)) as other:
        await eventually(lambda: _ready(other), lambda ready: ready, timeout_s=60)
        async with other.stream("GET", "/v1/me/stream", headers=headers) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            await asyncio.sleep(0.5)
            lead_ids = {await service.send_lead(region) for _ in range(6)}
            streamed: set[str] = set()

            async def until_all_streamed() -> None:
                while streamed != lead_ids:
                    [event] = await read_events(lines, count=1)
                    if event.event == "lead-assigned":
                        streamed.add(event.data["lead_id"])

            await asyncio.wait_for(until_all_streamed(), timeout=60)
        await eventually(
            lambda: _value(lambda: len(service.mails_to(f"{ana}@example.com"))),
            lambda n: n >= len(lead_ids),
        )
        await asyncio.sleep(1.5)  # both replicas' runners keep running: time to send twice

    mails = service.mails_to(f"{ana}@example.com")
    assert len(mails) == len(lead_ids)
    assert {m.header("Subject") for m in mails} == {
        f"[leadflow] New lead {lead_id} is yours." for lead_id in lead_ids
    }


async def test_a_repeat_inquiry_on_an_open_lead_reaches_its_owner_once(service: Service) -> None:
    """intake.lead-merged.v1 on the real broker: the rep holding the lead hears of the
    repeat inquiry by email, once however often the event is read."""
    nora = await service.rep(webhook=False)
    region = await service.pool([nora])
    lead_id = await service.send_lead(region)
    await service.assigned(lead_id)
    await eventually(
        lambda: _value(lambda: len(service.mails_to(f"{nora}@example.com"))), lambda n: n == 1
    )
    inquiry = LeadMergedV1(
        lead_id=lead_id,
        contact=Contact(name="Dana Kim", phone="+14155550100"),
        attribution=Attribution(source="desk", channel="phone"),
        matched_on="phone",
    )

    await publish_event(service.bootstrap, inquiry)
    await publish_event(service.bootstrap, inquiry)  # redelivered: still one notice

    repeats = await eventually(
        lambda: service.notifications(nora),
        lambda found: [n["status"] for n in found if n["kind"] == "repeat-inquiry"] == ["sent"],
    )
    [notice] = [n for n in repeats if n["kind"] == "repeat-inquiry"]
    assert (notice["channel"], notice["lead_id"]) == ("email", lead_id)
    await asyncio.sleep(1.5)  # time for a second notice to show
    mails = service.mails_to(f"{nora}@example.com")
    assert [m.header("Subject") for m in mails] == [
        f"[leadflow] New lead {lead_id} is yours.",
        f"[leadflow] Repeat inquiry on your lead {lead_id}: Dana Kim asked again (phone).",
    ]
    assert (await service.lead(lead_id))["rep_id"] == nora
