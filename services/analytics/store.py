"""Analytics' persistence, in the `leadflow_analytics` database. Decisions live in `rules`
and `reports`, the steps of each flow in `usecases`.

- `event_groups`: the event store. Every consumed event once, a recorded batch's events in
  a few documents of about `GROUP_EVENTS` (a lead's events of the batch in one, in order;
  `_id` = when the batch was recorded and its first event's id, so groups sort in the
  order recorded; the events ONE JSON text `e`): the server's cost is per document
  written, whatever its size, so a batch costs it about ten writes rather than one an
  event; no secondary index. Events of an unknown type or version too, `known: false`.
- `lead_facts`: per lead (and per campaign key), what the next event needs (attribution,
  stages reached, ...) as one JSON text `f` (read by `_id` only), the ids of its events
  recorded so far (`seen`, one text: the inbox) and the groups holding them (`g`: a
  timeline reads those). A batch looks up every lead in it
  except those whose first event in it is their lead-received: those are presumed new,
  and the insert of their document proves it (a duplicate key records the batch again,
  every lead looked up). Two replicas recording the same lead at once write the same
  document, and one of them meets a write conflict and records its batch again.
- `counter_deltas`: what each recorded batch adds to the counters and the open-lead gauge,
  as ONE document inserted in the batch's transaction (an insert is cheap on any server;
  an upsert per counter is not), its increments and gauge moves one JSON text each,
  folded into `counters` and `open_leads` by `compact` (one replica at a time, in the
  background) and then deleted; with how many events the batch stored (`stored`), added
  to `rollup_meta`'s count of stored events when folded.
- `counters`: one document per UTC hour and lead dimensions (channel, source, campaign,
  pool, rep) holding every metric counted for them, so a report reads a few documents per
  hour and never the event store; reports add the deltas not yet folded in, read in the
  same transaction. `open_leads`: the gauge of open leads, one document per place (lead
  dimensions and stage) with the counts by received day, last-touch day and SLA-due hour
  inside it, so a report reads one document per place in use, however many leads are open.
- `month_counters`: the same counters rolled up per local month of the configured report
  time zone (one document per month and lead dimensions, metrics nested by name so a
  report reads only the ones it needs), folded by `compact` beside the hourly ones. A
  report's whole months in that zone are read from here, so a month costs at most one
  document per dimension combination whatever the number of events; only the partial
  months at either end (or a period shorter than a month) read hourly documents.
  `rollup_meta` says which zone they were built for: when it is not the configured one
  (or roll-ups exist from before month documents did), reports use the hourly documents
  only until `leadflow analytics rebuild` runs.
- Roll-up sets: the month documents and the gauge are also kept summed over all but at
  most two lead dimensions (`ROLLUP_SETS`, field `set`): a report whose filters and
  breakdowns need at most two of them reads a few documents of its set, bounded by those
  dimensions' values rather than by the events (or by the combinations in use). Used once
  built from the start (or by a rebuild): `rollup_meta` says so.
- `campaigns`: the last saved version of each campaign.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import operator
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import orjson
import structlog
from pymongo import ASCENDING, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError

from leadflow.chassis.clock import Clock
from leadflow.chassis.store import (
    IN_CHUNK,
    Database,
    Document,
    EventLedger,
    Session,
    find_in,
)
from leadflow.chassis.store import Collection as MongoCollection
from services.analytics.rules import (
    LEAD_DIMENSIONS,
    NONE,
    PERSONAL_FIELDS,
    BatchTally,
    Campaign,
    Dimensions,
    Increment,
    LeadFacts,
    Metric,
    OpenGaugeSums,
    OpenKey,
    OpenLeads,
    OpenPlace,
    RecordedEvent,
    fold_past_due,
    hour_from_key,
    hour_key,
    past_due_before,
    pending_entry,
    pending_increment,
    presumed_new_leads,
)
from shared.events import Event

T = TypeVar("T")
log = structlog.get_logger(__name__)
DUPLICATE_KEY = 11000
OLD_EVENTS = "events"
"""The event store of one document an event (before event groups): regrouped, dropped."""
EVENTS_STORED_ID = "events_stored"
REGROUP_CHUNK = 500


def event_key(lead_id: str, event_id: object) -> str:
    """An event's key as the event store returns it: a lead's events are one range."""
    return f"{lead_id}|{event_id}"


GROUP_EVENTS = 50
"""About how many events one event group holds (a lead's events of a batch are never
split): the server's cost is per document written, so a batch of 500 costs it about ten
writes; a lead's timeline reads the groups its events are in."""


def event_groups(
    events: Sequence[RecordedEvent], *, erased: Collection[str]
) -> tuple[list[Document], dict[str, list[str]]]:
    """A batch's events as group documents of about `GROUP_EVENTS`, each lead's events in
    one group in order, without personal data for the leads in `erased`; and the groups
    each lead's events are in.

    A group's `_id` is when the batch was recorded and its first event's id, so groups
    sort in the order they were recorded; its events are ONE JSON text (`e`), `n` of them."""
    by_key: dict[str, list[RecordedEvent]] = {}
    for event in events:
        by_key.setdefault(event.lead_id, []).append(event)
    documents: list[Document] = []
    groups_of: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    group_id = ""
    for key, mine in by_key.items():
        if not rows:
            group_id = f"{_recorded_key(mine[0].recorded_at)}|{mine[0].event_id}"
        groups_of[key] = [group_id]
        rows.extend(_event_row(event, erased=key in erased) for event in mine)
        if len(rows) >= GROUP_EVENTS:
            documents.append({"_id": group_id, "n": len(rows), "e": _data_text(rows)})
            rows = []
    if rows:
        documents.append({"_id": group_id, "n": len(rows), "e": _data_text(rows)})
    return documents, groups_of


def _recorded_key(recorded_at: datetime) -> str:
    return recorded_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _event_row(event: RecordedEvent, *, erased: bool) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "lead_id": event.lead_id,
        "occurred_at": event.occurred_at,
        "recorded_at": event.recorded_at,
        "known": event.known,
        "payload": _without_personal_data(event.payload) if erased else event.payload,
    }


def _without_personal_data(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in payload.items() if name not in PERSONAL_FIELDS}


def group_events(document: Document, *, lead_id: str | None = None) -> list[Document]:
    """The events of a stored group (only `lead_id`'s, if given), each as the event store
    has always returned one."""
    parse = datetime.fromisoformat
    return [
        {
            "_id": event_key(row["lead_id"], row["event_id"]),
            "event_id": row["event_id"],
            "event_type": row["event_type"],
            "lead_id": row["lead_id"],
            "occurred_at": parse(row["occurred_at"]),
            "recorded_at": parse(row["recorded_at"]),
            "known": row["known"],
            "payload": row["payload"],
        }
        for row in orjson.loads(document["e"])
        if lead_id is None or row["lead_id"] == lead_id
    ]


