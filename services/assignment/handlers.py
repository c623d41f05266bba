"""Assignment's Kafka subscriber: one consumer for every topic it reads, dispatching by type.

Each `on_<event>` function is one use case call. A redelivered event raises
`AlreadyHandled` from the ledger and is acknowledged without changing anything; any other
failure propagates, so the chassis retries it and then parks it on `<topic>.dlq`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

import structlog
from pydantic import Field

from leadflow.chassis.kafka import KafkaRuntime
from leadflow.chassis.store import AlreadyHandled
from services.assignment.rules import Clock
from services.assignment.store import LeadIntake
from shared.events import LeadErasedV1, LeadMergedV1, LeadReceivedV1
from shared.topics import topic_for

log = structlog.get_logger(__name__)

Consumed = Annotated[
    LeadReceivedV1 | LeadMergedV1 | LeadErasedV1, Field(discriminator="event_type")
]

CONSUMED_TOPICS: Final = tuple(topic_for(e) for e in (LeadReceivedV1, LeadMergedV1, LeadErasedV1))


def register_handlers(kafka: KafkaRuntime, store: LeadIntake, clock: Clock) -> None:
    @kafka.subscriber(*CONSUMED_TOPICS, title="on_assignment_events")
    async def on_event(event: Consumed) -> None:
        await handle(event, store, clock())


async def handle(
    event: LeadReceivedV1 | LeadMergedV1 | LeadErasedV1, store: LeadIntake, now: datetime
) -> None:
    try:
        match event:
            case LeadReceivedV1():
                await on_lead_received(event, store, now)
            case LeadMergedV1():
                await on_lead_merged(event, store, now)
            case LeadErasedV1():
                await on_lead_erased(event, store, now)
    except AlreadyHandled:
        log.info("event already handled", event_id=str(event.event_id), lead_id=event.lead_id)


async def on_lead_received(event: LeadReceivedV1, store: LeadIntake, now: datetime) -> None:
    lead = await store.route_new_lead(event, now)
    log.info(
        "lead routed",
        lead_id=lead.lead_id,
        status=lead.status,
        pool_id=lead.pool_id,
        rep_id=lead.rep_id,
    )


async def on_lead_merged(event: LeadMergedV1, store: LeadIntake, now: datetime) -> None:
    lead = await store.record_repeat_inquiry(event, now)
    if lead is None:
        log.info("repeat inquiry read before its lead; kept for it", lead_id=event.lead_id)


async def on_lead_erased(event: LeadErasedV1, store: LeadIntake, now: datetime) -> None:
    await store.forget_contact(event, now)
    log.info("lead's personal data erased", lead_id=event.lead_id)
