"""Assignment against the real Kafka-wire broker and MongoDB-wire server.

The service fixture is shared by the whole session, so every test makes its own reps and
a pool whose criteria (a unique region) only its own leads meet. No test makes a default
pool: it would take every other test's unmatched leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest

from leadflow.chassis.auth import Role
from leadflow.chassis.clock import system_clock
from leadflow.chassis.duework import ClaimedWork
from leadflow.chassis.store import Database, EventLedger, connect
from services.assignment.rules import KnownLead, LastAssignment, Lead, Pool, Rep, Timer
from services.assignment.settings import Settings
from services.assignment.store import (
    BatchWork,
    LeadQuery,
    LeadsInTransaction,
    MongoAssignmentStore,
)
from services.assignment.usecases import (
    ConfigurationCache,
    ManageTeam,
    RouteLeads,
    configuration_cache,
)
from shared.events import (
    Attribution,
    Consent,
    Contact,
    Event,
    LeadAssignedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
    Profile,
    utc_now,
)
from shared.topics import dead_letter_topic, topic_for
from tests.conftest import Keys
from tests.support.infra import Infra
from tests.support.kafka import publish_event, publish_raw, read_all
from tests.support.services import eventually, settings_for

pytestmark = pytest.mark.integration

Json = dict[str, Any]
T = TypeVar("T")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def lead_received(region: str, **contact: str) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=unique("lead"),
        contact=Contact(**(contact or {"name": "Dana Kim", "phone": "+14155550100"})),
        attribution=Attribution(source="website", channel="web_form"),
        consent=Consent(email=True, sms=False),
        profile=Profile(region=region, industry="fitness"),
    )


class Team:
    """Reps and a pool made through the API for one test, and the manager's headers."""

    def __init__(self, client: httpx.AsyncClient, manager: dict[str, str]) -> None:
        self.client = client
        self.manager = manager

    async def rep(self, *, away: bool = False) -> str:
        rep_id = unique("rep")
        response = await self.client.post(
            "/v1/reps", json={"rep_id": rep_id, "name": "Rep", "away": away}, headers=self.manager
        )
        assert response.status_code == 201, response.text
        return rep_id

    async def pool(self, rep_ids: list[str]) -> tuple[str, str]:
        """A pool for `rep_ids` that takes leads from its own region; returns (pool, region)."""
        pool_id, region = unique("pool"), unique("region")
        response = await self.client.post(
            "/v1/pools",
            json={
                "pool_id": pool_id,
                "name": "Test pool",
                "rep_ids": rep_ids,
                "match": {"region": region},
                "priority": 10,
            },
            headers=self.manager,
        )
        assert response.status_code == 201, response.text
        return pool_id, region

    async def lead(self, lead_id: str) -> Json:
        response = await self.client.get(f"/v1/leads/{lead_id}", headers=self.manager)
        return response.json() if response.status_code == 200 else {}

    async def settled(self, lead_id: str, status: str = "assigned") -> Json:
        return await eventually(
            lambda: self.lead(lead_id), lambda lead: lead.get("status") == status
        )


@pytest.fixture
async def team(assignment: httpx.AsyncClient, keys: Keys) -> Team:
    return Team(assignment, await keys.headers(Role.MANAGER))


async def events_about(bootstrap: str, topic: str, lead_id: str, *, until: int = 1) -> list[Json]:
    """Events on `topic` about `lead_id` (the topic is shared by the whole session)."""
    found: list[Json] = []

    async def probe() -> list[Json]:
        messages = await read_all(bootstrap, topic)
        found[:] = [
            body
            for value, _ in messages
            if (body := _json_or_none(value)) is not None and body.get("lead_id") == lead_id
        ]
        return found

    return await eventually(probe, lambda events: len(events) >= until, timeout_s=30)


def _json_or_none(value: bytes) -> Json | None:
    try:
        body = json.loads(value)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


# --- reps and pools ------------------------------------------------------------------


