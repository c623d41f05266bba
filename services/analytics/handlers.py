"""Analytics' Kafka subscriber: every lifecycle event, on every topic, recorded in batches."""

from __future__ import annotations

from leadflow.chassis.app import ServiceChassis
from services.analytics.usecases import RecordEvents
from shared.events import AnyEvent, Event
from shared.topics import ALL_TOPICS


def register_handlers(chassis: ServiceChassis, record_events: RecordEvents) -> None:
    async def on_every_event(events: list[Event]) -> None:
        """Record each event once: in the event store and in the daily counters."""
        await record_events(events)

    chassis.consume(ALL_TOPICS, AnyEvent, on_every_event, title="on_every_event")
