"""Nurture's Kafka subscriber: the lifecycle events it acts on, applied in batches.

Failures are not caught here: the chassis isolates the failing event, retries it and then
parks it on `<topic>.dlq`.
"""

from __future__ import annotations

from typing import Annotated, get_args

from pydantic import Field

from leadflow.chassis.app import ServiceChassis
from services.nurture.usecases import ApplyLeadEvents
from shared.events import (
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
)
from shared.topics import topic_for

Consumed = Annotated[
    LeadReceivedV1 | LeadMergedV1 | LeadErasedV1 | LeadLostV1 | LeadAssignedV1 | LeadConvertedV1,
    Field(discriminator="event_type"),
]

CONSUMED_TOPICS = tuple(topic_for(model) for model in get_args(get_args(Consumed)[0]))


def register_handlers(chassis: ServiceChassis, apply_lead_events: ApplyLeadEvents) -> None:
    async def on_nurture_events(events: list[Event]) -> None:
        """Keep contacts, enroll lost leads, replan or stop their enrollments."""
        await apply_lead_events(events)

    chassis.consume(CONSUMED_TOPICS, Consumed, on_nurture_events, title="on_nurture_events")
