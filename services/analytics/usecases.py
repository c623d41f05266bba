"""Analytics' use cases: the steps of each flow, between the entrypoints and the store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import Counter
from pydantic import ValidationError

from leadflow.chassis.clock import Clock
from leadflow.chassis.consumer import OUTAGE
from leadflow.chassis.lease import Lease
from leadflow.chassis.tasks import stop_requested
from services.analytics import reports
from services.analytics.events import PARSER, RawEvent
from services.analytics.reports import Report, ReportQuery
from services.analytics.rules import LeadFacts, is_campaign, presumed_new_leads, tally_batch
from services.analytics.store import AnalyticsStore, RecordingBatch
from shared.events import Event

log = structlog.get_logger(__name__)

UNKNOWN_EVENTS = Counter(
    "leadflow_analytics_unknown_events_total",
    "Events of a type or version analytics does not know: stored raw and counted",
    ["event_type", "version"],
)


async def _tally_and_save(
    batch: RecordingBatch, events: Sequence[Event], now: datetime, *, store_events: bool
) -> int:
    lead_ids = {event.lead_id for event in events if not is_campaign(event)}
    known: dict[str, LeadFacts] = (
        await batch.lead_facts(lead_ids, presumed_new=presumed_new_leads(events))
        if lead_ids
        else {}
    )
    tally = tally_batch(events, known, recorded_at=now)
    await batch.save(tally, store_events=store_events)
    return tally.unknown_events


COMPACTION_BATCHES = 100
"""Recorded batches' delta documents folded per compaction transaction: every fold
rewrites the month documents the deltas touch (about one per dimension combination), so
folding many at once is what lets compaction keep up with the ingest."""


class RecordEvents:
    """Store each consumed event once and move the roll-ups it implies."""

    def __init__(self, store: AnalyticsStore, *, clock: Clock, parts: int = 1) -> None:
        self._store = store
        self._clock = clock
        self._parts = parts

    async def __call__(self, events: Sequence[Event]) -> int:
        """Record a batch; returns how many events were new.

        The batch is recorded in one transaction, or split by lead into `parts` recorded
        at once, each in one transaction of its own (while the database writes one part,
        this process tallies the next). A lead's events stay in one part, in order, and
        each part is recognised on a replay by itself, so a part committed before a
        failure is not counted again when the batch is delivered again."""
        parts = split_by_lead(events, self._parts)
        # Every part finished (committed or rolled back) before a failure is raised: the
        # batch delivered again must not meet a part still in flight.
        results = await asyncio.gather(
            *(self._record(part) for part in parts), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        recorded = sum(r for r in results if isinstance(r, int))
        if recorded < len(events):
            log.debug("events already recorded", skipped=len(events) - recorded)
        return recorded

    async def _record(self, events: Sequence[Event]) -> int:
        unknown: list[Event] = []

        async def record(batch: RecordingBatch, fresh: list[Event]) -> int:
            unknown[:] = [e for e in fresh if isinstance(e, RawEvent)]
            await _tally_and_save(batch, fresh, self._clock(), store_events=True)
            return len(fresh)

        recorded = await self._store.record_batch(events, record) or 0
        for event in unknown:
            UNKNOWN_EVENTS.labels(event.event_type[:64], str(event.schema_version)).inc()
            log.warning(
                "event of an unknown type or version stored raw",
                event_type=event.event_type,
                schema_version=event.schema_version,
                event_id=str(event.event_id),
            )
        return recorded


def split_by_lead(events: Sequence[Event], parts: int) -> list[list[Event]]:
    """`events` in at most `parts` non-empty parts of about equal size, each lead's (and
    each campaign's) events all in one part, in their order."""
    if parts <= 1:
        return [list(events)] if events else []
    by_lead: dict[str, list[Event]] = {}
    for event in events:
        by_lead.setdefault(event.lead_id, []).append(event)
    split: list[list[Event]] = [[] for _ in range(parts)]
    for lead_events in sorted(by_lead.values(), key=len, reverse=True):
        min(split, key=len).extend(lead_events)
    return [part for part in split if part]


class RebuildRollups:
    """Every roll-up again from the event store: facts, counters, the open-lead gauge and
    campaigns are dropped and the stored events tallied oldest first, in chunks."""

    def __init__(self, store: AnalyticsStore, *, clock: Clock, chunk: int = 1000) -> None:
        self._store = store
        self._clock = clock
        self._chunk = chunk

    async def __call__(self, progress: Callable[[int], None] | None = None) -> int:
        await self._store.clear_rollups()
        done = 0
        async for documents in self._store.stored_events(self._chunk):
            events = [event_from_document(doc) for doc in documents]

            async def work(batch: RecordingBatch, events: list[Event] = events) -> int:
                return await _tally_and_save(batch, events, self._clock(), store_events=False)

            await self._store.rebuild_batch(work)
            await self._store.compact(max_batches=COMPACTION_BATCHES)
            done += len(events)
            if progress is not None:
                progress(len(events))
        while await self._store.compact(max_batches=COMPACTION_BATCHES):
            pass
        log.info("analytics roll-ups rebuilt", events=done)
        return done


