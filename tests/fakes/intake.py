"""In-memory intake store: the same Protocol as `MongoIntakeStore`, held to the same contract
tests (tests/contract/test_intake_store.py)."""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from leadflow.chassis.store import Document
from services.intake.rules import AcceptancePlan, ContactKey, ContactKind, KnownLead
from services.intake.store import (
    HISTORY_KEPT,
    AcceptWork,
    ConfigKind,
    ContactKeyTaken,
    IdempotencyClaim,
    StoredResponse,
    config_id_of,
    contact_key_id,
    conversion_fields,
    erased_fields,
    history_documents,
    known_lead,
    lead_document,
    merge_fields,
)
from shared.events import Event, LeadConvertedV1, LeadErasedV1
from tests.fakes.ledger import InMemoryLedger

T = TypeVar("T")


@dataclass
class _Tables:
    leads: dict[str, Document] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    """contact key id -> lead id"""
    external: dict[str, str] = field(default_factory=dict)
    idempotency: dict[str, Document] = field(default_factory=dict)
    config: dict[str, tuple[str, Document]] = field(default_factory=dict)
    config_version: int = 0


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

    async def key_owners(self, keys: Collection[ContactKey]) -> dict[ContactKey, str]:
        return await InMemoryAcceptingBatch(self.tables).key_owners(keys)

    async def erase(self, lead_id: str, requested_by: str, now: datetime) -> bool:
        async def work() -> tuple[bool, Sequence[Event]]:
            lead = self.tables.leads.get(lead_id)
            if lead is None or lead.get("status") == "erased":
                return False, []
            self.tables.keys = {k: v for k, v in self.tables.keys.items() if v != lead_id}
            for path, value in erased_fields(lead, now).items():
                _set_path(lead, path, value)
            return True, [LeadErasedV1(lead_id=lead_id, occurred_at=now, requested_by=requested_by)]

        return await self.ledger.commit(work)

    async def record_conversions(self, events: Sequence[LeadConvertedV1]) -> None:
        async def work(fresh: list[LeadConvertedV1]) -> tuple[None, Sequence[Event]]:
            for event in fresh:
                lead = self.tables.leads.get(event.lead_id)
                if lead is not None and lead.get("status") == "lead":
                    lead.update(conversion_fields(event))
            return None, []

        await self.ledger.commit_batch(events, work)

    async def claim_request(
        self, key: str, fingerprint: str, now: datetime, *, stale_after: timedelta
    ) -> IdempotencyClaim:
        stored = self.tables.idempotency.get(key)
        if stored is None or (
            stored["state"] == "pending" and stored["created_at"] <= now - stale_after
        ):
            self.tables.idempotency[key] = {
                "fingerprint": fingerprint,
                "state": "pending",
                "created_at": now,
            }
            return "claimed"
        if stored["state"] == "done":
            return StoredResponse(stored["fingerprint"], stored["status_code"], stored["body"])
        return "in_progress"

    async def complete_request(self, key: str, response: StoredResponse) -> None:
        self.tables.idempotency.setdefault(key, {}).update(
            state="done",
            fingerprint=response.fingerprint,
            status_code=response.status_code,
            body=copy.deepcopy(response.body),
        )

    async def release_request(self, key: str) -> None:
        if self.tables.idempotency.get(key, {}).get("state") == "pending":
            del self.tables.idempotency[key]

    async def config_version(self) -> int:
        return self.tables.config_version

    async def list_config(self, kind: ConfigKind) -> list[Document]:
        return [
            copy.deepcopy(doc)
            for config_id, (k, doc) in sorted(self.tables.config.items())
            if k == kind
        ]

    async def get_config(self, kind: ConfigKind, config_id: str) -> Document | None:
        found = self.tables.config.get(config_id_of(kind, config_id))
        return None if found is None else copy.deepcopy(found[1])

    async def put_config(
        self, kind: ConfigKind, config_id: str, document: Document, events: Sequence[Event] = ()
    ) -> None:
        async def work() -> tuple[None, Sequence[Event]]:
            self.tables.config[config_id_of(kind, config_id)] = (kind, copy.deepcopy(document))
            self.tables.config_version += 1
            return None, events

        await self.ledger.commit(work)

    async def delete_config(self, kind: ConfigKind, config_id: str) -> bool:
        if self.tables.config.pop(config_id_of(kind, config_id), None) is None:
            return False
        self.tables.config_version += 1
        return True


def _set_path(document: Document, path: str, value: object) -> None:
    *parents, last = path.split(".")
    for name in parents:
        document = document.setdefault(name, {})
    document[last] = value


class InMemoryAcceptingBatch:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def key_owners(self, keys: Collection[ContactKey]) -> dict[ContactKey, str]:
        known = self._tables.keys
        return {key: known[contact_key_id(key)] for key in keys if contact_key_id(key) in known}

    async def known(self, lead_ids: Collection[str]) -> dict[str, KnownLead]:
        leads = self._tables.leads
        return {i: known_lead(leads[i]) for i in lead_ids if i in leads}

    async def seen_external_ids(self, ids: Collection[str]) -> dict[str, str]:
        seen = self._tables.external
        return {i: seen[i] for i in ids if i in seen}

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
        for external_id, lead_id in plan.new_external_ids.items():
            if external_id in tables.external:
                raise ContactKeyTaken(external_id)
            tables.external[external_id] = lead_id
        for merge in plan.merges:
            stored = tables.leads.get(merge.lead_id)
            if stored is None:
                continue  # as an update of a missing document: nothing to change
            stored.update(merge_fields(merge))
            stored["last_inquiry_at"] = max(stored["last_inquiry_at"], merge.last_inquiry_at)
            stored["inquiries"] += merge.inquiries
            history = [*stored.get("history", []), *history_documents(merge.history)]
            stored["history"] = history[-HISTORY_KEPT:]