async def test_manager_adds_lists_and_changes_reps(
    assignment: httpx.AsyncClient, keys: Keys
) -> None:
    manager = await keys.headers(Role.MANAGER)
    rep_id = unique("rep")
    body = {
        "rep_id": rep_id,
        "name": "Jin Kim",
        "email": "jin@example.com",
        "timezone": "Asia/Seoul",
    }
    created = await assignment.post("/v1/reps", json=body, headers=manager)
    assert created.status_code == 201, created.text
    assert {key: created.json()[key] for key in body} == body
    assert (created.json()["active"], created.json()["away"]) == (True, False)
    assert created.json()["available"] is True
    assert created.json()["notify"] == {
        "email": None,
        "webhook_url": None,
        "webhook_secret_set": False,
        "slack": False,
        "channels": [],
    }

    again = await assignment.post("/v1/reps", json=body, headers=manager)
    assert again.status_code == 409

    changed = await assignment.patch(
        f"/v1/reps/{rep_id}", json={"away": True, "timezone": None}, headers=manager
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["away"] is True
    assert changed.json()["available"] is False
    assert changed.json()["timezone"] is None
    assert changed.json()["name"] == "Jin Kim"

    listed = await assignment.get("/v1/reps", headers=manager)
    assert rep_id in [rep["rep_id"] for rep in listed.json()]
    fetched = await assignment.get(f"/v1/reps/{rep_id}", headers=manager)
    assert fetched.json()["away"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "No id"}, "rep_id"),
        ({"rep_id": "has space", "name": "X"}, "rep_id"),
        ({"rep_id": "ok", "name": "X", "timezone": "Mars/Olympus"}, "timezone"),
        ({"rep_id": "ok", "name": "X", "email": "nope"}, "email"),
    ],
)
async def test_bad_rep_is_rejected_naming_the_field(
    assignment: httpx.AsyncClient, keys: Keys, body: Json, field: str
) -> None:
    response = await assignment.post(
        "/v1/reps", json=body, headers=await keys.headers(Role.MANAGER)
    )
    assert response.status_code == 422
    assert any(error["loc"][-1] == field for error in response.json()["detail"])


async def test_unknown_rep_is_404_and_reps_are_managed_by_managers_only(
    assignment: httpx.AsyncClient, keys: Keys
) -> None:
    manager = await keys.headers(Role.MANAGER)
    assert (await assignment.get("/v1/reps/nobody", headers=manager)).status_code == 404
    patched = await assignment.patch("/v1/reps/nobody", json={"away": True}, headers=manager)
    assert patched.status_code == 404
    null_name = await assignment.patch("/v1/reps/nobody", json={"name": None}, headers=manager)
    assert null_name.status_code == 422
    rep = await keys.headers(Role.REP, unique("rep"))
    body = {"rep_id": unique("rep"), "name": "Me"}
    assert (await assignment.post("/v1/reps", json=body, headers=rep)).status_code == 403
    assert (await assignment.post("/v1/reps", json=body)).status_code == 401


async def test_pool_with_unknown_rep_is_rejected_naming_rep_ids(team: Team) -> None:
    known = await team.rep()
    response = await team.client.post(
        "/v1/pools",
        json={"pool_id": unique("pool"), "name": "P", "rep_ids": [known, "ghost-rep"]},
        headers=team.manager,
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "rep_ids"]
    assert "ghost-rep" in error["msg"]
    assert known not in error["msg"]


async def test_manager_creates_and_changes_a_pool(team: Team) -> None:
    first, second = await team.rep(), await team.rep()
    pool_id, region = await team.pool([first])
    again = await team.client.post(
        "/v1/pools", json={"pool_id": pool_id, "name": "Dup"}, headers=team.manager
    )
    assert again.status_code == 409

    changed = await team.client.patch(
        f"/v1/pools/{pool_id}",
        json={
            "rep_ids": [first, second],
            "priority": 3,
            "match": {"region": region, "min_company_size": 10},
        },
        headers=team.manager,
    )
    assert changed.status_code == 200, changed.text
    fetched = (await team.client.get(f"/v1/pools/{pool_id}", headers=team.manager)).json()
    assert fetched["rep_ids"] == [first, second]
    assert fetched["priority"] == 3
    assert fetched["match"]["min_company_size"] == 10
    assert fetched["match"]["region"] == region

    bad_sizes = await team.client.patch(
        f"/v1/pools/{pool_id}",
        json={"match": {"min_company_size": 10, "max_company_size": 5}},
        headers=team.manager,
    )
    assert bad_sizes.status_code == 422
    assert bad_sizes.json()["detail"][0]["loc"][-1] == "max_company_size"
    unknown = await team.client.patch(
        f"/v1/pools/{pool_id}", json={"rep_ids": ["ghost"]}, headers=team.manager
    )
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "rep_ids"]
    missing = await team.client.patch("/v1/pools/nope", json={"priority": 1}, headers=team.manager)
    assert missing.status_code == 404
    listed = await team.client.get("/v1/pools", headers=team.manager)
    assert pool_id in [pool["pool_id"] for pool in listed.json()]