def _only_duplicates(error: BulkWriteError) -> bool:
    errors = error.details.get("writeErrors") or [{}]
    return all(e.get("code") == DUPLICATE_KEY for e in errors)


MONTH_ZONE_ID = "month_zone"
UTC_ZONE = ZoneInfo("UTC")

ROLLUP_SETS: tuple[tuple[str, ...], ...] = (
    (),
    *((name,) for name in LEAD_DIMENSIONS),
    *itertools.combinations(LEAD_DIMENSIONS, 2),
)
"""Lead dimensions the month roll-ups and the open-lead gauge are also kept by, summed over
the other lead dimensions: a report whose filters and breakdowns need at most two of them
reads one of these (a few documents, bounded by those dimensions' values, however many
events) rather than one document per dimension combination."""
_SET_NAMES = {dims: "+".join(dims) for dims in ROLLUP_SETS}


def rollup_set(needed: Collection[str]) -> str | None:
    """The name of the roll-up set kept by exactly the lead dimensions `needed`; None when
    no set is (the per-combination documents serve it)."""
    dims = tuple(name for name in LEAD_DIMENSIONS if name in needed)
    return _SET_NAMES.get(dims) if len(dims) == len(set(needed)) else None


def _kept_only(dims: Mapping[str, str], kept: Collection[str]) -> dict[str, str]:
    """`dims` without the lead dimensions not in `kept` (a metric's own ones stay)."""
    return {k: v for k, v in dims.items() if k in kept or k not in LEAD_DIMENSIONS}


@dataclasses.dataclass(frozen=True, slots=True)
class Bucket:
    """One stored counter: a metric's total for one UTC hour and one set of dimensions."""

    hour: datetime
    metric: Metric
    dimensions: Mapping[str, str]
    count: int
    amount: float = 0.0


OPEN_SPREADS = frozenset({"received", "touched", "awaiting"})
"""How a place's open leads spread over days and deadlines (fields of `OpenLeads`)."""


class RecordingBatch(Protocol):
    """What a use case may read and write while recording one batch (one transaction)."""

    async def lead_facts(
        self, lead_ids: Collection[str], *, presumed_new: Collection[str] = ()
    ) -> dict[str, LeadFacts]:
        """The stored facts of `lead_ids`. Those of `presumed_new` may be taken as absent
        without a look-up: if some are stored after all, `save` fails and the batch is
        recorded again with every lead looked up, so a wrong guess costs time only."""
        ...

    async def save(self, tally: BatchTally, *, store_events: bool = True) -> None: ...


BatchWork = Callable[[RecordingBatch, list[Event]], Awaitable[T]]


class AnalyticsStore(Protocol):
    async def ensure_indexes(self) -> None: ...
    async def record_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        """Run `work` on the events of `consumed` not recorded before, in one transaction
        that also remembers them; None (nothing written) when every one was known."""
        ...

    async def counters(
        self,
        metrics: Collection[Metric],
        first_hour: datetime,
        last_hour: datetime,
        filters: Mapping[str, str],
        *,
        by: Collection[str] = LEAD_DIMENSIONS,
    ) -> list[Bucket]:
        """Counters of `metrics` for the hours from `first_hour` to `last_hour` (both
        included) whose dimensions match every filter, added up over the lead dimensions
        not in `by` (those are left out of the buckets' dimensions)."""
        ...

    async def open_leads(
        self,
        filters: Mapping[str, str],
        *,
        spreads: Collection[str] = OPEN_SPREADS,
        by: Collection[str] = LEAD_DIMENSIONS,
    ) -> list[OpenLeads]:
        """Open leads now, one entry per place (lead dimensions in `by`, and stage; the
        others "") matching every filter, with the `spreads` asked for ("received",
        "touched", "awaiting"; the others may come back empty)."""
        ...

    async def campaigns(self) -> list[Campaign]: ...
    async def compact(self, max_batches: int) -> int:
        """Fold up to `max_batches` recorded batches' deltas into the roll-ups; returns how
        many were folded (0: nothing waiting)."""
        ...

    async def timeline(self, lead_id: str, *, limit: int) -> list[Document]: ...
    async def events_stored(self) -> int: ...

    # --- rebuild ---
    async def clear_rollups(self) -> None:
        """Drop every roll-up (facts, counters, gauge, campaigns); the event store stays."""
        ...

    def stored_events(self, chunk: int) -> AsyncIterator[list[Document]]:
        """Every stored event, in chunks of about `chunk`: each lead's events together and
        oldest first (by occurred_at, then arrival); the leads in any order."""
        ...

    async def rebuild_batch(self, work: Callable[[RecordingBatch], Awaitable[T]]) -> T:
        """Run `work` in one transaction, without touching the event store."""
        ...


