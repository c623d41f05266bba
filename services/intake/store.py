"""Intake's persistence, in the `leadflow_intake` database. Decisions live in `rules`, the
steps of each flow in `usecases`.

- `leads`: one document per lead, `_id` = lead_id.
- `contact_keys`: the directory behind de-duplication and "who is this caller?",
  `_id` = "<kind>:<value>" (e.g. "phone:+15551234567") pointing at its lead. MongoDB's
  `_id` uniqueness makes two simultaneous first inquiries from one contact impossible.
- `external_ids`: channels' own submission ids (Meta leadgen id, Google lead id, CSV line),
  `_id` = the id, so a webhook retried for days or a resumed import adds nothing twice.
- `idempotency`: the first answer to each `Idempotency-Key`, per API key.
- `config`: forms, campaigns, custom sources and the ideal-customer profile, `_id` =
  "<kind>:<id>"; every change bumps `config_version` so replicas reload their cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar

from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError

from leadflow.chassis.store import (
    IN_CHUNK,
    Database,
    Document,
    DuplicateKeyError,
    EventLedger,
    Session,
    find_in,
)
from leadflow.chassis.store import Collection as MongoCollection
from services.intake.rules import (
    AcceptancePlan,
    ContactKey,
    ContactKind,
    Inquiry,
    KnownLead,
    LeadMerge,
    LeadRecord,
)
from shared.events import (
    Consent,
    Contact,
    Event,
    LeadConvertedV1,
    LeadErasedV1,
    Profile,
)

T = TypeVar("T")

DUPLICATE_KEY = 11000
HISTORY_KEPT = 100
"""Most inquiries kept in a lead's history (the count keeps counting)."""
IDEMPOTENCY_RETENTION = timedelta(hours=24)

ConfigKind = Literal["form", "campaign", "source", "icp"]


class ContactKeyTaken(Exception):  # noqa: N818 - names the conflict, as DuplicateKeyError does
    """A contact key (or external id) being added was stored meanwhile by a concurrent
    accept; nothing of the batch was written, and accepting it again finds that key."""


class AcceptingBatch(Protocol):
    """What a use case may read and write while accepting one batch (one transaction)."""

    async def key_owners(self, keys: Collection[ContactKey]) -> dict[ContactKey, str]:
        """The lead each of `keys` identifies, for those in the directory."""
        ...

    async def known(self, lead_ids: Collection[str]) -> dict[str, KnownLead]:
        """Contact, profile and consent of each stored lead of `lead_ids`."""
        ...

    async def seen_external_ids(self, ids: Collection[str]) -> dict[str, str]:
        """The lead each of `ids` went to, for the ids seen before."""
        ...

    async def save(self, plan: AcceptancePlan) -> None:
        """Insert the new leads, keys and external ids, apply the merges. Raises
        ContactKeyTaken when a new key or external id is already stored."""
        ...