# --- routing -------------------------------------------------------------------------


async def test_leads_are_dealt_round_robin_across_the_pools_reps(team: Team, infra: Infra) -> None:
    ana, ben = await team.rep(), await team.rep()
    pool_id, region = await team.pool([ana, ben])
    events = [lead_received(region) for _ in range(4)]
    leads = []
    # One after another: leads read in one batch share their assignment time.
    for event in events:
        await publish_event(infra.kafka_bootstrap, event)
        leads.append(await team.settled(event.lead_id))
    assert [lead["rep_id"] for lead in leads] == [ana, ben, ana, ben]
    assert all(lead["pool_id"] == pool_id for lead in leads)
    first = leads[0]
    assert first["contact"]["name"] == "Dana Kim"
    assert first["consent"] == {"email": True, "sms": False, "phone": True, "records": []}
    assert first["attribution"]["channel"] == "web_form"
    assert first["received_at"] is not None

    [assigned] = await events_about(
        infra.kafka_bootstrap, topic_for(LeadAssignedV1), events[0].lead_id
    )
    assert assigned["strategy"] == "round_robin"
    assert assigned["pool_id"] == pool_id
    assert assigned["rep_id"] == leads[0]["rep_id"]
    assert assigned["received_at"] is not None


async def test_rep_who_is_away_gets_no_leads(team: Team, infra: Infra) -> None:
    ana, ben, cho = await team.rep(), await team.rep(away=True), await team.rep()
    _, region = await team.pool([ana, ben, cho])
    events = [lead_received(region) for _ in range(3)]
    for event in events:
        await publish_event(infra.kafka_bootstrap, event)
    reps = sorted([(await team.settled(e.lead_id))["rep_id"] for e in events])
    assert ben not in reps
    assert sorted(set(reps)) == sorted({ana, cho})


async def test_lead_no_pool_takes_stays_new_and_unassigned(team: Team, infra: Infra) -> None:
    event = lead_received(unique("unclaimed-region"))
    await publish_event(infra.kafka_bootstrap, event)
    lead = await team.settled(event.lead_id, status="new")
    assert lead["rep_id"] is None
    assert lead["pool_id"] is None
    waiting = await team.client.get("/v1/leads", params={"status": "new"}, headers=team.manager)
    assert event.lead_id in [lead["lead_id"] for lead in waiting.json()]


async def test_lead_waits_in_its_pool_when_every_rep_is_away(team: Team, infra: Infra) -> None:
    away = await team.rep(away=True)
    pool_id, region = await team.pool([away])
    event = lead_received(region)
    await publish_event(infra.kafka_bootstrap, event)
    lead = await team.settled(event.lead_id, status="new")
    assert (lead["pool_id"], lead["rep_id"]) == (pool_id, None)
    in_pool = await team.client.get("/v1/leads", params={"pool_id": pool_id}, headers=team.manager)
    assert [lead["lead_id"] for lead in in_pool.json()] == [event.lead_id]


async def publish_garbage(bootstrap: str, topic: str, key: str) -> bytes:
    """A message no consumer can read, keyed like `key`'s events; returns its bytes."""
    garbage = f'{{"not": "an event", "marker": "{unique(key)}"}}'.encode()
    await publish_raw(bootstrap, topic, garbage, key)
    return garbage


async def parked(bootstrap: str, topic: str, garbage: bytes) -> dict[str, str]:
    """The headers of `garbage` once assignment has parked it on `topic`'s dead-letter topic.

    Every service that consumes the topic parks its own copy; only assignment's counts here.
    """

    async def probe() -> list[dict[str, str]]:
        messages = await read_all(bootstrap, dead_letter_topic(topic))
        return [
            headers
            for value, headers in messages
            if value == garbage and headers.get("x-dlq-service") == "assignment"
        ]

    [headers] = await eventually(probe, bool, timeout_s=30)
    return headers


