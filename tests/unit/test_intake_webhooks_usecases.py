"""The ad-lead fetcher on the in-memory store: fetch, map, accept, settle; a Graph error
puts the lead back with back-off and parks it after the last attempt."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from leadflow.chassis.duework import ClaimedWork, DueWork
from services.intake.webhooks.graph import GraphError
from services.intake.webhooks.rules import GoogleLead, MetaLeadNotice
from services.intake.webhooks.store import AD_LEAD_WORK, work_key
from services.intake.webhooks.submissions import MappedLead, SubmissionResult
from services.intake.webhooks.usecases import (
    RetryPolicy,
    SettleAdLeads,
    google_delivery,
    meta_delivery,
)
from tests.fakes.intake_webhooks import InMemoryAdLeadStore

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
RETRY = RetryPolicy(base_s=5, max_s=60, max_attempts=3)


class Graph:
    def __init__(self) -> None:
        self.leads: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, int] = {}
        self.asked: list[str] = []

    async def lead(self, leadgen_id: str) -> Mapping[str, Any]:
        self.asked.append(leadgen_id)
        if self.failures.get(leadgen_id, 0) > 0:
            self.failures[leadgen_id] -= 1
            raise GraphError("Graph API 500: An unknown error has occurred.")
        return self.leads[leadgen_id]


class Intake:
    def __init__(self) -> None:
        self.accepted: list[MappedLead] = []

    async def __call__(self, leads: Sequence[MappedLead]) -> list[SubmissionResult]:
        self.accepted.extend(leads)
        return [
            SubmissionResult("rejected", reasons=(("phone", "needed"),))
            if lead.email is None and lead.phone is None
            else SubmissionResult("created", lead_id=f"L-{lead.external_id}")
            for lead in leads
        ]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


async def due(store: InMemoryAdLeadStore, clock: Clock) -> list[ClaimedWork]:
    return await store.due_work.claim(
        kinds={AD_LEAD_WORK},
        now=clock.now,
        limit=50,
        lease=timedelta(seconds=60),
        token=uuid.uuid4().hex,
    )


@pytest.fixture
def parts() -> tuple[InMemoryAdLeadStore, Graph, Intake, Clock, SettleAdLeads]:
    store, graph, intake, clock = InMemoryAdLeadStore(), Graph(), Intake(), Clock()
    return store, graph, intake, clock, SettleAdLeads(store, graph, intake, clock, RETRY)


Parts = tuple[InMemoryAdLeadStore, Graph, Intake, Clock, SettleAdLeads]


async def test_meta_leads_are_fetched_and_google_leads_taken_as_delivered(parts: Parts) -> None:
    store, graph, intake, clock, settle = parts
    graph.leads["1"] = {"field_data": [{"name": "email", "values": ["a@example.com"]}]}
    google = GoogleLead("g1", "40", None, (("EMAIL", None, "g@example.com"),), is_test=True)
    await store.record([meta_delivery(MetaLeadNotice("1"), NOW), google_delivery(google, NOW)], NOW)

    await settle(await due(store, clock))

    assert graph.asked == ["1"]
    assert sorted(lead.external_id for lead in intake.accepted) == ["google:g1", "meta:1"]
    assert next(lead for lead in intake.accepted if lead.is_test).external_id == "google:g1"
    for key in ("meta:1", "google:g1"):
        settled = await store.get(key)
        assert settled is not None
        assert (settled["status"], settled["lead_id"]) == ("accepted", f"L-{key}")
    assert await due(store, clock) == []


async def test_a_graph_error_puts_the_lead_back_with_growing_delays_then_parks_it(
    parts: Parts,
) -> None:
    store, graph, intake, clock, settle = parts
    graph.failures["1"] = 10
    await store.record([meta_delivery(MetaLeadNotice("1"), NOW)], NOW)

    delays = []
    for _ in range(RETRY.max_attempts):
        batch = await due(store, clock)
        assert len(batch) == 1
        started = clock.now
        await settle(batch)
        upcoming = await store.due_work.next_due(kinds={AD_LEAD_WORK})
        if upcoming is not None:
            delays.append((upcoming - started).total_seconds())
            clock.now = upcoming

    assert delays == [5.0, 10.0]
    assert intake.accepted == []
    parked = await store.due_work.parked(kinds={AD_LEAD_WORK})
    assert len(parked) == 1 and "500" in parked[0].error
    kept = await store.get("meta:1")
    assert kept is not None
    assert (kept["status"], kept["attempts"]) == ("pending", 3)


async def test_one_failing_fetch_does_not_hold_back_the_others(parts: Parts) -> None:
    store, graph, intake, clock, settle = parts
    graph.failures["bad"] = 1
    graph.leads["bad"] = {"field_data": [{"name": "email", "values": ["b@example.com"]}]}
    graph.leads["ok"] = {"field_data": [{"name": "email", "values": ["o@example.com"]}]}
    await store.record([meta_delivery(MetaLeadNotice(i), NOW) for i in ("bad", "ok")], NOW)

    await settle(await due(store, clock))

    assert [lead.external_id for lead in intake.accepted] == ["meta:ok"]
    clock.now += timedelta(seconds=5)
    await settle(await due(store, clock))
    assert [lead.external_id for lead in intake.accepted] == ["meta:ok", "meta:bad"]


async def test_work_for_a_lead_already_settled_is_finished_without_accepting_again(
    parts: Parts,
) -> None:
    store, graph, intake, clock, settle = parts
    graph.leads["1"] = {"field_data": [{"name": "email", "values": ["a@example.com"]}]}
    await store.record([meta_delivery(MetaLeadNotice("1"), NOW)], NOW)
    await settle(await due(store, clock))
    # The same work scheduled again (as if a replica had lost it after settling).
    await store.due_work.schedule([DueWork(work_key("meta:1"), AD_LEAD_WORK, clock.now)])
    again = await due(store, clock)
    assert len(again) == 1

    await settle(again)

    assert len(intake.accepted) == 1
    assert graph.asked == ["1"]
    assert await due(store, clock) == []


async def test_a_lead_without_contact_details_is_settled_rejected_with_reasons(
    parts: Parts,
) -> None:
    store, graph, _, clock, settle = parts
    graph.leads["1"] = {"field_data": [{"name": "full_name", "values": ["Nobody"]}]}
    await store.record([meta_delivery(MetaLeadNotice("1"), NOW)], NOW)

    await settle(await due(store, clock))

    settled = await store.get("meta:1")
    assert settled is not None
    assert (settled["status"], settled["reasons"]) == ("rejected", [["phone", "needed"]])
