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
    EngagementRecordedV1,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadOptedInV1,
    LeadOptedOutV1,
    LeadReceivedV1,
    LeadReturnedToPoolV1,
    LeadRoutedToNurtureV1,
    MessageStatusUpdatedV1,
)
from shared.topics import topic_for

# Nurture also consumes its own channel events (published by its webhooks through the
# outbox): replies, opt-outs and bounces end enrollments, opt-ins lift an opt-out,
# engagements feed the score.
Consumed = Annotated[
    LeadReceivedV1
    | LeadMergedV1
    | LeadErasedV1
    | LeadLostV1
    | LeadReturnedToPoolV1
    | LeadRoutedToNurtureV1
    | LeadAssignedV1
    | LeadConvertedV1
    | EngagementRecordedV1
    | LeadOptedOutV1
    | LeadOptedInV1
    | MessageStatusUpdatedV1,
    Field(discriminator="event_type"),
]

CONSUMED_TOPICS = tuple(topic_for(model) for model in get_args(get_args(Consumed)[0]))


def register_handlers(chassis: ServiceChassis, apply_lead_events: ApplyLeadEvents) -> None:
    async def on_nurture_events(events: list[Event]) -> None:
        """Keep contacts, enroll lost / returned / low-fit leads, replan or stop their
        enrollments, score engagements and hand warmed leads back to sales."""
        await apply_lead_events(events)

    chassis.consume(CONSUMED_TOPICS, Consumed, on_nurture_events, title="on_nurture_events")