async def test_same_event_twice_is_assigned_once(team: Team, infra: Infra) -> None:
    ana, ben = await team.rep(), await team.rep()
    pool_id, region = await team.pool([ana, ben])
    event = lead_received(region)
    topic = topic_for(LeadReceivedV1)
    await publish_event(infra.kafka_bootstrap, event)
    await publish_event(infra.kafka_bootstrap, event)
    # Same key, same partition: once the unreadable message behind them is parked,
    # both copies have been handled.
    barrier = await publish_garbage(infra.kafka_bootstrap, topic, event.lead_id)
    await parked(infra.kafka_bootstrap, topic, barrier)

    lead = await team.lead(event.lead_id)
    assert (lead["status"], lead["rep_id"], lead["inquiries"]) == ("assigned", ana, 1)
    pool = (await team.client.get(f"/v1/pools/{pool_id}", headers=team.manager)).json()
    # Dealt once: Ben is next, Ana has had one lead.
    members = [(m["rep_id"], m["last_assigned_at"] is not None) for m in pool["members"]]
    assert members == [(ben, False), (ana, True)]
    after = lead_received(region)
    await publish_event(infra.kafka_bootstrap, after)
    assert (await team.settled(after.lead_id))["rep_id"] == ben
    [assigned] = await events_about(infra.kafka_bootstrap, topic_for(LeadAssignedV1), event.lead_id)
    assert assigned["rep_id"] == ana


async def test_repeat_inquiries_are_counted_even_when_read_before_the_lead(
    team: Team, infra: Infra
) -> None:
    ana, ben = await team.rep(), await team.rep()
    _, region = await team.pool([ana, ben])
    event = lead_received(region)
    merged = LeadMergedV1(
        lead_id=event.lead_id,
        contact=Contact(name="Dana Kim-Lee", phone="+14155550100", email="dana@example.com"),
        attribution=Attribution(source="website", channel="phone"),
        matched_on="phone",
    )
    # Kafka orders each topic apart, so a merge can be read before the lead it repeats.
    # Force that: the merge is handled once the unreadable message behind it is parked.
    await publish_event(infra.kafka_bootstrap, merged)
    merged_topic = topic_for(LeadMergedV1)
    barrier = await publish_garbage(infra.kafka_bootstrap, merged_topic, event.lead_id)
    await parked(infra.kafka_bootstrap, merged_topic, barrier)
    await publish_event(infra.kafka_bootstrap, event)
    await publish_event(infra.kafka_bootstrap, merged.model_copy(update={"event_id": uuid.uuid4()}))

    lead = await eventually(
        lambda: team.lead(event.lead_id), lambda lead: lead.get("inquiries") == 3
    )
    assert (lead["status"], lead["rep_id"]) == ("assigned", ana)
    assert lead["contact"]["email"] == "dana@example.com"
    assert lead["contact"]["name"] == "Dana Kim-Lee"


async def test_garbage_message_is_parked_and_the_next_lead_still_routed(
    team: Team, infra: Infra
) -> None:
    ana = await team.rep()
    _, region = await team.pool([ana])
    valid = lead_received(region)
    topic = topic_for(LeadReceivedV1)
    garbage = await publish_garbage(infra.kafka_bootstrap, topic, valid.lead_id)
    await publish_event(infra.kafka_bootstrap, valid)

    assert (await team.settled(valid.lead_id))["rep_id"] == ana
    headers = await parked(infra.kafka_bootstrap, topic, garbage)
    assert headers["x-dlq-original-topic"] == topic
    assert "invalid event" in headers["x-dlq-error"]


# --- leads for reps and managers -----------------------------------------------------


async def test_rep_sees_only_their_own_leads(team: Team, infra: Infra, keys: Keys) -> None:
    ana, ben = await team.rep(), await team.rep()
    pool_id, region = await team.pool([ana, ben])
    events = [lead_received(region) for _ in range(2)]
    for event in events:
        await publish_event(infra.kafka_bootstrap, event)
    leads = {
        lead["rep_id"]: lead["lead_id"] for lead in [await team.settled(e.lead_id) for e in events]
    }

    as_ana = await keys.headers(Role.REP, ana)
    mine = await team.client.get("/v1/leads", params={"pool_id": pool_id}, headers=as_ana)
    assert [lead["lead_id"] for lead in mine.json()] == [leads[ana]]
    own = await team.client.get(f"/v1/leads/{leads[ana]}", headers=as_ana)
    assert own.status_code == 200
    assert (await team.client.get(f"/v1/leads/{leads[ben]}", headers=as_ana)).status_code == 403
    others = await team.client.get("/v1/leads", params={"rep_id": ben}, headers=as_ana)
    assert others.status_code == 403
    everyone = await team.client.get(
        "/v1/leads", params={"pool_id": pool_id, "status": "assigned"}, headers=team.manager
    )
    assert sorted(lead["lead_id"] for lead in everyone.json()) == sorted(leads.values())
    assert (await team.client.get("/v1/leads/nope", headers=team.manager)).status_code == 404
    bad_status = await team.client.get("/v1/leads", params={"status": "won"}, headers=team.manager)
    assert bad_status.status_code == 422
    assert bad_status.json()["detail"][0]["loc"] == ["query", "status"]


