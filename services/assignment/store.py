"""Assignment's persistence: reps, pools and leads, in the `leadflow_assignment` database.

Every change a lead goes through is one `EventLedger.commit`: the lead, the pool's rotation
and the events the change implies are saved together, and a consumed event is recorded so
its redelivery changes nothing. The decisions themselves are made in `rules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict

import structlog
from pymongo import ASCENDING, DESCENDING, ReturnDocument

from leadflow.chassis.store import (
    Collection,
    Database,
    Document,
    DuplicateKeyError,
    EventLedger,
    Session,
)
from services.assignment.rules import (
    ROUND_ROBIN,
    AlreadyExistsError,
    Lead,
    LeadStatus,
    NotFoundError,
    NotOwnerError,
    Pool,
    PoolMatch,
    Rep,
    Routing,
    TransitionRefusedError,
    Turn,
    UnknownRepsError,
    choose_pool,
    ensure_returnable,
    may_work,
    route_in_pool,
    status_after_loss,
)
from shared.events import (
    Attribution,
    Consent,
    Contact,
    Event,
    LeadAssignedV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
    LeadReturnedToPoolV1,
    LossLevel,
    Profile,
)

log = structlog.get_logger(__name__)


class RepChanges(TypedDict, total=False):
    name: str
    email: str | None
    timezone: str | None
    active: bool
    away: bool


class PoolChanges(TypedDict, total=False):
    name: str
    rep_ids: tuple[str, ...]
    match: PoolMatch
    priority: int
    is_default: bool


@dataclass(frozen=True, slots=True)
class LeadQuery:
    status: LeadStatus | None = None
    rep_id: str | None = None
    pool_id: str | None = None
    limit: int = 50


class LeadIntake(Protocol):
    """The use cases the Kafka handlers call, one per consumed event."""

    async def route_new_lead(self, event: LeadReceivedV1, now: datetime) -> Lead: ...
    async def record_repeat_inquiry(self, event: LeadMergedV1, now: datetime) -> Lead | None: ...
    async def forget_contact(self, event: LeadErasedV1, now: datetime) -> None: ...


class AssignmentStore(LeadIntake, Protocol):
    async def ensure_indexes(self) -> None: ...

    async def add_rep(self, rep: Rep, now: datetime) -> Rep: ...
    async def list_reps(self) -> list[Rep]: ...
    async def get_rep(self, rep_id: str) -> Rep | None: ...
    async def change_rep(self, rep_id: str, changes: RepChanges, now: datetime) -> Rep: ...

    async def add_pool(self, pool: Pool, now: datetime) -> Pool: ...
    async def list_pools(self) -> list[Pool]: ...
    async def get_pool(self, pool_id: str) -> Pool | None: ...
    async def change_pool(self, pool_id: str, changes: PoolChanges, now: datetime) -> Pool: ...

    async def list_leads(self, query: LeadQuery) -> list[Lead]: ...
    async def get_lead(self, lead_id: str) -> Lead | None: ...
    async def mark_lost(
        self,
        lead_id: str,
        level: LossLevel,
        reason: str | None,
        acting_rep: str | None,
        now: datetime,
    ) -> Lead: ...
    async def return_to_pool(
        self, lead_id: str, reason: str | None, acting_rep: str | None, now: datetime
    ) -> Lead: ...


class MongoAssignmentStore:
    def __init__(self, database: Database, ledger: EventLedger) -> None:
        self._reps: Collection = database["reps"]
        self._pools: Collection = database["pools"]
        self._leads: Collection = database["leads"]
        self._ledger = ledger

    async def ensure_indexes(self) -> None:
        for field in ("rep_id", "pool_id", "status"):
            await self._leads.create_index([(field, ASCENDING), ("received_at", DESCENDING)])
        await self._leads.create_index([("received_at", DESCENDING)])

    # --- reps -----------------------------------------------------------------------

    async def add_rep(self, rep: Rep, now: datetime) -> Rep:
        try:
            await self._reps.insert_one(
                {"_id": rep.rep_id, **_rep_fields(rep), "created_at": now, "updated_at": now}
            )
        except DuplicateKeyError as error:
            raise AlreadyExistsError("rep", rep.rep_id) from error
        return rep

    async def list_reps(self) -> list[Rep]:
        return [_rep_from(doc) async for doc in self._reps.find({}).sort("created_at", ASCENDING)]

    async def get_rep(self, rep_id: str) -> Rep | None:
        doc = await self._reps.find_one({"_id": rep_id})
        return None if doc is None else _rep_from(doc)

    async def change_rep(self, rep_id: str, changes: RepChanges, now: datetime) -> Rep:
        doc = await self._reps.find_one_and_update(
            {"_id": rep_id},
            {"$set": {**changes, "updated_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise NotFoundError("rep", rep_id)
        return _rep_from(doc)

    # --- pools ----------------------------------------------------------------------

    async def add_pool(self, pool: Pool, now: datetime) -> Pool:
        async def work(session: Session) -> tuple[Pool, list[Event]]:
            await self._require_reps(pool.rep_ids, session)
            if pool.is_default:
                await self._clear_default(pool.pool_id, session)
            await self._pools.insert_one(
                {"_id": pool.pool_id, **_pool_fields(pool), "created_at": now, "updated_at": now},
                session=session,
            )
            return pool, []

        try:
            return await self._ledger.commit(work)
        except DuplicateKeyError as error:
            raise AlreadyExistsError("pool", pool.pool_id) from error

    async def list_pools(self) -> list[Pool]:
        cursor = self._pools.find({}).sort([("priority", DESCENDING), ("_id", ASCENDING)])
        return [_pool_from(doc) async for doc in cursor]

    async def get_pool(self, pool_id: str) -> Pool | None:
        doc = await self._pools.find_one({"_id": pool_id})
        return None if doc is None else _pool_from(doc)

    async def change_pool(self, pool_id: str, changes: PoolChanges, now: datetime) -> Pool:
        fields: Document = {key: value for key, value in changes.items() if key != "match"}
        if "rep_ids" in changes:
            fields["rep_ids"] = list(changes["rep_ids"])
        if "match" in changes:
            fields["match"] = asdict(changes["match"])

        async def work(session: Session) -> tuple[Pool, list[Event]]:
            if "rep_ids" in changes:
                await self._require_reps(changes["rep_ids"], session)
            if changes.get("is_default"):
                await self._clear_default(pool_id, session)
            doc = await self._pools.find_one_and_update(
                {"_id": pool_id},
                {"$set": {**fields, "updated_at": now}},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if doc is None:
                raise NotFoundError("pool", pool_id)
            return _pool_from(doc), []

        return await self._ledger.commit(work)

    async def _require_reps(self, rep_ids: tuple[str, ...], session: Session) -> None:
        if not rep_ids:
            return
        cursor = self._reps.find({"_id": {"$in": list(rep_ids)}}, {"_id": 1}, session=session)
        known = {doc["_id"] async for doc in cursor}
        if unknown := set(rep_ids) - known:
            raise UnknownRepsError(unknown)

    async def _clear_default(self, keep_pool_id: str, session: Session) -> None:
        # One default pool: naming a new one demotes the old, as a CRM's "make default" does.
        await self._pools.update_many(
            {"is_default": True, "_id": {"$ne": keep_pool_id}},
            {"$set": {"is_default": False}},
            session=session,
        )

    # --- routing (consumed events) --------------------------------------------------

    async def route_new_lead(self, event: LeadReceivedV1, now: datetime) -> Lead:
        """Store a received lead and deal it to a rep in its pool, emitting `LeadAssignedV1`.

        Raises `AlreadyHandled` when `event` was handled before.
        """

        async def work(session: Session) -> tuple[Lead, list[Event]]:
            known = await self._leads.find_one({"_id": event.lead_id}, session=session)
            if known is not None and not _is_early_inquiry(known):
                log.warning("lead received twice; its first routing stands", lead_id=event.lead_id)
                return _lead_from(known), []
            early = known or {}
            pools = [_pool_from(doc) async for doc in self._pools.find({}, session=session)]
            pool = choose_pool(event.profile, pools)
            routing = route_in_pool(pool, await self._reps_of(pool, session), now)
            lead = Lead(
                lead_id=event.lead_id,
                status=routing.status,
                # A repeat inquiry read before the lead itself carries the newer contact.
                contact=Contact.model_validate(early.get("contact") or event.contact),
                consent=event.consent,
                attribution=event.attribution,
                profile=event.profile,
                received_at=event.occurred_at,
                rep_id=routing.rep.rep_id if routing.rep else None,
                pool_id=routing.pool.pool_id if routing.pool else None,
                assigned_at=now if routing.rep else None,
                fit_score=event.fit_score,
                message=event.message,
                inquiries=1 + early.get("inquiries", 0),
                last_inquiry_at=max(event.occurred_at, early.get("last_inquiry_at", _EPOCH)),
                updated_at=now,
            )
            await self._leads.replace_one(
                {"_id": lead.lead_id}, _lead_fields(lead), upsert=True, session=session
            )
            await self._save_rotation(routing, session)
            return lead, _assigned_events(lead, routing, previous_rep_id=None)

        return await self._ledger.commit(work, consumed=event)

    async def record_repeat_inquiry(self, event: LeadMergedV1, now: datetime) -> Lead | None:
        """Count a repeat inquiry and take the merged contact; the lead keeps its rep.

        Kafka keeps order per topic, not across topics, so a repeat inquiry can be read
        before the lead it repeats: it is then kept as an early inquiry, which the lead
        takes in when it arrives. Returns None in that case.
        """

        async def work(session: Session) -> tuple[Lead | None, list[Event]]:
            doc = await self._leads.find_one_and_update(
                {"_id": event.lead_id},
                {
                    "$set": {"contact": event.contact.model_dump(), "updated_at": now},
                    "$max": {"last_inquiry_at": event.occurred_at},
                    "$inc": {"inquiries": 1},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            return (None if doc is None or _is_early_inquiry(doc) else _lead_from(doc)), []

        return await self._ledger.commit(work, consumed=event)

    async def forget_contact(self, event: LeadErasedV1, now: datetime) -> None:
        """Right to erasure: drop the lead's personal data, keep its anonymous history."""

        async def work(session: Session) -> tuple[None, list[Event]]:
            await self._leads.update_one(
                {"_id": event.lead_id},
                {
                    "$set": {
                        "contact": Contact().model_dump(),
                        "message": None,
                        "lost_reason": None,
                        "erased_at": now,
                        "updated_at": now,
                    }
                },
                session=session,
            )
            return None, []

        await self._ledger.commit(work, consumed=event)

    # --- leads (HTTP) ---------------------------------------------------------------

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
        return [_lead_from(doc) async for doc in cursor]

    async def get_lead(self, lead_id: str) -> Lead | None:
        doc = await self._leads.find_one({"_id": lead_id})
        return None if doc is None or _is_early_inquiry(doc) else _lead_from(doc)

    async def mark_lost(
        self,
        lead_id: str,
        level: LossLevel,
        reason: str | None,
        acting_rep: str | None,
        now: datetime,
    ) -> Lead:
        """Close the lead (level 1) or hand it to nurture (2, 3), emitting `LeadLostV1`."""

        async def work(session: Session) -> tuple[Lead, list[Event]]:
            lead = await self._lead_to_work(lead_id, acting_rep, session)
            status = status_after_loss(lead.status, level)
            changes: Document = {
                "status": status.value,
                "lost_level": level,
                "lost_reason": reason,
                "updated_at": now,
            }
            await self._update_if_unchanged(lead, changes, session)
            event = LeadLostV1(
                lead_id=lead_id,
                occurred_at=now,
                rep_id=lead.rep_id,
                level=level,
                reason=reason,
                contact=lead.contact,
                consent=lead.consent,
            )
            return _lead_from({**_lead_fields(lead), "_id": lead_id, **changes}), [event]

        return await self._ledger.commit(work)

    async def return_to_pool(
        self, lead_id: str, reason: str | None, acting_rep: str | None, now: datetime
    ) -> Lead:
        """Give the lead back to its pool and deal it to another rep, if one is free."""

        async def work(session: Session) -> tuple[Lead, list[Event]]:
            lead = await self._lead_to_work(lead_id, acting_rep, session)
            ensure_returnable(lead.status)
            pool_doc = (
                await self._pools.find_one({"_id": lead.pool_id}, session=session)
                if lead.pool_id
                else None
            )
            pool = None if pool_doc is None else _pool_from(pool_doc)
            reps = await self._reps_of(pool, session)
            returning_rep = lead.rep_id or ""
            returned_by = [*lead.returned_by, returning_rep]
            routing = route_in_pool(pool, reps, now, passing_over=returned_by)
            changes: Document = {
                "status": routing.status.value,
                "rep_id": routing.rep.rep_id if routing.rep else None,
                "assigned_at": now if routing.rep else None,
                "returned_by": returned_by,
                "updated_at": now,
            }
            await self._update_if_unchanged(lead, changes, session)
            await self._save_rotation(routing, session)
            returned = _lead_from({**_lead_fields(lead), "_id": lead_id, **changes})
            events: list[Event] = [
                LeadReturnedToPoolV1(
                    lead_id=lead_id,
                    occurred_at=now,
                    rep_id=returning_rep,
                    pool_id=lead.pool_id,
                    reason=reason,
                ),
                *_assigned_events(returned, routing, previous_rep_id=returning_rep),
            ]
            return returned, events

        return await self._ledger.commit(work)

    async def _lead_to_work(self, lead_id: str, acting_rep: str | None, session: Session) -> Lead:
        doc = await self._leads.find_one({"_id": lead_id}, session=session)
        if doc is None or _is_early_inquiry(doc):
            raise NotFoundError("lead", lead_id)
        lead = _lead_from(doc)
        if not may_work(lead, acting_rep):
            raise NotOwnerError(lead_id)
        return lead

    async def _update_if_unchanged(self, lead: Lead, changes: Document, session: Session) -> None:
        # The transaction already isolates the read; the status guard also keeps the
        # decision honest on a server whose transactions are weaker than MongoDB's.
        result = await self._leads.update_one(
            {"_id": lead.lead_id, "status": lead.status.value, "rep_id": lead.rep_id},
            {"$set": changes},
            session=session,
        )
        if result.matched_count == 0:
            raise TransitionRefusedError(lead.status, "changed now: another change came first")

    async def _reps_of(self, pool: Pool | None, session: Session) -> dict[str, Rep]:
        if pool is None or not pool.rep_ids:
            return {}
        cursor = self._reps.find({"_id": {"$in": list(pool.rep_ids)}}, session=session)
        return {doc["_id"]: _rep_from(doc) async for doc in cursor}

    async def _save_rotation(self, routing: Routing, session: Session) -> None:
        if routing.pool is None or routing.rep is None:
            return
        await self._pools.update_one(
            {"_id": routing.pool.pool_id},
            {"$set": {"rotation": [asdict(turn) for turn in routing.rotation]}},
            session=session,
        )


