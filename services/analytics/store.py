"""Analytics' persistence, in the `leadflow_analytics` database.

- `events`: every consumed event once, `_id` = event_id (the event store).
- `lead_facts`: per lead, the day it first reached each stage and where it came from.
- `daily_counters`: one document per day, metric and dimensions, incremented in the same
  transaction as the event is stored, so a report sums a few documents per day instead of
  scanning the event store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import date, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from pymongo import ASCENDING, UpdateOne

from leadflow.chassis.store import Collection, Database, Document, EventLedger, Session
from services.analytics.rules import (
    PERSONAL_FIELDS,
    Bucket,
    Increment,
    LeadFacts,
    Metric,
    Period,
    stored_payload,
    tally_event,
)
from shared.events import Event

_FACT_DAYS = ("received_on", "assigned_on", "lost_on", "enrolled_on", "converted_on")


class AnalyticsStore(Protocol):
    async def ensure_indexes(self) -> None: ...
    async def record(self, event: Event, *, zone: ZoneInfo, recorded_at: datetime) -> None: ...
    async def buckets(self, metrics: Sequence[Metric], period: Period) -> list[Bucket]: ...
    async def timeline(self, lead_id: str, *, limit: int) -> list[Document]: ...


class MongoAnalyticsStore:
    def __init__(self, database: Database, ledger: EventLedger) -> None:
        self._events: Collection = database["events"]
        self._facts: Collection = database["lead_facts"]
        self._counters: Collection = database["daily_counters"]
        self._ledger = ledger

    async def ensure_indexes(self) -> None:
        await self._events.create_index(
            [("lead_id", ASCENDING), ("occurred_at", ASCENDING), ("recorded_at", ASCENDING)]
        )
        await self._counters.create_index([("metric", ASCENDING), ("day", ASCENDING)])

    async def record(self, event: Event, *, zone: ZoneInfo, recorded_at: datetime) -> None:
        """Store `event` and move the counters it implies, in one transaction.

        Raises `AlreadyHandled` (changing nothing) when the event was recorded before.
        """

        async def work(session: Session) -> tuple[None, list[Event]]:
            found = await self._facts.find_one({"_id": event.lead_id}, session=session)
            before = _facts_from_document(event.lead_id, found)
            tally = tally_event(event, before, zone)
            await self._events.insert_one(
                {
                    "_id": str(event.event_id),
                    "event_type": event.event_type,
                    "lead_id": event.lead_id,
                    "occurred_at": event.occurred_at,
                    "recorded_at": recorded_at,
                    "payload": stored_payload(event, erased=tally.facts.erased),
                },
                session=session,
            )
            if tally.forget_personal_data:
                await self._events.update_many(
                    {"lead_id": event.lead_id},
                    {"$unset": {f"payload.{name}": "" for name in PERSONAL_FIELDS}},
                    session=session,
                )
            if tally.facts != before:
                await self._facts.replace_one(
                    {"_id": event.lead_id},
                    _facts_document(tally.facts),
                    upsert=True,
                    session=session,
                )
            if tally.increments:
                await self._counters.bulk_write(
                    [_counter_update(increment) for increment in tally.increments],
                    ordered=False,
                    session=session,
                )
            return None, []

        await self._ledger.commit(work, consumed=event)

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


def _counter_update(increment: Increment) -> UpdateOne:
    # The key spells out day, metric and dimensions, so concurrent first increments of
    # one counter upsert one document rather than two.
    dimensions = dict(increment.dimensions)
    key = json.dumps(
        [increment.day.isoformat(), increment.metric.value, increment.dimensions],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return UpdateOne(
        {"_id": key},
        {
            "$setOnInsert": {
                "day": increment.day.isoformat(),
                "metric": increment.metric.value,
                "dimensions": dimensions,
            },
            "$inc": {"count": increment.count, "amount": increment.amount},
        },
        upsert=True,
    )


def _facts_document(facts: LeadFacts) -> Document:
    document: dict[str, Any] = asdict(facts)
    document["_id"] = document.pop("lead_id")
    for name in _FACT_DAYS:
        day = document[name]
        document[name] = None if day is None else day.isoformat()
    return document


def _facts_from_document(lead_id: str, document: Document | None) -> LeadFacts:
    if document is None:
        return LeadFacts(lead_id)

    def day(name: str) -> date | None:
        value = document.get(name)
        return None if value is None else date.fromisoformat(value)

    return LeadFacts(
        lead_id=lead_id,
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
