"""Analytics' use cases: the steps of each flow, between the entrypoints and the store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import structlog

from leadflow.chassis.clock import Clock
from services.analytics.rules import tally_batch
from services.analytics.store import AnalyticsStore, RecordingBatch
from shared.events import Event

log = structlog.get_logger(__name__)


class RecordEvents:
    """Store each consumed event once and move the counters it implies."""

    def __init__(self, store: AnalyticsStore, *, zone: ZoneInfo, clock: Clock) -> None:
        self._store = store
        self._zone = zone
        self._clock = clock

    async def __call__(self, events: Sequence[Event]) -> int:
        """Record a batch in one transaction; returns how many events were new."""

        async def record(batch: RecordingBatch, fresh: list[Event]) -> int:
            known = await batch.lead_facts({event.lead_id for event in fresh})
            await batch.save(tally_batch(fresh, known, self._zone, recorded_at=self._now()))
            return len(fresh)

        recorded = await self._store.record_batch(events, record) or 0
        if recorded < len(events):
            log.debug("events already recorded", skipped=len(events) - recorded)
        return recorded

    def _now(self) -> datetime:
        return self._clock()