async def test_rep_marks_lead_lost_level_2_and_it_goes_to_nurture(
    team: Team, infra: Infra, keys: Keys
) -> None:
    ana, ben = await team.rep(), await team.rep()
    _, region = await team.pool([ana])
    event = lead_received(region, name="Sam Park", email="sam@example.com")
    await publish_event(infra.kafka_bootstrap, event)
    await team.settled(event.lead_id)
    url = f"/v1/leads/{event.lead_id}/lost"

    as_ben = await keys.headers(Role.REP, ben)
    assert (await team.client.post(url, json={"level": 2}, headers=as_ben)).status_code == 403

    as_ana = await keys.headers(Role.REP, ana)
    wrong_level = await team.client.post(url, json={"level": 4}, headers=as_ana)
    assert wrong_level.status_code == 422
    assert wrong_level.json()["detail"][0]["loc"] == ["body", "level"]

    lost = await team.client.post(
        url, json={"level": 2, "reason": "joined the gym next door"}, headers=as_ana
    )
    assert lost.status_code == 200, lost.text
    assert lost.json()["status"] == "nurturing"
    assert lost.json()["lost_level"] == 2
    assert (await team.lead(event.lead_id))["status"] == "nurturing"

    again = await team.client.post(url, json={"level": 1}, headers=team.manager)
    assert again.status_code == 409

    [published] = await events_about(infra.kafka_bootstrap, topic_for(LeadLostV1), event.lead_id)
    assert published["level"] == 2
    assert published["rep_id"] == ana
    assert published["reason"] == "joined the gym next door"
    assert published["contact"]["email"] == "sam@example.com"
    assert published["consent"] == {"email": True, "sms": False, "phone": True, "records": []}


async def test_manager_marks_lead_lost_level_1_and_it_is_closed(team: Team, infra: Infra) -> None:
    ana = await team.rep()
    _, region = await team.pool([ana])
    event = lead_received(region)
    await publish_event(infra.kafka_bootstrap, event)
    await team.settled(event.lead_id)
    lost = await team.client.post(
        f"/v1/leads/{event.lead_id}/lost", json={"level": 1}, headers=team.manager
    )
    assert lost.status_code == 200
    assert lost.json()["status"] == "lost"


async def test_losing_an_unknown_lead_is_404(team: Team) -> None:
    response = await team.client.post(
        f"/v1/leads/{unique('lead')}/lost", json={"level": 3}, headers=team.manager
    )
    assert response.status_code == 404


async def test_returned_lead_goes_to_another_rep_in_the_pool(
    team: Team, infra: Infra, keys: Keys
) -> None:
    ana, ben = await team.rep(), await team.rep()
    pool_id, region = await team.pool([ana, ben])
    event = lead_received(region)
    await publish_event(infra.kafka_bootstrap, event)
    assert (await team.settled(event.lead_id))["rep_id"] == ana

    as_ben = await keys.headers(Role.REP, ben)
    url = f"/v1/leads/{event.lead_id}/return"
    assert (await team.client.post(url, json={}, headers=as_ben)).status_code == 403
    as_ana = await keys.headers(Role.REP, ana)
    returned = await team.client.post(url, json={"reason": "no answer x3"}, headers=as_ana)
    assert returned.status_code == 200, returned.text
    assert (returned.json()["rep_id"], returned.json()["status"]) == (ben, "assigned")

    # Ben cannot hand it back to Ana (she returned it): it waits in the pool.
    again = await team.client.post(url, json={}, headers=as_ben)
    assert (again.json()["rep_id"], again.json()["status"]) == (None, "new")
    assert again.json()["pool_id"] == pool_id
    not_held = await team.client.post(url, json={}, headers=team.manager)
    assert not_held.status_code == 409

    assigned = await events_about(
        infra.kafka_bootstrap, topic_for(LeadAssignedV1), event.lead_id, until=2
    )
    assert [(e["rep_id"], e["previous_rep_id"]) for e in assigned] == [(ana, None), (ben, ana)]


