"""Persistence of the ad-platform webhooks, in intake's database.

- `ad_leads`: one document per platform lead, `_id` = "meta:<leadgen_id>" or
  "google:<lead_id>". Written before the webhook is answered, so a delivery is never
  lost; `_id` uniqueness makes a platform's retries (Meta: up to 36 hours) no-ops. Its
  `status` goes `pending` -> `accepted` / `rejected` once the lead went through intake.
- `google_lead_forms`: the forms whose deliveries are accepted, with the SHA-256 of their
  `google_key`; `config_versions` holds the version the forms cache checks.
- The due work (chassis `due_work`) holding one item per pending lead: what the fetcher
  claims, so that one replica fetches each lead.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from leadflow.chassis.duework import ClaimedWork, DueWork, DueWorkStore
from leadflow.chassis.store import Collection as MongoCollection
from leadflow.chassis.store import (
    Database,
    Document,
    DuplicateKeyError,
    EventLedger,
    Session,
    find_in,
)

AD_LEAD_WORK = "ad-lead"
"""The due-work kind of a lead waiting to be fetched (Meta) or accepted (Google)."""

Platform = Literal["meta", "google"]

_GOOGLE_FORMS_VERSION = "google_lead_forms"


@dataclass(frozen=True, slots=True)
class AdDelivery:
    """One platform lead as delivered, to keep until it went through intake."""

    platform: Platform
    external_id: str
    received_at: datetime
    delivery: Mapping[str, Any]
    """What the platform sent about this lead (Meta: the ids; Google: the whole lead)."""
    is_test: bool = False

    @property
    def key(self) -> str:
        return ad_lead_key(self.platform, self.external_id)


@dataclass(frozen=True, slots=True)
class AdLeadSettlement:
    """What became of one platform lead in intake."""

    key: str
    status: Literal["accepted", "rejected"]
    outcome: str
    lead_id: str | None = None
    reasons: tuple[tuple[str, str], ...] = ()


def ad_lead_key(platform: Platform, external_id: str) -> str:
    return f"{platform}:{external_id}"


def work_key(key: str) -> str:
    return f"{AD_LEAD_WORK}:{key}"


def ad_lead_of(work_item_key: str) -> str:
    return work_item_key.removeprefix(f"{AD_LEAD_WORK}:")


class AdLeadStore(Protocol):
    async def ensure_indexes(self) -> None: ...

    async def record(self, deliveries: Sequence[AdDelivery], now: datetime) -> list[str]:
        """Keep each delivery not seen before and schedule its work, in one transaction;
        the keys of the ones that were new."""
        ...

    async def pending(self, keys: Collection[str]) -> dict[str, Document]: ...

    async def settle(
        self, settlements: Sequence[AdLeadSettlement], done: Sequence[ClaimedWork], now: datetime
    ) -> None:
        """Record what became of the leads and finish their work, in one transaction."""
        ...

    async def retry_later(self, claimed: Sequence[ClaimedWork], retry_at: datetime) -> None: ...

    async def give_up(self, claimed: Sequence[ClaimedWork], error: str, now: datetime) -> None:
        """Park the work (kept, visible, no longer retried); the lead stays `pending`."""
        ...

    async def note_failure(self, key: str, error: str, now: datetime) -> None: ...

    async def get(self, key: str) -> Document | None: ...

    async def save_google_form(
        self, form_id: str, key_digest: str, source: str | None, now: datetime
    ) -> None: ...

    async def google_forms_version(self) -> int: ...

    async def google_forms(self) -> dict[str, Document]: ...


class MongoAdLeadStore:
    def __init__(self, database: Database, ledger: EventLedger, due_work: DueWorkStore) -> None:
        self._ad_leads: MongoCollection = database["ad_leads"]
        self._forms: MongoCollection = database["google_lead_forms"]
        self._versions: MongoCollection = database["config_versions"]
        self._ledger = ledger
        self._due_work = due_work

    async def ensure_indexes(self) -> None:
        await self._ad_leads.create_index("status")
        await self._due_work.ensure_indexes()

    async def record(self, deliveries: Sequence[AdDelivery], now: datetime) -> list[str]:
        by_key = {d.key: d for d in deliveries}
        if not by_key:
            return []

        async def work(session: Session) -> tuple[list[str], list[Any]]:
            known = {
                doc["_id"]
                for doc in await find_in(
                    self._ad_leads, "_id", by_key, session=session, projection={"_id": 1}
                )
            }
            new = [d for key, d in by_key.items() if key not in known]
            if new:
                await self._ad_leads.insert_many(
                    [
                        {
                            "_id": d.key,
                            "platform": d.platform,
                            "external_id": d.external_id,
                            "status": "pending",
                            "received_at": d.received_at,
                            "delivery": dict(d.delivery),
                            "is_test": d.is_test,
                            "attempts": 0,
                        }
                        for d in new
                    ],
                    session=session,
                )
                await self._due_work.schedule(
                    [DueWork(key=work_key(d.key), kind=AD_LEAD_WORK, due_at=now) for d in new],
                    session=session,
                )
            return [d.key for d in new], []

        try:
            return await self._ledger.commit(work)
        except (DuplicateKeyError, BulkWriteError):
            # A concurrent delivery of the same lead committed first (a platform retry
            # racing the original): look again, it is now known.
            return await self._ledger.commit(work)

    async def pending(self, keys: Collection[str]) -> dict[str, Document]:
        documents = await find_in(self._ad_leads, "_id", keys, also={"status": "pending"})
        return {doc["_id"]: doc for doc in documents}

    async def settle(
        self, settlements: Sequence[AdLeadSettlement], done: Sequence[ClaimedWork], now: datetime
    ) -> None:
        async def work(session: Session) -> tuple[None, list[Any]]:
            if settlements:
                await self._ad_leads.bulk_write(
                    [
                        UpdateOne(
                            {"_id": s.key},
                            {
                                "$set": {
                                    "status": s.status,
                                    "outcome": s.outcome,
                                    "lead_id": s.lead_id,
                                    "reasons": [list(r) for r in s.reasons],
                                    "settled_at": now,
                                }
                            },
                        )
                        for s in settlements
                    ],
                    ordered=False,
                    session=session,
                )
            await self._due_work.finish(done, session=session)
            return None, []

        await self._ledger.commit(work)

    async def retry_later(self, claimed: Sequence[ClaimedWork], retry_at: datetime) -> None:
        await self._due_work.release(claimed, retry_at=retry_at)

    async def give_up(self, claimed: Sequence[ClaimedWork], error: str, now: datetime) -> None:
        await self._due_work.park(claimed, error=error, now=now)

    async def note_failure(self, key: str, error: str, now: datetime) -> None:
        await self._ad_leads.update_one(
            {"_id": key},
            {"$set": {"last_error": error, "last_error_at": now}, "$inc": {"attempts": 1}},
        )

    async def get(self, key: str) -> Document | None:
        return await self._ad_leads.find_one({"_id": key})

    async def save_google_form(
        self, form_id: str, key_digest: str, source: str | None, now: datetime
    ) -> None:
        async def work(session: Session) -> tuple[None, list[Any]]:
            await self._forms.update_one(
                {"_id": form_id},
                {"$set": {"key_sha256": key_digest, "source": source, "updated_at": now}},
                upsert=True,
                session=session,
            )
            await self._versions.update_one(
                {"_id": _GOOGLE_FORMS_VERSION},
                {"$inc": {"version": 1}},
                upsert=True,
                session=session,
            )
            return None, []

        await self._ledger.commit(work)

    async def google_forms_version(self) -> int:
        doc = await self._versions.find_one({"_id": _GOOGLE_FORMS_VERSION})
        return int(doc["version"]) if doc else 0

    async def google_forms(self) -> dict[str, Document]:
        return {doc["_id"]: doc async for doc in self._forms.find({})}
