"""In-memory analytics store: the same Protocol as `MongoAnalyticsStore`, held to the same
contract tests (tests/contract/test_analytics_store.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from leadflow.chassis.store import Document
from services.analytics.rules import (
    PERSONAL_FIELDS,
    BatchTally,
    Bucket,
    LeadFacts,
    Metric,
    Period,
)
from services.analytics.store import BatchWork, counter_key
from shared.events import Event
from tests.fakes.ledger import InMemoryLedger

T = TypeVar("T")


@dataclass
class _Tables:
    events: dict[str, Document] = field(default_factory=dict)
    facts: dict[str, LeadFacts] = field(default_factory=dict)
    counters: dict[str, Bucket] = field(default_factory=dict)


class InMemoryAnalyticsStore:
    def __init__(self) -> None:
        self.tables = _Tables()
        self.ledger = InMemoryLedger(self.tables)

    async def ensure_indexes(self) -> None:
        return None

    async def record_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        async def in_transaction(fresh: list[Event]) -> tuple[T, list[Event]]:
            return await work(_InMemoryRecordingBatch(self.tables), fresh), []

        return await self.ledger.commit_batch(consumed, in_transaction)

    async def buckets(self, metrics: Sequence[Metric], period: Period) -> list[Bucket]:
        return [
            bucket
            for bucket in self.tables.counters.values()
            if bucket.metric in metrics and period.first_day <= bucket.day <= period.last_day
        ]

    async def timeline(self, lead_id: str, *, limit: int) -> list[Document]:
        mine = [doc for doc in self.tables.events.values() if doc["lead_id"] == lead_id]
        mine.sort(key=lambda doc: (doc["occurred_at"], doc["recorded_at"]))
        return mine[:limit]


class _InMemoryRecordingBatch:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def lead_facts(self, lead_ids: Collection[str]) -> dict[str, LeadFacts]:
        return {i: self._tables.facts[i] for i in lead_ids if i in self._tables.facts}

    async def save(self, tally: BatchTally) -> None:
        tables = self._tables
        for event in tally.recorded:
            if event.event_id in tables.events:
                raise KeyError(f"duplicate event id {event.event_id}")
            tables.events[event.event_id] = {
                "_id": event.event_id,
                "event_type": event.event_type,
                "lead_id": event.lead_id,
                "occurred_at": event.occurred_at,
                "recorded_at": event.recorded_at,
                "payload": dict(event.payload),
            }
        for doc in tables.events.values():
            if doc["lead_id"] in tally.erased_leads:
                payload: dict[str, Any] = doc["payload"]
                for name in PERSONAL_FIELDS:
                    payload.pop(name, None)
        for facts in tally.facts:
            tables.facts[facts.lead_id] = facts
        for increment in tally.increments:
            key = counter_key(increment)
            known = tables.counters.get(key)
            tables.counters[key] = (
                Bucket(
                    day=increment.day,
                    metric=increment.metric,
                    dimensions=dict(increment.dimensions),
                    count=increment.count,
                    amount=increment.amount,
                )
                if known is None
                else dataclasses.replace(
                    known,
                    count=known.count + increment.count,
                    amount=known.amount + increment.amount,
                )
            )
