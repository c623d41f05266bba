"""Replays are harmless: a consumer group reset to the earliest offset changes nothing.

Assignment and analytics consume a scripted set of events (new leads, repeat inquiries,
assignments); then each restarts under a new consumer group, which reads every topic from
the beginning again, exactly what a group reset or a broker replay does. Every lead's
inquiries, every report figure and the dead-letter topics must be as they were.

This runs on its own broker and database: the new groups read every topic from the start,
and other tests' events must not be among them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from leadflow.chassis.auth import Role
from leadflow.keys import create_key
from leadflow.localinfra import LocalInfra, running
from services.analytics.app import create_app as analytics_app
from services.analytics.settings import Settings as AnalyticsSettings
from services.assignment.app import create_app as assignment_app
from services.assignment.settings import Settings as AssignmentSettings
from shared.events import (
    Attribution,
    Contact,
    Event,
    LeadAssignedV1,
    LeadMergedV1,
    LeadReceivedV1,
)
from shared.topics import ALL_TOPICS, dead_letter_topic, topic_for
from tests.support.infra import Infra
from tests.support.kafka import publish_event, read_all, read_topics
from tests.support.services import eventually, serve, settings_for

pytestmark = pytest.mark.integration

LEADS = 12


@pytest.fixture(scope="module")
def own_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalInfra]:
    with running(tmp_path_factory.mktemp("replay"), persistent=False) as infra:
        yield infra


def scripted_events() -> list[Event]:
    events: list[Event] = []
    for n in range(LEADS):
        lead_id = f"replay-{n}-{uuid.uuid4().hex[:6]}"
        events.append(
            LeadReceivedV1(
                lead_id=lead_id,
                contact=Contact(name=f"Lead {n}", email=f"{lead_id}@example.com"),
                attribution=Attribution(source="website", channel="web_form"),
            )
        )
        for _ in range(n % 3):  # 0, 1 or 2 repeat inquiries
            events.append(
                LeadMergedV1(
                    lead_id=lead_id,
                    contact=Contact(email=f"{lead_id}@example.com"),
                    attribution=Attribution(source="website", channel="phone"),
                    matched_on="email",
                )
            )
    return events


def consumed(service: str) -> float:
    """Events the service's consumers have taken off Kafka in this process, all topics."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == "leadflow_events_consumed_total"
        and sample.labels.get("service") == service
    )


async def observed(
    assignment: httpx.AsyncClient, analytics: httpx.AsyncClient, headers: Any
) -> Any:
    leads = (await assignment.get("/v1/leads", params={"limit": 500}, headers=headers)).json()
    summary = (await analytics.get("/v1/reports/summary", headers=headers)).json()
    channels = (await analytics.get("/v1/reports/channels", headers=headers)).json()
    return (
        sorted((lead["lead_id"], lead["inquiries"], lead["rep_id"]) for lead in leads),
        summary,
        channels,
    )


async def test_a_consumer_group_reset_replays_every_event_and_changes_nothing(
    own_infra: LocalInfra,
) -> None:
    infra = Infra("local", own_infra.kafka_bootstrap, own_infra.mongo_url)
    run_id = uuid.uuid4().hex[:8]
    issued = await create_key(infra.mongo_url, f"leadflow_identity_{run_id}", Role.ADMIN, "t")
    headers = {"X-API-Key": issued.key}
    events = scripted_events()
    received = [e for e in events if isinstance(e, LeadReceivedV1)]

    def settings(kind: type[Any], group: str) -> Any:
        return settings_for(kind, infra, run_id, consumer_group=f"{group}-{run_id}")

    async with (
        serve(assignment_app(settings(AssignmentSettings, "assignment-1"))) as assignment,
        serve(analytics_app(settings(AnalyticsSettings, "analytics-1"))) as analytics,
    ):
        rep = await assignment.post("/v1/reps", json={"rep_id": "r1", "name": "R"}, headers=headers)
        assert rep.status_code == 201, rep.text
        pool = await assignment.post(
            "/v1/pools",
            json={"pool_id": "all", "name": "All", "rep_ids": ["r1"], "is_default": True},
            headers=headers,
        )
        assert pool.status_code == 201, pool.text
        for event in events:
            await publish_event(infra.kafka_bootstrap, event)
        summary = await eventually(
            lambda: analytics.get("/v1/reports/summary", headers=headers),
            lambda r: r.json()["leads_assigned"] == LEADS and r.json()["inquiries"] == len(events),
            timeout_s=60,
        )
        assert summary.json()["leads_received"] == LEADS
        before = await observed(assignment, analytics, headers)
    assert sum(inquiries for _, inquiries, _ in before[0]) == len(events)
    assert {lead_id for lead_id, _, _ in before[0]} == {e.lead_id for e in received}

    published = sum(
        len(records) for records in (await read_topics(infra.kafka_bootstrap, ALL_TOPICS)).values()
    )
    analytics_before, assignment_before = consumed("analytics"), consumed("assignment")

    async def replayed() -> tuple[float, float]:
        return consumed("analytics") - analytics_before, consumed("assignment") - assignment_before

    async with (
        serve(assignment_app(settings(AssignmentSettings, "assignment-2"))) as assignment,
        serve(analytics_app(settings(AnalyticsSettings, "analytics-2"))) as analytics,
    ):
        # The new groups start from the earliest offset: everything is delivered again.
        await eventually(
            replayed,
            lambda counts: counts[0] >= published and counts[1] >= len(events),
            timeout_s=60,
        )
        after = await observed(assignment, analytics, headers)
    assert after == before
    assigned = await read_all(infra.kafka_bootstrap, topic_for(LeadAssignedV1))
    assert len(assigned) == LEADS  # no lead routed again
    parked = await read_topics(infra.kafka_bootstrap, map(dead_letter_topic, ALL_TOPICS))
    assert {topic: records for topic, records in parked.items() if records} == {}
