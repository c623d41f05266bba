"""Intake's persistence: leads and the contact directory, in the `leadflow_intake` database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from leadflow.chassis.store import (
    Collection,
    Database,
    Document,
    DuplicateKeyError,
    EventLedger,
    Session,
)
from services.intake.rules import contact_keys, merge_contact
from shared.events import (
    Attribution,
    Consent,
    Contact,
    Event,
    LeadMergedV1,
    LeadReceivedV1,
    Profile,
)


@dataclass(frozen=True, slots=True)
class NewLead:
    lead_id: str
    contact: Contact
    attribution: Attribution
    consent: Consent
    profile: Profile
    message: str | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Acceptance:
    lead_id: str
    outcome: Literal["received", "merged"]
    matched_on: Literal["phone", "email"] | None = None


class IntakeStore(Protocol):
    async def ensure_indexes(self) -> None: ...
    async def accept(self, lead: NewLead) -> Acceptance: ...
    async def get(self, lead_id: str) -> Document | None: ...
    async def find_by_contact(self, kind: str, value: str) -> Document | None: ...


class MongoIntakeStore:
    def __init__(self, database: Database, ledger: EventLedger) -> None:
        self._leads: Collection = database["leads"]
        # _id = "<kind>:<value>" (e.g. "phone:+15551234567"): MongoDB's _id uniqueness
        # makes two simultaneous first inquiries from one contact impossible.
        self._keys: Collection = database["contact_keys"]
        self._ledger = ledger

    async def ensure_indexes(self) -> None:
        await self._leads.create_index("received_at")

    async def accept(self, lead: NewLead) -> Acceptance:
        """Store a new lead, or merge a repeat inquiry into the lead it matches."""
        try:
            return await self._ledger.commit(lambda session: self._accept(session, lead))
        except DuplicateKeyError:
            # A simultaneous first inquiry from the same contact won the race; this one
            # now finds its key and merges into it.
            return await self._ledger.commit(lambda session: self._accept(session, lead))

    async def _accept(self, session: Session, lead: NewLead) -> tuple[Acceptance, list[Event]]:
        keys = contact_keys(lead.contact)
        for kind, value in keys:
            match = await self._keys.find_one({"_id": f"{kind}:{value}"}, session=session)
            if match is not None:
                return await self._merge(session, lead, match["lead_id"], kind)
        await self._leads.insert_one(
            {
                "_id": lead.lead_id,
                "contact": lead.contact.model_dump(),
                "attribution": lead.attribution.model_dump(),
                "consent": lead.consent.model_dump(),
                "profile": lead.profile.model_dump(),
                "message": lead.message,
                "received_at": lead.received_at,
                "last_inquiry_at": lead.received_at,
                "inquiries": 1,
            },
            session=session,
        )
        await self._keys.insert_many(
            [{"_id": f"{kind}:{value}", "lead_id": lead.lead_id} for kind, value in keys],
            session=session,
        )
        event = LeadReceivedV1(
            lead_id=lead.lead_id,
            occurred_at=lead.received_at,
            contact=lead.contact,
            attribution=lead.attribution,
            consent=lead.consent,
            profile=lead.profile,
            message=lead.message,
        )
        return Acceptance(lead.lead_id, "received"), [event]

    async def _merge(
        self, session: Session, lead: NewLead, existing_id: str, matched_on: str
    ) -> tuple[Acceptance, list[Event]]:
        kind: Literal["phone", "email"] = "phone" if matched_on == "phone" else "email"
        existing = await self._leads.find_one({"_id": existing_id}, session=session)
        known = Contact.model_validate(existing["contact"]) if existing else lead.contact
        merged = merge_contact(known, lead.contact)
        await self._leads.update_one(
            {"_id": existing_id},
            {
                "$set": {"contact": merged.model_dump(), "last_inquiry_at": lead.received_at},
                "$inc": {"inquiries": 1},
            },
            session=session,
        )
        for k, v in contact_keys(merged):
            if (k, v) in contact_keys(known):
                continue
            # The new detail may already identify another lead; that lead keeps it.
            await self._keys.update_one(
                {"_id": f"{k}:{v}"},
                {"$setOnInsert": {"lead_id": existing_id}},
                upsert=True,
                session=session,
            )
        event = LeadMergedV1(
            lead_id=existing_id,
            occurred_at=lead.received_at,
            contact=merged,
            attribution=lead.attribution,
            matched_on=kind,
            message=lead.message,
        )
        return Acceptance(existing_id, "merged", kind), [event]

    async def get(self, lead_id: str) -> Document | None:
        return await self._leads.find_one({"_id": lead_id})

    async def find_by_contact(self, kind: str, value: str) -> Document | None:
        key = await self._keys.find_one({"_id": f"{kind}:{value}"})
        return None if key is None else await self.get(key["lead_id"])
