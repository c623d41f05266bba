"""Persistence of notifications, in assignment's database.

- `notifications`: one document per delivery (`_id` = delivery id: the same notice through
  the same channel is one document however often the event is read). Its status is what a
  manager sees (`pending`, `sent`, `failed` with the last error, `cancelled`).
- `notification_feed`: the entries of every person's live stream, numbered in commit order
  (`_id` from the `notification_counters` document `feed`, taken once per transaction, so
  a stream on any replica reads them in the order they were committed). Kept a few days.
- The delivery jobs themselves are due-work items of kind `notify` (chassis), scheduled in
  the same transaction as the documents above.
- A batch of consumed events waits for planning as one due-work item of kind `notify-plan`
  (the events in its payload): the Kafka handler writes that one item and nothing else, so
  planning never slows routing down. `notification_inbox` remembers the events planned
  (a redelivered batch is planned once).
- People and their preferences are read from `reps` (a manager is a rep others name as
  their `manager_id`), pools' managers from `pools`, the owners of leads with a repeat
  inquiry from `leads`: the workflow's own collections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Protocol, TypeVar

from pydantic import Field, TypeAdapter
from pymongo import ASCENDING, DESCENDING, ReplaceOne, ReturnDocument, UpdateOne

from leadflow.chassis.duework import ClaimedWork, DueWork, DueWorkStore
from leadflow.chassis.store import Collection as MongoCollection
from leadflow.chassis.store import Database, Document, EventLedger, Session, find_in
from services.assignment.notifications.rules import (
    Delivery,
    DeliveryStatus,
    FeedEntry,
    LeadOwner,
    Notice,
    NoticeKind,
    NotificationPlan,
    Person,
    PlannedEvent,
    Preferences,
)
from services.assignment.rules import OPEN_STATUSES
from shared.events import Event

T = TypeVar("T")

NOTIFY: Final = "notify"
"""The due-work kind of delivery jobs."""
NOTIFY_PLAN: Final = "notify-plan"
"""The due-work kind of a batch of events waiting to be planned."""
DELIVERY_RETENTION: Final = timedelta(days=30)
"""How long a delivery's record (sent, failed, cancelled) is kept for managers to look at."""
PLAN_CHUNK: Final = 100
"""Most events per `notify-plan` item (a planning transaction writes about 6 documents per
event)."""
PLANNED_RETENTION: Final = timedelta(days=8)
"""How long a planned event id is remembered: longer than the topics keep events."""
_EVENTS: TypeAdapter[list[PlannedEvent]] = TypeAdapter(
    list[Annotated[PlannedEvent, Field(discriminator="event_type")]]
)
_OPEN: Final = frozenset(status.value for status in OPEN_STATUSES)
FEED_RETENTION: Final = timedelta(days=3)
"""How long a stream entry is kept: a client reconnecting with `Last-Event-ID` within this
long misses nothing."""
_FEED_COUNTER: Final = "feed"


@dataclass(frozen=True, slots=True)
class StoredDelivery:
    delivery: Delivery
    status: DeliveryStatus
    attempts: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one delivery attempt ended."""

    claimed: ClaimedWork
    error: str | None = None
    permanent: bool = False
    retry_at: datetime | None = None
    """When a temporary failure is tried again; None: it was the last attempt."""


@dataclass(frozen=True, slots=True)
class NotificationQuery:
    status: DeliveryStatus | None = None
    person_ids: Collection[str] | None = None
    lead_id: str | None = None
    limit: int = 50


class NotificationsInTransaction(Protocol):
    """What planning reads and writes inside one transaction."""

    async def people(self, person_ids: Collection[str]) -> dict[str, Person]: ...
    async def pool_managers(self, pool_ids: Collection[str]) -> dict[str, tuple[str, ...]]:
        """Who manages each pool: its `manager_id`, else its members' managers."""
        ...

    async def lead_owners(self, lead_ids: Collection[str]) -> dict[str, LeadOwner]:
        """The rep holding each of these leads that is open (one query)."""
        ...

    async def record(self, plan: NotificationPlan, now: datetime) -> None:
        """Store the plan's stream entries, delivery documents and jobs; cancel the jobs
        it made moot."""
        ...


