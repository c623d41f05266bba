"""Analytics' Kafka subscriber: every lifecycle event, on every topic, recorded in batches.

Records are parsed with `AnalyticsEvent` rather than the contract's `AnyEvent`: an event
of a type or version analytics does not know is kept raw and counted, not dead-lettered.
"""

from __future__ import annotations

from leadflow.chassis.app import ServiceChassis
from services.analytics.events import AnalyticsEvent
from services.analytics.usecases import RecordEvents
from shared.events import Event
from shared.topics import ALL_TOPICS


def register_handlers(chassis: ServiceChassis, record_events: RecordEvents) -> None:
    async def on_every_event(events: list[Event]) -> None:
        """Record each event once: in the event store and in the roll-ups."""
        await record_events(events)

    chassis.consume(ALL_TOPICS, AnalyticsEvent, on_every_event, title="on_every_event")