AcceptWork = Callable[[AcceptingBatch], Awaitable[tuple[T, Sequence[Event]]]]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The answer given to the first request with an idempotency key."""

    fingerprint: str
    status_code: int
    body: Any


IdempotencyClaim = Literal["claimed", "in_progress"] | StoredResponse


class IntakeStore(Protocol):
    async def ensure_indexes(self) -> None: ...
    async def accept_batch(self, work: AcceptWork[T]) -> T:
        """Run `work` in one transaction and store the events it returns in the outbox."""
        ...

    async def get(self, lead_id: str) -> Document | None: ...
    async def find_by_contact(self, kind: ContactKind, value: str) -> Document | None: ...
    async def key_owners(self, keys: Collection[ContactKey]) -> dict[ContactKey, str]:
        """The lead each of `keys` identifies, for those in the directory, read outside any
        transaction (a snapshot: a key may be added or freed right after)."""
        ...

    async def erase(self, lead_id: str, requested_by: str, now: datetime) -> bool:
        """Forget the lead's personal data, free its contact keys and publish
        LeadErasedV1, in one transaction. False when there is no such (unerased) lead."""
        ...

    async def record_conversions(self, events: Sequence[LeadConvertedV1]) -> None:
        """Mark converted leads as customers, each event once (inbox)."""
        ...

    # --- idempotency
    async def claim_request(
        self, key: str, fingerprint: str, now: datetime, *, stale_after: timedelta
    ) -> IdempotencyClaim:
        """ "claimed": the caller handles the request and then calls `complete_request`
        (or `release_request` on failure); a stored answer; or "in_progress" while another
        request with the key is being handled (a claim older than `stale_after` is taken
        over: its holder died)."""
        ...

    async def complete_request(self, key: str, response: StoredResponse) -> None: ...
    async def release_request(self, key: str) -> None: ...

    # --- configuration
    async def config_version(self) -> int: ...
    async def list_config(self, kind: ConfigKind) -> list[Document]: ...
    async def get_config(self, kind: ConfigKind, config_id: str) -> Document | None: ...
    async def put_config(
        self, kind: ConfigKind, config_id: str, document: Document, events: Sequence[Event] = ()
    ) -> None:
        """Store one configuration document (and publish `events`) and bump the version."""
        ...

    async def delete_config(self, kind: ConfigKind, config_id: str) -> bool: ...


def contact_key_id(key: ContactKey) -> str:
    kind, value = key
    return f"{kind}:{value}"


def config_id_of(kind: ConfigKind, config_id: str) -> str:
    return f"{kind}:{config_id}"


class MongoIntakeStore:
    def __init__(self, database: Database, ledger: EventLedger) -> None:
        self._leads: MongoCollection = database["leads"]
        self._keys: MongoCollection = database["contact_keys"]
        self._external: MongoCollection = database["external_ids"]
        self._idempotency: MongoCollection = database["idempotency"]
        self._config: MongoCollection = database["config"]
        self._config_version: MongoCollection = database["config_version"]
        self._ledger = ledger

    async def ensure_indexes(self) -> None:
        await self._leads.create_index("received_at")
        await self._keys.create_index("lead_id")
        await self._config.create_index("kind")
        await self._idempotency.create_index(
            "created_at",
            name="idempotency_ttl",
            expireAfterSeconds=int(IDEMPOTENCY_RETENTION.total_seconds()),
        )

    async def accept_batch(self, work: AcceptWork[T]) -> T:
        return await self._ledger.commit(
            lambda session: work(
                _MongoAcceptingBatch(self._leads, self._keys, self._external, session)
            )
        )

    async def get(self, lead_id: str) -> Document | None:
        return await self._leads.find_one({"_id": lead_id})

    async def find_by_contact(self, kind: ContactKind, value: str) -> Document | None:
        key = await self._keys.find_one({"_id": contact_key_id((kind, value))})
        return None if key is None else await self.get(key["lead_id"])

    async def key_owners(self, keys: Collection[ContactKey]) -> dict[ContactKey, str]:
        by_id = {contact_key_id(key): key for key in keys}
        ids = list(by_id)
        # Chunks at once: outside a transaction the queries need not share a session.
        chunks = await asyncio.gather(
            *(
                find_in(self._keys, "_id", ids[start : start + IN_CHUNK])
                for start in range(0, len(ids), IN_CHUNK)
            )
        )
        return {by_id[doc["_id"]]: doc["lead_id"] for chunk in chunks for doc in chunk}

    async def erase(self, lead_id: str, requested_by: str, now: datetime) -> bool:
        async def work(session: Session) -> tuple[bool, Sequence[Event]]:
            lead = await self._leads.find_one(
                {"_id": lead_id, "status": {"$ne": "erased"}}, {"history": 1}, session=session
            )
            if lead is None:
                return False, []
            await self._keys.delete_many({"lead_id": lead_id}, session=session)
            await self._leads.update_one(
                {"_id": lead_id}, {"$set": erased_fields(lead, now)}, session=session
            )
            event = LeadErasedV1(lead_id=lead_id, occurred_at=now, requested_by=requested_by)
            return True, [event]

        return await self._ledger.commit(work)

    async def record_conversions(self, events: Sequence[LeadConvertedV1]) -> None:
        async def work(
            session: Session, fresh: list[LeadConvertedV1]
        ) -> tuple[None, Sequence[Event]]:
            await self._leads.bulk_write(
                [conversion_update(event) for event in fresh], ordered=False, session=session
            )
            return None, []

        await self._ledger.commit_batch(events, work)

    async def claim_request(
        self, key: str, fingerprint: str, now: datetime, *, stale_after: timedelta
    ) -> IdempotencyClaim:
        try:
            await self._idempotency.insert_one(
                {"_id": key, "fingerprint": fingerprint, "state": "pending", "created_at": now}
            )
        except DuplicateKeyError:
            pass
        else:
            return "claimed"
        stored = await self._idempotency.find_one({"_id": key})
        if stored is None:  # expired between the two calls: as good as new
            return await self.claim_request(key, fingerprint, now, stale_after=stale_after)
        if stored["state"] == "done":
            return StoredResponse(stored["fingerprint"], stored["status_code"], stored["body"])
        taken = await self._idempotency.find_one_and_update(
            {"_id": key, "state": "pending", "created_at": {"$lte": now - stale_after}},
            {"$set": {"created_at": now, "fingerprint": fingerprint}},
            return_document=ReturnDocument.AFTER,
        )
        return "claimed" if taken is not None else "in_progress"

    async def complete_request(self, key: str, response: StoredResponse) -> None:
        await self._idempotency.update_one(
            {"_id": key},
            {
                "$set": {
                    "state": "done",
                    "fingerprint": response.fingerprint,
                    "status_code": response.status_code,
                    "body": response.body,
                }
            },
        )

    async def release_request(self, key: str) -> None:
        await self._idempotency.delete_one({"_id": key, "state": "pending"})

    async def config_version(self) -> int:
        doc = await self._config_version.find_one({"_id": "config"})
        return int(doc["version"]) if doc else 0

    async def list_config(self, kind: ConfigKind) -> list[Document]:
        return [doc["doc"] async for doc in self._config.find({"kind": kind}).sort("_id")]

    async def get_config(self, kind: ConfigKind, config_id: str) -> Document | None:
        doc = await self._config.find_one({"_id": config_id_of(kind, config_id)})
        return None if doc is None else dict(doc["doc"])

    async def put_config(
        self, kind: ConfigKind, config_id: str, document: Document, events: Sequence[Event] = ()
    ) -> None:
        async def work(session: Session) -> tuple[None, Sequence[Event]]:
            await self._config.replace_one(
                {"_id": config_id_of(kind, config_id)},
                {"kind": kind, "doc": document},
                upsert=True,
                session=session,
            )
            await self._bump(session)
            return None, events

        await self._ledger.commit(work)

    async def delete_config(self, kind: ConfigKind, config_id: str) -> bool:
        async def work(session: Session) -> tuple[bool, Sequence[Event]]:
            result = await self._config.delete_one(
                {"_id": config_id_of(kind, config_id)}, session=session
            )
            if result.deleted_count:
                await self._bump(session)
            return bool(result.deleted_count), []

        return await self._ledger.commit(work)

    async def _bump(self, session: Session) -> None:
        await self._config_version.update_one(
            {"_id": "config"}, {"$inc": {"version": 1}}, upsert=True, session=session
        )


class _MongoAcceptingBatch:
    def __init__(
        self,
        leads: MongoCollection,
        keys: MongoCollection,
        external: MongoCollection,
        session: Session,
    ) -> None:
        self._leads = leads
        self._keys = keys
        self._external = external
        self._session = session

    async def key_owners(self, keys: Collection[ContactKey]) -> dict[ContactKey, str]:
        if not keys:
            return {}
        by_id = {contact_key_id(key): key for key in keys}
        documents = await find_in(self._keys, "_id", by_id, session=self._session)
        return {by_id[doc["_id"]]: doc["lead_id"] for doc in documents}

    async def known(self, lead_ids: Collection[str]) -> dict[str, KnownLead]:
        if not lead_ids:
            return {}
        documents = await find_in(
            self._leads,
            "_id",
            lead_ids,
            session=self._session,
            projection={"contact": 1, "profile": 1, "consent": 1},
        )
        return {doc["_id"]: known_lead(doc) for doc in documents}

    async def seen_external_ids(self, ids: Collection[str]) -> dict[str, str]:
        if not ids:
            return {}
        documents = await find_in(self._external, "_id", ids, session=self._session)
        return {doc["_id"]: doc["lead_id"] for doc in documents}

    async def save(self, plan: AcceptancePlan) -> None:
        session = self._session
        if plan.new_leads:
            await self._leads.insert_many(
                [lead_document(lead) for lead in plan.new_leads], session=session
            )
        unique_inserts = [
            (
                self._keys,
                [{"_id": contact_key_id(k), "lead_id": i} for k, i in plan.new_keys.items()],
            ),
            (self._external, [{"_id": e, "lead_id": i} for e, i in plan.new_external_ids.items()]),
        ]
        for collection, documents in unique_inserts:
            if not documents:
                continue
            try:
                await collection.insert_many(documents, session=session)
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


def known_lead(doc: Document) -> KnownLead:
    return KnownLead(
        contact=Contact.model_validate(doc.get("contact") or {}),
        profile=Profile.model_validate(doc.get("profile") or {}),
        consent=Consent.model_validate(doc.get("consent") or {}),
    )


def compact(value: Any) -> Any:
    """`value` without None and empty values inside it: a lead's document has half the
    fields, and the local MongoDB-wire server writes it in half the time. Readers validate
    documents with the models, whose defaults fill what is missing."""
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items() if v is not None and v not in ({}, [], ())}
    if isinstance(value, list | tuple):
        return [compact(v) for v in value]
    return value


def lead_document(lead: LeadRecord) -> Document:
    return {
        "_id": lead.lead_id,
        "status": "lead",
        "contact": compact(lead.contact.model_dump()),
        "attribution": compact(lead.attribution.model_dump()),
        "consent": compact(lead.consent.model_dump(mode="python")),
        "profile": compact(lead.profile.model_dump()),
        "message": lead.message,
        "received_at": lead.received_at,
        "last_inquiry_at": lead.last_inquiry_at,
        "inquiries": lead.inquiries,
        "history": history_documents(lead.history),
        "fit": None if lead.fit is None else lead.fit.model_dump(),
        "is_test": lead.is_test,
    }


def merge_fields(merge: LeadMerge) -> Document:
    """What a merge sets on the lead (the rest is counted and appended)."""
    fields: Document = {"contact": compact(merge.contact.model_dump())}
    if merge.profile is not None:
        fields["profile"] = compact(merge.profile.model_dump())
    if merge.consent is not None:
        fields["consent"] = compact(merge.consent.model_dump(mode="python"))
    return fields


def history_documents(history: Sequence[Inquiry]) -> list[Document]:
    return [compact(asdict(inquiry)) for inquiry in history]


def merge_update(merge: LeadMerge) -> UpdateOne:
    update: Document = {
        "$set": merge_fields(merge),
        # Another replica may have recorded a later inquiry already.
        "$max": {"last_inquiry_at": merge.last_inquiry_at},
        "$inc": {"inquiries": merge.inquiries},
    }
    if merge.history:
        update["$push"] = {
            "history": {"$each": history_documents(merge.history), "$slice": -HISTORY_KEPT}
        }
    return UpdateOne({"_id": merge.lead_id}, update)


def erased_fields(lead: Document, now: datetime) -> Document:
    """What an erased lead keeps: when and how it came (for counts), nothing about the person."""
    return {
        "status": "erased",
        "erased_at": now,
        "contact": Contact().model_dump(),
        "profile": Profile().model_dump(),
        "consent": Consent(email=False, sms=False, phone=False).model_dump(),
        "message": None,
        "attribution.referrer": None,
        "attribution.landing_page": None,
        "history": [{**h, "message": None} for h in lead.get("history", [])],
    }


def conversion_fields(event: LeadConvertedV1) -> Document:
    return {
        "status": "customer",
        "converted_at": event.occurred_at,
        "customer_id": event.customer_id,
        "converted_by": event.rep_id,
    }


def conversion_update(event: LeadConvertedV1) -> UpdateOne:
    # Only a lead becomes a customer: an erased lead stays erased.
    return UpdateOne({"_id": event.lead_id, "status": "lead"}, {"$set": conversion_fields(event)})