BatchWork = Callable[[NotificationsInTransaction, list[Event]], Awaitable[T]]


class NotificationStore(Protocol):
    async def ensure_indexes(self) -> None: ...
    async def enqueue(self, events: Sequence[Event], now: datetime) -> None:
        """Keep a consumed batch for planning: one due-work item, no transaction."""
        ...

    def queued_events(self, claimed: Sequence[ClaimedWork]) -> list[Event]:
        """The events of claimed `notify-plan` items, in the order they were consumed."""
        ...

    async def plan_batch(
        self, events: Sequence[Event], work: BatchWork[T], *, finish: Sequence[ClaimedWork] = ()
    ) -> T | None:
        """Run `work` on the events not planned before, in one transaction that remembers
        them and finishes the `notify-plan` items they came in. None when every one was
        planned before."""
        ...

    def in_transaction(self, session: Session) -> NotificationsInTransaction:
        """Planning inside another use case's transaction (notices no event carries)."""
        ...

    async def people(self, person_ids: Collection[str]) -> dict[str, Person]: ...
    async def deliveries(self, delivery_ids: Collection[str]) -> dict[str, StoredDelivery]: ...
    async def settle(
        self, outcomes: Sequence[Outcome], feed: Sequence[FeedEntry], now: datetime
    ) -> None:
        """Record how each attempt ended (and the stream entries delivered). Jobs that are
        done (sent, or failed for good) are finished in the same transaction (`LeaseLost`
        if another replica has them); the others are given back to be tried again at
        their `retry_at`."""
        ...

    async def feed_after(
        self, position: int, *, person_id: str | None = None, limit: int = 500
    ) -> list[tuple[int, FeedEntry]]:
        """Stream entries after `position`, in commit order (of one person, or everyone's)."""
        ...

    async def feed_position(self) -> int:
        """The number of the last stream entry committed."""
        ...

    async def list_notifications(self, query: NotificationQuery) -> list[Document]: ...