def _assigned_events(lead: Lead, routing: Routing, previous_rep_id: str | None) -> list[Event]:
    if routing.rep is None:
        log.info(
            "lead left unassigned",
            lead_id=lead.lead_id,
            pool_id=lead.pool_id,
            reason="no available rep" if routing.pool else "no pool matches",
        )
        return []
    return [
        LeadAssignedV1(
            lead_id=lead.lead_id,
            occurred_at=lead.assigned_at or lead.received_at,
            rep_id=routing.rep.rep_id,
            pool_id=routing.pool.pool_id if routing.pool else None,
            strategy=ROUND_ROBIN,
            previous_rep_id=previous_rep_id,
            received_at=lead.received_at,
        )
    ]


# --- documents <-> domain ---------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _is_early_inquiry(doc: Mapping[str, Any]) -> bool:
    """A repeat inquiry whose lead has not been received yet: no status, not a lead."""
    return "status" not in doc


def _rep_fields(rep: Rep) -> Document:
    fields = asdict(rep)
    del fields["rep_id"]
    return fields


def _rep_from(doc: Mapping[str, Any]) -> Rep:
    return Rep(
        rep_id=doc["_id"],
        name=doc["name"],
        email=doc.get("email"),
        timezone=doc.get("timezone"),
        active=doc.get("active", True),
        away=doc.get("away", False),
    )


def _pool_fields(pool: Pool) -> Document:
    return {
        "name": pool.name,
        "rep_ids": list(pool.rep_ids),
        "match": asdict(pool.match),
        "priority": pool.priority,
        "is_default": pool.is_default,
        "rotation": [asdict(turn) for turn in pool.rotation],
    }


def _pool_from(doc: Mapping[str, Any]) -> Pool:
    return Pool(
        pool_id=doc["_id"],
        name=doc["name"],
        rep_ids=tuple(doc.get("rep_ids", ())),
        match=PoolMatch(**doc.get("match", {})),
        priority=doc.get("priority", 0),
        is_default=doc.get("is_default", False),
        rotation=tuple(Turn(**turn) for turn in doc.get("rotation", ())),
    )


def _lead_fields(lead: Lead) -> Document:
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
        "updated_at": lead.updated_at,
    }


def _lead_from(doc: Mapping[str, Any]) -> Lead:
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
        updated_at=doc.get("updated_at"),
    )
