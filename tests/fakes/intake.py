"""In-memory intake store: the same Protocol as `MongoIntakeStore`, held to the same contract
tests (tests/contract/test_intake_store.py)."""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TypeVar

from leadflow.chassis.store import Document
from services.intake.rules import AcceptancePlan, ContactKey, ContactKind
from services.intake.store import AcceptWork, ContactKeyTaken, contact_key_id, lead_document
from shared.events import Contact
from tests.fakes.ledger import InMemoryLedger

T = TypeVar("T")


@dataclass
class _Tables:
    leads: dict[str, Document] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    """contact key id -> lead id"""


class InMemoryIntakeStore:
    def __init__(self) -> None:
        self.tables = _Tables()
        self.ledger = InMemoryLedger(self.tables)

    async def ensure_indexes(self) -> None:
        return None

    async def accept_batch(self, work: AcceptWork[T]) -> T:
        return await self.ledger.commit(lambda: work(InMemoryAcceptingBatch(self.tables)))

    async def get(self, lead_id: str) -> Document | None:
        stored = self.tables.leads.get(lead_id)
        return None if stored is None else copy.deepcopy(stored)

    async def find_by_contact(self, kind: ContactKind, value: str) -> Document | None:
        lead_id = self.tables.keys.get(contact_key_id((kind, value)))
        return None if lead_id is None else await self.get(lead_id)


class InMemoryAcceptingBatch:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def key_owners(self, keys: Collection[ContactKey]) -> dict[ContactKey, str]:
        known = self._tables.keys
        return {key: known[contact_key_id(key)] for key in keys if contact_key_id(key) in known}

    async def contacts(self, lead_ids: Collection[str]) -> dict[str, Contact]:
        leads = self._tables.leads
        return {i: Contact.model_validate(leads[i]["contact"]) for i in lead_ids if i in leads}

    async def save(self, plan: AcceptancePlan) -> None:
        tables = self._tables
        for lead in plan.new_leads:
            if lead.lead_id in tables.leads:
                raise KeyError(f"duplicate lead id {lead.lead_id}")
            tables.leads[lead.lead_id] = lead_document(lead)
        for key, lead_id in plan.new_keys.items():
            if contact_key_id(key) in tables.keys:
                raise ContactKeyTaken(contact_key_id(key))
            tables.keys[contact_key_id(key)] = lead_id
        for merge in plan.merges:
            stored = tables.leads.get(merge.lead_id)
            if stored is None:
                continue  # as an update of a missing document: nothing to change
            stored["contact"] = merge.contact.model_dump()
            stored["last_inquiry_at"] = max(stored["last_inquiry_at"], merge.last_inquiry_at)
            stored["inquiries"] += merge.inquiries