class MongoNotificationStore:
    def __init__(self, database: Database, ledger: EventLedger, due_work: DueWorkStore) -> None:
        self._ledger = ledger
        self._due_work = due_work
        self._notifications: MongoCollection = database["notifications"]
        self._feed: MongoCollection = database["notification_feed"]
        self._counters: MongoCollection = database["notification_counters"]
        self._reps: MongoCollection = database["reps"]
        self._pools: MongoCollection = database["pools"]
        self._leads: MongoCollection = database["leads"]
        self._planned: MongoCollection = database["notification_inbox"]

    async def ensure_indexes(self) -> None:
        await self._notifications.create_index(
            [("status", ASCENDING), ("updated_at", DESCENDING)], name="by_status"
        )
        await self._notifications.create_index(
            [("person_id", ASCENDING), ("updated_at", DESCENDING)], name="by_person"
        )
        await self._notifications.create_index(
            "created_at",
            name="delivery_ttl",
            expireAfterSeconds=int(DELIVERY_RETENTION.total_seconds()),
        )
        await self._feed.create_index([("person_id", ASCENDING), ("_id", ASCENDING)])
        await self._feed.create_index(
            "recorded_at",
            name="feed_ttl",
            expireAfterSeconds=int(FEED_RETENTION.total_seconds()),
        )
        await self._planned.create_index(
            "planned_at",
            name="planned_ttl",
            expireAfterSeconds=int(PLANNED_RETENTION.total_seconds()),
        )
        await self._due_work.ensure_indexes()

    async def enqueue(self, events: Sequence[Event], now: datetime) -> None:
        if not events:
            return
        # In chunks, so a planning transaction stays small whatever the consumer's batch;
        # each keyed by its first event: a redelivered batch replaces its own items if they
        # still wait (and the planner's inbox drops what was planned).
        chunks = [events[i : i + PLAN_CHUNK] for i in range(0, len(events), PLAN_CHUNK)]
        await self._due_work.schedule(
            [
                DueWork(
                    f"plan:{chunk[0].event_id}:{len(chunk)}",
                    NOTIFY_PLAN,
                    now,
                    {"events": [event.model_dump(mode="json") for event in chunk]},
                )
                for chunk in chunks
            ]
        )

    def queued_events(self, claimed: Sequence[ClaimedWork]) -> list[Event]:
        ordered = sorted(claimed, key=lambda c: (c.work.due_at, c.work.key))
        return [
            event
            for item in ordered
            for event in _EVENTS.validate_python(item.work.payload["events"])
        ]

    async def plan_batch(
        self, events: Sequence[Event], work: BatchWork[T], *, finish: Sequence[ClaimedWork] = ()
    ) -> T | None:
        async def transaction(session: Session) -> tuple[T | None, list[Event]]:
            fresh = await self._unplanned(events, session)
            result = await work(self.in_transaction(session), fresh) if fresh else None
            if fresh:
                await self._planned.insert_many(
                    [{"_id": str(e.event_id), "planned_at": _now_of(fresh)} for e in fresh],
                    session=session,
                )
            if finish:
                await self._due_work.finish(finish, session=session)
            return result, []

        return await self._ledger.commit(transaction)

    async def _unplanned(self, events: Sequence[Event], session: Session) -> list[Event]:
        ids = [str(event.event_id) for event in events]
        seen = {
            doc["_id"]
            for doc in await find_in(
                self._planned, "_id", ids, session=session, projection={"_id": 1}
            )
        }
        fresh: list[Event] = []
        for event in events:
            if (event_id := str(event.event_id)) not in seen:
                seen.add(event_id)
                fresh.append(event)
        return fresh

    def in_transaction(self, session: Session) -> NotificationsInTransaction:
        return _MongoPlanning(self, session)

    async def people(self, person_ids: Collection[str]) -> dict[str, Person]:
        return await _MongoPlanning(self, None).people(person_ids)

    async def deliveries(self, delivery_ids: Collection[str]) -> dict[str, StoredDelivery]:
        documents = await find_in(self._notifications, "_id", delivery_ids)
        return {doc["_id"]: stored_delivery_from_document(doc) for doc in documents}

    async def settle(
        self, outcomes: Sequence[Outcome], feed: Sequence[FeedEntry], now: datetime
    ) -> None:
        done = [o for o in outcomes if o.error is None or o.permanent or o.retry_at is None]
        again = [o for o in outcomes if o not in done]
        updates = [_settled_update(o, now) for o in outcomes]

        async def work(session: Session) -> tuple[None, list[Event]]:
            if updates:
                await self._notifications.bulk_write(updates, ordered=False, session=session)
            await _append_feed(self, feed, now, session)
            if done:
                await self._due_work.finish([o.claimed for o in done], session=session)
            return None, []

        await self._ledger.commit(work)
        # Given back after the commit: if this fails, the lease lapses and they are claimed
        # again anyway (one attempt not counted).
        for outcome in again:
            assert outcome.retry_at is not None
            await self._due_work.release([outcome.claimed], retry_at=outcome.retry_at)

    async def feed_after(
        self, position: int, *, person_id: str | None = None, limit: int = 500
    ) -> list[tuple[int, FeedEntry]]:
        query: Document = {"_id": {"$gt": position}}
        if person_id is not None:
            query["person_id"] = person_id
        cursor = self._feed.find(query).sort("_id", ASCENDING).limit(limit)
        return [(doc["_id"], feed_entry_from_document(doc)) async for doc in cursor]

    async def feed_position(self) -> int:
        doc = await self._counters.find_one({"_id": _FEED_COUNTER})
        return int(doc["last"]) if doc else 0

    async def list_notifications(self, query: NotificationQuery) -> list[Document]:
        selector: Document = {}
        if query.status is not None:
            selector["status"] = query.status.value
        if query.person_ids is not None:
            selector["person_id"] = {"$in": list(query.person_ids)}
        if query.lead_id is not None:
            selector["lead_id"] = query.lead_id
        cursor = (
            self._notifications.find(selector)
            .sort([("updated_at", DESCENDING), ("_id", ASCENDING)])
            .limit(query.limit)
        )
        return [doc async for doc in cursor]


