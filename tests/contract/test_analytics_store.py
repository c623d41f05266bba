"""The analytics store contract, on MongoDB and in memory."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.analytics.events import PARSER
from services.analytics.reports import ReportQuery
from services.analytics.rules import Metric, pending_entry, tally_batch
from services.analytics.store import (
    AnalyticsStore,
    Bucket,
    MongoAnalyticsStore,
    RecordingBatch,
    delta_increments,
    delta_moves,
    facts_from_document,
    group_events,
)
from services.analytics.usecases import REPORTS, BuildReport, RebuildRollups, RecordEvents
from shared.events import (
    ActivityLoggedV1,
    Attribution,
    CampaignSavedV1,
    Contact,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadErasedV1,
    LeadReceivedV1,
)
from tests.contract.conftest import NOW, STORE_KINDS, mongo_parts
from tests.fakes.analytics import InMemoryAnalyticsStore
from tests.support.analytics_scenario import build

UTC_ZONE = ZoneInfo("UTC")
SEOUL = ZoneInfo("Asia/Seoul")
FIRST_HOUR = NOW.replace(hour=0)
LAST_HOUR = NOW.replace(hour=23)


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[AnalyticsStore]:
    if request.param == "memory":
        yield InMemoryAnalyticsStore()
        return
    async with mongo_parts(request) as parts:
        mongo = MongoAnalyticsStore(parts.database, parts.ledger, clock=lambda: NOW)
        await mongo.ensure_indexes()
        yield mongo


def received(
    lead_id: str, channel: str = "web_form", *, at: datetime = NOW, is_test: bool = False
) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead_id,
        occurred_at=at,
        contact=Contact(name="Dana Kim", email=f"{lead_id}@example.com"),
        attribution=Attribution(source="website", channel=channel, campaign_id="c1"),
        message="call me",
        is_test=is_test,
    )


def assigned(lead_id: str, rep_id: str, at: datetime = NOW) -> LeadAssignedV1:
    return LeadAssignedV1(
        lead_id=lead_id, rep_id=rep_id, occurred_at=at, strategy="round_robin", received_at=NOW
    )


def sold(lead_id: str, revenue: float, at: datetime = NOW) -> LeadConvertedV1:
    return LeadConvertedV1(lead_id=lead_id, rep_id="r1", occurred_at=at, revenue=revenue)


_READS = itertools.count()


def record(store: AnalyticsStore, parts: int = 2) -> RecordEvents:
    """The consumer's use case; each batch recorded a millisecond after the one before, as
    a redelivered batch is recorded later than the first time."""
    return RecordEvents(
        store, clock=lambda: NOW + timedelta(milliseconds=next(_READS)), parts=parts
    )


async def counts(store: AnalyticsStore, metric: Metric, **filters: str) -> int:
    buckets = await store.counters({metric}, FIRST_HOUR, LAST_HOUR, filters)
    return sum(b.count for b in buckets)


@pytest.mark.parametrize("parts", [1, 2])
async def test_a_batch_is_recorded_once_even_when_delivered_again(
    store: AnalyticsStore, parts: int
) -> None:
    batch: list[Event] = [received("a"), received("b"), assigned("a", "r1")]
    assert await record(store, parts)(batch) == 3
    assert await record(store, parts)(batch) == 0  # redelivered: nothing new
    assert await record(store, parts)([*batch, received("c")]) == 1  # only the new one
    assert await counts(store, Metric.LEADS_RECEIVED) == 3
    assert await counts(store, Metric.REACHED, stage="assigned") == 1
    assert await counts(store, Metric.ASSIGNMENTS) == 1


@pytest.mark.parametrize("parts", [1, 2])
async def test_a_batch_recorded_by_two_replicas_at_once_counts_once(
    store: AnalyticsStore, parts: int
) -> None:
    batch: list[Event] = [received("x1"), received("x2", "ad"), assigned("x1", "r1")]
    batch += [sold("x1", 40.0), assigned("x2", "r2")]
    first, second = await asyncio.gather(record(store, parts)(batch), record(store, parts)(batch))
    assert first + second == 5  # each event recorded by one of them (a part each, or all)
    assert await counts(store, Metric.LEADS_RECEIVED) == 2
    assert await counts(store, Metric.ASSIGNMENTS) == 2
    assert await counts(store, Metric.CONVERSIONS) == 1
    assert [(g.place.rep, g.count) for g in await store.open_leads({})] == [("r2", 1)]


async def test_overlapping_batches_of_known_leads_on_two_replicas_count_each_event_once(
    store: AnalyticsStore,
) -> None:
    """A partition handed over mid-batch: the old and the new owner record batches that
    share events of leads both look up (each lead's inbox read, then rewritten)."""
    await record(store)([received("k1"), received("k2", "ad")])
    for round_ in range(3):
        k1, k2 = f"k1-{round_}", f"k2-{round_}"
        await record(store)([received(k1), received(k2, "ad")])
        shared: list[Event] = [sold(k1, 40.0), assigned(k2, "r2")]
        first, second = await asyncio.gather(
            record(store)([assigned(k1, "r1"), *shared]),
            record(store)([*shared, sold(k2, 10.0)]),
        )
        assert first + second == 4
    assert await counts(store, Metric.CONVERSIONS) == 6
    assert await counts(store, Metric.ASSIGNMENTS) == 6
    assert await counts(store, Metric.REACHED, stage="converted", channel="ad") == 3
    assert await store.events_stored() == 2 + 3 * 6


async def test_a_replay_after_compaction_counts_nothing_again(store: AnalyticsStore) -> None:
    first: list[Event] = [received("y1"), assigned("y1", "r1"), received("y2")]
    await record(store)(first)
    while await store.compact(max_batches=10):
        pass
    # Redelivered from an earlier offset, with one event not seen before.
    assert await record(store)([*first, assigned("y2", "r2")]) == 1
    assert await record(store)(list(reversed(first))) == 0
    assert await counts(store, Metric.LEADS_RECEIVED) == 2
    assert await counts(store, Metric.INQUIRIES) == 2
    assert await counts(store, Metric.REACHED, stage="assigned") == 2
    assert sorted((g.place.rep, g.count) for g in await store.open_leads({})) == [
        ("r1", 1),
        ("r2", 1),
    ]


async def test_the_same_event_twice_in_one_batch_counts_once(store: AnalyticsStore) -> None:
    event = received("twice")
    assert await record(store)([event, event]) == 1
    assert await counts(store, Metric.INQUIRIES) == 1


async def test_a_lead_received_after_its_other_events_is_credited_once_to_its_channel(
    store: AnalyticsStore,
) -> None:
    """The batch starts with the lead's lead-received, yet facts of it are stored already
    (its sale was read first): a store that presumes such a lead new must find out."""
    await record(store)([assigned("late", "r1"), sold("late", 90.0)])
    assert await record(store)([received("late", "ad"), received("fresh")]) == 2
    assert await counts(store, Metric.LEADS_RECEIVED) == 2
    assert await counts(store, Metric.CONVERSIONS, channel="ad") == 1
    assert await counts(store, Metric.CONVERSIONS, channel="unknown") == 0
    assert await counts(store, Metric.ASSIGNMENTS, channel="ad") == 1
    assert await store.events_stored() == 4


async def test_a_failing_unit_of_work_leaves_nothing_behind(store: AnalyticsStore) -> None:
    event = received("doomed")

    async def fail_after_saving(batch: RecordingBatch, fresh: list[Event]) -> None:
        known = await batch.lead_facts({e.lead_id for e in fresh})
        await batch.save(tally_batch(fresh, known, recorded_at=NOW))
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
    assert await counts(store, Metric.ASSIGNMENTS) == 2
    assert await counts(store, Metric.ASSIGNMENTS, rep="r2", channel="web_form") == 1
    open_now = await store.open_leads({})
    assert [(g.place.rep, g.place.channel, g.count) for g in open_now] == [("r2", "web_form", 1)]


async def test_a_sale_read_before_its_lead_is_credited_to_the_lead_channel(
    store: AnalyticsStore,
) -> None:
    await record(store)([sold("late", 120.0)])
    assert await counts(store, Metric.CONVERSIONS, channel="unknown") == 1
    await record(store)([received("late", "phone")])
    assert await counts(store, Metric.CONVERSIONS, channel="unknown") == 0
    assert await counts(store, Metric.CONVERSIONS, channel="phone", campaign="c1") == 1
    phone = await store.counters({Metric.CONVERSIONS}, FIRST_HOUR, LAST_HOUR, {"channel": "phone"})
    assert sum(b.amount for b in phone) == 120.0


async def test_a_test_lead_is_kept_out_even_when_its_events_came_first(
    store: AnalyticsStore,
) -> None:
    await record(store)([assigned("t1", "r1"), sold("t1", 50.0)])
    await record(store)([received("t1", is_test=True)])
    await record(store)([sold("t1", 70.0)])
    for metric in (Metric.INQUIRIES, Metric.ASSIGNMENTS, Metric.CONVERSIONS, Metric.REACHED):
        assert await counts(store, metric) == 0, metric
    assert await store.open_leads({}) == []


async def test_an_unknown_event_is_stored_raw_and_counted(store: AnalyticsStore) -> None:
    raw = PARSER.validate_python(
        {"event_type": "lead-teleported", "lead_id": "u1", "occurred_at": NOW, "where": "mars"}
    )
    newer = PARSER.validate_python(
        {"event_type": "lead-received", "schema_version": 2, "lead_id": "u2", "occurred_at": NOW}
    )
    assert await record(store)([raw, newer]) == 2
    assert await counts(store, Metric.UNKNOWN_EVENTS) == 2
    assert await counts(store, Metric.LEADS_RECEIVED) == 0
    (stored,) = await store.timeline("u1", limit=10)
    assert stored["payload"]["where"] == "mars"
    assert stored["known"] is False


async def test_the_newest_campaign_version_wins_in_any_order(store: AnalyticsStore) -> None:
    def saved(cost: float, minutes: int) -> CampaignSavedV1:
        return CampaignSavedV1(
            lead_id="campaign:c1",
            campaign_id="c1",
            name=f"spring {cost}",
            channel="ad",
            cost=cost,
            occurred_at=NOW + timedelta(minutes=minutes),
        )

    await record(store)([saved(300.0, 10)])
    await record(store)([saved(100.0, 0)])  # an older version, read later
    (campaign,) = await store.campaigns()
    assert (campaign.cost, campaign.name) == (300.0, "spring 300.0")
    await record(store)([saved(500.0, 20), saved(400.0, 15)])
    (campaign,) = await store.campaigns()
    assert campaign.cost == 500.0


async def test_rebuild_gives_the_same_rollups(store: AnalyticsStore) -> None:
    later = NOW + timedelta(minutes=30)
    await record(store)([sold("r", 80.0, later), assigned("q", "r1")])
    await record(store)([received("r", "ad"), received("q"), assigned("r", "r2")])
    await record(store)(
        [ActivityLoggedV1(lead_id="q", rep_id="r1", activity="call", occurred_at=later)]
    )
    metrics = set(Metric)

    def snapshot(buckets: list[Bucket]) -> list[tuple[object, ...]]:
        return sorted(
            (b.hour, b.metric, sorted(b.dimensions.items()), b.count, round(b.amount, 2))
            for b in buckets
        )

    before = snapshot(await store.counters(metrics, FIRST_HOUR, LAST_HOUR, {}))
    open_before = sorted(map(repr, await store.open_leads({})))
    assert await RebuildRollups(store, clock=lambda: NOW, chunk=2)() == 6
    assert snapshot(await store.counters(metrics, FIRST_HOUR, LAST_HOUR, {})) == before
    assert sorted(map(repr, await store.open_leads({}))) == open_before


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


async def test_a_lead_received_and_erased_in_a_batch_delivered_again_counts_once(
    store: AnalyticsStore,
) -> None:
    """The lead looks new to the batch (its lead-received first): the erasure must not
    take it for known half way, so the redelivered lead-received is not counted again."""
    batch: list[Event] = [received("re"), assigned("re", "r1")]
    await record(store)(batch)
    erasure = LeadErasedV1(lead_id="re")
    assert await record(store)([*batch, erasure]) == 1
    assert await record(store)([*batch, erasure]) == 0
    assert await counts(store, Metric.LEADS_RECEIVED) == 1
    timeline = await store.timeline("re", limit=10)
    assert [doc["event_type"] for doc in timeline] == [
        "lead-received",
        "lead-assigned",
        "lead-erased",
    ]
    assert all("contact" not in doc["payload"] for doc in timeline)


async def test_counters_are_kept_per_hour_and_filtered_by_dimension(
    store: AnalyticsStore,
) -> None:
    await record(store)([received("p", "phone"), received("q", "phone"), received("w", "walk_in")])
    buckets = await store.counters({Metric.LEADS_RECEIVED}, FIRST_HOUR, LAST_HOUR, {})
    by_channel = {b.dimensions["channel"]: b.count for b in buckets}
    assert by_channel == {"phone": 2, "walk_in": 1}
    assert await counts(store, Metric.LEADS_RECEIVED, channel="walk_in") == 1
    next_day = datetime.combine(date(2026, 11, 24), datetime.min.time(), UTC)
    assert (
        await store.counters({Metric.LEADS_RECEIVED}, next_day, next_day + timedelta(hours=23), {})
        == []
    )


async def test_rebuild_keeps_an_erased_lead_counted(store: AnalyticsStore) -> None:
    await record(store)([received("gone", "phone"), assigned("gone", "r1")])
    await record(store)([LeadErasedV1(lead_id="gone")])
    before = await counts(store, Metric.LEADS_RECEIVED, channel="phone")
    assert await RebuildRollups(store, clock=lambda: NOW)() == 3
    assert await counts(store, Metric.LEADS_RECEIVED, channel="phone") == before == 1


async def test_compaction_changes_no_figure_and_leaves_nothing_waiting(
    store: AnalyticsStore,
) -> None:
    await record(store)([received("k1", "phone"), assigned("k1", "r1"), sold("k1", 30.0)])
    await record(store)([received("k2", "ad"), assigned("k2", "r2")])
    metrics = set(Metric)
    before = await store.counters(metrics, FIRST_HOUR, LAST_HOUR, {})
    open_before = await store.open_leads({})
    while await store.compact(max_batches=1):
        pass
    assert await store.compact(max_batches=10) == 0

    def key(b: Bucket) -> tuple[object, ...]:
        return (b.hour, b.metric, sorted(b.dimensions.items()), b.count, round(b.amount, 2))

    after = await store.counters(metrics, FIRST_HOUR, LAST_HOUR, {})
    assert sorted(map(key, after)) == sorted(map(key, before))
    assert sorted(map(repr, await store.open_leads({}))) == sorted(map(repr, open_before))
    # Folded and new deltas add up in one report.
    await record(store)([received("k3", "phone")])
    assert await counts(store, Metric.LEADS_RECEIVED, channel="phone") == 2
    sales = await store.counters({Metric.CONVERSIONS}, FIRST_HOUR, LAST_HOUR, {"rep": "r1"})
    assert [(b.count, b.amount) for b in sales] == [(1, 30.0)]


async def test_overdue_leads_are_counted_as_of_each_report_after_compaction(
    store: AnalyticsStore,
) -> None:
    """Deadlines long past when the gauge is folded are kept per received day only; a
    deadline still to come stays by the hour, so a later report sees it pass."""

    def waiting(lead_id: str, due_in: timedelta) -> list[Event]:
        at = NOW - timedelta(days=2)
        return [
            received(lead_id, at=at),
            LeadAssignedV1(
                lead_id=lead_id,
                rep_id="r1",
                occurred_at=at,
                strategy="round_robin",
                sla_due_at=NOW + due_in,
            ),
        ]

    await record(store)(
        waiting("d1", -timedelta(hours=30)) + waiting("d2", -timedelta(hours=3))
        + waiting("d3", timedelta(hours=2)) + waiting("d4", timedelta(hours=2))
    )  # fmt: skip
    while await store.compact(max_batches=10):
        pass
    await record(store)(
        [
            ActivityLoggedV1(
                lead_id="d4", rep_id="r1", activity="call", occurred_at=NOW - timedelta(days=1)
            )
        ]
    )
    await record(store)(waiting("d5", -timedelta(hours=8)))

    async def overdue(now: datetime) -> tuple[object, object]:
        query = ReportQuery(NOW.date() - timedelta(days=3), NOW.date(), UTC_ZONE, {}, now)
        reps = (await BuildReport(store)("reps", query)).as_json()
        speed = (await BuildReport(store)("speed", query)).as_json()
        return reps["tables"]["reps"]["rows"][0]["overdue_leads"], speed["figures"]["overdue_leads"]

    assert await overdue(NOW) == (3, 3)
    assert await overdue(NOW + timedelta(hours=3)) == (4, 4)
    while await store.compact(max_batches=10):
        pass
    assert await overdue(NOW) == (3, 3)
    assert await overdue(NOW + timedelta(hours=3)) == (4, 4)


@pytest.mark.integration
async def test_a_gauge_kept_per_lead_place_is_migrated_to_per_place_documents(
    request: pytest.FixtureRequest,
) -> None:
    later = NOW + timedelta(hours=30)
    async with mongo_parts(request) as parts:
        store = MongoAnalyticsStore(parts.database, parts.ledger, clock=lambda: NOW)
        await store.ensure_indexes()
        await record(store)([received("m1"), received("m2", "ad"), received("m3", "ad")])
        await record(store)([assigned("m1", "r1"), assigned("m2", "r1"), assigned("m3", "r2")])
        await record(store)(
            [ActivityLoggedV1(lead_id="m2", rep_id="r1", activity="call", occurred_at=later)]
        )
        while await store.compact(max_batches=10):
            pass
        expected = sorted(map(repr, await store.open_leads({})))
        assert sum(g.count for g in await store.open_leads({})) == 3
        # The gauge as an older analytics kept it: one document per lead place.
        places: dict[str, dict[str, object]] = {}
        async for document in parts.database["lead_facts"].find({}):
            if (open_key := facts_from_document(document).open_key) is None:
                continue
            key = open_key._asdict()
            doc = places.setdefault("|".join(key.values()), {"key": key, "count": 0})
            doc["count"] = int(str(doc["count"])) + 1
        await parts.database["open_leads"].delete_many({})
        await parts.database["open_leads"].insert_many(
            [{"_id": doc_id, **doc} for doc_id, doc in places.items()]
        )
        await MongoAnalyticsStore(parts.database, parts.ledger, clock=lambda: NOW).ensure_indexes()
        assert sorted(map(repr, await store.open_leads({}))) == expected
        old_shape = {"key.received_day": {"$exists": True}}
        assert await parts.database["open_leads"].count_documents(old_shape) == 0


@pytest.mark.integration
async def test_events_stored_one_document_each_are_regrouped_and_still_recognised(
    request: pytest.FixtureRequest,
) -> None:
    later = NOW + timedelta(minutes=1)
    batch: list[Event] = [received("e1"), assigned("e1", "r1", later), received("e2", "ad")]
    async with mongo_parts(request) as parts:
        store = MongoAnalyticsStore(parts.database, parts.ledger, clock=lambda: NOW)
        await store.ensure_indexes()
        await record(store)(batch)
        # The event store as older analytics kept it: one document an event, keyed by lead
        # (e1) or, older still, by its bare id (e2); leads' facts without `seen`, deltas
        # without a count of stored events.
        database = parts.database
        groups = await database["event_groups"].find({}).to_list()
        old = [event for group in groups for event in group_events(group)]
        await database["event_groups"].delete_many({})
        await database["lead_facts"].update_many({}, {"$unset": {"seen": ""}})
        await database["counter_deltas"].update_many({}, {"$unset": {"stored": ""}})
        await database["events"].insert_many(
            [doc if doc["lead_id"] == "e1"
             else {k: v for k, v in doc.items() if k != "event_id"} | {"_id": doc["event_id"]}
             for doc in old]
        )  # fmt: skip
        upgraded = MongoAnalyticsStore(database, parts.ledger, clock=lambda: NOW)
        await upgraded.ensure_indexes()
        assert "events" not in await database.list_collection_names()
        assert await upgraded.events_stored() == 3
        assert await record(upgraded)(batch) == 0
        assert await record(upgraded)([batch[0], sold("e1", 40.0, NOW + timedelta(minutes=2))]) == 1
        assert await counts(upgraded, Metric.LEADS_RECEIVED) == 2
        timeline = await upgraded.timeline("e1", limit=10)
        assert [doc["event_type"] for doc in timeline] == [
            "lead-received",
            "lead-assigned",
            "lead-converted",
        ]
        assert [doc["event_id"] for doc in timeline[:2]] == [str(e.event_id) for e in batch[:2]]
        assert [doc["event_id"] for doc in await upgraded.timeline("e2", limit=10)] == [
            str(batch[2].event_id)
        ]
        assert await upgraded.events_stored() == 4


@pytest.mark.integration
async def test_every_report_reads_the_same_from_the_rollup_sets_as_in_memory(
    request: pytest.FixtureRequest,
) -> None:
    """Reports whose filters and breakdowns need at most two lead dimensions read the
    roll-up sets (month documents and gauge summed over the other dimensions); the others
    read one document per combination. Either way, before compaction, half way and after,
    every report of the scripted month equals the in-memory store's."""
    month = build(date(2026, 9, 1), "sets")
    events = month.events()
    memory = InMemoryAnalyticsStore()
    await record(memory)(events)
    rep, pool = month.reps[0], month.pools[0]
    channel = month.leads[0].channel
    filter_sets: list[dict[str, str]] = [
        {},
        {"rep": rep},
        {"channel": channel},
        {"channel": channel, "rep": rep},
        {"channel": channel, "pool": pool, "rep": rep},
    ]
    now = datetime(2026, 10, 2, 9, tzinfo=UTC)

    async def reports_of(store: AnalyticsStore) -> list[Any]:
        build_report = BuildReport(store)
        return [
            (name, filters, (await build_report(name, query)).as_json())
            for filters in filter_sets
            for query in (
                ReportQuery(date(2026, 9, 1), date(2026, 9, 30), UTC_ZONE, filters, now),
                ReportQuery(date(2026, 9, 3), date(2026, 9, 20), SEOUL, filters, now),
            )
            for name in REPORTS
        ]

    want = await reports_of(memory)
    async with mongo_parts(request) as parts:
        mongo = MongoAnalyticsStore(parts.database, parts.ledger, clock=lambda: now)
        await mongo.ensure_indexes()
        for start in range(0, len(events), 50):
            await record(mongo)(events[start : start + 50])
        assert await reports_of(mongo) == want
        await mongo.compact(max_batches=len(events) // 100)
        assert await reports_of(mongo) == want
        while await mongo.compact(max_batches=10):
            pass
        assert await reports_of(mongo) == want


@pytest.mark.integration
async def test_facts_and_deltas_an_older_analytics_wrote_are_still_read(
    request: pytest.FixtureRequest,
) -> None:
    """A rolling upgrade meets lead facts kept one field each and batch deltas kept as
    arrays: reports, the next events of those leads and compaction still read them."""
    async with mongo_parts(request) as parts:
        store = MongoAnalyticsStore(parts.database, parts.ledger, clock=lambda: NOW)
        await store.ensure_indexes()
        await record(store)([received("o1", "ad"), assigned("o1", "r1"), received("o2")])
        facts, deltas = parts.database["lead_facts"], parts.database["counter_deltas"]
        for document in [doc async for doc in facts.find({})]:
            lead = facts_from_document(document)
            old = lead._asdict()
            old |= {
                "_id": old.pop("lead_id"),
                "reached": dict(lead.reached),
                "pending": [pending_entry(i) for i in lead.pending],
                "open_key": None if lead.open_key is None else lead.open_key._asdict(),
            }
            await facts.replace_one({"_id": document["_id"]}, old)
        for document in [doc async for doc in deltas.find({})]:
            old = {
                "lo": document["lo"],
                "hi": document["hi"],
                "inc": [
                    [hour, metric, [list(pair) for pair in dims], n, amount]
                    for hour, metric, dims, n, amount in delta_increments(document)
                ],
                "gauge": [[key._asdict(), n] for key, n in delta_moves(document)],
            }
            await deltas.replace_one({"_id": document["_id"]}, old)
        assert await deltas.count_documents({"inc.0": {"$exists": True}}) >= 1

        async def seen() -> tuple[int, int, int, list[tuple[str, str, int]]]:
            gauge = await store.open_leads({})
            return (
                await counts(store, Metric.LEADS_RECEIVED),
                await counts(store, Metric.LEADS_RECEIVED, channel="ad"),
                await counts(store, Metric.CONVERSIONS, channel="ad", rep="r1"),
                sorted((g.place.rep, g.place.stage, g.count) for g in gauge),
            )

        assert await seen() == (2, 1, 0, [("r1", "assigned", 1)])
        await record(store)([sold("o1", 50.0)])  # o1's facts read in the old shape
        assert await seen() == (2, 1, 1, [])
        while await store.compact(max_batches=10):
            pass
        assert await deltas.count_documents({}) == 0
        assert await seen() == (2, 1, 1, [])


@pytest.mark.integration
async def test_a_replica_never_overwrites_facts_another_replica_moved_on(
    request: pytest.FixtureRequest,
) -> None:
    """Topics of one lead can be consumed by different replicas: what one replica knew of
    a lead must not win over what another recorded since (a replica-local memory of facts
    was tried and measured no faster: this guards any such shortcut)."""
    async with mongo_parts(request) as parts:
        first = MongoAnalyticsStore(parts.database, parts.ledger, clock=lambda: NOW)
        other = MongoAnalyticsStore(parts.database, parts.ledger, clock=lambda: NOW)
        await first.ensure_indexes()
        await record(first)([received("shared", "ad"), assigned("shared", "r1")])
        await record(other)([sold("shared", 40.0)])
        await record(first)([sold("shared", 60.0), received("own")])
        await record(first)([sold("own", 10.0)])
        assert await counts(first, Metric.CONVERSIONS, channel="ad") == 2
        assert await counts(first, Metric.REACHED, stage="converted") == 2  # one per lead
        assert await counts(first, Metric.REACHED, stage="converted", channel="ad") == 1
        assert await first.events_stored() == 6