class CompactRollups:
    """Fold recorded batches' deltas into the roll-ups, on one replica at a time (a lease),
    until stopped: at once while batches wait, else every `interval_s`."""

    def __init__(
        self,
        store: AnalyticsStore,
        lease: Lease,
        *,
        interval_s: float,
        max_batches: int = COMPACTION_BATCHES,
    ) -> None:
        self._store = store
        self._lease = lease
        self._interval_s = interval_s
        self._max_batches = max_batches
        self._fold = max_batches
        self.folded = 0

    async def run(self) -> None:
        while not stop_requested():
            folded = 0
            asked = self._fold
            try:
                if await self._lease.hold():
                    folded = await self._store.compact(asked)
                    self.folded += folded
                    # Back towards full size after a fold that had to be smaller.
                    self._fold = min(self._max_batches, asked * 2)
            except OUTAGE as error:
                # The database is away (or too slow for a fold this size, which must not
                # fail the same way for ever): reports still add the deltas up; smaller
                # folds, later.
                self._fold = max(1, asked // 2)
                log.warning("compaction postponed", error=repr(error), next_fold=self._fold)
            except Exception:
                # Anything else is a bug: said loudly, and the loop lives on (a dead loop
                # would let deltas pile up unseen).
                self._fold = max(1, asked // 2)
                log.exception("compaction failed; trying again")
            if folded < asked and not stop_requested():
                await asyncio.sleep(self._interval_s)

    async def stop(self) -> None:
        await self._lease.release()


def event_from_document(document: dict[str, Any]) -> Event:
    """A stored event parsed again as what the consumer read (raw when unknown). An erased
    lead's events lost their personal fields: a required `contact` comes back empty."""
    payload = dict(document["payload"])
    if payload.get("event_type") in ("lead-received", "lead-merged"):
        payload.setdefault("contact", {})
    try:
        return PARSER.validate_python(payload)
    except ValidationError:
        # Stored by an analytics that knew the event differently: kept as it is, counted
        # as unknown, never a rebuild that stops half way.
        log.warning("stored event no longer valid; rebuilt as raw", event_id=document["event_id"])
        return RawEvent.model_validate(payload)


class BuildReport:
    """Load what a report needs (counters of the period, the gauge, campaigns) and build it."""

    def __init__(self, store: AnalyticsStore) -> None:
        self._store = store

    async def __call__(self, name: str, query: ReportQuery) -> Report:
        store, filters = self._store, query.filters

        async def counters(
            metrics: frozenset[Any], by: tuple[str, ...], q: ReportQuery = query
        ) -> list[Any]:
            return await store.counters(metrics, q.first_hour, q.last_hour, filters, by=by)

        match name:
            case "summary":
                return reports.summary(
                    query, await counters(reports.SUMMARY_METRICS, reports.SUMMARY_BY)
                )
            case "monthly":
                metrics, by = reports.MONTHLY_METRICS, reports.MONTHLY_BY
                return reports.monthly(
                    query,
                    await counters(metrics, by),
                    await counters(metrics, by, query.previous()),
                )
            case "channels":
                return reports.channels(
                    query, await counters(reports.CHANNEL_METRICS, reports.CHANNEL_BY)
                )
            case "campaigns":
                return reports.campaigns(
                    query,
                    await counters(reports.CAMPAIGN_METRICS, reports.CAMPAIGN_BY),
                    await store.campaigns(),
                )
            case "reps":
                return reports.reps(
                    query,
                    await counters(reports.REP_METRICS, reports.REP_BY),
                    await store.open_leads(filters, spreads={"awaiting"}, by=reports.REP_BY),
                )
            case "speed":
                return reports.speed(
                    query,
                    await counters(reports.SPEED_METRICS, reports.SPEED_BY),
                    await store.open_leads(filters, by=reports.SPEED_BY),
                )
            case "losses":
                return reports.losses(query, await counters(reports.LOSS_METRICS, reports.LOSS_BY))
            case "walk-ins":
                return reports.walk_ins(
                    query, await counters(reports.WALK_IN_METRICS, reports.WALK_IN_BY)
                )
            case "nurture":
                return reports.nurture(
                    query, await counters(reports.NURTURE_METRICS, reports.NURTURE_BY)
                )
            case "forecast":
                return reports.forecast(
                    query,
                    await counters(reports.FORECAST_METRICS, reports.FORECAST_BY),
                    await store.open_leads(filters, spreads=(), by=reports.FORECAST_BY),
                )
            case "ingest":
                return reports.ingest(
                    query,
                    await counters(reports.INGEST_METRICS, reports.INGEST_BY),
                    await store.events_stored(),
                )
        raise KeyError(name)


REPORTS: dict[str, str] = {
    "summary": "Lead funnel and revenue for a period",
    "monthly": "Monthly sales report: inquiries, visits, conversions, revenue, month over month",
    "channels": "Channel and source analysis",
    "campaigns": "Campaigns: leads, opportunities, conversions, revenue, cost, CPL, ROI",
    "reps": "Per-rep funnel: calls to bookings, consultations to sales, open and overdue",
    "speed": "Speed to lead: first contact times, SLA breaches, aging, forgotten leads",
    "losses": "Losses by level and reason",
    "walk-ins": "Walk-in contact retention against 95 % and satisfaction scores",
    "nurture": "Nurture performance per sequence and step",
    "forecast": "Funnel by stage and next month's forecast from the open pipeline",
    "ingest": "Events stored, and events of an unknown type or version",
}
