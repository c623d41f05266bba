"""Assignment's persistence, in the `leadflow_assignment` database. Decisions live in
`rules`, the steps of each flow in `usecases`.

- `reps`, `pools`: the routing configuration. Every change to it also increments the
  `configuration` counter in the same transaction, which is how replicas know to reload it.
- `leads`: one document per lead; a lead whose lead-received event has not been read yet
  (an `AwaitedLead`) is a document without `status`.
- `last_assignments`: per rep, the turn number and time of the last lead they were dealt.
- `counters`: `turn` (the service-wide turn numbers, taken once per routed batch) and
  `configuration` (the version of reps and pools).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from pymongo import ASCENDING, DESCENDING, InsertOne, ReplaceOne, ReturnDocument

from leadflow.chassis.store import Collection as MongoCollection
from leadflow.chassis.store import (
    Database,
    Document,
    DuplicateKeyError,
    EventLedger,
    Session,
    find_in,
)
from services.assignment.rules import (
    AlreadyExistsError,
    AwaitedLead,
    KnownLead,
    LastAssignment,
    Lead,
    LeadStatus,
    Pool,
    PoolMatch,
    Rep,
    RoutingConfig,
)
from shared.events import Attribution, Consent, Contact, Event, Profile

T = TypeVar("T")

_TURN = "turn"
_CONFIGURATION = "configuration"


@dataclass(frozen=True, slots=True)
class LeadQuery:
    status: LeadStatus | None = None
    rep_id: str | None = None
    pool_id: str | None = None
    limit: int = 50


class LeadsInTransaction(Protocol):
    """What a use case may read and write about leads inside one transaction."""

    async def leads(self, lead_ids: Collection[str]) -> dict[str, KnownLead]: ...
    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]: ...
    async def take_turns(self, count: int) -> int:
        """Reserve `count` new turn numbers; returns the first. Every routing transaction
        takes turns, so two replicas routing at once conflict here and run one after the
        other: neither deals on last assignments the other is changing."""
        ...

    async def save(
        self, leads: Sequence[KnownLead], last_assignments: Sequence[LastAssignment]
    ) -> None:
        """Store leads and reps' last assignments. A lead that `leads` did not find in this
        transaction is stored as new: read a lead before saving a change to it."""
        ...


class ConfigurationInTransaction(Protocol):
    """What a use case may read and write about reps and pools inside one transaction."""

    async def rep(self, rep_id: str) -> Rep | None: ...
    async def known_rep_ids(self, rep_ids: Collection[str]) -> set[str]: ...
    async def pool(self, pool_id: str) -> Pool | None: ...
    async def add_rep(self, rep: Rep, now: datetime) -> None:
        """Raises `AlreadyExistsError` when the rep id is taken."""
        ...

    async def save_rep(self, rep: Rep, now: datetime) -> None: ...
    async def add_pool(self, pool: Pool, now: datetime) -> None:
        """Raises `AlreadyExistsError` when the pool id is taken."""
        ...

    async def save_pool(self, pool: Pool, now: datetime) -> None: ...
    async def demote_default_pools(self, keeping: str) -> None:
        """No pool but `keeping` is the default any more."""
        ...


BatchWork = Callable[[LeadsInTransaction, list[Event]], Awaitable[tuple[T, Sequence[Event]]]]
LeadWork = Callable[[LeadsInTransaction], Awaitable[tuple[T, Sequence[Event]]]]
ConfigurationWork = Callable[[ConfigurationInTransaction], Awaitable[T]]


class AssignmentStore(Protocol):
    async def ensure_indexes(self) -> None: ...

    async def handle_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        """Run `work` on the events of `consumed` not handled before, in one transaction
        that also remembers them and stores the events `work` returns for publishing.
        None (nothing written) when every one was handled before."""
        ...

    async def change_leads(self, work: LeadWork[T]) -> T:
        """Run `work` in one transaction, storing the events it returns for publishing."""
        ...

    async def change_configuration(self, work: ConfigurationWork[T]) -> T:
        """Run `work` in one transaction that also moves the configuration's version."""
        ...

    async def configuration_version(self) -> int: ...
    async def load_configuration(self) -> RoutingConfig: ...

    async def list_reps(self) -> list[Rep]: ...
    async def get_rep(self, rep_id: str) -> Rep | None: ...
    async def list_pools(self) -> list[Pool]: ...
    async def get_pool(self, pool_id: str) -> Pool | None: ...
    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]: ...
    async def list_leads(self, query: LeadQuery) -> list[Lead]: ...
    async def get_lead(self, lead_id: str) -> Lead | None:
        """The lead, or None when it is unknown or not received yet."""
        ...


