"""Intake's persistence, in the `leadflow_intake` database. Decisions live in `rules`, the
steps of each flow in `usecases`.

- `leads`: one document per lead, `_id` = lead_id.
- `contact_keys`: the directory behind de-duplication and "who is this caller?",
  `_id` = "<kind>:<value>" (e.g. "phone:+15551234567") pointing at its lead. MongoDB's
  `_id` uniqueness makes two simultaneous first inquiries from one contact impossible.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol, TypeVar

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from leadflow.chassis.store import Collection as MongoCollection
from leadflow.chassis.store import (
    Database,
    Document,
    DuplicateKeyError,
    EventLedger,
    Session,
    find_in,
)
from services.intake.rules import AcceptancePlan, ContactKey, ContactKind, LeadMerge, LeadRecord
from shared.events import Contact, Event

T = TypeVar("T")

DUPLICATE_KEY = 11000


class ContactKeyTaken(Exception):  # noqa: N818 - names the conflict, as DuplicateKeyError does
    """A contact key being added was stored meanwhile (by a concurrent accept); nothing of
    the batch was written, and accepting it again finds that key."""


class AcceptingBatch(Protocol):
    """What a use case may read and write while accepting one batch (one transaction)."""

    async def key_owners(self, keys: Collection[ContactKey]) -> dict[ContactKey, str]:
        """The lead each of `keys` identifies, for those in the directory."""
        ...

    async def contacts(self, lead_ids: Collection[str]) -> dict[str, Contact]: ...

    async def save(self, plan: AcceptancePlan) -> None:
        """Insert the new leads and keys, apply the merges. Raises ContactKeyTaken when a
        new key is already in the directory."""
        ...


AcceptWork = Callable[[AcceptingBatch], Awaitable[tuple[T, Sequence[Event]]]]


class IntakeStore(Protocol):
    async def ensure_indexes(self) -> None: ...
    async def accept_batch(self, work: AcceptWork[T]) -> T:
        """Run `work` in one transaction and store the events it returns in the outbox."""
        ...

    async def get(self, lead_id: str) -> Document | None: ...
    async def find_by_contact(self, kind: ContactKind, value: str) -> Document | None: ...


def contact_key_id(key: ContactKey) -> str:
    kind, value = key
    return f"{kind}:{value}"


class MongoIntakeStore:
    def __init__(self, database: Database, ledger: EventLedger) -> None:
        self._leads: MongoCollection = database["leads"]
        self._keys: MongoCollection = database["contact_keys"]
        self._ledger = ledger

    async def ensure_indexes(self) -> None:
        await self._leads.create_index("received_at")

    async def accept_batch(self, work: AcceptWork[T]) -> T:
        return await self._ledger.commit(
            lambda session: work(_MongoAcceptingBatch(self._leads, self._keys, session))
        )

    async def get(self, lead_id: str) -> Document | None:
        return await self._leads.find_one({"_id": lead_id})

    async def find_by_contact(self, kind: ContactKind, value: str) -> Document | None:
        key = await self._keys.find_one({"_id": contact_key_id((kind, value))})
        return None if key is None else await self.get(key["lead_id"])


class _MongoAcceptingBatch:
    def __init__(self, leads: MongoCollection, keys: MongoCollection, session: Session) -> None:
        self._leads = leads
        self._keys = keys
        self._session = session

    async def key_owners(self, keys: Collection[ContactKey]) -> dict[ContactKey, str]:
        if not keys:
            return {}
        by_id = {contact_key_id(key): key for key in keys}
        documents = await find_in(self._keys, "_id", by_id, session=self._session)
        return {by_id[doc["_id"]]: doc["lead_id"] for doc in documents}

    async def contacts(self, lead_ids: Collection[str]) -> dict[str, Contact]:
        if not lead_ids:
            return {}
        documents = await find_in(
            self._leads, "_id", lead_ids, session=self._session, projection={"contact": 1}
        )
        return {doc["_id"]: Contact.model_validate(doc["contact"]) for doc in documents}

    async def save(self, plan: AcceptancePlan) -> None:
        session = self._session
        if plan.new_leads:
            await self._leads.insert_many(
                [lead_document(lead) for lead in plan.new_leads], session=session
            )
        if plan.new_keys:
            try:
                await self._keys.insert_many(
                    [
                        {"_id": contact_key_id(key), "lead_id": lead_id}
                        for key, lead_id in plan.new_keys.items()
                    ],
                    session=session,
                )
            except (DuplicateKeyError, BulkWriteError) as error:
                if not _only_duplicate_keys(error):
                    raise
                raise ContactKeyTaken(str(error)) from error
        if plan.merges:
            await self._leads.bulk_write(
                [merge_update(merge) for merge in plan.merges], ordered=False, session=session
            )


def _only_duplicate_keys(error: DuplicateKeyError | BulkWriteError) -> bool:
    if isinstance(error, DuplicateKeyError):
        return True
    write_errors = (error.details or {}).get("writeErrors", [])
    return bool(write_errors) and all(e.get("code") == DUPLICATE_KEY for e in write_errors)


def lead_document(lead: LeadRecord) -> Document:
    return {
        "_id": lead.lead_id,
        "contact": lead.contact.model_dump(),
        "attribution": lead.attribution.model_dump(),
        "consent": lead.consent.model_dump(),
        "profile": lead.profile.model_dump(),
        "message": lead.message,
        "received_at": lead.received_at,
        "last_inquiry_at": lead.last_inquiry_at,
        "inquiries": lead.inquiries,
    }


def merge_update(merge: LeadMerge) -> UpdateOne:
    return UpdateOne(
        {"_id": merge.lead_id},
        {
            "$set": {"contact": merge.contact.model_dump()},
            # Another replica may have recorded a later inquiry already.
            "$max": {"last_inquiry_at": merge.last_inquiry_at},
            "$inc": {"inquiries": merge.inquiries},
        },
    )
