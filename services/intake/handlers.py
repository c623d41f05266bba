"""Intake's Kafka subscriber: assignment's conversions, in batches, so "who is this caller?"
shows a customer as a customer (seed 000).

Retries, poison isolation, dead letters and offsets are the chassis' (see
`leadflow.chassis.consumer`); a failure here simply propagates.
"""

from __future__ import annotations

from typing import Final

from leadflow.chassis.app import ServiceChassis
from services.intake.usecases import RecordConversions
from shared.events import Event, LeadConvertedV1
from shared.topics import topic_for

CONSUMED_TOPICS: Final = (topic_for(LeadConvertedV1),)


def register_handlers(chassis: ServiceChassis, record_conversions: RecordConversions) -> None:
    async def on_lead_converted(events: list[Event]) -> None:
        """Mark converted leads as customers (each event once, one transaction a batch)."""
        await record_conversions(events)

    chassis.consume(CONSUMED_TOPICS, LeadConvertedV1, on_lead_converted, title="on_lead_converted")