class MongoAssignmentStore:
    def __init__(self, database: Database, ledger: EventLedger) -> None:
        self._reps: MongoCollection = database["reps"]
        self._pools: MongoCollection = database["pools"]
        self._leads: MongoCollection = database["leads"]
        self._last_assignments: MongoCollection = database["last_assignments"]
        self._counters: MongoCollection = database["counters"]
        self._ledger = ledger

    async def ensure_indexes(self) -> None:
        for field in ("rep_id", "pool_id", "status"):
            await self._leads.create_index([(field, ASCENDING), ("received_at", DESCENDING)])
        await self._leads.create_index([("received_at", DESCENDING)])

    # --- transactions -----------------------------------------------------------------

    async def handle_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        async def in_transaction(session: Session, fresh: list[Event]) -> tuple[T, Sequence[Event]]:
            return await work(_MongoLeads(self, session), fresh)

        return await self._ledger.commit_batch(consumed, in_transaction)

    async def change_leads(self, work: LeadWork[T]) -> T:
        async def in_transaction(session: Session) -> tuple[T, Sequence[Event]]:
            return await work(_MongoLeads(self, session))

        return await self._ledger.commit(in_transaction)

    async def change_configuration(self, work: ConfigurationWork[T]) -> T:
        async def in_transaction(session: Session) -> tuple[T, Sequence[Event]]:
            result = await work(_MongoConfiguration(self, session))
            await self._counters.update_one(
                {"_id": _CONFIGURATION}, {"$inc": {"value": 1}}, upsert=True, session=session
            )
            return result, []

        return await self._ledger.commit(in_transaction)

    # --- configuration ----------------------------------------------------------------

    async def configuration_version(self) -> int:
        doc = await self._counters.find_one({"_id": _CONFIGURATION})
        return 0 if doc is None else int(doc["value"])

    async def load_configuration(self) -> RoutingConfig:
        reps = {rep.rep_id: rep for rep in await self.list_reps()}
        return RoutingConfig(reps=reps, pools=tuple(await self.list_pools()))

    async def list_reps(self) -> list[Rep]:
        cursor = self._reps.find({}).sort([("created_at", ASCENDING), ("_id", ASCENDING)])
        return [rep_from_document(doc) async for doc in cursor]

    async def get_rep(self, rep_id: str) -> Rep | None:
        doc = await self._reps.find_one({"_id": rep_id})
        return None if doc is None else rep_from_document(doc)

    async def list_pools(self) -> list[Pool]:
        cursor = self._pools.find({}).sort([("priority", DESCENDING), ("_id", ASCENDING)])
        return [pool_from_document(doc) async for doc in cursor]

    async def get_pool(self, pool_id: str) -> Pool | None:
        doc = await self._pools.find_one({"_id": pool_id})
        return None if doc is None else pool_from_document(doc)

    # --- leads ------------------------------------------------------------------------

    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]:
        return await _MongoLeads(self, None).last_assignments(rep_ids)

    async def list_leads(self, query: LeadQuery) -> list[Lead]:
        criteria: Document = {"status": {"$exists": True}}
        criteria |= {
            key: value
            for key, value in (
                ("status", query.status.value if query.status else None),
                ("rep_id", query.rep_id),
                ("pool_id", query.pool_id),
            )
            if value is not None
        }
        cursor = (
            self._leads.find(criteria)
            .sort([("received_at", DESCENDING), ("_id", ASCENDING)])
            .limit(query.limit)
        )
        return [lead_from_document(doc) async for doc in cursor]

    async def get_lead(self, lead_id: str) -> Lead | None:
        doc = await self._leads.find_one({"_id": lead_id, "status": {"$exists": True}})
        return None if doc is None else lead_from_document(doc)