class _MongoPlanning:
    def __init__(self, store: MongoNotificationStore, session: Session | None) -> None:
        self._store = store
        self._session = session

    async def people(self, person_ids: Collection[str]) -> dict[str, Person]:
        if not person_ids:
            return {}
        documents = await find_in(
            self._store._reps,
            "_id",
            person_ids,
            session=self._session,
            projection={"name": 1, "manager_id": 1, "notify": 1, "email": 1},
        )
        return {doc["_id"]: person_from_document(doc) for doc in documents}

    async def pool_managers(self, pool_ids: Collection[str]) -> dict[str, tuple[str, ...]]:
        if not pool_ids:
            return {}
        pools = await find_in(
            self._store._pools,
            "_id",
            pool_ids,
            session=self._session,
            projection={"manager_id": 1, "rep_ids": 1},
        )
        members = {rep_id for pool in pools for rep_id in pool.get("rep_ids") or ()}
        managers_of = {
            doc["_id"]: doc.get("manager_id")
            for doc in await find_in(
                self._store._reps,
                "_id",
                members,
                session=self._session,
                projection={"manager_id": 1},
            )
        }
        return {pool["_id"]: pool_managers_of(pool, managers_of) for pool in pools}

    async def lead_owners(self, lead_ids: Collection[str]) -> dict[str, LeadOwner]:
        if not lead_ids:
            return {}
        documents = await find_in(
            self._store._leads,
            "_id",
            lead_ids,
            session=self._session,
            projection={"status": 1, "rep_id": 1, "assigned_at": 1},
        )
        return {doc["_id"]: owner for doc in documents if (owner := lead_owner_of(doc)) is not None}

    async def record(self, plan: NotificationPlan, now: datetime) -> None:
        store, session = self._store, self._session
        await _append_feed(store, plan.feed, now, session)
        if plan.cancelled:
            await store._due_work.cancel(plan.cancelled, session=session)
            await store._notifications.update_many(
                {"_id": {"$in": plan.cancelled}, "status": DeliveryStatus.PENDING.value},
                {"$set": {"status": DeliveryStatus.CANCELLED.value, "updated_at": now}},
                session=session,
            )
        if plan.deliveries:
            # Deliveries come from events the inbox has not seen (or from a notice whose
            # source id is new), so they are inserted: an upsert costs SecantusDB several
            # times an insert. Only an SLA warning is replaced, by the lead's next assignment.
            replaced = [d for d in plan.deliveries if d.delivery_id.startswith("sla-warning:")]
            inserted = [d for d in plan.deliveries if d not in replaced]
            if inserted:
                await store._notifications.insert_many(
                    [{"_id": d.delivery_id, **delivery_document(d, now)} for d in inserted],
                    session=session,
                )
            if replaced:
                await store._notifications.bulk_write(
                    [
                        ReplaceOne({"_id": d.delivery_id}, delivery_document(d, now), upsert=True)
                        for d in replaced
                    ],
                    session=session,
                )
            await store._due_work.schedule(
                [DueWork(d.delivery_id, NOTIFY, d.due_at) for d in plan.deliveries],
                session=session,
            )


