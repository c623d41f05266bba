"""MongoDB plumbing every service needs: client, transactional outbox, inbox, API keys.

The only chassis module that imports the driver. A service's own `store.py` builds its
collections on the client made here and commits its changes through `EventLedger.commit`,
which writes the change, the events it implies (outbox) and the consumed event's id (inbox)
in one transaction: the change and its events are saved together or not at all, and a
redelivered event changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from bson import ObjectId
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from shared.events import Event
from shared.topics import topic_for

Document = dict[str, Any]
Session = AsyncClientSession
Collection = AsyncCollection[Document]
Database = AsyncDatabase[Document]
T = TypeVar("T")

__all__ = [
    "DEPENDENCY_DOWN",
    "AlreadyHandled",
    "ApiKeyStore",
    "Collection",
    "Database",
    "Document",
    "DuplicateKeyError",
    "EventLedger",
    "OutboxRecord",
    "PyMongoError",
    "Session",
    "connect",
    "ping",
]

# Errors that mean "the database is unreachable", not "this event cannot be handled".
DEPENDENCY_DOWN: tuple[type[Exception], ...] = (ConnectionFailure,)

PUBLISHED_RETENTION = timedelta(days=7)
# Longer than any Kafka retention we configure: a redelivery can only come from the log.
HANDLED_RETENTION = timedelta(days=30)


class AlreadyHandled(Exception):  # noqa: N818 - a fact, not a failure
    """The consumed event was handled before; nothing was changed."""


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
    record_id: ObjectId
    topic: str
    key: str
    event_id: str
    event_type: str
    payload: bytes


Work = Callable[[Session], Awaitable[tuple[T, Sequence[Event]]]]


class EventLedger:
    """Outbox (events to publish) and inbox (events already consumed) of one database."""

    def __init__(
        self,
        client: AsyncMongoClient[Document],
        database: Database,
        *,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._outbox: Collection = database["outbox"]
        self._inbox: Collection = database["inbox"]
        self._on_commit = on_commit

    async def ensure_indexes(self) -> None:
        await self._outbox.create_index([("published_at", ASCENDING), ("_id", ASCENDING)])
        await self._outbox.create_index(
            "published_at",
            name="published_ttl",
            expireAfterSeconds=int(PUBLISHED_RETENTION.total_seconds()),
        )
        await self._inbox.create_index(
            "handled_at",
            name="handled_ttl",
            expireAfterSeconds=int(HANDLED_RETENTION.total_seconds()),
        )

    async def commit(self, work: Work[T], *, consumed: Event | None = None) -> T:
        """Run `work` in a transaction and store the events it returns in the outbox.

        With `consumed`, the event's id is recorded in the same transaction; if it was
        recorded before, raises `AlreadyHandled` and changes nothing.
        """

        async def transaction(session: Session) -> T:
            if consumed is not None:
                event_id = str(consumed.event_id)
                if await self._inbox.find_one({"_id": event_id}, session=session):
                    raise AlreadyHandled(event_id)
                await self._inbox.insert_one(
                    {
                        "_id": event_id,
                        "event_type": consumed.event_type,
                        "handled_at": datetime.now(UTC),
                    },
                    session=session,
                )
            result, events = await work(session)
            if events:
                await self._outbox.insert_many(
                    [self._outbox_document(e) for e in events], session=session
                )
            return result

        async with self._client.start_session() as session:
            result = await session.with_transaction(transaction)
        self._on_commit()
        return result

    @staticmethod
    def _outbox_document(event: Event) -> Document:
        return {
            "event_id": str(event.event_id),
            "event_type": event.event_type,
            "topic": topic_for(event),
            "key": event.lead_id,
            "payload": event.model_dump_json().encode(),
            "created_at": event.occurred_at,
            "published_at": None,
        }

    async def pending(self, limit: int) -> list[OutboxRecord]:
        cursor = self._outbox.find({"published_at": None}).sort("_id", ASCENDING).limit(limit)
        return [
            OutboxRecord(
                record_id=doc["_id"],
                topic=doc["topic"],
                key=doc["key"],
                event_id=doc["event_id"],
                event_type=doc["event_type"],
                payload=bytes(doc["payload"]),
            )
            async for doc in cursor
        ]

    async def mark_published(self, record_ids: Sequence[object], now: datetime) -> None:
        await self._outbox.update_many(
            {"_id": {"$in": list(record_ids)}}, {"$set": {"published_at": now}}
        )

    async def backlog(self) -> int:
        return await self._outbox.count_documents({"published_at": None})


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
