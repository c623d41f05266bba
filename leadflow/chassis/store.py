"""MongoDB plumbing every service needs: client, transactional outbox, inbox, leases, API keys.

The only chassis module that imports the driver. A service's own `store.py` builds its
collections on the client made here and commits through `EventLedger`:

- `commit(work)` runs a change and stores the events it implies (outbox) in one transaction;
- `commit_batch(events, work)` does the same for a batch of consumed events: one inbox query
  drops the ones handled before, `work` sees only the fresh ones, and their ids are recorded
  in the same transaction, so a redelivered or replayed event changes nothing.

Outbox records carry a per-service sequence number taken in the committing transaction, so
the relay publishes in commit order whichever replica committed them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from collections.abc import Collection as Collection_
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pymongo
from pymongo import ASCENDING, AsyncMongoClient, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    PyMongoError,
    WTimeoutError,
)

from leadflow.chassis.duework import DEAD as DUE_DEAD
from leadflow.chassis.duework import PENDING as DUE_PENDING
from leadflow.chassis.duework import ClaimedWork, DueWork, LeaseLost, ParkedWork
from shared.events import Event
from shared.topics import topic_for

Document = dict[str, Any]
Session = AsyncClientSession
Collection = AsyncCollection[Document]
Database = AsyncDatabase[Document]
T = TypeVar("T")
E = TypeVar("E", bound=Event)

__all__ = [
    "DEPENDENCY_DOWN",
    "IN_CHUNK",
    "ApiKeyStore",
    "Collection",
    "Database",
    "Document",
    "DuplicateKeyError",
    "EventLedger",
    "LeaseStore",
    "LogPosition",
    "MongoDueWork",
    "OutboxRecord",
    "PyMongoError",
    "Session",
    "connect",
    "find_in",
    "ping",
]

# Errors that mean "the database is unreachable", not "this request or event is wrong".
DEPENDENCY_DOWN: tuple[type[Exception], ...] = (ConnectionFailure, ExecutionTimeout, WTimeoutError)

PUBLISHED_RETENTION = timedelta(days=7)
"""How long a published outbox record is kept: the window a lost Kafka log is refilled from."""
_RELAY_POSITION = "relay"
"""The document (among the log positions) holding the last sequence number published."""
_BATCHES_KEPT = 1000
"""Where the last relay batches began, per partition: enough to find what a lost log held."""
IN_CHUNK = 25
"""Ids per `$in` query: the local MongoDB-wire server's cost of `$in` grows with the square
of the list (500 ids: 270 ms; 20 queries of 25: 60 ms), a real MongoDB's does not care."""


def connect(url: str, *, app_name: str) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(
        url,
        tz_aware=True,
        uuidRepresentation="standard",
        appname=app_name,
        serverSelectionTimeoutMS=5000,
    )


async def ping(client: AsyncMongoClient[Document]) -> bool:
    try:
        await client.admin.command("ping")
    except PyMongoError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    record_id: object
    topic: str
    key: str
    event_id: str
    event_type: str
    payload: bytes
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class LogPosition:
    """Where Kafka put a published record: its partition and offset (and which event it
    was, so a check can tell the record from another one written over it)."""

    topic: str
    partition: int
    offset: int
    event_id: str | None = None
    sequence: int | None = None
    """The outbox sequence number of the record published there."""


Work = Callable[[Session], Awaitable[tuple[T, Sequence[Event]]]]
BatchWork = Callable[[Session, list[E]], Awaitable[tuple[T, Sequence[Event]]]]


