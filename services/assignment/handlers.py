"""Assignment's Kafka subscriber: intake's lead events, in batches, to `RouteLeads`; its
own published events, and intake's repeat inquiries once routed (the owner of an open lead
is told), to the notifications (`NotificationRuntime.handle`), so routing writes nothing
for them and a slow mail server never holds it up.

Retries, poison isolation, dead letters and offsets are the chassis' (see
`leadflow.chassis.consumer`); a failure here simply propagates.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field

from leadflow.chassis.app import ServiceChassis
from services.assignment.notifications.rules import NOTIFIED_EVENTS, NotifiedEvent
from services.assignment.notifications.runtime import NotificationRuntime
from services.assignment.rules import CONSUMED_EVENTS, ConsumedEvent
from services.assignment.usecases import RouteLeads
from shared.events import Event
from shared.topics import topic_for

Consumed = Annotated[ConsumedEvent | NotifiedEvent, Field(discriminator="event_type")]

CONSUMED_TOPICS: Final = tuple(topic_for(event) for event in CONSUMED_EVENTS)
NOTIFIED_TOPICS: Final = tuple(topic_for(event) for event in NOTIFIED_EVENTS)


def register_handlers(
    chassis: ServiceChassis, route_leads: RouteLeads, notifications: NotificationRuntime
) -> None:
    async def on_assignment_events(events: list[Event]) -> None:
        """Route new leads, count repeat inquiries, forget erased contacts; tell reps and
        managers what assignment's own events mean for them."""
        if routed := [event for event in events if isinstance(event, CONSUMED_EVENTS)]:
            await route_leads(routed)
        await notifications.handle(events)

    chassis.consume(
        CONSUMED_TOPICS + NOTIFIED_TOPICS,
        Consumed,
        on_assignment_events,
        title="on_assignment_events",
    )
