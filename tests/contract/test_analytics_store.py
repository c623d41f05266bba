"""The analytics store contract, on MongoDB and in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from services.analytics.rules import Metric, Period, tally_batch
from services.analytics.store import AnalyticsStore, MongoAnalyticsStore, RecordingBatch
from services.analytics.usecases import RecordEvents
from shared.events import (
    Attribution,
    Contact,
    Event,
    LeadAssignedV1,
    LeadErasedV1,
    LeadReceivedV1,
)
from tests.contract.conftest import NOW, STORE_KINDS, mongo_parts
from tests.fakes.analytics import InMemoryAnalyticsStore

DAY = date(2026, 11, 23)
PERIOD = Period(DAY, DAY)


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[AnalyticsStore]:
    if request.param == "memory":
        yield InMemoryAnalyticsStore()
        return
    async with mongo_parts(request) as parts:
        mongo = MongoAnalyticsStore(parts.database, parts.ledger)
        await mongo.ensure_indexes()
        yield mongo


def received(lead_id: str, channel: str = "web_form") -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead_id,
        occurred_at=NOW,
        contact=Contact(name="Dana Kim", email=f"{lead_id}@example.com"),
        attribution=Attribution(source="website", channel=channel),
        message="call me",
    )


def assigned(lead_id: str, rep_id: str, at: datetime = NOW) -> LeadAssignedV1:
    return LeadAssignedV1(
        lead_id=lead_id, rep_id=rep_id, occurred_at=at, strategy="round_robin", received_at=NOW
    )


def record(store: AnalyticsStore) -> RecordEvents:
    return RecordEvents(store, zone=ZoneInfo("UTC"), clock=lambda: NOW)


async def counts(store: AnalyticsStore, metric: Metric) -> int:
    return sum(b.count for b in await store.buckets([metric], PERIOD))


async def test_a_batch_is_recorded_once_even_when_delivered_again(store: AnalyticsStore) -> None:
    batch: list[Event] = [received("a"), received("b"), assigned("a", "r1")]
    assert await record(store)(batch) == 3
    assert await record(store)(batch) == 0  # redelivered: nothing new
    assert await record(store)([*batch, received("c")]) == 1  # only the new one
    assert await counts(store, Metric.LEADS_RECEIVED) == 3
    assert await counts(store, Metric.LEADS_ASSIGNED) == 1


async def test_the_same_event_twice_in_one_batch_counts_once(store: AnalyticsStore) -> None:
    event = received("twice")
    assert await record(store)([event, event]) == 1
    assert await counts(store, Metric.INQUIRIES) == 1


async def test_a_failing_unit_of_work_leaves_nothing_behind(store: AnalyticsStore) -> None:
    event = received("doomed")

    async def fail_after_saving(batch: RecordingBatch, fresh: list[Event]) -> None:
        known = await batch.lead_facts({e.lead_id for e in fresh})
        await batch.save(tally_batch(fresh, known, ZoneInfo("UTC"), recorded_at=NOW))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.record_batch([event], fail_after_saving)
    # Not remembered as handled, nothing counted: a retry records it.
    assert await counts(store, Metric.INQUIRIES) == 0
    assert await record(store)([event]) == 1


async def test_facts_carry_from_one_batch_to_the_next(store: AnalyticsStore) -> None:
    await record(store)([received("f")])
    await record(store)([assigned("f", "r1")])
    await record(store)([assigned("f", "r2")])  # a reassignment
    assert await counts(store, Metric.LEADS_ASSIGNED) == 1
    assert await counts(store, Metric.ASSIGNMENTS) == 2


async def test_timeline_is_oldest_first_and_erasure_forgets_personal_data(
    store: AnalyticsStore,
) -> None:
    later = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    await record(store)([assigned("t", "r1", at=later), received("t")])
    timeline = await store.timeline("t", limit=10)
    assert [doc["event_type"] for doc in timeline] == ["lead-received", "lead-assigned"]
    assert timeline[0]["payload"]["contact"]["name"] == "Dana Kim"
    await record(store)([LeadErasedV1(lead_id="t")])
    erased = await store.timeline("t", limit=10)
    assert all("contact" not in doc["payload"] for doc in erased)
    assert all("message" not in doc["payload"] for doc in erased)


async def test_buckets_are_kept_per_day_and_dimensions(store: AnalyticsStore) -> None:
    await record(store)([received("p", "phone"), received("q", "phone"), received("w", "walk_in")])
    buckets = await store.buckets([Metric.LEADS_RECEIVED], PERIOD)
    by_channel = {b.dimensions["channel"]: b.count for b in buckets}
    assert by_channel == {"phone": 2, "walk_in": 1}
    assert (
        await store.buckets([Metric.LEADS_RECEIVED], Period(date(2026, 11, 24), date(2026, 11, 30)))
        == []
    )