class EventLedger:
    """Outbox (events to publish) and inbox (events already consumed) of one database."""

    def __init__(
        self,
        client: AsyncMongoClient[Document],
        database: Database,
        *,
        handled_retention: timedelta,
        clock: Callable[[], datetime],
        transaction_timeout_s: float = 15.0,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._transaction_timeout_s = transaction_timeout_s
        self._outbox: Collection = database["outbox"]
        self._sequence: Collection = database["outbox_sequence"]
        self._positions: Collection = database["outbox_log_positions"]
        self._inbox: Collection = database["inbox"]
        self._handled_retention = handled_retention
        self._clock = clock
        self._on_commit = on_commit
        self._through: int | None = None  # the relay's position, while this replica relays
        # Every transaction that publishes takes the outbox sequence counter, so two of this
        # replica's transactions at once conflict and one is redone after a back-off (with
        # eight requests at once, each took seconds). They take turns here instead: only
        # other replicas' transactions still conflict.
        self._turn = asyncio.Lock()

    @property
    def handled_retention(self) -> timedelta:
        """How long a handled event id is remembered (longer than any topic's retention)."""
        return self._handled_retention

    async def ensure_indexes(self) -> None:
        await self._outbox.create_index("sequence", name="commit_order")
        await self._inbox.create_index(
            "handled_at",
            name="handled_ttl",
            expireAfterSeconds=int(self._handled_retention.total_seconds()),
        )
        await self._number_legacy_records()

    async def _number_legacy_records(self) -> None:
        """Records an older version left unpublished carry no sequence: number them, in
        the order they were written, so the relay publishes them."""
        legacy = [
            doc["_id"]
            async for doc in self._outbox.find(
                {"sequence": {"$exists": False}, "published_at": None}, {"_id": 1}
            ).sort("_id", ASCENDING)
        ]
        if not legacy:
            return
        counter = await self._sequence.find_one_and_update(
            {"_id": "outbox"},
            {"$inc": {"last": len(legacy)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        first = int(counter["last"]) - len(legacy) + 1 if counter else 1
        await self._outbox.bulk_write(
            [
                UpdateOne({"_id": record_id}, {"$set": {"sequence": first + i}})
                for i, record_id in enumerate(legacy)
            ]
        )

    async def commit(self, work: Work[T], *, publishes: bool = True) -> T:
        """Run `work` in a transaction and store the events it returns in the outbox.

        `publishes=False`: `work` never returns events (it must not; ValueError if it
        does), so the transaction takes no outbox sequence and need not wait for this
        replica's turn: such transactions (on disjoint documents) run at once."""

        async def transaction(session: Session) -> T:
            result, events = await work(session)
            self._check_publishes(publishes, events)
            await self._append(events, session)
            return result

        return await self._run(transaction, takes_turn=publishes)

    async def commit_batch(
        self,
        consumed: Sequence[E],
        work: BatchWork[E, T],
        *,
        recorded_in: Collection | None = None,
        publishes: bool = True,
    ) -> T | None:
        """Handle a batch of consumed events in one transaction.

        Events handled before (and repeats within the batch) are dropped with one inbox
        query; `work` gets the rest in their original order, and their ids are recorded
        with the change. Returns None, without a transaction's writes, when nothing is new.

        A service whose `work` itself stores every consumed event under its id (an event
        store) passes that collection as `recorded_in`: it serves as the inbox, and no
        separate inbox record is written. `publishes=False`: as for `commit`.
        """
        inbox = self._inbox if recorded_in is None else recorded_in

        async def transaction(session: Session) -> T | None:
            fresh = await _unhandled(inbox, consumed, session)
            if not fresh:
                return None
            result, events = await work(session, fresh)
            self._check_publishes(publishes, events)
            if recorded_in is None:
                now = self._clock()
                await self._inbox.insert_many(
                    [
                        {"_id": str(e.event_id), "event_type": e.event_type, "handled_at": now}
                        for e in fresh
                    ],
                    session=session,
                )
            await self._append(events, session)
            return result

        return await self._run(transaction, takes_turn=publishes)

    @staticmethod
    def _check_publishes(publishes: bool, events: Sequence[Event]) -> None:
        if events and not publishes:
            raise ValueError(
                f"a transaction committed with publishes=False returned {len(events)} events"
            )

    async def _run(self, transaction: Callable[[Session], Awaitable[T]], *, takes_turn: bool) -> T:
        async with self._turn_if(takes_turn):
            with pymongo.timeout(self._transaction_timeout_s):
                async with self._client.start_session() as session:
                    result = await session.with_transaction(transaction)
        self._on_commit()
        return result

    @contextlib.asynccontextmanager
    async def _turn_if(self, takes_turn: bool) -> AsyncIterator[None]:
        """This replica's turn to commit, for a transaction that publishes.

        The wait for the turn is bounded, and so is the transaction (in `_run`): without a
        bound it keeps retrying for two minutes while the database is unreachable, holding
        a request or a consumer batch all that time."""
        if not takes_turn:
            yield
            return
        try:
            async with asyncio.timeout(self._transaction_timeout_s):
                await self._turn.acquire()
        except TimeoutError as error:
            raise ExecutionTimeout(
                f"no turn to commit within {self._transaction_timeout_s} s"
            ) from error
        try:
            yield
        finally:
            self._turn.release()

    async def _append(self, events: Sequence[Event], session: Session) -> None:
        if not events:
            return
        # One increment per transaction: concurrent committers conflict on this document,
        # so sequence order is commit order.
        counter = await self._sequence.find_one_and_update(
            {"_id": "outbox"},
            {"$inc": {"last": len(events)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        first = int(counter["last"]) - len(events) + 1 if counter else 1
        await self._outbox.insert_many(
            [outbox_document(e, first + i) for i, e in enumerate(events)], session=session
        )

    async def relayed_through(self) -> int:
        """The sequence number of the last record the relay published.

        Read once and then kept: only the relay holding the lease moves it, and a relay
        that (re)takes the lease calls `reload_position` first.
        """
        if self._through is None:
            doc = await self._positions.find_one({"_id": _RELAY_POSITION})
            self._through = int(doc["sequence"]) if doc else 0
        return self._through

    def reload_position(self) -> None:
        """Another replica may have relayed meanwhile: read the position again."""
        self._through = None

    async def pending(self, limit: int) -> list[OutboxRecord]:
        """The next records to publish, in commit order."""
        through = await self.relayed_through()
        cursor = (
            self._outbox.find({"sequence": {"$gt": through}})
            .sort("sequence", ASCENDING)
            .limit(limit)
        )
        return [
            OutboxRecord(
                record_id=doc["_id"],
                topic=doc["topic"],
                key=doc["key"],
                event_id=doc["event_id"],
                event_type=doc["event_type"],
                payload=bytes(doc["payload"]),
                sequence=doc["sequence"],
            )
            async for doc in cursor
        ]

    async def mark_published(
        self, published: Sequence[tuple[OutboxRecord, LogPosition | None]], now: datetime
    ) -> None:
        """Move the relay past `published` (they went out in order) and remember where
        Kafka put them: per partition the furthest record, and where each batch began.

        A few writes per batch, whatever its size: records are not marked one by one.
        """
        if not published:
            return
        through = published[-1][0].sequence
        first: dict[tuple[str, int], LogPosition] = {}
        for record, position in published:
            if position is not None:
                key = (position.topic, position.partition)
                first.setdefault(key, replace(position, sequence=record.sequence))
        furthest = {
            (p.topic, p.partition): p
            for p in furthest_positions(
                None if p is None else replace(p, sequence=r.sequence) for r, p in published
            )
        }
        # One write for the whole batch; only the relay holding the lease makes it.
        await self._positions.bulk_write(
            [
                UpdateOne(
                    {"_id": _RELAY_POSITION},
                    {"$set": {"sequence": through, "at": now}},
                    upsert=True,
                ),
                *(
                    UpdateOne(
                        {"_id": _partition_key(*key)},
                        {
                            "$set": {
                                "topic": p.topic,
                                "partition": p.partition,
                                "offset": p.offset,
                                "event_id": p.event_id,
                                "sequence": p.sequence,
                            },
                            "$push": {
                                "batches": {
                                    "$each": [
                                        {
                                            "offset": first[key].offset,
                                            "sequence": first[key].sequence,
                                        }
                                    ],
                                    "$slice": -_BATCHES_KEPT,
                                }
                            },
                        },
                        upsert=True,
                    )
                    for key, p in furthest.items()
                ),
            ],
            ordered=False,
        )
        self._through = through

    async def log_positions(self) -> list[LogPosition]:
        """The furthest record this service's relay published, per topic partition."""
        return [
            LogPosition(
                doc["topic"],
                doc["partition"],
                doc["offset"],
                doc.get("event_id"),
                doc.get("sequence"),
            )
            async for doc in self._positions.find({"topic": {"$exists": True}}, {"batches": 0})
        ]

    async def republish_from(self, topic: str, partition: int, offset: int) -> int:
        """The log lost what was at `offset` and after in one partition: move the relay
        back to the batch that put a record there, so everything from it is published
        again (other partitions' copies are dropped by their consumers).

        Returns how many records will be published again.
        """
        doc = await self._positions.find_one({"_id": _partition_key(topic, partition)})
        batches = (doc or {}).get("batches", [])
        before = [b["sequence"] for b in batches if b["offset"] <= offset]
        # The last batch that began at or before the lost offset; if none is remembered,
        # the oldest remembered batch (a few more duplicates, nothing missed).
        start = before[-1] if before else (batches[0]["sequence"] if batches else 1)
        through = await self.relayed_through()
        if start - 1 < through:
            await self._positions.update_one(
                {"_id": _RELAY_POSITION}, {"$set": {"sequence": start - 1}}, upsert=True
            )
            self._through = start - 1
        await self._positions.update_one(
            {"_id": _partition_key(topic, partition)},
            {"$set": {"offset": offset - 1, "event_id": None, "batches": []}},
        )
        return await self._outbox.count_documents({"sequence": {"$gte": start, "$lte": through}})

    async def forget_published(self, older_than: datetime) -> int:
        """Drop published records older than `older_than` (the window a lost log is refilled
        from); records not yet published are kept however old."""
        through = await self.relayed_through()
        result = await self._outbox.delete_many(
            {"sequence": {"$lte": through}, "created_at": {"$lt": older_than}}
        )
        return result.deleted_count

    async def backlog(self) -> int:
        through = await self.relayed_through()
        return await self._outbox.count_documents({"sequence": {"$gt": through}})


def outbox_document(event: Event, sequence: int) -> Document:
    return {
        "sequence": sequence,
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "topic": topic_for(event),
        "key": event.lead_id,
        "payload": event.model_dump_json().encode(),
        "created_at": event.occurred_at,
    }


def _partition_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def furthest_positions(positions: Iterable[LogPosition | None]) -> list[LogPosition]:
    """The furthest of `positions` in each topic partition."""
    furthest: dict[tuple[str, int], LogPosition] = {}
    for position in positions:
        if position is None:
            continue
        key = (position.topic, position.partition)
        if key not in furthest or furthest[key].offset < position.offset:
            furthest[key] = position
    return list(furthest.values())


_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)


class LeaseStore:
    """Named leases: at most one holder at a time, taken over once the holder stops renewing.

    A lease is one document `{_id: name, holder, expires_at}`; taking or renewing it is one
    conditional upsert, so two replicas racing for it cannot both win.
    """

    def __init__(self, database: Database) -> None:
        self._leases: Collection = database["leases"]

    async def take(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Take or renew `name` for `holder` until `now + ttl`; False if another holds it."""
        try:
            doc = await self._leases.find_one_and_update(
                {"_id": name, "$or": [{"holder": holder}, {"expires_at": {"$lte": now}}]},
                {"$set": {"holder": holder, "expires_at": now + ttl, "renewed_at": now}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # the document exists and another holder's lease is still valid
        return doc is not None and doc.get("holder") == holder

    async def release(self, name: str, holder: str) -> None:
        await self._leases.update_one(
            {"_id": name, "holder": holder}, {"$set": {"expires_at": _LONG_AGO}}
        )

    async def holder(self, name: str) -> Document | None:
        return await self._leases.find_one({"_id": name})


class ApiKeyStore:
    """API keys, stored by the SHA-256 of the key; the key itself is never stored."""

    def __init__(self, database: Database) -> None:
        self._keys: Collection = database["api_keys"]

    async def find(self, key_hash: str) -> Document | None:
        return await self._keys.find_one({"_id": key_hash, "revoked_at": None})

    async def insert(self, document: Document) -> None:
        await self._keys.insert_one(document)

    async def list(self) -> list[Document]:
        return [doc async for doc in self._keys.find({}, {"_id": 0}).sort("created_at")]

    async def revoke(self, key_id: str, now: datetime) -> bool:
        result = await self._keys.update_one(
            {"key_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": now}}
        )
        return result.modified_count == 1


async def find_in(
    collection: Collection,
    field: str,
    values: Iterable[Any],
    *,
    session: Session | None = None,
    projection: Document | None = None,
    also: Document | None = None,
) -> list[Document]:
    """Documents whose `field` is one of `values` (and that match `also`), in chunks of
    `IN_CHUNK` values per query."""
    wanted = list(dict.fromkeys(values))
    found: list[Document] = []
    for start in range(0, len(wanted), IN_CHUNK):
        query = {field: {"$in": wanted[start : start + IN_CHUNK]}, **(also or {})}
        found.extend([doc async for doc in collection.find(query, projection, session=session)])
    return found


async def _unhandled(inbox: Collection, consumed: Sequence[E], session: Session) -> list[E]:
    """`consumed` without the events `inbox` holds, and without repeats, in order."""
    ids = (str(e.event_id) for e in consumed)
    seen = {
        doc["_id"]
        for doc in await find_in(inbox, "_id", ids, session=session, projection={"_id": 1})
    }
    fresh: list[E] = []
    for event in consumed:
        event_id = str(event.event_id)
        if event_id not in seen:
            seen.add(event_id)
            fresh.append(event)
    return fresh


class MongoDueWork:
    """Due work (`leadflow.chassis.duework`) in one collection: `{_id: key, kind, due_at,
    ready_at, status, attempts, token, payload}`.

    `ready_at` is when the item may next be claimed: its due time, then, while claimed, its
    lease's end (a lapsed lease makes it claimable again with no other write). Every query
    the runner makes pins `status` and `kind` and bounds `ready_at`, so it walks the index
    `(status, kind, ready_at)` — on SecantusDB only such "equalities then one range" filters
    use an index, and a sort is not pushed into it, so the windows are kept narrow.

    A claim is a few requests per kind, not one per item: the earliest claimable items
    (the last one's `ready_at` is the boundary), one `update_many` that claims everything
    still claimable before the boundary, updates by key (chunked) for the chosen items at
    the boundary, and a read of what this claim holds (all carry the same lease end). Each
    update is atomic per document, so a concurrent claim gets only what this one did not.
    The earliest claimable items are looked up `_PREFETCH` batches at a time and kept as
    hints until they run out, so a backlog is not read again for every batch. Each look-up
    reads only what it returns (about): SecantusDB reads every document in a range to sort
    it, so with an overdue backlog a plain `ready_at <= now` would read the whole backlog.
    A floor is kept per kind, the earliest `ready_at` that was claimable at the last look-up,
    and a look-up reads windows from the floor upwards, widened until enough items are found
    or `now` is reached (and, below the floor, the few items that became claimable there
    since: given back, or scheduled with a past due time).

    A finish deletes by key and token inside the caller's transaction: a delete that finds
    fewer items than it was given means a lost lease, and raises `LeaseLost`.
    """

    def __init__(self, database: Database, name: str = "due_work") -> None:
        self._client = database.client
        self._items: Collection = database[name]
        self._candidates: dict[str, tuple[datetime | None, list[tuple[datetime, str]]]] = {}
        """Per kind: when they were seen claimable, and the (ready_at, key) of the next
        items to claim, earliest first. Only hints: a claim re-checks each one."""
        self._floors: dict[str, tuple[datetime, timedelta]] = {}
        """Per kind: no item was claimable before this `ready_at` at the last look-up, and
        the span of `ready_at` that look-up's window needed (where the next one starts)."""

    async def ensure_indexes(self) -> None:
        await self._items.create_index(
            [("status", ASCENDING), ("kind", ASCENDING), ("ready_at", ASCENDING)],
            name="claimable",
        )

    async def schedule(self, items: Sequence[DueWork], *, session: Session | None = None) -> None:
        latest = {item.key: _due_document(item) for item in items}  # the last of a key wins
        if not latest:
            return
        # New keys are inserted (an upsert costs SecantusDB several times an insert), the
        # keys already stored are replaced.
        stored = {
            doc["_id"]
            for doc in await find_in(
                self._items, "_id", latest, session=session, projection={"_id": 1}
            )
        }
        fresh = [{"_id": key, **doc} for key, doc in latest.items() if key not in stored]
        replaced = [ReplaceOne({"_id": key}, latest[key], upsert=True) for key in stored]
        try:
            if fresh:
                await self._items.insert_many(fresh, ordered=False, session=session)
        except BulkWriteError:
            if session is not None:
                # A concurrent scheduler inserted one of these keys since the look-up. The
                # transaction is void now: the caller's retry finds the key and replaces it.
                raise
            replaced.extend(ReplaceOne({"_id": doc["_id"]}, doc, upsert=True) for doc in fresh)
        if replaced:
            await self._items.bulk_write(replaced, ordered=False, session=session)

    async def cancel(self, keys: Collection_[str], *, session: Session | None = None) -> None:
        wanted = list(dict.fromkeys(keys))
        for start in range(0, len(wanted), IN_CHUNK):
            await self._items.delete_many(
                {"_id": {"$in": wanted[start : start + IN_CHUNK]}}, session=session
            )

    async def claim(
        self,
        *,
        kinds: Collection_[str],
        now: datetime,
        limit: int,
        lease: timedelta,
        token: str,
    ) -> list[ClaimedWork]:
        now = _to_millis(now)
        until = _to_millis(now + lease)
        # Bounded: each round takes the next `limit` candidates; it only repeats when a
        # concurrent claim took every one of them.
        for _ in range(_PREFETCH + 2):
            await self._prefetch(kinds, now, limit)
            chosen = self._choose(kinds, now, limit)
            if not chosen:
                return []
            claimed = await self._claim_chosen(chosen, now, until, token)
            if claimed:
                claimed.sort(key=lambda c: (c.work.due_at, c.work.key))
                return claimed
        return []

    async def _prefetch(self, kinds: Collection_[str], now: datetime, limit: int) -> None:
        """Look up claimable items of the `kinds` whose candidates ran out: `_PREFETCH`
        batches' worth at once, as every look-up is a scan of its range."""
        for kind in kinds:
            seen_at, candidates = self._candidates.get(kind, (None, []))
            if candidates and seen_at is not None and seen_at <= now:
                continue
            found = await self._earliest_claimable(kind, now, limit * _PREFETCH)
            self._candidates[kind] = (now, found)

    async def _earliest_claimable(
        self, kind: str, now: datetime, wanted: int
    ) -> list[tuple[datetime, str]]:
        """The (ready_at, key) of the `wanted` earliest items of `kind` claimable at `now`,
        reading about as many documents as it returns (see the class's docstring)."""
        floor, span = self._floors.get(kind, (None, _FIRST_WINDOW))
        start = now if floor is None or floor > now else floor
        found: list[tuple[datetime, str]] = []
        # The first window also reads below the floor: only items that became claimable
        # there since the last look-up (given back, scheduled with a past due time), few.
        above: Document = {}
        reached, step = start, span
        # Bounded: each window is wider than the last, and the last one ends at `now`.
        while True:
            up_to = min(now, reached + step)
            window = await self._claimable(kind, {**above, "$lte": up_to}, wanted - len(found))
            found += window
            if len(found) >= wanted or up_to >= now:
                break
            # Widen by what the window held against what is still missing (4x at most).
            step *= min(4.0, max(1.25, 1.2 * (wanted - len(found)) / max(1, len(window))))
            above, reached = {"$gt": up_to}, up_to
        # Nothing was claimable before the first item found (or, with none, before `now`).
        self._floors[kind] = (
            found[0][0] if found else now,
            max((up_to - start) / 2, _FIRST_WINDOW),
        )
        return found

    async def _claimable(
        self, kind: str, ready_at: Document, limit: int
    ) -> list[tuple[datetime, str]]:
        cursor = (
            self._items.find(
                {"status": DUE_PENDING, "kind": kind, "ready_at": ready_at}, {"ready_at": 1}
            )
            .sort("ready_at", ASCENDING)
            .limit(limit)
        )
        return [(doc["ready_at"], doc["_id"]) async for doc in cursor]

    def _choose(
        self, kinds: Collection_[str], now: datetime, limit: int
    ) -> list[tuple[datetime, str, str]]:
        """The earliest `limit` candidates due by `now`, taken off the candidate lists."""
        merged = sorted(
            (ready_at, key, kind)
            for kind in kinds
            for ready_at, key in self._candidates.get(kind, (None, []))[1]
            if ready_at <= now
        )[:limit]
        taken = {key for _, key, _ in merged}
        for kind in kinds:
            seen_at, candidates = self._candidates.get(kind, (None, []))
            self._candidates[kind] = (seen_at, [c for c in candidates if c[1] not in taken])
        return merged

    async def _claim_chosen(
        self, chosen: list[tuple[datetime, str, str]], now: datetime, until: datetime, token: str
    ) -> list[ClaimedWork]:
        boundary: dict[str, datetime] = {}
        for ready_at, _, kind in chosen:
            boundary[kind] = ready_at  # ascending: the last one is the latest
        claim_it = {"$set": {"ready_at": until, "token": token, "claimed_at": now}}
        claimed: list[ClaimedWork] = []
        for kind, up_to in boundary.items():
            # Everything still claimable before the boundary in one request; at the boundary
            # only the chosen ones, as thousands of sends may share one instant.
            await self._items.update_many(
                {"status": DUE_PENDING, "kind": kind, "ready_at": {"$lt": up_to}}, claim_it
            )
            tied = [key for ready_at, key, k in chosen if k == kind and ready_at == up_to]
            for start in range(0, len(tied), IN_CHUNK):
                await self._items.update_many(
                    {
                        "_id": {"$in": tied[start : start + IN_CHUNK]},
                        "status": DUE_PENDING,
                        "ready_at": up_to,
                    },
                    claim_it,
                )
            # Another claim at the same millisecond with the same lease ends at the same
            # `until`: the token tells them apart.
            claimed.extend(
                [
                    ClaimedWork(_due_work(doc), int(doc["attempts"]), token)
                    async for doc in self._items.find(
                        {"status": DUE_PENDING, "kind": kind, "ready_at": until}
                    )
                    if doc.get("token") == token
                ]
            )
        return claimed

    async def finish(
        self, claimed: Sequence[ClaimedWork], *, session: Session | None = None
    ) -> None:
        if not claimed:
            return
        if session is None:
            # All or nothing on its own too: a LeaseLost leaves every item as it was.
            async with self._client.start_session() as own:

                async def transaction(s: Session) -> None:
                    await self.finish(claimed, session=s)

                await own.with_transaction(transaction)
            return
        lost: list[str] = []
        for token, keys in _keys_by_token(claimed).items():
            for start in range(0, len(keys), IN_CHUNK):
                chunk = keys[start : start + IN_CHUNK]
                result = await self._items.delete_many(
                    {"_id": {"$in": chunk}, "token": token}, session=session
                )
                if result.deleted_count != len(chunk):
                    # Read outside the transaction, which has deleted the ones it held.
                    held = {
                        doc["_id"]
                        for doc in await self._items.find(
                            {"_id": {"$in": chunk}}, {"_id": 1, "token": 1}
                        ).to_list()
                        if doc.get("token") == token
                    }
                    lost.extend(key for key in chunk if key not in held)
        if lost:
            raise LeaseLost(lost)

    async def release(
        self, claimed: Sequence[ClaimedWork], *, retry_at: datetime, failed: bool = True
    ) -> None:
        change: Document = {"$set": {"ready_at": _to_millis(retry_at), "token": None}}
        if failed:
            change["$inc"] = {"attempts": 1}
        await self._update_claimed(claimed, change)

    async def park(self, claimed: Sequence[ClaimedWork], *, error: str, now: datetime) -> None:
        await self._update_claimed(
            claimed,
            {
                "$set": {"status": DUE_DEAD, "token": None, "error": error, "parked_at": now},
                "$inc": {"attempts": 1},
            },
        )

    async def parked(self, *, kinds: Collection_[str], limit: int = 100) -> list[ParkedWork]:
        found: list[ParkedWork] = []
        for kind in sorted(kinds):
            found.extend(
                [
                    ParkedWork(
                        _due_work(doc), int(doc["attempts"]), str(doc["error"]), doc["parked_at"]
                    )
                    async for doc in self._items.find({"status": DUE_DEAD, "kind": kind})
                ]
            )
        found.sort(key=lambda p: (p.parked_at, p.work.key))
        return found[:limit]

    async def next_due(
        self, *, kinds: Collection_[str], before: datetime | None = None
    ) -> datetime | None:
        window: Document = (
            {"$lt": _to_millis(before)} if before is not None else {"$gte": _LONG_AGO}
        )
        earliest: datetime | None = None
        for kind in sorted(kinds):
            doc = await self._items.find_one(
                {"status": DUE_PENDING, "kind": kind, "ready_at": window},
                {"ready_at": 1},
                sort=[("ready_at", ASCENDING)],
            )
            if doc is not None and (earliest is None or doc["ready_at"] < earliest):
                earliest = doc["ready_at"]
        return earliest

    async def _update_claimed(self, claimed: Sequence[ClaimedWork], change: Document) -> None:
        for token, keys in _keys_by_token(claimed).items():
            for start in range(0, len(keys), IN_CHUNK):
                await self._items.update_many(
                    {"_id": {"$in": keys[start : start + IN_CHUNK]}, "token": token}, change
                )


_PREFETCH = 20
"""Batches' worth of candidates one look-up fetches. They are claimed before anything is
looked up again: an item scheduled meanwhile with an earlier due time than theirs (only
possible while a backlog is worked off) waits for them."""


_FIRST_WINDOW = timedelta(seconds=1)
"""The narrowest window of `ready_at` a look-up reads above its floor."""


def _to_millis(moment: datetime) -> datetime:
    """BSON keeps milliseconds: truncate first, so an equality on a stored time matches."""
    if moment.tzinfo is None:
        raise ValueError(f"due work needs aware UTC datetimes, got {moment!r}")
    return moment.astimezone(UTC).replace(microsecond=moment.microsecond // 1000 * 1000)


def _due_document(item: DueWork) -> Document:
    due_at = _to_millis(item.due_at)
    return {
        "kind": item.kind,
        "due_at": due_at,
        "ready_at": due_at,
        "status": DUE_PENDING,
        "attempts": 0,
        "token": None,
        "payload": dict(item.payload),
    }


def _due_work(doc: Document) -> DueWork:
    return DueWork(doc["_id"], doc["kind"], doc["due_at"], doc.get("payload") or {})


def _keys_by_token(claimed: Sequence[ClaimedWork]) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for item in claimed:
        keys.setdefault(item.token, []).append(item.work.key)
    return keys
