"""Assignment's workflow, timers and access over HTTP, on the real Kafka-wire broker and
MongoDB-wire server.

This module runs its own assignment app (own database) on a clock it can move forward, so
timers (SLA, shift start) come due without waiting: the clock is real time plus an offset.
Every test makes its own reps and a pool for its own region.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from leadflow.chassis.auth import Role
from leadflow.chassis.clock import system_clock
from leadflow.chassis.duework import DueWorkRunner
from leadflow.chassis.store import EventLedger, connect
from services.assignment.app import create_app
from services.assignment.rules import Pool, Rep
from services.assignment.settings import Settings
from services.assignment.store import ConfigurationInTransaction, MongoAssignmentStore
from services.assignment.timers import TIMER_KINDS, FireTimers
from services.assignment.usecases import RouteLeads, configuration_cache
from services.assignment.workflow import WorkLeads
from shared.events import (
    Attribution,
    Consent,
    Contact,
    Event,
    LeadConvertedV1,
    LeadReceivedV1,
    Profile,
    SlaBreachedV1,
    utc_now,
)
from shared.topics import topic_for
from tests.conftest import Keys
from tests.support.infra import Infra
from tests.support.kafka import publish_event, read_all
from tests.support.services import eventually, serve, settings_for

pytestmark = pytest.mark.integration

Json = dict[str, Any]


class MovableClock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utc_now() + self.offset


@pytest.fixture(scope="module")
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture(scope="module")
async def app(infra: Infra, run_id: str, clock: MovableClock) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(
        Settings,
        infra,
        f"{run_id}_wf",
        identity_database=f"leadflow_identity_{run_id}",
        timer_poll_s=0.2,
    )
    async with serve(create_app(settings, clock=clock)) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Team:
    def __init__(self, client: httpx.AsyncClient, manager: dict[str, str]) -> None:
        self.client = client
        self.manager = manager

    async def rep(self, **fields: Any) -> str:
        rep_id = unique("rep")
        response = await self.client.post(
            "/v1/reps", json={"rep_id": rep_id, "name": "Rep", **fields}, headers=self.manager
        )
        assert response.status_code == 201, response.text
        return rep_id

    async def pool(self, rep_ids: list[str], **fields: Any) -> tuple[str, str]:
        pool_id, region = unique("pool"), unique("region")
        response = await self.client.post(
            "/v1/pools",
            json={
                "pool_id": pool_id,
                "name": "Pool",
                "rep_ids": rep_ids,
                "match": {"region": region},
                "priority": 10,
                **fields,
            },
            headers=self.manager,
        )
        assert response.status_code == 201, response.text
        return pool_id, region

    async def lead(self, lead_id: str) -> Json:
        response = await self.client.get(f"/v1/leads/{lead_id}", headers=self.manager)
        return response.json() if response.status_code == 200 else {}

    async def settled(self, lead_id: str, status: str = "assigned", **fields: Any) -> Json:
        return await eventually(
            lambda: self.lead(lead_id),
            lambda lead: (
                lead.get("status") == status and all(lead.get(k) == v for k, v in fields.items())
            ),
            timeout_s=30,
        )


@pytest.fixture
async def team(app: httpx.AsyncClient, keys: Keys) -> Team:
    return Team(app, await keys.headers(Role.MANAGER))


def lead_received(region: str) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=unique("lead"),
        contact=Contact(name="Dana Kim", phone="+14155550100"),
        attribution=Attribution(source="website", channel="web_form"),
        consent=Consent(email=True),
        profile=Profile(region=region, industry="fitness"),
    )


async def events_about(bootstrap: str, topic: str, lead_id: str, *, until: int = 1) -> list[Json]:
    async def probe() -> list[Json]:
        return [
            body
            for value, _ in await read_all(bootstrap, topic)
            if (body := json.loads(value)).get("lead_id") == lead_id
        ]

    return await eventually(probe, lambda found: len(found) >= until, timeout_s=30)


# --- the rep's day --------------------------------------------------------------------


async def test_a_rep_works_a_lead_from_first_call_to_conversion(
    team: Team, infra: Infra, keys: Keys
) -> None:
    mia = await team.rep()
    ana = await team.rep(manager_id=mia)
    pool_id, region = await team.pool([ana])
    event = lead_received(region)
    await publish_event(infra.kafka_bootstrap, event)
    lead = await team.settled(event.lead_id, rep_id=ana)
    assert lead["why"]["pool_id"] == pool_id
    assert lead["why"]["strategy"] == "round_robin"

    as_ana = await keys.headers(Role.REP, ana)
    url = f"/v1/leads/{event.lead_id}"
    no_outcome = await team.client.post(f"{url}/activities", json={"kind": "call"}, headers=as_ana)
    assert no_outcome.status_code == 422
    called = await team.client.post(
        f"{url}/activities", json={"kind": "call", "outcome": "reached"}, headers=as_ana
    )
    assert called.status_code == 200, called.text
    assert (called.json()["status"], called.json()["first_contact_at"] is not None) == (
        "contacted",
        True,
    )
    unknown_grade = await team.client.post(f"{url}/grade", json={"grade": "Z"}, headers=as_ana)
    assert unknown_grade.status_code == 422
    assert unknown_grade.json()["detail"][0]["loc"] == ["body", "grade"]
    graded = await team.client.post(f"{url}/grade", json={"grade": "H"}, headers=as_ana)
    assert graded.json()["next_follow_up_at"] is not None
    booked = await team.client.post(
        f"{url}/visits",
        json={"scheduled_for": (utc_now() + timedelta(days=1)).isoformat()},
        headers=as_ana,
    )
    assert booked.status_code == 200, booked.text
    visit_id = booked.json()["visits"][0]["visit_id"]
    checked = await team.client.post(f"{url}/check-in", json={"visit_id": visit_id}, headers=as_ana)
    assert checked.json()["status"] == "visited"
    assert checked.json()["visits"][0]["callback_due_at"] is not None
    scored = await team.client.post(
        f"{url}/visits/{visit_id}/satisfaction", json={"score": 11}, headers=as_ana
    )
    assert scored.status_code == 422
    assert scored.json()["detail"][0]["loc"] == ["body", "score"]
    scored = await team.client.post(
        f"{url}/visits/{visit_id}/satisfaction", json={"score": 7}, headers=as_ana
    )
    assert scored.status_code == 200, scored.text
    endless = await team.client.post(
        f"{url}/convert",
        content=b'{"customer_id": "M-77", "revenue": Infinity,'
        b' "opportunity": {"opportunity_id": "opp-77", "amount": 1e400, "stage": "won"}}',
        headers={**as_ana, "content-type": "application/json"},
    )
    assert endless.status_code == 422, endless.text
    assert {tuple(e["loc"]) for e in endless.json()["detail"]} == {
        ("body", "revenue"),
        ("body", "opportunity", "amount"),
    }
    converted = await team.client.post(
        f"{url}/convert",
        json={
            "customer_id": "M-77",
            "revenue": 1200,
            "currency": "EUR",
            "plan": "annual",
            "opportunity": {"opportunity_id": "opp-77", "amount": 1500, "stage": "won"},
        },
        headers=as_ana,
    )
    assert converted.status_code == 200, converted.text
    assert converted.json()["conversion"]["customer_id"] == "M-77"
    again = await team.client.post(
        f"{url}/convert", json={"customer_id": "M-77", "revenue": 1}, headers=as_ana
    )
    assert again.status_code == 409

    [won] = await events_about(infra.kafka_bootstrap, topic_for(LeadConvertedV1), event.lead_id)
    assert (won["revenue"], won["currency"], won["opportunity_id"]) == (1200, "EUR", "opp-77")
    [alert] = await events_about(infra.kafka_bootstrap, topic_for(SlaBreachedV1), event.lead_id)
    assert (alert["sla"], alert["escalated_to"]) == ("satisfaction", mia)


async def test_missed_sla_fires_once_escalates_and_reassigns(
    team: Team, infra: Infra, clock: MovableClock, keys: Keys
) -> None:
    mia = await team.rep()
    ana, ben = await team.rep(manager_id=mia), await team.rep(manager_id=mia)
    _, region = await team.pool([ana, ben], sla_minutes=30, sla_reassign=True)
    event = lead_received(region)
    await publish_event(infra.kafka_bootstrap, event)
    lead = await team.settled(event.lead_id, rep_id=ana)
    assert lead["sla_due_at"] is not None

    clock.offset += timedelta(minutes=31)
    moved = await team.settled(event.lead_id, rep_id=ben)
    assert moved["why"]["skipped"][ana] == "missed the SLA"
    [breach] = await events_about(infra.kafka_bootstrap, topic_for(SlaBreachedV1), event.lead_id)
    assert (breach["rep_id"], breach["escalated_to"], breach["reassigned"]) == (ana, mia, True)
    # Ben called in time: his SLA clock stopped, nothing more fires.
    as_ben = await keys.headers(Role.REP, ben)
    called = await team.client.post(
        f"/v1/leads/{event.lead_id}/activities", json={"kind": "sms"}, headers=as_ben
    )
    assert called.status_code == 200, called.text
    clock.offset += timedelta(minutes=31)
    await asyncio.sleep(1.5)
    breaches = await events_about(infra.kafka_bootstrap, topic_for(SlaBreachedV1), event.lead_id)
    assert len(breaches) == 1


async def test_a_lead_waits_in_the_queue_off_shift_and_goes_to_the_first_rep_on_shift(
    team: Team, infra: Infra, clock: MovableClock
) -> None:
    now = clock()
    # Ana's only shift starts two hours from now (UTC), on today's weekday.
    start = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    end = start + timedelta(hours=1)
    if end.date() != start.date():
        # The hour would cross midnight: tomorrow at 01:00 instead (still ahead of now).
        start = (now + timedelta(days=1)).replace(hour=1, minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    shift = {
        "weekday": start.weekday(),
        "start": start.strftime("%H:%M"),
        "end": end.strftime("%H:%M"),
    }
    ana = await team.rep(timezone="UTC", working_hours=[shift])
    pool_id, region = await team.pool([ana])
    event = lead_received(region)
    await publish_event(infra.kafka_bootstrap, event)
    waiting = await team.settled(event.lead_id, status="new")
    assert waiting["pool_id"] == pool_id
    assert waiting["why"]["skipped"] == {ana: "off shift"}
    queue = await team.client.get(
        "/v1/leads", params={"pool_id": pool_id, "queued": "true"}, headers=team.manager
    )
    assert [lead["lead_id"] for lead in queue.json()] == [event.lead_id]
    dry = await team.client.post(
        "/v1/routing/dry-run", json={"profile": {"region": region}}, headers=team.manager
    )
    assert dry.json()["outcome"] == "queued"
    assert dry.json()["wake_at"] is not None

    clock.offset += start - now + timedelta(seconds=1)
    dealt = await team.settled(event.lead_id, rep_id=ana)
    assert dealt["queued_at"] is None


async def test_handover_when_a_rep_leaves(team: Team, infra: Infra, keys: Keys) -> None:
    mia = await team.rep()
    ana, ben = await team.rep(manager_id=mia), await team.rep(manager_id=mia)
    _, region = await team.pool([ana, ben])
    events = [lead_received(region) for _ in range(4)]
    for event in events:
        await publish_event(infra.kafka_bootstrap, event)
        await team.settled(event.lead_id)
    held = [e.lead_id for e in events if (await team.lead(e.lead_id))["rep_id"] == ana]
    assert len(held) == 2

    as_ben = await keys.headers(Role.REP, ben)
    refused = await team.client.post(f"/v1/reps/{ana}/handover", json={}, headers=as_ben)
    assert refused.status_code == 403
    as_mia = await keys.headers(Role.REP, mia)
    team_queue = await team.client.get("/v1/leads", params={"team": "true"}, headers=as_mia)
    assert {lead["lead_id"] for lead in team_queue.json()} == {e.lead_id for e in events}
    handed = await team.client.post(f"/v1/reps/{ana}/handover", json={}, headers=as_mia)
    assert handed.status_code == 200, handed.text
    assert handed.json()["active"] is False
    assert sorted(lead["lead_id"] for lead in handed.json()["leads"]) == sorted(held)
    for lead_id in held:
        lead = await team.lead(lead_id)
        assert lead["rep_id"] == ben
        assert [h["action"] for h in lead["history"]][:1] == ["routed"]
        assert lead["history"][0]["rep_id"] == ana
    # Ana, inactive now, never receives a lead again.
    later = lead_received(region)
    await publish_event(infra.kafka_bootstrap, later)
    assert (await team.settled(later.lead_id))["rep_id"] == ben


# --- access ------------------------------------------------------------------------------


def _bodies(lead_id: str, rep_id: str, pool_id: str) -> dict[tuple[str, str], Json]:
    """A valid body for each route that takes one (so the answer is about access)."""
    return {
        ("POST", "/v1/reps"): {"rep_id": unique("rep"), "name": "X"},
        ("PATCH", "/v1/reps/{rep_id}"): {"away": False},
        ("POST", "/v1/pools"): {"pool_id": unique("pool"), "name": "X"},
        ("PATCH", "/v1/pools/{pool_id}"): {"priority": 10},
        ("POST", "/v1/territory-rules"): {
            "rule_id": unique("rule"),
            "pool_id": pool_id,
            "regions": [unique("r")],
        },
        ("PUT", "/v1/territory-rules/{rule_id}"): {"pool_id": pool_id, "regions": [unique("r")]},
        ("PUT", "/v1/routing-settings"): {},
        ("POST", "/v1/routing/dry-run"): {},
        ("POST", "/v1/leads/{lead_id}/lost"): {"level": 3},
        ("POST", "/v1/leads/{lead_id}/return"): {},
        ("POST", "/v1/leads/{lead_id}/reject"): {"reason": "no"},
        ("POST", "/v1/leads/{lead_id}/help"): {},
        ("POST", "/v1/leads/{lead_id}/activities"): {"kind": "sms"},
        ("POST", "/v1/leads/{lead_id}/grade"): {"grade": "H"},
        ("POST", "/v1/leads/{lead_id}/visits"): {"scheduled_for": utc_now().isoformat()},
        ("POST", "/v1/leads/{lead_id}/check-in"): {},
        ("POST", "/v1/leads/{lead_id}/visits/{visit_id}/satisfaction"): {"score": 9},
        ("POST", "/v1/leads/{lead_id}/convert"): {"customer_id": "c", "revenue": 1},
        ("POST", "/v1/leads/assign"): {"lead_ids": [lead_id], "rep_id": rep_id},
        ("POST", "/v1/reps/{rep_id}/handover"): {},
        ("PUT", "/v1/me/notify"): {"email": "me@example.com", "channels": ["email"]},
    }


def _routes() -> list[tuple[str, str]]:
    """Every workflow and configuration endpoint, from the service's own OpenAPI document
    (a new endpoint is in the matrix at once)."""
    schema = create_app(Settings()).openapi()
    return sorted(
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path.startswith("/v1/") and path != "/v1/me/stream"  # the stream: own tests
        for method in operations
    )


async def test_every_endpoint_refuses_other_roles_and_other_reps(
    team: Team, infra: Infra, keys: Keys
) -> None:
    """The role matrix: no key 401; marketing/analyst/ingest 403; a rep outside the lead's
    team 403 on another rep's lead and on managers' endpoints; the owner and their team
    manager may."""
    mia = await team.rep()
    ana, ben = await team.rep(manager_id=mia), await team.rep()
    pool_id, region = await team.pool([ana])
    event = lead_received(region)
    await publish_event(infra.kafka_bootstrap, event)
    await team.settled(event.lead_id, rep_id=ana)
    rule = await team.client.post(
        "/v1/territory-rules",
        json={"rule_id": unique("rule"), "pool_id": pool_id, "regions": [unique("nowhere")]},
        headers=team.manager,
    )
    assert rule.status_code == 201, rule.text
    params = {
        "lead_id": event.lead_id,
        "rep_id": ana,
        "pool_id": pool_id,
        "rule_id": rule.json()["rule_id"],
        "visit_id": "v-none",
    }
    bodies = _bodies(event.lead_id, ana, pool_id)
    routes = _routes()
    assert ("POST", "/v1/leads/{lead_id}/claim") in routes
    assert ("PUT", "/v1/me/notify") in routes

    outsider = await keys.headers(Role.REP, ben)
    strangers = {
        "no key": {},
        "marketing": await keys.headers(Role.MARKETING),
        "analyst": await keys.headers(Role.ANALYST),
        "ingest": await keys.headers(Role.INGEST),
    }
    # Reading one's own queue and choosing how one is told are every rep's right; the
    # rest must refuse an outsider.
    open_to_any_rep = {("GET", "/v1/leads"), ("GET", "/v1/notifications"), ("PUT", "/v1/me/notify")}
    refused: Counter[str] = Counter()
    for method, path in routes:
        url = path.format(**params)
        body = bodies.get((method, path))
        for who, headers in strangers.items():
            response = await team.client.request(method, url, json=body, headers=headers)
            expected = 401 if who == "no key" else 403
            assert response.status_code == expected, (who, method, path, response.text)
            refused[who] += 1
        if (method, path) in open_to_any_rep:
            continue
        response = await team.client.request(method, url, json=body, headers=outsider)
        assert response.status_code == 403, ("outsider rep", method, path, response.text)
        refused["outsider rep"] += 1
    assert refused["outsider rep"] == len(routes) - len(open_to_any_rep)

    # The owner and the owner's manager may; the lead is still theirs to see.
    as_ana = await keys.headers(Role.REP, ana)
    as_mia = await keys.headers(Role.REP, mia)
    for headers in (as_ana, as_mia, team.manager):
        assert (
            await team.client.get(f"/v1/leads/{event.lead_id}", headers=headers)
        ).status_code == 200
    helped = await team.client.post(f"/v1/leads/{event.lead_id}/help", json={}, headers=as_ana)
    assert helped.status_code == 200, helped.text
    joined = await team.client.post(f"/v1/leads/{event.lead_id}/join", headers=as_mia)
    assert joined.status_code == 200, joined.text
    assert joined.json()["helpers"] == [mia]


async def test_a_pool_names_its_manager_who_must_be_a_known_rep(team: Team) -> None:
    mia, ana = await team.rep(), await team.rep()
    unknown = await team.client.post(
        "/v1/pools",
        json={"pool_id": unique("pool"), "name": "P", "rep_ids": [ana], "manager_id": "nobody"},
        headers=team.manager,
    )
    assert unknown.status_code == 422, unknown.text
    assert ["body", "manager_id"] in [error["loc"] for error in unknown.json()["detail"]]

    pool_id, _ = await team.pool([ana], manager_id=mia)
    read = await team.client.get(f"/v1/pools/{pool_id}", headers=team.manager)
    assert read.json()["manager_id"] == mia
    cleared = await team.client.patch(
        f"/v1/pools/{pool_id}", json={"manager_id": None}, headers=team.manager
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["manager_id"] is None


async def test_a_rep_sets_their_own_notification_preferences_and_only_theirs(
    team: Team, keys: Keys
) -> None:
    ana, ben = await team.rep(), await team.rep(notify={"email": "ben@example.com"})
    as_ana = await keys.headers(Role.REP, ana)
    wanted = {
        "email": "ana@example.com",
        "webhook_url": "https://hooks.example.com/ana",
        "webhook_secret": "a-secret-of-16-chars-or-more",
        "slack": True,
        "channels": ["email", "webhook", "sse"],
    }

    response = await team.client.put("/v1/me/notify", json=wanted, headers=as_ana)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "email": "ana@example.com",
        "webhook_url": "https://hooks.example.com/ana",
        "webhook_secret_set": True,
        "slack": True,
        "channels": ["email", "webhook", "sse"],
    }
    ana_now = (await team.client.get(f"/v1/reps/{ana}", headers=team.manager)).json()
    ben_now = (await team.client.get(f"/v1/reps/{ben}", headers=team.manager)).json()
    assert ana_now["notify"] == response.json()
    assert ben_now["notify"]["email"] == "ben@example.com"

    bad = await team.client.put(
        "/v1/me/notify",
        json={"email": "not-an-address", "webhook_url": "http://hooks.example.com/ana"},
        headers=as_ana,
    )
    assert bad.status_code == 422, bad.text
    named = {tuple(error["loc"]) for error in bad.json()["detail"]}
    assert {("body", "email"), ("body", "webhook_url")} <= named, named
    assert any("https" in error["msg"] for error in bad.json()["detail"])
    after = (await team.client.get(f"/v1/reps/{ana}", headers=team.manager)).json()
    assert after["notify"] == response.json()  # a refused change changes nothing

    # A manager key names no rep: there is no "me" to change.
    as_manager = await team.client.put("/v1/me/notify", json=wanted, headers=team.manager)
    assert as_manager.status_code == 403, as_manager.text


async def test_a_webhook_must_be_https_unless_it_is_on_this_machine(team: Team) -> None:
    """Leads are posted to it: a manager's settings follow the same rule as a rep's own."""
    rep_id = await team.rep()

    async def notify(url: str) -> httpx.Response:
        return await team.client.patch(
            f"/v1/reps/{rep_id}",
            json={"notify": {"webhook_url": url, "channels": ["webhook"]}},
            headers=team.manager,
        )

    plain = await notify("http://hooks.example.com/rep")
    assert plain.status_code == 422, plain.text
    assert any("https" in error["msg"] for error in plain.json()["detail"]), plain.text
    stored = (await team.client.get(f"/v1/reps/{rep_id}", headers=team.manager)).json()
    assert stored["notify"]["webhook_url"] is None  # refused: nothing changed

    for allowed in ("https://hooks.example.com/rep", "http://127.0.0.1:8099/hook"):
        response = await notify(allowed)
        assert response.status_code == 200, response.text
        assert response.json()["notify"]["webhook_url"] == allowed


# --- two replicas ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def timer_replica(
    mongo_url: str, database: str
) -> AsyncIterator[tuple[MongoAssignmentStore, EventLedger, DueWorkRunner]]:
    client = connect(mongo_url, app_name="leadflow-assignment-timer-replica")
    try:
        ledger = EventLedger(
            client, client[database], handled_retention=timedelta(days=8), clock=system_clock
        )
        store = MongoAssignmentStore(client[database], ledger)
        cache = configuration_cache(store, max_age_s=0.5)
        runner = DueWorkRunner(
            store.due_work,
            kinds=TIMER_KINDS,
            fire=FireTimers(store, cache, WorkLeads(store, cache), clock=system_clock),
            clock=system_clock,
            batch_size=50,
            # Short leases: a slow batch's lease lapses and the other replica claims the
            # same timers, the race `finish` must settle.
            lease_s=0.5,
            idle_poll_s=0.05,
        )
        yield store, ledger, runner
    finally:
        await client.close()


async def test_two_replicas_fire_each_sla_timer_once(infra: Infra) -> None:
    name = unique("assignment_timers").replace("-", "_")
    async with (
        timer_replica(infra.mongo_url, name) as (store, ledger, first),
        timer_replica(infra.mongo_url, name) as (_, _, second),
    ):
        await ledger.ensure_indexes()
        await store.ensure_indexes()

        async def add(team: ConfigurationInTransaction) -> None:
            for rep_id in ("ana", "ben"):
                await team.add_rep(Rep(rep_id, rep_id.title()), utc_now())
            await team.add_pool(
                Pool("all", "All", ("ana", "ben"), is_default=True, sla_minutes=1), utc_now()
            )

        await store.change_configuration(add)
        events: list[Event] = [lead_received("anywhere") for _ in range(120)]
        cache = configuration_cache(store, max_age_s=0)
        route = RouteLeads(store, cache, clock=lambda: utc_now() - timedelta(minutes=2))
        for start in range(0, len(events), 40):
            await route(events[start : start + 40])

        runs = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
        try:

            async def pending() -> bool:
                return await store.due_work.next_due(kinds=["sla"]) is not None

            await eventually(pending, lambda left: not left, timeout_s=60, interval_s=0.2)
        finally:
            await first.stop()
            await second.stop()
            await asyncio.gather(*runs, return_exceptions=True)
        breaches = [
            json.loads(record.payload)
            for record in await ledger.pending(10_000)
            if record.event_type == "sla-breached"
        ]
        per_lead = Counter(breach["lead_id"] for breach in breaches)
        assert set(per_lead) == {e.lead_id for e in events}
        assert set(per_lead.values()) == {1}
