"""Nurture's Kafka consumer: one subscriber, one small function per event it acts on.

Unexpected failures are not caught here: the chassis retries them and then parks the message on
`<topic>.dlq`.
"""

from __future__ import annotations

from typing import Annotated, get_args

import structlog
from pydantic import Field

from leadflow.chassis.kafka import KafkaRuntime
from leadflow.chassis.store import AlreadyHandled
from services.nurture.rules import StopReason, enrollment_for_loss
from services.nurture.store import (
    AlreadyEnrolledError,
    ContactUpdate,
    EnrollmentRequest,
    LeadNotFoundError,
    NurtureStore,
)
from shared.events import (
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
    utc_now,
)
from shared.topics import topic_for

log = structlog.get_logger(__name__)

Consumed = Annotated[
    LeadReceivedV1 | LeadMergedV1 | LeadErasedV1 | LeadLostV1 | LeadAssignedV1 | LeadConvertedV1,
    Field(discriminator="event_type"),
]

CONSUMED_TOPICS = tuple(topic_for(model) for model in get_args(get_args(Consumed)[0]))


async def on_lead_received(event: LeadReceivedV1, store: NurtureStore) -> None:
    await store.record_contact(
        ContactUpdate(
            lead_id=event.lead_id,
            as_of=event.occurred_at,
            contact=event.contact,
            consent=event.consent,
        )
    )


async def on_lead_merged(event: LeadMergedV1, store: NurtureStore) -> None:
    await store.record_contact(
        ContactUpdate(lead_id=event.lead_id, as_of=event.occurred_at, contact=event.contact)
    )


async def on_lead_erased(event: LeadErasedV1, store: NurtureStore) -> None:
    await stop_nurturing(event, StopReason.ERASED, store)
    await store.forget_contact(event.lead_id, utc_now())


async def on_lead_lost(event: LeadLostV1, store: NurtureStore) -> None:
    """Level 2 and 3 losses start their sequence; level 1 is never nurtured."""
    enrollment = enrollment_for_loss(event.level)
    if enrollment is None:
        return
    request = EnrollmentRequest(
        lead_id=event.lead_id,
        sequence_id=enrollment.sequence_id,
        reason=enrollment.reason,
        triggered_at=event.occurred_at,
        carried=ContactUpdate(
            lead_id=event.lead_id,
            as_of=event.occurred_at,
            contact=event.contact,
            consent=event.consent,
        ),
    )
    try:
        await store.enroll(request, utc_now(), consumed=event)
    except AlreadyHandled:
        return
    except (AlreadyEnrolledError, LeadNotFoundError) as outcome:
        log.info("lost lead not enrolled", lead_id=event.lead_id, why=str(outcome))


async def on_lead_assigned(event: LeadAssignedV1, store: NurtureStore) -> None:
    """Sales has the lead again: its nurturing stops."""
    await stop_nurturing(event, StopReason.ASSIGNED, store)


async def on_lead_converted(event: LeadConvertedV1, store: NurtureStore) -> None:
    await stop_nurturing(event, StopReason.CONVERTED, store)


async def stop_nurturing(event: Event, reason: StopReason, store: NurtureStore) -> None:
    if await store.stop_enrollment(event.lead_id, reason, event.occurred_at, utc_now()):
        log.info("nurturing stopped", lead_id=event.lead_id, reason=reason.value)


def register(kafka: KafkaRuntime, store: NurtureStore) -> None:
    """Subscribe nurture's consumer group to every topic it acts on."""

    @kafka.subscriber(*CONSUMED_TOPICS, title="on_nurture_events")
    async def on_event(event: Consumed) -> None:
        match event:
            case LeadReceivedV1():
                await on_lead_received(event, store)
            case LeadMergedV1():
                await on_lead_merged(event, store)
            case LeadErasedV1():
                await on_lead_erased(event, store)
            case LeadLostV1():
                await on_lead_lost(event, store)
            case LeadAssignedV1():
                await on_lead_assigned(event, store)
            case LeadConvertedV1():
                await on_lead_converted(event, store)
