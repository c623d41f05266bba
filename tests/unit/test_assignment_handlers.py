"""Assignment's subscriber on faststream's in-memory broker: dispatch, redelivery, bad input."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker

from leadflow.chassis.kafka import KafkaRuntime
from leadflow.chassis.store import AlreadyHandled
from services.assignment.handlers import register_handlers
from services.assignment.rules import Lead, LeadStatus
from services.assignment.settings import Settings
from shared.events import (
    Attribution,
    Contact,
    Event,
    LeadErasedV1,
    LeadMergedV1,
    LeadReceivedV1,
)
from shared.topics import topic_for

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


class RecordingStore:
    """Stands in for the Mongo store: records the use cases called; ids in `handled` repeat."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Event, datetime]] = []
        self.handled: set[str] = set()

    def _record(self, use_case: str, event: Event, now: datetime) -> None:
        if str(event.event_id) in self.handled:
            raise AlreadyHandled(str(event.event_id))
        self.handled.add(str(event.event_id))
        self.calls.append((use_case, event, now))

    async def route_new_lead(self, event: LeadReceivedV1, now: datetime) -> Lead:
        self._record("route_new_lead", event, now)
        return Lead(
            lead_id=event.lead_id,
            status=LeadStatus.NEW,
            contact=event.contact,
            consent=event.consent,
            attribution=event.attribution,
            profile=event.profile,
            received_at=event.occurred_at,
        )

    async def record_repeat_inquiry(self, event: LeadMergedV1, now: datetime) -> Lead | None:
        self._record("record_repeat_inquiry", event, now)
        return None

    async def forget_contact(self, event: LeadErasedV1, now: datetime) -> None:
        self._record("forget_contact", event, now)


@pytest.fixture
def wired() -> tuple[KafkaRuntime, RecordingStore]:
    kafka = KafkaRuntime("assignment", Settings(consumer_max_attempts=1))
    store = RecordingStore()
    register_handlers(kafka, store, clock=lambda: NOW)
    return kafka, store


async def deliver(broker: KafkaBroker, event: Event) -> None:
    """Publish as the outbox relay does: JSON bytes keyed by lead id."""
    await broker.publish(
        event.model_dump_json().encode(),
        topic_for(event),
        key=event.lead_id.encode(),
        headers={"content-type": "application/json"},
    )


def received() -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id="lead-1",
        contact=Contact(phone="+14155550100"),
        attribution=Attribution(source="website", channel="web_form"),
    )


async def test_each_event_type_reaches_its_use_case(
    wired: tuple[KafkaRuntime, RecordingStore],
) -> None:
    kafka, store = wired
    events: list[Event] = [
        received(),
        LeadMergedV1(
            lead_id="lead-1",
            contact=Contact(phone="+14155550100"),
            attribution=Attribution(source="desk", channel="phone"),
            matched_on="phone",
        ),
        LeadErasedV1(lead_id="lead-1"),
    ]
    async with TestKafkaBroker(kafka.broker) as broker:
        for event in events:
            await deliver(broker, event)
    assert [(use_case, event, now) for use_case, event, now in store.calls] == [
        ("route_new_lead", events[0], NOW),
        ("record_repeat_inquiry", events[1], NOW),
        ("forget_contact", events[2], NOW),
    ]


async def test_redelivered_event_is_acknowledged_and_changes_nothing(
    wired: tuple[KafkaRuntime, RecordingStore],
) -> None:
    kafka, store = wired
    event = received()
    async with TestKafkaBroker(kafka.broker) as broker:
        await deliver(broker, event)
        await deliver(broker, event)
    assert [use_case for use_case, _, _ in store.calls] == ["route_new_lead"]


async def test_unreadable_message_reaches_no_use_case(
    wired: tuple[KafkaRuntime, RecordingStore],
) -> None:
    kafka, store = wired
    async with TestKafkaBroker(kafka.broker) as broker:
        await broker.publish(b'{"event_type": "lead-received"}', topic_for(LeadReceivedV1))
        await broker.publish(b"not json", topic_for(LeadReceivedV1))
    assert store.calls == []
