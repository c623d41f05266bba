"""In-memory ad-lead store: the same Protocol as `MongoAdLeadStore`, held to the same
contract tests (tests/contract/test_intake_ad_lead_store.py). Its due work is the chassis'
in-memory twin."""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from datetime import datetime

from leadflow.chassis.duework import ClaimedWork, DueWork
from leadflow.chassis.store import Document
from services.intake.webhooks.store import (
    AD_LEAD_WORK,
    AdDelivery,
    AdLeadSettlement,
    work_key,
)
from tests.fakes.duework import InMemoryDueWork


class InMemoryAdLeadStore:
    def __init__(self, due_work: InMemoryDueWork | None = None) -> None:
        self.due_work = due_work or InMemoryDueWork()
        self.ad_leads: dict[str, Document] = {}
        self.forms: dict[str, Document] = {}
        self.forms_version = 0

    async def ensure_indexes(self) -> None:
        return None

    async def record(self, deliveries: Sequence[AdDelivery], now: datetime) -> list[str]:
        new = {d.key: d for d in deliveries if d.key not in self.ad_leads}
        for key, d in new.items():
            self.ad_leads[key] = {
                "_id": key,
                "platform": d.platform,
                "external_id": d.external_id,
                "status": "pending",
                "received_at": d.received_at,
                "delivery": copy.deepcopy(dict(d.delivery)),
                "is_test": d.is_test,
                "attempts": 0,
            }
        await self.due_work.schedule(
            [DueWork(key=work_key(key), kind=AD_LEAD_WORK, due_at=now) for key in new]
        )
        return list(new)

    async def pending(self, keys: Collection[str]) -> dict[str, Document]:
        return {
            key: copy.deepcopy(self.ad_leads[key])
            for key in keys
            if key in self.ad_leads and self.ad_leads[key]["status"] == "pending"
        }

    async def settle(
        self, settlements: Sequence[AdLeadSettlement], done: Sequence[ClaimedWork], now: datetime
    ) -> None:
        # `finish` checks every claim before it deletes anything: a LeaseLost changes nothing.
        await self.due_work.finish(done)
        for s in settlements:
            self.ad_leads[s.key].update(
                status=s.status,
                outcome=s.outcome,
                lead_id=s.lead_id,
                reasons=[list(r) for r in s.reasons],
                settled_at=now,
            )

    async def retry_later(self, claimed: Sequence[ClaimedWork], retry_at: datetime) -> None:
        await self.due_work.release(claimed, retry_at=retry_at)

    async def give_up(self, claimed: Sequence[ClaimedWork], error: str, now: datetime) -> None:
        await self.due_work.park(claimed, error=error, now=now)

    async def note_failure(self, key: str, error: str, now: datetime) -> None:
        doc = self.ad_leads.get(key)
        if doc is not None:
            doc.update(last_error=error, last_error_at=now, attempts=doc["attempts"] + 1)

    async def get(self, key: str) -> Document | None:
        doc = self.ad_leads.get(key)
        return None if doc is None else copy.deepcopy(doc)

    async def save_google_form(
        self, form_id: str, key_digest: str, source: str | None, now: datetime
    ) -> None:
        self.forms[form_id] = {
            "_id": form_id,
            "key_sha256": key_digest,
            "source": source,
            "updated_at": now,
        }
        self.forms_version += 1

    async def google_forms_version(self) -> int:
        return self.forms_version

    async def google_forms(self) -> dict[str, Document]:
        return copy.deepcopy(self.forms)
