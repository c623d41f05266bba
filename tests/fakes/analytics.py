"""In-memory analytics store: the same Protocol as `MongoAnalyticsStore`, held to the same
contract tests (tests/contract/test_analytics_store.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from leadflow.chassis.store import Document
from services.analytics.rules import (
    LEAD_DIMENSIONS,
    PERSONAL_FIELDS,
    BatchTally,
    Campaign,
    LeadFacts,
    Metric,
    OpenKey,
    OpenLeads,
    counter_key,
    hour_key,
    open_leads_at,
)
from services.analytics.store import (
    OPEN_SPREADS,
    BatchWork,
    Bucket,
    RecordingBatch,
    kept_key,
)
from shared.events import Event
from tests.fakes.ledger import InMemoryLedger

T = TypeVar("T")


@dataclass
class _Tables:
    events: dict[str, Document] = field(default_factory=dict)
    facts: dict[str, LeadFacts] = field(default_factory=dict)
    counters: dict[str, Bucket] = field(default_factory=dict)
    open_leads: dict[OpenKey, int] = field(default_factory=dict)
    campaigns: dict[str, Campaign] = field(default_factory=dict)


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

    async def counters(
        self,
        metrics: Collection[Metric],
        first_hour: datetime,
        last_hour: datetime,
        filters: Mapping[str, str],
        *,
        by: Collection[str] = LEAD_DIMENSIONS,
    ) -> list[Bucket]:
        first, last = hour_key(first_hour), hour_key(last_hour)
        totals: dict[tuple[datetime, Metric, tuple[tuple[str, str], ...]], list[float]] = {}
        for bucket in self.tables.counters.values():
            if (
                bucket.metric in metrics
                and first <= hour_key(bucket.hour) <= last
                and all(bucket.dimensions.get(k) == v for k, v in filters.items())
            ):
                dims = tuple(
                    sorted(
                        (k, v)
                        for k, v in bucket.dimensions.items()
                        if k in by or k not in LEAD_DIMENSIONS
                    )
                )
                total = totals.setdefault((bucket.hour, bucket.metric, dims), [0, 0.0])
                total[0] += bucket.count
                total[1] += bucket.amount
        return [
            Bucket(hour, metric, dict(dims), int(count), amount)
            for (hour, metric, dims), (count, amount) in totals.items()
            if count or amount
        ]

    async def open_leads(
        self,
        filters: Mapping[str, str],
        *,
        spreads: Collection[str] = OPEN_SPREADS,
        by: Collection[str] = LEAD_DIMENSIONS,
    ) -> list[OpenLeads]:
        kept = set(by) | set(filters)
        gauge = open_leads_at(
            (kept_key(key, kept), count)
            for key, count in self.tables.open_leads.items()
            if all(getattr(key, k) == v for k, v in filters.items())
        )
        # Empty where not asked for, as from MongoDB: a report using a spread it did not ask
        # for shows wrong figures in the unit tests too.
        return [
            OpenLeads(
                g.place,
                g.count,
                g.received if "received" in spreads else {},
                g.touched if "touched" in spreads else {},
                g.awaiting if "awaiting" in spreads else {},
            )
            for g in gauge
        ]

    async def campaigns(self) -> list[Campaign]:
        return list(self.tables.campaigns.values())

    async def compact(self, max_batches: int) -> int:
        # Counters are added up as each batch is saved: nothing waits to be folded in.
        return 0

    async def timeline(self, lead_id: str, *, limit: int) -> list[Document]:
        mine = [doc for doc in self.tables.events.values() if doc["lead_id"] == lead_id]
        mine.sort(key=lambda doc: (doc["occurred_at"], doc["recorded_at"]))
        return mine[:limit]

    async def events_stored(self) -> int:
        return len(self.tables.events)

    async def clear_rollups(self) -> None:
        self.tables.facts.clear()
        self.tables.counters.clear()
        self.tables.open_leads.clear()
        self.tables.campaigns.clear()

    async def stored_events(self, chunk: int) -> AsyncIterator[list[Document]]:
        ordered = sorted(
            self.tables.events.values(),
            key=lambda doc: (doc["occurred_at"], doc["recorded_at"], doc["_id"]),
        )
        for start in range(0, len(ordered), chunk):
            yield ordered[start : start + chunk]

    async def rebuild_batch(self, work: Callable[[RecordingBatch], Awaitable[T]]) -> T:
        async def in_transaction() -> tuple[T, list[Event]]:
            return await work(_InMemoryRecordingBatch(self.tables)), []

        return await self.ledger.commit(in_transaction)


class _InMemoryRecordingBatch:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def lead_facts(
        self, lead_ids: Collection[str], *, presumed_new: Collection[str] = ()
    ) -> dict[str, LeadFacts]:
        # A look-up costs nothing here: every lead is looked up, presumed new or not.
        return {i: self._tables.facts[i] for i in lead_ids if i in self._tables.facts}

    async def save(self, tally: BatchTally, *, store_events: bool = True) -> None:
        tables = self._tables
        for event in tally.recorded if store_events else ():
            if event.event_id in tables.events:
                raise KeyError(f"duplicate event id {event.event_id}")
            tables.events[event.event_id] = {
                "_id": event.event_id,
                "event_id": event.event_id,
                "event_type": event.event_type,
                "lead_id": event.lead_id,
                "occurred_at": event.occurred_at,
                "recorded_at": event.recorded_at,
                "known": event.known,
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
                    hour=increment.hour,
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
        for move in tally.gauge:
            tables.open_leads[move.key] = tables.open_leads.get(move.key, 0) + move.count
        for campaign in tally.campaigns:
            stored = tables.campaigns.get(campaign.campaign_id)
            if stored is None or stored.saved_at <= campaign.saved_at:
                tables.campaigns[campaign.campaign_id] = campaign