class MongoAnalyticsStore:
    """Analytics publishes nothing: its transactions (`publishes=False`) need not wait for
    the replica's commit turn, so the parts of a consumed batch commit at once."""

    def __init__(
        self,
        database: Database,
        ledger: EventLedger,
        *,
        clock: Clock,
        month_zone: ZoneInfo = UTC_ZONE,
    ) -> None:
        self._clock = clock
        self._events: MongoCollection = database["event_groups"]
        self._old_events: MongoCollection = database[OLD_EVENTS]
        self._facts: MongoCollection = database["lead_facts"]
        self._counters: MongoCollection = database["counters"]
        self._months: MongoCollection = database["month_counters"]
        self._meta: MongoCollection = database["rollup_meta"]
        self._zone = month_zone
        self._months_usable = False
        self._sets_usable = False
        self._deltas: MongoCollection = database["counter_deltas"]
        self._open: MongoCollection = database["open_leads"]
        self._campaigns: MongoCollection = database["campaigns"]
        self._ledger = ledger

    async def ensure_indexes(self) -> None:
        # The event store carries no secondary index: each costs the ingest about one more
        # insert on the local server. A lead's event groups are a range of keys.
        await self._regroup_old_events()
        await self._counters.create_index([("hour", ASCENDING)])
        # A report reads one set (or the combinations: no `set`) of one zone's months.
        await self._months.create_index(
            [("zone", ASCENDING), ("set", ASCENDING), ("month", ASCENDING)]
        )
        await self._open.create_index([("set", ASCENDING)])
        if "zone_1_month_1" in await self._months.index_information():
            await self._months.drop_index("zone_1_month_1")
        if not any(
            [await c.find_one({}, {"_id": 1}) for c in (self._counters, self._open, self._deltas)]
        ):
            # No roll-ups yet: the month documents and the roll-up sets will be built with
            # the hourly ones.
            await self._meta.update_one(
                {"_id": MONTH_ZONE_ID},
                {"$setOnInsert": {"zone": self._zone.key, "sets": True}},
                upsert=True,
            )
        await self._migrate_gauge()
        marker = await self._meta.find_one({"_id": MONTH_ZONE_ID})
        self._months_usable = marker is not None and marker.get("zone") == self._zone.key
        self._sets_usable = marker is not None and marker.get("sets") is True
        if not self._sets_usable:
            log.warning(
                "analytics roll-up sets not built: reports read one document per dimension "
                "combination until `leadflow analytics rebuild` runs"
            )
        if not self._months_usable:
            log.warning(
                "analytics month roll-ups not built for the report time zone: reports read "
                "hourly counters until `leadflow analytics rebuild` runs",
                zone=self._zone.key,
                built_for=None if marker is None else marker.get("zone"),
            )

    async def _migrate_gauge(self) -> None:
        """Gauge documents of one lead place each (before the gauge was kept per place
        with its days inside) become per-place documents, the same counts; once."""

        async def migrate(session: Session) -> tuple[int, list[Event]]:
            old = [
                doc
                async for doc in self._open.find(
                    {"key.received_day": {"$exists": True}}, session=session
                )
            ]
            if not old:
                return 0, []
            sums = OpenGaugeSums()
            for doc in old:
                sums.move(OpenKey(**doc["key"]), doc["count"])
            ids = [doc["_id"] for doc in old]
            for start in range(0, len(ids), IN_CHUNK):
                await self._open.delete_many(
                    {"_id": {"$in": ids[start : start + IN_CHUNK]}}, session=session
                )
            past_due = past_due_before(self._clock())
            places = [
                gauge_document(place, past_due_before=past_due)
                for place in sums.places(open_only=False)
            ]
            await _replace_all(
                self._open, places, functools.partial(_add_gauge, past_due_before=past_due), session
            )
            return len(old), []

        if migrated := await self._ledger.commit(migrate, publishes=False):
            log.info("analytics open-lead gauge kept per place now", documents=migrated)

    async def _regroup_old_events(self) -> None:
        """Events stored one document each (before event groups; keyed by lead, or by
        their bare id before that) are stored again in groups, their ids in their leads'
        `seen`, a chunk per transaction, once; the old collection is dropped after.
        Replicas of an older version must be stopped first (they would go on writing
        there)."""

        async def regroup(session: Session) -> tuple[int, list[Event]]:
            old = [
                doc
                async for doc in self._old_events.find({}, session=session)
                .sort("_id", ASCENDING)
                .limit(REGROUP_CHUNK)
            ]
            if not old:
                return 0, []
            events = sorted(
                (
                    RecordedEvent(
                        event_id=str(doc.get("event_id", doc["_id"])),
                        event_type=doc["event_type"],
                        lead_id=doc["lead_id"],
                        occurred_at=doc["occurred_at"],
                        recorded_at=doc["recorded_at"],
                        payload=doc["payload"],
                        known=doc.get("known", True),
                    )
                    for doc in old
                ),
                key=lambda event: (event.occurred_at, event.recorded_at),
            )
            batch = _MongoRecordingBatch(self, session, presume=False)
            groups_of = await batch.write_groups(events, erased=frozenset())
            await batch.write_leads(events, {}, groups_of)
            ids = [doc["_id"] for doc in old]
            for start in range(0, len(ids), IN_CHUNK):
                await self._old_events.delete_many(
                    {"_id": {"$in": ids[start : start + IN_CHUNK]}}, session=session
                )
            await self._meta.update_one(
                {"_id": EVENTS_STORED_ID},
                {"$inc": {"count": len(old)}},
                upsert=True,
                session=session,
            )
            return len(old), []

        if await self._old_events.find_one({}, {"_id": 1}) is None:
            return
        moved = 0
        while regrouped := await self._ledger.commit(regroup, publishes=False):
            moved += regrouped
        await self._old_events.drop()
        log.info("analytics event store kept in groups now", events=moved)

    async def record_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        # A lead's document remembers its recorded events (`seen`): the inbox. A lead whose
        # first event here is its lead-received is taken to be new (the usual case): no
        # look-up, and the insert of its document proves it; one stored before fails that
        # insert, the transaction is rolled back whole, and the batch is recorded again
        # with every lead looked up. Either way one transaction holds the events, the facts
        # and the counter deltas, so nothing counts twice.
        fresh = list({event.event_id: event for event in reversed(consumed)}.values())
        fresh.reverse()
        if not fresh:
            return None
        presumed = presumed_new_leads(fresh)

        async def record(session: Session, *, presume: bool) -> tuple[T | None, list[Event]]:
            batch = _MongoRecordingBatch(self, session, presume=presume)
            await batch.look_up(
                {e.lead_id for e in fresh if not presume or e.lead_id not in presumed}
            )
            new = [event for event in fresh if not batch.recorded_before(event)]
            if not new:
                return None, []
            return await work(batch, new), []

        try:
            return await self._ledger.commit(
                functools.partial(record, presume=True), publishes=False
            )
        except BulkWriteError as error:
            if not _only_duplicates(error):
                raise
            log.debug("batch held leads or events recorded before; looking every lead up")
        return await self._ledger.commit(functools.partial(record, presume=False), publishes=False)

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
        wanted = {metric.value for metric in metrics}
        kept = frozenset(by)
        # Lead dimensions are the documents' own; a metric's own (stage, reason, ...) are
        # inside them, filtered here after reading.
        dims_query = {
            f"dimensions.{name}": value
            for name, value in filters.items()
            if name in LEAD_DIMENSIONS
        }
        own_filters = {k: v for k, v in filters.items() if k not in LEAD_DIMENSIONS}
        months = whole_months(first_hour, last_hour, self._zone) if self._months_usable else []
        # Hours outside the whole months read from `month_counters`.
        hour_ranges = [(first, last)]
        if months:
            after = _next_month(months[-1][0], months[-1][1], self._zone)
            hour_ranges = [
                (first, hour_key(_month_start(*months[0], self._zone) - timedelta(hours=1))),
                (hour_key(after), last),
            ]
        # The set kept by exactly the lead dimensions this read needs, when there is one.
        needed = kept | {name for name in filters if name in LEAD_DIMENSIONS}
        month_query: dict[str, Any] = {
            "zone": self._zone.key,
            "month": {"$in": [_month_key(*m) for m in months]},
            "set": rollup_set(needed) if self._sets_usable else None,
            **dims_query,
        }
        month_projection = {"hour": 1, "dimensions": 1, **{f"m.{name}": 1 for name in wanted}}

        async def read(
            session: Session,
        ) -> tuple[list[Document], list[Document], list[Document]]:
            # One transaction: a compaction committing between the reads would otherwise
            # count a batch twice, or not at all.
            compacted = [
                doc
                for lo, hi in hour_ranges
                if lo <= hi
                async for doc in self._counters.find(
                    {"hour": {"$gte": lo, "$lte": hi}, **dims_query}, session=session
                )
            ]
            monthly = (
                [
                    doc
                    async for doc in self._months.find(
                        month_query, month_projection, session=session
                    )
                ]
                if months
                else []
            )
            deltas = [
                doc
                async for doc in self._deltas.find(
                    {"lo": {"$lte": last}, "hi": {"$gte": first}},
                    {"inc": 1},
                    session=session,
                )
            ]
            return compacted, monthly, deltas

        compacted, monthly, deltas = await self._read(read)
        totals: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[float]] = {}

        def add(
            hour: str, metric: str, dims: tuple[tuple[str, str], ...], n: int, amount: float
        ) -> None:
            slot = totals.setdefault((hour, metric, dims), [0, 0.0])
            slot[0] += n
            slot[1] += amount

        for doc in compacted:
            base = _kept_only(doc["dimensions"], kept)
            for entry in doc["m"].values():
                if entry["metric"] in wanted:
                    dims = tuple(sorted({**base, **entry["extra"]}.items()))
                    add(doc["hour"], entry["metric"], dims, entry["count"], entry["amount"])
        for doc in monthly:
            base = _kept_only(doc["dimensions"], kept)
            for metric, slots in doc.get("m", {}).items():
                for entry in slots.values():
                    dims = tuple(sorted({**base, **entry["extra"]}.items()))
                    add(doc["hour"], metric, dims, entry["count"], entry["amount"])
        for doc in deltas:
            for hour, metric, pairs, n, amount in delta_increments(doc):
                if metric not in wanted or not first <= hour <= last:
                    continue
                values = dict(pairs)
                if all(values.get(k) == v for k, v in filters.items()):
                    dims = tuple(sorted(_kept_only(values, kept).items()))
                    add(hour, metric, dims, n, amount)
        return [
            Bucket(hour_from_key(hour), Metric(metric), dict(dims), int(n), amount)
            for (hour, metric, dims), (n, amount) in totals.items()
            if (n or abs(amount) > 1e-9)
            and (not own_filters or own_filters.items() <= dict(dims).items())
        ]

    async def open_leads(
        self,
        filters: Mapping[str, str],
        *,
        spreads: Collection[str] = OPEN_SPREADS,
        by: Collection[str] = LEAD_DIMENSIONS,
    ) -> list[OpenLeads]:
        kept = frozenset(by) | set(filters)
        kept_set = rollup_set(kept) if self._sets_usable else None
        query: dict[str, Any] = {"count": {"$ne": 0}, "set": kept_set}
        query.update({f"key.{name}": value for name, value in filters.items()})
        # The spreads by day are most of a gauge document: read only those a report uses.
        projection = {"key": 1, "count": 1, **{name: 1 for name in spreads}}

        async def read(session: Session) -> tuple[list[Document], list[Document]]:
            compacted = [doc async for doc in self._open.find(query, projection, session=session)]
            deltas = [
                doc
                async for doc in self._deltas.find(
                    HAS_GAUGE_MOVES, {"gauge": 1, "moves": 1}, session=session
                )
            ]
            return compacted, deltas

        compacted, deltas = await self._read(read)
        folded = {gauge.place: gauge for gauge in map(gauge_from_document, compacted)}
        moves = [move for doc in deltas for move in delta_moves(doc)]
        # Only the places the unfolded deltas moved are added up again: the others are
        # read as stored (thousands of day entries, which a report need not copy).
        sums = OpenGaugeSums()
        for key, n in moves:
            if any(getattr(key, k) != v for k, v in filters.items()):
                continue
            moved = kept_key(key, kept) if kept_set is not None else key
            sums.move(moved, n)
            if (stored := folded.pop(moved.place(), None)) is not None:
                sums.add(stored)
        gauges = [gauge for gauge in folded.values() if gauge.count > 0] + sums.places()
        if kept_set is not None or kept >= set(LEAD_DIMENSIONS):
            return gauges
        # Read per dimension combination: added up over the dimensions not asked for.
        collapsed = OpenGaugeSums()
        for gauge in gauges:
            collapsed.add(kept_gauge(gauge, kept))
        return collapsed.places()

    async def compact(self, max_batches: int) -> int:
        async def fold(session: Session) -> tuple[int, list[Event]]:
            batch = [
                doc
                async for doc in self._deltas.find({}, session=session)
                .sort("_id", ASCENDING)
                .limit(max_batches)
            ]
            if not batch:
                return 0, []
            # Deadlines long past are overdue for every later report: kept per received
            # day only, so a place's spread stays as long as the days and the SLA window.
            past_due = past_due_before(self._clock())
            counters, gauge = fold_deltas(batch, past_due_before=past_due)
            # Read, add up in memory, delete and insert: two bulk writes, where an upsert
            # per document costs a round of the server's update path each.
            # The month documents are made first: `_replace_all` adds what is stored into
            # the documents it is given, which must not be counted into the months again.
            months = month_documents(counters, self._zone)
            await _replace_all(self._counters, counters, _add_counter, session)
            await _replace_all(self._months, months, _add_month, session)
            await _replace_all(
                self._open, gauge, functools.partial(_add_gauge, past_due_before=past_due), session
            )
            await self._deltas.delete_many(
                {"_id": {"$in": [doc["_id"] for doc in batch]}}, session=session
            )
            if stored := sum(doc.get("stored", 0) for doc in batch):
                await self._meta.update_one(
                    {"_id": EVENTS_STORED_ID},
                    {"$inc": {"count": stored}},
                    upsert=True,
                    session=session,
                )
            return len(batch), []

        return await self._ledger.commit(fold, publishes=False)

    async def _read(self, read: Callable[[Session], Awaitable[T]]) -> T:
        async def transaction(session: Session) -> tuple[T, list[Event]]:
            return await read(session), []

        return await self._ledger.commit(transaction, publishes=False)

    async def campaigns(self) -> list[Campaign]:
        return [campaign_from_document(doc) async for doc in self._campaigns.find({})]

    async def timeline(self, lead_id: str, *, limit: int) -> list[Document]:
        """The lead's recorded events, oldest first (ties in arrival order)."""

        async def read(session: Session) -> list[Document]:
            lead = await self._facts.find_one({"_id": lead_id}, {"g": 1}, session=session)
            if lead is None:
                return []
            groups = await find_in(self._events, "_id", lead.get("g", "").split(), session=session)
            groups.sort(key=operator.itemgetter("_id"))  # in the order recorded
            return [event for group in groups for event in group_events(group, lead_id=lead_id)]

        mine = await self._read(read)
        mine.sort(key=lambda doc: (doc["occurred_at"], doc["recorded_at"]))
        return mine[:limit]

    async def events_stored(self) -> int:
        """Counted as batches are recorded (in their deltas) and folded into one count
        by `compact`: never a scan of the event store."""

        async def read(session: Session) -> int:
            folded = await self._meta.find_one({"_id": EVENTS_STORED_ID}, session=session)
            waiting = self._deltas.find({"stored": {"$gt": 0}}, {"stored": 1}, session=session)
            count = 0 if folded is None else int(folded["count"])
            return count + sum([int(doc["stored"]) async for doc in waiting])

        return await self._read(read)

    async def clear_rollups(self) -> None:
        for collection in (
            self._counters,
            self._months,
            self._deltas,
            self._open,
            self._campaigns,
        ):
            await collection.delete_many({})
        # The leads' facts go; what they remember of the event store (`seen`) stays.
        await self._facts.delete_many({"seen": {"$exists": False}})
        await self._facts.update_many({}, {"$unset": {"f": ""}})
        await self._meta.delete_one({"_id": EVENTS_STORED_ID})
        # The month documents are rebuilt with the hourly ones, for the configured zone.
        await self._meta.replace_one(
            {"_id": MONTH_ZONE_ID}, {"zone": self._zone.key, "sets": True}, upsert=True
        )
        self._months_usable = self._sets_usable = True

    async def stored_events(self, chunk: int) -> AsyncIterator[list[Document]]:
        # Group by group in the order they were recorded, so each lead's events come in
        # the order the consumer first tallied them. Paged by key rather than one long
        # cursor: a cursor left open across transactions may time out on a large store.
        after: str | None = None
        while True:
            query = {} if after is None else {"_id": {"$gt": after}}
            page = (
                await self._events.find(query)
                .sort("_id", ASCENDING)
                .limit(max(1, chunk // GROUP_EVENTS))
                .to_list()
            )
            if not page:
                return
            yield [event for group in page for event in group_events(group)]
            after = page[-1]["_id"]

    async def rebuild_batch(self, work: Callable[[RecordingBatch], Awaitable[T]]) -> T:
        async def transaction(session: Session) -> tuple[T, list[Event]]:
            return await work(_MongoRecordingBatch(self, session, presume=False)), []

        return await self._ledger.commit(transaction, publishes=False)


class _MongoRecordingBatch:
    def __init__(self, store: MongoAnalyticsStore, session: Session, *, presume: bool) -> None:
        self._store = store
        self._session = session
        self._presume = presume
        self._looked_up: set[str] = set()
        self._stored: dict[str, Document] = {}
        """Leads' documents as stored, of the leads looked up that have one."""
        self._seen: dict[str, set[str]] = {}

    async def look_up(self, keys: Collection[str]) -> None:
        """Read the stored documents of `keys` (leads, campaign keys) not read yet."""
        # A look-up costs the local server about as much as an insert: one for the batch.
        wanted = [key for key in keys if key not in self._looked_up]
        if not wanted:
            return
        self._looked_up.update(wanted)
        for doc in await find_in(self._store._facts, "_id", wanted, session=self._session):
            self._stored[doc["_id"]] = doc
            self._seen[doc["_id"]] = set(doc.get("seen", "").split())

    def recorded_before(self, event: Event) -> bool:
        seen = self._seen.get(event.lead_id)
        return seen is not None and str(event.event_id) in seen

    async def lead_facts(
        self, lead_ids: Collection[str], *, presumed_new: Collection[str] = ()
    ) -> dict[str, LeadFacts]:
        # A lead presumed new gets its document inserted: if it had one, the insert fails
        # on a duplicate key and `record_batch` records the batch again without presuming.
        await self.look_up(
            [i for i in lead_ids if i not in presumed_new] if self._presume else lead_ids
        )
        stored = self._stored
        return {
            lead_id: facts_from_document(doc)
            for lead_id in lead_ids
            if (doc := stored.get(lead_id)) is not None and _holds_facts(doc)
        }

    async def save(self, tally: BatchTally, *, store_events: bool = True) -> None:
        store, session = self._store, self._session
        for lead_id in sorted(tally.erased_leads):
            await self._forget_personal_data(lead_id)
        groups_of = (
            await self.write_groups(tally.recorded, erased=tally.erased_leads)
            if store_events
            else {}
        )
        await self.write_leads(
            tally.recorded, {facts.lead_id: facts for facts in tally.facts}, groups_of
        )
        if tally.increments or tally.gauge or tally.recorded:
            # A few documents for the whole batch (one insert); `compact` folds them into
            # the roll-ups one at a time, each a short transaction even on a slow server.
            await store._deltas.insert_many(delta_documents(tally), session=session)
        if tally.campaigns:
            # The newest version of a campaign wins, whatever order versions arrive in.
            stored = {
                doc["_id"]: doc["saved_at"]
                for doc in await find_in(
                    store._campaigns,
                    "_id",
                    [c.campaign_id for c in tally.campaigns],
                    session=session,
                    projection={"saved_at": 1},
                )
            }
            newer = [
                campaign
                for campaign in tally.campaigns
                if campaign.campaign_id not in stored
                or stored[campaign.campaign_id] <= campaign.saved_at
            ]
            if newer:
                await store._campaigns.bulk_write(
                    [
                        ReplaceOne({"_id": c.campaign_id}, campaign_document(c), upsert=True)
                        for c in newer
                    ],
                    ordered=False,
                    session=session,
                )

    async def write_groups(
        self, events: Sequence[RecordedEvent], *, erased: Collection[str]
    ) -> dict[str, list[str]]:
        """The batch's events as a few groups (one insert); the groups of each lead."""
        if not events:
            return {}
        documents, groups_of = event_groups(events, erased=erased)
        await self._store._events.insert_many(documents, session=self._session)
        return groups_of

    async def write_leads(
        self,
        recorded: Sequence[RecordedEvent],
        changed: Mapping[str, LeadFacts],
        groups_of: Mapping[str, Sequence[str]],
    ) -> None:
        """The documents of the leads (and campaign keys) of this batch: their facts as
        `changed` leaves them, the ids of their `recorded` events added to `seen`, the
        groups that hold them to `g`. A document not looked up is inserted (a duplicate
        key when one was stored after all), the others replaced (far cheaper than upserts
        on the local server)."""
        ids_of: dict[str, list[str]] = {}
        for event in recorded:
            ids_of.setdefault(event.lead_id, []).append(event.event_id)
        if not self._presume:
            await self.look_up([*ids_of, *changed])
        inserts: list[Document] = []
        replaces: list[ReplaceOne[Document]] = []
        for key in ids_of.keys() | changed.keys():
            stored = self._stored.get(key) or {}
            seen = self._seen.setdefault(key, set())
            added = [i for i in ids_of.get(key, ()) if i not in seen]
            seen.update(added)
            document: Document = {"_id": key, "seen": _joined(stored.get("seen"), added)}
            if (groups := groups_of.get(key)) or "g" in stored:
                document["g"] = _joined(stored.get("g"), groups or ())
            if (facts := changed.get(key)) is not None:
                document["f"] = facts_text(facts)
            elif stored and _holds_facts(stored):
                document["f"] = stored.get("f") or facts_text(facts_from_document(stored))
            if stored:
                replaces.append(ReplaceOne({"_id": key}, document))
            else:
                inserts.append(document)
            self._stored[key] = document
        if inserts:
            await self._store._facts.insert_many(inserts, session=self._session)
        if replaces:
            await self._store._facts.bulk_write(replaces, ordered=False, session=self._session)

    async def _forget_personal_data(self, lead_id: str) -> None:
        """The personal data of the lead's stored events (the groups holding them
        rewritten; the batch's own group is written without). A lead presumed new has none
        (if it has, its document's insert fails and the batch is recorded again)."""
        if lead_id not in self._looked_up:
            if self._presume:
                return
            await self.look_up([lead_id])
        groups = (self._stored.get(lead_id) or {}).get("g", "").split()
        events = self._store._events
        rewritten: list[UpdateOne] = []
        for group in await find_in(events, "_id", groups, session=self._session):
            rows = orjson.loads(group["e"])
            for row in rows:
                if row["lead_id"] == lead_id:
                    row["payload"] = _without_personal_data(row["payload"])
            rewritten.append(UpdateOne({"_id": group["_id"]}, {"$set": {"e": _data_text(rows)}}))
        if rewritten:
            await events.bulk_write(rewritten, ordered=False, session=self._session)


def _joined(text: str | None, more: Sequence[str]) -> str:
    """Space-separated ids: `text` (those stored) and `more`."""
    return " ".join((text, *more)) if text else " ".join(more)


def _holds_facts(document: Document) -> bool:
    """Whether a lead's document holds facts: `f`, or (stored by an older analytics, which
    kept no `seen`) one field each."""
    return "f" in document or "seen" not in document


@functools.lru_cache(maxsize=1 << 12)
def slot_of(metric: str, extra: Dimensions) -> str:
    """A field name (no dots, no $) for one metric and its own dimensions."""
    text = _json_text([metric, sorted(extra)])
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:24]


DELTA_SIZE = 200
"""Most counter increments (and gauge moves) in one delta document."""


def delta_documents(tally: BatchTally) -> list[Document]:
    """A batch's increments and gauge moves, `DELTA_SIZE` of each a document, and how
    many events it stored (`stored`, on the first).

    Each part is ONE JSON text (`inc`, `moves`), its increments' dimensions written once
    in a table: the server stores, logs and decodes a text as one field, where the same
    data as arrays of arrays cost it a step per element (more server time than the
    events themselves). Only `lo` and `hi` are queried."""
    increments, moves = tally.increments, tally.gauge
    documents: list[Document] = []
    for start in range(0, max(len(increments), len(moves), 1), DELTA_SIZE):
        part = increments[start : start + DELTA_SIZE]
        table: dict[tuple[tuple[str, str], ...], int] = {}
        rows = [
            (
                hour_key(i.hour),
                i.metric,
                table.setdefault(i.dimensions, len(table)),
                i.count,
                i.amount,
            )
            for i in part
        ]
        hours = [row[0] for row in rows]
        document: Document = {
            "lo": min(hours, default=""),
            "hi": max(hours, default=""),
            "inc": _data_text({"dims": list(table), "rows": rows}),
        }
        if moved := moves[start : start + DELTA_SIZE]:
            document["moves"] = _data_text([[_OPEN_KEY_VALUES(m.key), m.count] for m in moved])
        documents.append(document)
    # How many events the batch stored (or, in a rebuild, tallied again).
    documents[0]["stored"] = len(tally.recorded)
    return documents


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _data_text(value: Any) -> str:
    """JSON text of data that is only ever parsed back (facts, deltas), never compared as
    text (keys are `_json_text`): orjson, ten times faster than `json` on the ingest's
    path, datetimes written in ISO 8601 as `isoformat` writes them."""
    return orjson.dumps(value).decode()


DeltaRow = tuple[str, str, tuple[tuple[str, str], ...], int, float]


def delta_increments(document: Document) -> Iterator[DeltaRow]:
    """A delta document's increments: (hour key, metric, dimensions, count, amount)."""
    inc = document.get("inc") or ()
    if isinstance(inc, str):
        data = orjson.loads(inc)
        table = [tuple((k, v) for k, v in pairs) for pairs in data["dims"]]
        for hour, metric, dims, n, amount in data["rows"]:
            yield hour, metric, table[dims], n, amount
        return
    # Written before the JSON text (a rolling upgrade may meet some): arrays.
    for hour, metric, pairs, n, amount in inc:
        yield hour, metric, tuple((k, v) for k, v in pairs), n, amount


def delta_moves(document: Document) -> Iterator[tuple[OpenKey, int]]:
    """A delta document's gauge moves."""
    if (moves := document.get("moves")) is not None:
        for values, n in orjson.loads(moves):
            yield OpenKey(*values), n
        return
    for key_doc, n in document.get("gauge") or ():  # written before `moves`
        yield OpenKey(**key_doc), n


HAS_GAUGE_MOVES: Document = {"$or": [{"moves": {"$exists": True}}, {"gauge.0": {"$exists": True}}]}
"""The delta documents that move the gauge (in either format)."""


_OPEN_KEY_FIELDS = OpenKey._fields
_OPEN_KEY_VALUES = operator.attrgetter(*_OPEN_KEY_FIELDS)


def _open_key_document(key: OpenKey) -> Document:
    return {name: getattr(key, name) for name in _OPEN_KEY_FIELDS}


def fold_deltas(
    deltas: Sequence[Document], *, past_due_before: str
) -> tuple[list[Document], list[Document]]:
    """The counter and gauge documents that `deltas` add up to (one per hour and lead
    dimensions, every metric in it; one per open-lead place, deadlines in hours before
    `past_due_before` folded into `PAST_DUE`)."""
    increments = (
        Increment(hour_from_key(hour), Metric(metric), dims, n, amount)
        for delta in deltas
        for hour, metric, dims, n, amount in delta_increments(delta)
    )
    sums = OpenGaugeSums()
    for delta in deltas:
        for key, count in delta_moves(delta):
            sums.move(key, count)
    places = sums.places(open_only=False)
    gauge = [
        gauge_document(place, past_due_before=past_due_before) for place in places
    ] + gauge_set_documents(places, past_due_before=past_due_before)
    return counter_documents(increments), gauge


def _add_counter(into: Document, stored: Document) -> None:
    for slot, entry in stored["m"].items():
        mine = into["m"].setdefault(slot, {**entry, "count": 0, "amount": 0.0})
        mine["count"] += entry["count"]
        mine["amount"] += entry["amount"]


def _add_gauge(into: Document, stored: Document, *, past_due_before: str) -> None:
    sums = OpenGaugeSums()
    sums.add(gauge_from_document(into))
    sums.add(gauge_from_document(stored))
    # Every lead there may have moved on: then an empty place, kept as such.
    added = sums.places(open_only=False) or [OpenLeads(OpenPlace(**into["key"]), 0, {}, {}, {})]
    # The id stays: a roll-up set's document has one of its own.
    folded = gauge_document(added[0], past_due_before=past_due_before)
    into.update({k: v for k, v in folded.items() if k != "_id"})


async def _replace_all(
    collection: MongoCollection,
    documents: list[Document],
    add_stored: Callable[[Document, Document], None],
    session: Session,
) -> None:
    """Write `documents` added to what `collection` holds under their ids."""
    if not documents:
        return
    by_id = {doc["_id"]: doc for doc in documents}
    stored = await find_in(collection, "_id", by_id, session=session)
    for doc in stored:
        add_stored(by_id[doc["_id"]], doc)
    known = [doc["_id"] for doc in stored]
    for start in range(0, len(known), IN_CHUNK):
        await collection.delete_many(
            {"_id": {"$in": known[start : start + IN_CHUNK]}}, session=session
        )
    await collection.insert_many(list(by_id.values()), ordered=False, session=session)


def counter_documents(increments: Iterable[Increment]) -> list[Document]:
    """Compacted counter documents holding `increments`, for loading roll-ups in bulk
    (bench/analytics.py); the same shape `compact` upserts."""
    documents: dict[tuple[str, Dimensions], Document] = {}
    for i in increments:
        hour = hour_key(i.hour)
        lead, extra = _split_dimensions(i.dimensions)
        doc = documents.get((hour, lead))
        if doc is None:
            doc = documents[hour, lead] = {
                "_id": json.dumps([hour, lead], separators=(",", ":")),
                "hour": hour,
                "dimensions": dict(lead),
                "m": {},
            }
        metric = i.metric.value
        slot = slot_of(metric, extra)
        entry = doc["m"].get(slot)
        if entry is None:
            entry = doc["m"][slot] = {
                "metric": metric,
                "extra": dict(extra),
                "count": 0,
                "amount": 0.0,
            }
        entry["count"] += i.count
        entry["amount"] += i.amount
    return list(documents.values())


@functools.lru_cache(maxsize=1 << 14)
def _split_dimensions(dimensions: Dimensions) -> tuple[Dimensions, Dimensions]:
    """A counter's lead dimensions (sorted: its document's key) and its own."""
    lead = tuple(sorted(pair for pair in dimensions if pair[0] in LEAD_DIMENSIONS))
    return lead, tuple(pair for pair in dimensions if pair[0] not in LEAD_DIMENSIONS)


def _month_key(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def _month_start(year: int, month: int, zone: ZoneInfo) -> datetime:
    return datetime(year, month, 1, tzinfo=zone).astimezone(UTC)


def _next_month(year: int, month: int, zone: ZoneInfo) -> datetime:
    return _month_start(year + month // 12, month % 12 + 1, zone)


def whole_months(
    first_hour: datetime, last_hour: datetime, zone: ZoneInfo
) -> list[tuple[int, int]]:
    """The local months of `zone` that lie wholly within the UTC hours `first_hour` to
    `last_hour` (both included), oldest first."""
    local = first_hour.astimezone(zone)
    year, month = local.year, local.month
    months: list[tuple[int, int]] = []
    end = last_hour + timedelta(hours=1)
    while _month_start(year, month, zone) < end:
        if _month_start(year, month, zone) >= first_hour and _next_month(year, month, zone) <= end:
            months.append((year, month))
        year, month = year + month // 12, month % 12 + 1
    return months


def month_documents(hourly: Iterable[Document], zone: ZoneInfo) -> list[Document]:
    """The month roll-ups (local months of `zone`) of hourly counter documents: one per
    month and lead dimensions, metrics nested by name (`m.<metric>.<slot>`), and `hour`
    the month's first UTC hour, so a report reads them as one bucket per month; and the
    same added up per roll-up set (`ROLLUP_SETS`, field `set`)."""
    combinations = _month_combinations(hourly, zone)
    return combinations + _month_sets(combinations)


def _month_sets(combinations: Iterable[Document]) -> list[Document]:
    documents: dict[tuple[str, str, str, Dimensions], Document] = {}
    for doc in combinations:
        dimensions = doc["dimensions"]
        for dims in ROLLUP_SETS:
            name = _SET_NAMES[dims]
            kept = tuple(sorted((k, dimensions[k]) for k in dims if k in dimensions))
            key = (doc["zone"], doc["month"], name, kept)
            into = documents.get(key)
            if into is None:
                into = documents[key] = {
                    **doc,
                    "_id": json.dumps(list(key), separators=(",", ":")),
                    "set": name,
                    "dimensions": dict(kept),
                    "m": {},
                }
            _add_month(into, doc)
    return list(documents.values())


def _month_combinations(hourly: Iterable[Document], zone: ZoneInfo) -> list[Document]:
    documents: dict[tuple[str, Dimensions], Document] = {}
    for doc in hourly:
        local = hour_from_key(doc["hour"]).astimezone(zone)
        year, month = local.year, local.month
        key = _month_key(year, month)
        lead = tuple(sorted(doc["dimensions"].items()))
        into = documents.get((key, lead))
        if into is None:
            into = documents[key, lead] = {
                "_id": json.dumps([zone.key, key, lead], separators=(",", ":")),
                "zone": zone.key,
                "month": key,
                "hour": hour_key(_month_start(year, month, zone)),
                "dimensions": dict(doc["dimensions"]),
                "m": {},
            }
        for slot, entry in doc["m"].items():
            mine = (
                into["m"]
                .setdefault(entry["metric"], {})
                .setdefault(slot, {"extra": entry["extra"], "count": 0, "amount": 0.0})
            )
            mine["count"] += entry["count"]
            mine["amount"] += entry["amount"]
    return list(documents.values())


def _add_month(into: Document, stored: Document) -> None:
    for metric, slots in stored["m"].items():
        for slot, entry in slots.items():
            mine = (
                into["m"]
                .setdefault(metric, {})
                .setdefault(slot, {**entry, "count": 0, "amount": 0.0})
            )
            mine["count"] += entry["count"]
            mine["amount"] += entry["amount"]


def gauge_key(place: OpenPlace) -> str:
    return _json_text(list(place))


_DUE = "|"
"""Between the received day and the SLA-due hour in a gauge document's `awaiting` keys."""


def gauge_document(gauge: OpenLeads, *, past_due_before: str = "") -> Document:
    """The stored gauge of one place: counts by day (and deadline) nested in it, so the
    open-lead gauge is one document per place, however many leads are open there; the
    deadlines in hours before `past_due_before` folded into `PAST_DUE` (none when "")."""
    awaiting = fold_past_due(gauge.awaiting, past_due_before) if past_due_before else gauge.awaiting
    return {
        "_id": gauge_key(gauge.place),
        "key": gauge.place._asdict(),
        "count": gauge.count,
        "received": dict(gauge.received),
        "touched": dict(gauge.touched),
        "awaiting": {f"{day}{_DUE}{hour}": n for (day, hour), n in awaiting.items()},
    }


def kept_key(key: OpenKey, kept: Collection[str]) -> OpenKey:
    """`key` with the lead dimensions not in `kept` left empty."""
    dropped = {name: NONE for name in LEAD_DIMENSIONS if name not in kept}
    return key._replace(**dropped) if dropped else key


def kept_gauge(gauge: OpenLeads, kept: Collection[str]) -> OpenLeads:
    """`gauge` with the lead dimensions of its place not in `kept` left empty."""
    dropped = {name: NONE for name in LEAD_DIMENSIONS if name not in kept}
    if not dropped:
        return gauge
    return dataclasses.replace(gauge, place=gauge.place._replace(**dropped))


def gauge_set_documents(
    places: Iterable[OpenLeads], *, past_due_before: str = ""
) -> list[Document]:
    """The gauge added up per roll-up set (`ROLLUP_SETS`): one document per set and place
    in it (the set's lead dimensions and stage; the other lead dimensions "")."""
    sums = {dims: OpenGaugeSums() for dims in ROLLUP_SETS}
    for gauge in places:
        for dims, into in sums.items():
            into.add(kept_gauge(gauge, dims))
    documents: list[Document] = []
    for dims, into in sums.items():
        name = _SET_NAMES[dims]
        for gauge in into.places(open_only=False):
            document = gauge_document(gauge, past_due_before=past_due_before)
            document["_id"] = json.dumps([name, *gauge.place], separators=(",", ":"))
            document["set"] = name
            documents.append(document)
    return documents


def gauge_from_document(document: Document) -> OpenLeads:
    awaiting: dict[tuple[str, str], int] = {}
    for due, n in document.get("awaiting", {}).items():
        day, _, hour = due.partition(_DUE)
        awaiting[day, hour] = n
    return OpenLeads(
        OpenPlace(**document["key"]),
        document["count"],
        document.get("received", {}),
        document.get("touched", {}),
        awaiting,
    )


_FACT_TIMES = (
    "received_at",
    "first_contact_at",
    "last_assigned_at",
    "last_closed_at",
    "last_touch_at",
    "sla_due_at",
    "lost_at",
    "enrolled_at",
    "converted_at",
)


_FACT_TEXTS = ("channel", "source", "campaign", "pool", "current_pool", "rep", "sequence", "step")


def facts_text(facts: LeadFacts) -> str:
    """A lead's facts as ONE JSON text (field `f`), only the fields set, times in ISO 8601:
    the server writes, logs and reads a text as one field, where two dozen fields, a
    nested key and pending increments cost it a step each (a lead's facts cost it about
    twice a JSON one). Read by `_id` only."""
    data: dict[str, Any] = {}
    for name in _FACT_TEXTS:
        if (value := getattr(facts, name)) is not None:
            data[name] = value
    for name in _FACT_TIMES:
        if (at := getattr(facts, name)) is not None:
            data[name] = at
    if facts.is_test:
        data["is_test"] = True
    if facts.erased:
        data["erased"] = True
    if facts.reached:
        data["reached"] = dict(facts.reached)
    if facts.pending:
        data["pending"] = [pending_entry(increment) for increment in facts.pending]
    if facts.open_key is not None:
        data["open_key"] = _OPEN_KEY_VALUES(facts.open_key)
    return _data_text(data)


def facts_from_document(document: Document) -> LeadFacts:
    if (text := document.get("f")) is None:
        return _facts_from_fields(document)
    data = orjson.loads(text)
    parse = datetime.fromisoformat
    values: dict[str, Any] = {name: data.get(name) for name in _FACT_TEXTS}
    for name in _FACT_TIMES:
        values[name] = None if (at := data.get(name)) is None else parse(at)
    open_key = data.get("open_key")
    return LeadFacts(
        lead_id=document["_id"],
        is_test=data.get("is_test", False),
        erased=data.get("erased", False),
        reached={stage: parse(at) for stage, at in data.get("reached", {}).items()},
        pending=tuple(pending_increment(entry) for entry in data.get("pending", ())),
        open_key=None if open_key is None else OpenKey(*open_key),
        **values,
    )


def _facts_from_fields(document: Document) -> LeadFacts:
    """Facts as an older analytics stored them: one field each."""
    values = {name: document.get(name) for name in _FACT_TIMES}
    open_key = document.get("open_key")
    return LeadFacts(
        lead_id=document["_id"],
        channel=document.get("channel"),
        source=document.get("source"),
        campaign=document.get("campaign"),
        pool=document.get("pool"),
        current_pool=document.get("current_pool"),
        rep=document.get("rep"),
        is_test=bool(document.get("is_test", False)),
        erased=bool(document.get("erased", False)),
        reached=dict(document.get("reached") or {}),
        sequence=document.get("sequence"),
        step=document.get("step"),
        pending=tuple(pending_increment(entry) for entry in document.get("pending") or ()),
        open_key=None if open_key is None else OpenKey(**open_key),
        **values,
    )


def campaign_document(campaign: Campaign) -> Document:
    document: dict[str, Any] = dataclasses.asdict(campaign)
    document["_id"] = document["campaign_id"]
    return document


def campaign_from_document(document: Document) -> Campaign:
    return Campaign(**{field.name: document[field.name] for field in dataclasses.fields(Campaign)})