class _MongoLeads:
    def __init__(self, store: MongoAssignmentStore, session: Session | None) -> None:
        self._store = store
        self._session = session
        self._stored: set[str] = set()
        """Leads read in this transaction and found: saved by replacing, the rest inserted."""

    async def leads(self, lead_ids: Collection[str]) -> dict[str, KnownLead]:
        if not lead_ids:
            return {}
        documents = await find_in(self._store._leads, "_id", lead_ids, session=self._session)
        found = {doc["_id"]: known_lead_from_document(doc) for doc in documents}
        self._stored.update(found)
        return found

    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]:
        if not rep_ids:
            return {}
        documents = await find_in(
            self._store._last_assignments, "_id", rep_ids, session=self._session
        )
        return {
            doc["_id"]: LastAssignment(
                rep_id=doc["_id"],
                turn=doc["turn"],
                assigned_at=doc["assigned_at"],
                pool_id=doc.get("pool_id"),
            )
            for doc in documents
        }

    async def take_turns(self, count: int) -> int:
        counter = await self._store._counters.find_one_and_update(
            {"_id": _TURN},
            {"$inc": {"value": count}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=self._session,
        )
        return int(counter["value"]) - count + 1 if counter else 1

    async def save(
        self, leads: Sequence[KnownLead], last_assignments: Sequence[LastAssignment]
    ) -> None:
        if leads:
            # Inserting is several times cheaper than upserting. A lead this transaction
            # did not find is new; should another transaction store it meanwhile, the two
            # conflict and one of them runs again.
            await self._store._leads.bulk_write(
                [
                    ReplaceOne({"_id": lead.lead_id}, known_lead_document(lead))
                    if lead.lead_id in self._stored
                    else InsertOne({"_id": lead.lead_id, **known_lead_document(lead)})
                    for lead in leads
                ],
                ordered=False,
                session=self._session,
            )
            self._stored.update(lead.lead_id for lead in leads)
        if last_assignments:
            await self._store._last_assignments.bulk_write(
                [
                    ReplaceOne(
                        {"_id": last.rep_id},
                        {
                            "turn": last.turn,
                            "assigned_at": last.assigned_at,
                            "pool_id": last.pool_id,
                        },
                        upsert=True,
                    )
                    for last in last_assignments
                ],
                ordered=False,
                session=self._session,
            )


class _MongoConfiguration:
    def __init__(self, store: MongoAssignmentStore, session: Session) -> None:
        self._store = store
        self._session = session

    async def rep(self, rep_id: str) -> Rep | None:
        doc = await self._store._reps.find_one({"_id": rep_id}, session=self._session)
        return None if doc is None else rep_from_document(doc)

    async def known_rep_ids(self, rep_ids: Collection[str]) -> set[str]:
        if not rep_ids:
            return set()
        documents = await find_in(
            self._store._reps, "_id", rep_ids, session=self._session, projection={"_id": 1}
        )
        return {doc["_id"] for doc in documents}

    async def pool(self, pool_id: str) -> Pool | None:
        doc = await self._store._pools.find_one({"_id": pool_id}, session=self._session)
        return None if doc is None else pool_from_document(doc)

    async def add_rep(self, rep: Rep, now: datetime) -> None:
        document = {"_id": rep.rep_id, **rep_document(rep), "created_at": now, "updated_at": now}
        try:
            await self._store._reps.insert_one(document, session=self._session)
        except DuplicateKeyError as error:
            raise AlreadyExistsError("rep", rep.rep_id) from error

    async def save_rep(self, rep: Rep, now: datetime) -> None:
        await self._store._reps.update_one(
            {"_id": rep.rep_id},
            {"$set": {**rep_document(rep), "updated_at": now}},
            session=self._session,
        )

    async def add_pool(self, pool: Pool, now: datetime) -> None:
        document = {
            "_id": pool.pool_id,
            **pool_document(pool),
            "created_at": now,
            "updated_at": now,
        }
        try:
            await self._store._pools.insert_one(document, session=self._session)
        except DuplicateKeyError as error:
            raise AlreadyExistsError("pool", pool.pool_id) from error

    async def save_pool(self, pool: Pool, now: datetime) -> None:
        # $unset: pools stored before per-rep round robin kept a `rotation` of their own.
        await self._store._pools.update_one(
            {"_id": pool.pool_id},
            {"$set": {**pool_document(pool), "updated_at": now}, "$unset": {"rotation": ""}},
            session=self._session,
        )

    async def demote_default_pools(self, keeping: str) -> None:
        await self._store._pools.update_many(
            {"is_default": True, "_id": {"$ne": keeping}},
            {"$set": {"is_default": False}},
            session=self._session,
        )


# --- documents <-> domain ---------------------------------------------------------------


def rep_document(rep: Rep) -> Document:
    fields = asdict(rep)
    del fields["rep_id"]
    return fields


def rep_from_document(doc: Mapping[str, Any]) -> Rep:
    return Rep(
        rep_id=doc["_id"],
        name=doc["name"],
        email=doc.get("email"),
        timezone=doc.get("timezone"),
        active=doc.get("active", True),
        away=doc.get("away", False),
    )


def pool_document(pool: Pool) -> Document:
    return {
        "name": pool.name,
        "rep_ids": list(pool.rep_ids),
        "match": asdict(pool.match),
        "priority": pool.priority,
        "is_default": pool.is_default,
    }


def pool_from_document(doc: Mapping[str, Any]) -> Pool:
    return Pool(
        pool_id=doc["_id"],
        name=doc["name"],
        rep_ids=tuple(doc.get("rep_ids", ())),
        match=PoolMatch(**doc.get("match", {})),
        priority=doc.get("priority", 0),
        is_default=doc.get("is_default", False),
    )


def known_lead_document(lead: KnownLead) -> Document:
    """A lead's document; an awaited lead's has no `status` (it is not a lead yet)."""
    if isinstance(lead, AwaitedLead):
        return {
            "contact": lead.contact.model_dump(),
            "inquiries": lead.inquiries,
            "last_inquiry_at": lead.last_inquiry_at,
            "erased_at": lead.erased_at,
            "updated_at": lead.updated_at,
        }
    return {
        "status": lead.status.value,
        "contact": lead.contact.model_dump(),
        "consent": lead.consent.model_dump(),
        "attribution": lead.attribution.model_dump(),
        "profile": lead.profile.model_dump(),
        "received_at": lead.received_at,
        "rep_id": lead.rep_id,
        "pool_id": lead.pool_id,
        "assigned_at": lead.assigned_at,
        "fit_score": lead.fit_score,
        "message": lead.message,
        "inquiries": lead.inquiries,
        "last_inquiry_at": lead.last_inquiry_at,
        "lost_level": lead.lost_level,
        "lost_reason": lead.lost_reason,
        "returned_by": list(lead.returned_by),
        "erased_at": lead.erased_at,
        "updated_at": lead.updated_at,
    }


def known_lead_from_document(doc: Mapping[str, Any]) -> KnownLead:
    if "status" not in doc:
        return AwaitedLead(
            lead_id=doc["_id"],
            contact=Contact.model_validate(doc.get("contact") or {}),
            inquiries=doc.get("inquiries", 0),
            last_inquiry_at=doc.get("last_inquiry_at"),
            erased_at=doc.get("erased_at"),
            updated_at=doc.get("updated_at"),
        )
    return lead_from_document(doc)


def lead_from_document(doc: Mapping[str, Any]) -> Lead:
    return Lead(
        lead_id=doc["_id"],
        status=LeadStatus(doc["status"]),
        contact=Contact.model_validate(doc["contact"]),
        consent=Consent.model_validate(doc["consent"]),
        attribution=Attribution.model_validate(doc["attribution"]),
        profile=Profile.model_validate(doc["profile"]),
        received_at=doc["received_at"],
        rep_id=doc.get("rep_id"),
        pool_id=doc.get("pool_id"),
        assigned_at=doc.get("assigned_at"),
        fit_score=doc.get("fit_score"),
        message=doc.get("message"),
        inquiries=doc.get("inquiries", 1),
        last_inquiry_at=doc.get("last_inquiry_at"),
        lost_level=doc.get("lost_level"),
        lost_reason=doc.get("lost_reason"),
        returned_by=tuple(doc.get("returned_by", ())),
        erased_at=doc.get("erased_at"),
        updated_at=doc.get("updated_at"),
    )