async def _append_feed(
    store: MongoNotificationStore,
    entries: Sequence[FeedEntry],
    now: datetime,
    session: Session | None,
) -> None:
    """Number `entries` in commit order: one counter increment per transaction, which
    concurrent writers conflict on, so a higher number is never visible before a lower."""
    if not entries:
        return
    counter = await store._counters.find_one_and_update(
        {"_id": _FEED_COUNTER},
        {"$inc": {"last": len(entries)}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
        session=session,
    )
    first = int(counter["last"]) - len(entries) + 1 if counter else 1
    await store._feed.insert_many(
        [feed_document(first + i, e, now) for i, e in enumerate(entries)], session=session
    )


def _now_of(events: Sequence[Event]) -> datetime:
    # The TTL counts from the newest event: an id is kept as long as its topic may
    # redeliver it, whatever the planner's clock.
    return max(event.occurred_at for event in events)


def _settled_update(outcome: Outcome, now: datetime) -> UpdateOne:
    key = {"_id": outcome.claimed.work.key}
    attempts = outcome.claimed.attempts + 1
    if outcome.error is None:
        fields: Document = {"status": DeliveryStatus.SENT.value, "sent_at": now}
    elif outcome.permanent or outcome.retry_at is None:
        fields = {"status": DeliveryStatus.FAILED.value, "last_error": outcome.error}
    else:
        fields = {
            "status": DeliveryStatus.PENDING.value,
            "last_error": outcome.error,
            "next_attempt_at": outcome.retry_at,
        }
    return UpdateOne(key, {"$set": {**fields, "attempts": attempts, "updated_at": now}})


# --- documents ------------------------------------------------------------------------------


def pool_managers_of(
    pool: Mapping[str, Any], managers_of: Mapping[str, str | None]
) -> tuple[str, ...]:
    if pool.get("manager_id"):
        return (pool["manager_id"],)
    members = pool.get("rep_ids") or ()
    return tuple(dict.fromkeys(m for r in members if (m := managers_of.get(r))))


def lead_owner_of(doc: Mapping[str, Any]) -> LeadOwner | None:
    """Who holds the lead, when it is open (a lead document of the workflow's)."""
    if doc.get("status") not in _OPEN or not doc.get("rep_id"):
        return None
    return LeadOwner(doc["rep_id"], doc.get("assigned_at"))


def person_from_document(doc: Mapping[str, Any]) -> Person:
    notify = Preferences.from_document(doc.get("notify"))
    if notify.email is None and doc.get("email"):
        # "email" chosen without a notification address: the rep's own address.
        notify = dataclasses.replace(notify, email=doc["email"])
    return Person(
        person_id=doc["_id"],
        name=doc.get("name") or "",
        manager_id=doc.get("manager_id"),
        notify=notify,
    )


def delivery_document(delivery: Delivery, now: datetime) -> Document:
    notice = delivery.notice
    return {
        "channel": delivery.channel,
        "notice_id": notice.notice_id,
        "kind": notice.kind.value,
        "person_id": notice.person_id,
        "lead_id": notice.lead_id,
        "at": notice.at,
        "text": notice.text,
        "details": dict(notice.details),
        "due_at": delivery.due_at,
        "status": DeliveryStatus.PENDING.value,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


def stored_delivery_from_document(doc: Mapping[str, Any]) -> StoredDelivery:
    notice = Notice(
        notice_id=doc["notice_id"],
        kind=NoticeKind(doc["kind"]),
        person_id=doc["person_id"],
        lead_id=doc["lead_id"],
        at=doc["at"],
        text=doc["text"],
        details=doc.get("details") or {},
    )
    return StoredDelivery(
        Delivery(doc["_id"], doc["channel"], notice, doc["due_at"]),
        DeliveryStatus(doc["status"]),
        int(doc.get("attempts", 0)),
    )


def feed_document(number: int, entry: FeedEntry, now: datetime) -> Document:
    return {
        "_id": number,
        "person_id": entry.person_id,
        "kind": entry.kind,
        "lead_id": entry.lead_id,
        "at": entry.at,
        "data": dict(entry.data),
        "recorded_at": now,
    }


def feed_entry_from_document(doc: Mapping[str, Any]) -> FeedEntry:
    return FeedEntry(doc["person_id"], doc["kind"], doc["lead_id"], doc["at"], doc["data"])


def notification_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A delivery as the API shows it."""
    return {
        "delivery_id": doc["_id"],
        "channel": doc["channel"],
        "kind": doc["kind"],
        "person_id": doc["person_id"],
        "lead_id": doc["lead_id"],
        "text": doc["text"],
        "status": doc["status"],
        "attempts": doc.get("attempts", 0),
        "last_error": doc.get("last_error"),
        "due_at": doc["due_at"],
        "sent_at": doc.get("sent_at"),
        "updated_at": doc["updated_at"],
    }
