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

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pymongo
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    PyMongoError,
    WTimeoutError,
)

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
    "ApiKeyStore",
    "Collection",
    "Database",
    "Document",
    "DuplicateKeyError",
    "EventLedger",
    "LeaseStore",
    "LogPosition",
    "OutboxRecord",
    "PyMongoError",
    "Session",
    "connect",
    "ping",
]

# Errors that mean "the database is unreachable", not "this request or event is wrong".
DEPENDENCY_DOWN: tuple[type[Exception], ...] = (ConnectionFailure, ExecutionTimeout, WTimeoutError)

PUBLISHED_RETENTION = timedelta(days=7)
"""How long a published outbox record is kept: the window a lost Kafka log is refilled from."""


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

    @property
    def handled_retention(self) -> timedelta:
        """How long a handled event id is remembered (longer than any topic's retention)."""
        return self._handled_retention

    async def ensure_indexes(self) -> None:
        await self._outbox.create_index(
            [("published_at", ASCENDING), ("sequence", ASCENDING)], name="pending_in_order"
        )
        await self._outbox.create_index(
            [("topic", ASCENDING), ("partition", ASCENDING), ("offset", ASCENDING)],
            name="log_position",
        )
        await self._outbox.create_index(
            "published_at",
            name="published_ttl",
            expireAfterSeconds=int(PUBLISHED_RETENTION.total_seconds()),
        )
        await self._inbox.create_index(
            "handled_at",
            name="handled_ttl",
            expireAfterSeconds=int(self._handled_retention.total_seconds()),
        )

    async def commit(self, work: Work[T]) -> T:
        """Run `work` in a transaction and store the events it returns in the outbox."""

        async def transaction(session: Session) -> T:
            result, events = await work(session)
            await self._append(events, session)
            return result

        return await self._run(transaction)

    async def commit_batch(self, consumed: Sequence[E], work: BatchWork[E, T]) -> T | None:
        """Handle a batch of consumed events in one transaction.

        Events handled before (and repeats within the batch) are dropped with one inbox
        query; `work` gets the rest in their original order, and their ids are recorded
        with the change. Returns None, without a transaction's writes, when nothing is new.
        """

        async def transaction(session: Session) -> T | None:
            fresh = await self._unhandled(consumed, session)
            if not fresh:
                return None
            result, events = await work(session, fresh)
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

        return await self._run(transaction)

    async def _run(self, transaction: Callable[[Session], Awaitable[T]]) -> T:
        # Bounded: without it a transaction keeps retrying for two minutes while the
        # database is unreachable, holding a request or a consumer batch all that time.
        with pymongo.timeout(self._transaction_timeout_s):
            async with self._client.start_session() as session:
                result = await session.with_transaction(transaction)
        self._on_commit()
        return result

    async def _unhandled(self, consumed: Sequence[E], session: Session) -> list[E]:
        ids = list(dict.fromkeys(str(e.event_id) for e in consumed))
        cursor = self._inbox.find({"_id": {"$in": ids}}, {"_id": 1}, session=session)
        seen = {doc["_id"] async for doc in cursor}
        fresh: list[E] = []
        for event in consumed:
            event_id = str(event.event_id)
            if event_id not in seen:
                seen.add(event_id)
                fresh.append(event)
        return fresh

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

    async def pending(self, limit: int) -> list[OutboxRecord]:
        cursor = self._outbox.find({"published_at": None}).sort("sequence", ASCENDING).limit(limit)
        return [
            OutboxRecord(
                record_id=doc["_id"],
                topic=doc["topic"],
                key=doc["key"],
                event_id=doc["event_id"],
                event_type=doc["event_type"],
                payload=bytes(doc["payload"]),
                sequence=doc.get("sequence", 0),
            )
            async for doc in cursor
        ]

    async def mark_published(
        self, published: Sequence[tuple[OutboxRecord, LogPosition | None]], now: datetime
    ) -> None:
        """Mark records published, with where Kafka put each (kept to detect a lost log)."""
        if not published:
            return
        await self._outbox.bulk_write(
            [
                UpdateOne(
                    {"_id": record.record_id},
                    {"$set": {"published_at": now, **_position_fields(position)}},
                )
                for record, position in published
            ],
            ordered=False,
        )
        furthest = furthest_positions(position for _, position in published)
        if furthest:
            # Only the relay holding the lease writes these: the newest batch is the furthest.
            await self._positions.bulk_write(
                [
                    UpdateOne(
                        {"_id": _partition_key(p.topic, p.partition)},
                        {
                            "$set": {
                                "topic": p.topic,
                                "partition": p.partition,
                                "offset": p.offset,
                                "event_id": p.event_id,
                            }
                        },
                        upsert=True,
                    )
                    for p in furthest
                ],
                ordered=False,
            )

    async def log_positions(self) -> list[LogPosition]:
        """The furthest record this service's relay published, per topic partition."""
        return [
            LogPosition(doc["topic"], doc["partition"], doc["offset"], doc.get("event_id"))
            async for doc in self._positions.find({})
        ]

    async def republish_from(self, topic: str, partition: int, offset: int) -> int:
        """The log lost what was at `offset` and after: queue those records again.

        Returns how many records will be published again.
        """
        result = await self._outbox.update_many(
            {"topic": topic, "partition": partition, "offset": {"$gte": offset}},
            {"$set": {"published_at": None}, "$unset": {"partition": "", "offset": ""}},
        )
        await self._positions.update_one(
            {"_id": _partition_key(topic, partition)},
            {"$set": {"offset": offset - 1, "event_id": None}},
        )
        return result.modified_count

    async def backlog(self) -> int:
        return await self._outbox.count_documents({"published_at": None})


def outbox_document(event: Event, sequence: int) -> Document:
    return {
        "sequence": sequence,
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "topic": topic_for(event),
        "key": event.lead_id,
        "payload": event.model_dump_json().encode(),
        "created_at": event.occurred_at,
        "published_at": None,
    }


def _position_fields(position: LogPosition | None) -> Document:
    return {} if position is None else {"partition": position.partition, "offset": position.offset}


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