async def test_a_repeat_inquiry_delivered_twice_counts_once(team: Team, infra: Infra) -> None:
    ana = await team.rep()
    _, region = await team.pool([ana])
    event = lead_received(region)
    await publish_event(infra.kafka_bootstrap, event)
    await team.settled(event.lead_id)
    merged = repeat_inquiry(event.lead_id)
    await publish_event(infra.kafka_bootstrap, merged)
    await publish_event(infra.kafka_bootstrap, merged)
    topic = topic_for(LeadMergedV1)
    barrier = await publish_garbage(infra.kafka_bootstrap, topic, event.lead_id)
    await parked(infra.kafka_bootstrap, topic, barrier)

    lead = await team.lead(event.lead_id)
    assert (lead["inquiries"], lead["contact"]["email"]) == (2, "dana@example.com")


async def test_a_pool_changed_through_the_api_routes_the_next_lead(
    team: Team, infra: Infra
) -> None:
    ana, ben = await team.rep(), await team.rep()
    pool_id, region = await team.pool([ana])
    first = lead_received(region)
    await publish_event(infra.kafka_bootstrap, first)
    assert (await team.settled(first.lead_id))["rep_id"] == ana

    changed = await team.client.patch(
        f"/v1/pools/{pool_id}", json={"rep_ids": [ben]}, headers=team.manager
    )
    assert changed.status_code == 200, changed.text
    second = lead_received(region)
    await publish_event(infra.kafka_bootstrap, second)
    assert (await team.settled(second.lead_id))["rep_id"] == ben


# --- several replicas on one database --------------------------------------------------


def repeat_inquiry(lead_id: str) -> LeadMergedV1:
    return LeadMergedV1(
        lead_id=lead_id,
        contact=Contact(name="Dana Kim", phone="+14155550100", email="dana@example.com"),
        attribution=Attribution(source="front-desk", channel="phone"),
        matched_on="phone",
    )


@dataclass
class Replica:
    """What one assignment replica runs on a database, without its HTTP and Kafka."""

    database: Database
    store: MongoAssignmentStore
    ledger: EventLedger
    cache: ConfigurationCache
    route: RouteLeads
    team: ManageTeam


@contextlib.asynccontextmanager
async def replica_on(mongo_url: str, database: str) -> AsyncIterator[Replica]:
    client = connect(mongo_url, app_name="leadflow-assignment-test-replica")
    try:
        ledger = EventLedger(
            client, client[database], handled_retention=timedelta(days=8), clock=system_clock
        )
        store = MongoAssignmentStore(client[database], ledger)
        cache = configuration_cache(store, max_age_s=1.0)
        yield Replica(
            client[database],
            store,
            ledger,
            cache,
            RouteLeads(store, cache, clock=system_clock),
            ManageTeam(store, cache, clock=system_clock),
        )
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def fresh_database(mongo_url: str) -> AsyncIterator[str]:
    name = unique("assignment_replicas").replace("-", "_")
    try:
        yield name
    finally:
        client = connect(mongo_url, app_name="leadflow-assignment-test-cleanup")
        await client.drop_database(name)
        await client.close()


async def test_two_replicas_routing_at_once_deal_every_lead_once_and_fairly(
    infra: Infra,
) -> None:
    async with (
        fresh_database(infra.mongo_url) as database,
        replica_on(infra.mongo_url, database) as first,
        replica_on(infra.mongo_url, database) as second,
    ):
        await first.ledger.ensure_indexes()
        await first.store.ensure_indexes()
        reps = [f"rep{i}" for i in range(10)]
        for rep_id in reps:
            await first.team.add_rep(Rep(rep_id, rep_id.title()), utc_now())
        everyone = Pool("all", "Everyone", tuple(reps), is_default=True)
        await first.team.add_pool(everyone, utc_now())
        events = [lead_received("anywhere") for _ in range(200)]

        async def route_in_batches(replica: Replica, half: list[LeadReceivedV1]) -> None:
            for start in range(0, len(half), 20):
                await replica.route(half[start : start + 20])

        await asyncio.gather(
            route_in_batches(first, events[:100]), route_in_batches(second, events[100:])
        )

        leads = await first.store.list_leads(LeadQuery(pool_id="all", limit=500))
        assert sorted(lead.lead_id for lead in leads) == sorted(e.lead_id for e in events)
        dealt = Counter(lead.rep_id for lead in leads)
        assert all(abs(dealt[rep_id] - len(events) / len(reps)) <= 1 for rep_id in reps), dealt
        announced = [record.key for record in await first.ledger.pending(1000)]
        assert sorted(announced) == sorted(e.lead_id for e in events)
        # Configuration was read once per replica, not once per batch.
        assert (first.cache.loads, second.cache.loads) == (1, 1)


