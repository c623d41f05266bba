"""Analytics' Kafka subscriber: every lifecycle event, on every topic, goes to the store."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog

from leadflow.chassis.kafka import KafkaRuntime
from leadflow.chassis.store import AlreadyHandled
from services.analytics.store import AnalyticsStore
from shared.events import AnyEvent
from shared.topics import ALL_TOPICS

log = structlog.get_logger(__name__)


def register_handlers(kafka: KafkaRuntime, store: AnalyticsStore, zone: ZoneInfo) -> None:
    @kafka.subscriber(*ALL_TOPICS, title="on_every_event")
    async def on_event(event: AnyEvent) -> None:
        """Record the event once: in the event store and in the daily counters."""
        try:
            await store.record(event, zone=zone, recorded_at=datetime.now(UTC))
        except AlreadyHandled:
            log.debug(
                "event already recorded", event_id=str(event.event_id), event_type=event.event_type
            )
