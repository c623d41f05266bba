"""Assignment's Kafka subscriber: intake's lead events, in batches, to `RouteLeads`.

Retries, poison isolation, dead letters and offsets are the chassis' (see
`leadflow.chassis.consumer`); a failure here simply propagates.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field

from leadflow.chassis.app import ServiceChassis
from services.assignment.rules import CONSUMED_EVENTS, ConsumedEvent
from services.assignment.usecases import RouteLeads
from shared.events import Event
from shared.topics import topic_for

Consumed = Annotated[ConsumedEvent, Field(discriminator="event_type")]

CONSUMED_TOPICS: Final = tuple(topic_for(event) for event in CONSUMED_EVENTS)


def register_handlers(chassis: ServiceChassis, route_leads: RouteLeads) -> None:
    async def on_assignment_events(events: list[Event]) -> None:
        """Route new leads, count repeat inquiries, forget erased contacts."""
        await route_leads(events)

    chassis.consume(CONSUMED_TOPICS, Consumed, on_assignment_events, title="on_assignment_events")