class PausingLeads:
    """A transaction's view of the leads that stops, once, right after reading them."""

    def __init__(self, leads: LeadsInTransaction, read: asyncio.Event, resume: asyncio.Event):
        self._leads = leads
        self._read = read
        self._resume = resume

    async def leads(self, lead_ids: Collection[str]) -> dict[str, KnownLead]:
        known = await self._leads.leads(lead_ids)
        if not self._read.is_set():
            self._read.set()
            await self._resume.wait()
        return known

    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]:
        return await self._leads.last_assignments(rep_ids)

    async def take_turns(self, count: int) -> int:
        return await self._leads.take_turns(count)

    async def save(
        self, leads: Sequence[KnownLead], last_assignments: Sequence[LastAssignment]
    ) -> None:
        await self._leads.save(leads, last_assignments)

    async def queued(self, pool_id: str, limit: int) -> list[Lead]:
        return await self._leads.queued(pool_id, limit)

    async def open_leads_of(self, rep_id: str) -> list[Lead]:
        return await self._leads.open_leads_of(rep_id)

    async def claimed_open(self, rep_id: str, pool_id: str) -> int:
        return await self._leads.claimed_open(rep_id, pool_id)

    async def schedule(self, timers: Sequence[Timer]) -> None:
        await self._leads.schedule(timers)

    async def cancel(self, keys: Collection[str]) -> None:
        await self._leads.cancel(keys)

    async def finish(self, claimed: Sequence[ClaimedWork]) -> None:
        await self._leads.finish(claimed)


class PausingStore(MongoAssignmentStore):
    """The Mongo store whose batches pause once, inside their transaction, after reading
    their leads."""

    def __init__(self, replica: Replica, read: asyncio.Event, resume: asyncio.Event) -> None:
        super().__init__(replica.database, replica.ledger)
        self._read = read
        self._resume = resume

    async def handle_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        async def paused(
            leads: LeadsInTransaction, fresh: list[Event]
        ) -> tuple[T, Sequence[Event]]:
            return await work(PausingLeads(leads, self._read, self._resume), fresh)

        return await super().handle_batch(consumed, paused)


async def test_losing_a_lead_while_its_repeat_inquiry_is_handled_keeps_both(
    team: Team, infra: Infra, run_id: str
) -> None:
    ana = await team.rep()
    _, region = await team.pool([ana])
    event = lead_received(region)
    await publish_event(infra.kafka_bootstrap, event)
    await team.settled(event.lead_id)

    # Another replica handles a repeat inquiry and is held inside its transaction, after
    # reading the lead, while a manager marks the lead lost on the service's HTTP API.
    database = settings_for(Settings, infra, run_id).database
    async with replica_on(infra.mongo_url, database) as other:
        read, resume = asyncio.Event(), asyncio.Event()
        route = RouteLeads(PausingStore(other, read, resume), other.cache, clock=system_clock)
        handling = asyncio.create_task(route([repeat_inquiry(event.lead_id)]))
        await asyncio.wait_for(read.wait(), timeout=30)
        lost = await team.client.post(
            f"/v1/leads/{event.lead_id}/lost", json={"level": 3}, headers=team.manager
        )
        assert lost.status_code == 200, lost.text
        resume.set()
        await asyncio.wait_for(handling, timeout=60)

    lead = await team.lead(event.lead_id)
    # The loss committed first; the repeat inquiry, run again on it, reopened the lead
    # for its owner (a nurtured lead that asks again is back with sales).
    assert (lead["status"], lead["rep_id"]) == ("assigned", ana)
    assert "lost level 3" in [entry["action"] for entry in lead["history"]]
    assert (lead["inquiries"], lead["contact"]["email"]) == (2, "dana@example.com")
