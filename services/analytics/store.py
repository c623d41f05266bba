"""Analytics' persistence, in the `leadflow_analytics` database. Decisions live in `rules`,
the steps of each flow in `usecases`.

- `events`: every consumed event once, `_id` = event_id (the event store).
- `lead_facts`: per lead, the day it first reached each stage and where it came from.
- `daily_counters`: one document per day, metric and dimensions, incremented in the same
  transaction as the events are stored, so a report sums a few documents per day instead
  of scanning the event store.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import asdict
from datetime import date
from typing import Any, Protocol, TypeVar

from pymongo import ASCENDING, ReplaceOne, UpdateOne

from leadflow.chassis.store import Collection as MongoCollection
from leadflow.chassis.store import Database, Document, EventLedger, Session, find_in
from services.analytics.rules import (
    PERSONAL_FIELDS,
    BatchTally,
    Bucket,
    Increment,
    LeadFacts,
    Metric,
    Period,
)
from shared.events import Event

T = TypeVar("T")

_FACT_DAYS = ("received_on", "assigned_on", "lost_on", "enrolled_on", "converted_on")


class RecordingBatch(Protocol):
    """What a use case may read and write while recording one batch (one transaction)."""

    async def lead_facts(self, lead_ids: Collection[str]) -> dict[str, LeadFacts]: ...
    async def save(self, tally: BatchTally) -> None: ...


BatchWork = Callable[[RecordingBatch, list[Event]], Awaitable[T]]


class AnalyticsStore(Protocol):
    async def ensure_indexes(self) -> None: ...
    async def record_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        """Run `work` on the events of `consumed` not recorded before, in one transaction
        that also remembers them; None (nothing written) when every one was known."""
        ...

    async def buckets(self, metrics: Sequence[Metric], period: Period) -> list[Bucket]: ...
    async def timeline(self, lead_id: str, *, limit: int) -> list[Document]: ...


class MongoAnalyticsStore:
    def __init__(self, database: Database, ledger: EventLedger) -> None:
        self._events: MongoCollection = database["events"]
        self._facts: MongoCollection = database["lead_facts"]
        self._counters: MongoCollection = database["daily_counters"]
        self._ledger = ledger

    async def ensure_indexes(self) -> None:
        await self._events.create_index(
            [("lead_id", ASCENDING), ("occurred_at", ASCENDING), ("recorded_at", ASCENDING)]
        )
        await self._counters.create_index([("metric", ASCENDING), ("day", ASCENDING)])

    async def record_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        async def in_transaction(session: Session, fresh: list[Event]) -> tuple[T, list[Event]]:
            return await work(_MongoRecordingBatch(self, session), fresh), []

        # The event store holds every recorded event by id: it is the inbox too.
        return await self._ledger.commit_batch(consumed, in_transaction, recorded_in=self._events)

    async def buckets(self, metrics: Sequence[Metric], period: Period) -> list[Bucket]:
        cursor = self._counters.find(
            {
                "metric": {"$in": [metric.value for metric in metrics]},
                "day": {"$gte": period.first_day.isoformat(), "$lte": period.last_day.isoformat()},
            },
            {"_id": 0},
        )
        return [
            Bucket(
                day=date.fromisoformat(doc["day"]),
                metric=Metric(doc["metric"]),
                dimensions=doc["dimensions"],
                count=doc["count"],
                amount=doc["amount"],
            )
            async for doc in cursor
        ]

    async def timeline(self, lead_id: str, *, limit: int) -> list[Document]:
        """The lead's recorded events, oldest first (ties in arrival order)."""
        cursor = (
            self._events.find({"lead_id": lead_id})
            .sort([("occurred_at", ASCENDING), ("recorded_at", ASCENDING)])
            .limit(limit)
        )
        return [doc async for doc in cursor]


class _MongoRecordingBatch:
    def __init__(self, store: MongoAnalyticsStore, session: Session) -> None:
        self._store = store
        self._session = session
        self._stored_facts: set[str] = set()

    async def lead_facts(self, lead_ids: Collection[str]) -> dict[str, LeadFacts]:
        found = await find_in(self._store._facts, "_id", lead_ids, session=self._session)
        self._stored_facts.update(doc["_id"] for doc in found)
        return {doc["_id"]: facts_from_document(doc) for doc in found}

    async def save(self, tally: BatchTally) -> None:
        store, session = self._store, self._session
        if tally.recorded:
            await store._events.insert_many(
                [
                    {
                        "_id": event.event_id,
                        "event_type": event.event_type,
                        "lead_id": event.lead_id,
                        "occurred_at": event.occurred_at,
                        "recorded_at": event.recorded_at,
                        "payload": dict(event.payload),
                    }
                    for event in tally.recorded
                ],
                session=session,
            )
        if tally.erased_leads:
            await store._events.update_many(
                {"lead_id": {"$in": sorted(tally.erased_leads)}},
                {"$unset": {f"payload.{name}": "" for name in PERSONAL_FIELDS}},
                session=session,
            )
        # Facts read in this batch are replaced; a lead's first facts are inserted (far
        # cheaper than upserts on the local server). A replica inserting the same lead's
        # first facts at the same moment fails this batch, which is handled again.
        known = [facts for facts in tally.facts if facts.lead_id in self._stored_facts]
        first = [facts for facts in tally.facts if facts.lead_id not in self._stored_facts]
        if first:
            await store._facts.insert_many(
                [facts_document(facts) for facts in first], session=session
            )
        if known:
            await store._facts.bulk_write(
                [ReplaceOne({"_id": facts.lead_id}, facts_document(facts)) for facts in known],
                ordered=False,
                session=session,
            )
        if tally.increments:
            await store._counters.bulk_write(
                [counter_update(increment) for increment in tally.increments],
                ordered=False,
                session=session,
            )


def counter_update(increment: Increment) -> UpdateOne:
    # The key spells out day, metric and dimensions, so concurrent first increments of
    # one counter upsert one document rather than two.
    return UpdateOne(
        {"_id": counter_key(increment)},
        {
            "$setOnInsert": {
                "day": increment.day.isoformat(),
                "metric": increment.metric.value,
                "dimensions": dict(increment.dimensions),
            },
            "$inc": {"count": increment.count, "amount": increment.amount},
        },
        upsert=True,
    )


def counter_key(increment: Increment) -> str:
    return json.dumps(
        [increment.day.isoformat(), increment.metric.value, increment.dimensions],
        separators=(",", ":"),
        ensure_ascii=False,
    )


def facts_document(facts: LeadFacts) -> Document:
    document: dict[str, Any] = asdict(facts)
    document["_id"] = document.pop("lead_id")
    for name in _FACT_DAYS:
        day = document[name]
        document[name] = None if day is None else day.isoformat()
    return document


def facts_from_document(document: Document) -> LeadFacts:
    def day(name: str) -> date | None:
        value = document.get(name)
        return None if value is None else date.fromisoformat(value)

    return LeadFacts(
        lead_id=document["_id"],
        channel=document.get("channel"),
        campaign=document.get("campaign"),
        rep_id=document.get("rep_id"),
        received_on=day("received_on"),
        assigned_on=day("assigned_on"),
        lost_on=day("lost_on"),
        enrolled_on=day("enrolled_on"),
        converted_on=day("converted_on"),
        erased=bool(document.get("erased", False)),
    )
