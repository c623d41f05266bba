"""Recording a batch in lead-disjoint parts at once: each lead whole and in order, and a
part that failed is recorded on redelivery while the committed one is not counted again."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from services.analytics.rules import Metric
from services.analytics.store import BatchWork
from services.analytics.usecases import RecordEvents, split_by_lead
from shared.events import (
    Attribution,
    Contact,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadReceivedV1,
)
from tests.fakes.analytics import InMemoryAnalyticsStore

pytestmark = pytest.mark.unit
T = TypeVar("T")
NOW = datetime(2026, 11, 23, 9, tzinfo=UTC)


def life(lead_id: str) -> list[Event]:
    return [
        LeadReceivedV1(
            lead_id=lead_id,
            occurred_at=NOW,
            contact=Contact(email=f"{lead_id}@example.com"),
            attribution=Attribution(source="website", channel="web_form"),
        ),
        LeadAssignedV1(
            lead_id=lead_id,
            rep_id="r1",
            occurred_at=NOW + timedelta(minutes=1),
            strategy="round_robin",
        ),
        LeadConvertedV1(
            lead_id=lead_id, rep_id="r1", occurred_at=NOW + timedelta(hours=1), revenue=10.0
        ),
    ]


def test_a_split_keeps_each_leads_events_together_in_order_and_balanced() -> None:
    events = [e for group in zip(*(life(f"l{n}") for n in range(7)), strict=True) for e in group]
    parts = split_by_lead(events, 2)
    assert len(parts) == 2
    assert sorted(len(p) for p in parts) == [9, 12]
    for part in parts:
        for lead in {e.lead_id for e in part}:
            mine = [e for e in events if e.lead_id == lead]
            assert [e for e in part if e.lead_id == lead] == mine
    assert sorted(map(id, (e for p in parts for e in p))) == sorted(map(id, events))
    assert split_by_lead(events[:1], 2) == [events[:1]]
    assert split_by_lead([], 2) == []


class _FailsOnce(InMemoryAnalyticsStore):
    """The part holding `lead_id` fails the first time it is recorded."""

    def __init__(self, lead_id: str) -> None:
        super().__init__()
        self._lead_id = lead_id
        self.failed = False

    async def record_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        if not self.failed and any(e.lead_id == self._lead_id for e in consumed):
            self.failed = True
            raise ConnectionError("database went away")
        return await super().record_batch(consumed, work)


async def test_a_part_that_failed_is_recorded_on_redelivery_and_the_other_counted_once() -> None:
    store = _FailsOnce("b")
    record = RecordEvents(store, clock=lambda: NOW, parts=2)
    batch = life("a") + life("b")
    with pytest.raises(ConnectionError):
        await record(batch)
    assert await record(batch) == 3  # only b's events were new
    assert await record(batch) == 0
    sales = await store.counters({Metric.CONVERSIONS}, NOW, NOW + timedelta(hours=2), {})
    assert sum(b.count for b in sales) == 2
    assert sum(b.amount for b in sales) == 20.0
