"""The ad-lead store's contract, on MongoDB and in memory: a delivered lead is kept once
with its work scheduled, settling records the outcome and finishes the work together."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from leadflow.chassis.duework import ClaimedWork, DueWorkStore, LeaseLost
from leadflow.chassis.store import MongoDueWork
from services.intake.webhooks.store import (
    AD_LEAD_WORK,
    AdDelivery,
    AdLeadSettlement,
    AdLeadStore,
    MongoAdLeadStore,
    ad_lead_of,
)
from tests.contract.conftest import NOW, STORE_KINDS, mongo_parts
from tests.fakes.duework import InMemoryDueWork
from tests.fakes.intake_webhooks import InMemoryAdLeadStore

LEASE = timedelta(seconds=60)


@dataclass
class Subject:
    store: AdLeadStore
    due_work: DueWorkStore


@pytest.fixture(params=STORE_KINDS)
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        due_work = InMemoryDueWork()
        yield Subject(InMemoryAdLeadStore(due_work), due_work)
        return
    async with mongo_parts(request) as parts:
        mongo_due_work = MongoDueWork(parts.database)
        store = MongoAdLeadStore(parts.database, parts.ledger, mongo_due_work)
        await store.ensure_indexes()
        yield Subject(store, mongo_due_work)


def meta(leadgen_id: str) -> AdDelivery:
    return AdDelivery("meta", leadgen_id, NOW, {"leadgen_id": leadgen_id, "form_id": "5"})


async def claim(subject: Subject) -> list[ClaimedWork]:
    return await subject.due_work.claim(
        kinds={AD_LEAD_WORK}, now=NOW, limit=100, lease=LEASE, token=uuid.uuid4().hex
    )


async def test_a_delivered_lead_is_kept_once_with_its_work(subject: Subject) -> None:
    store = subject.store
    first = await store.record([meta("1"), meta("2"), meta("1")], NOW)
    again = await store.record([meta("2"), meta("3")], NOW)

    assert sorted(first) == ["meta:1", "meta:2"]
    assert again == ["meta:3"]
    claimed = await claim(subject)
    assert sorted(ad_lead_of(c.work.key) for c in claimed) == ["meta:1", "meta:2", "meta:3"]
    pending = await store.pending(["meta:1", "meta:2", "nope"])
    assert sorted(pending) == ["meta:1", "meta:2"]
    assert pending["meta:1"]["delivery"] == {"leadgen_id": "1", "form_id": "5"}
    assert pending["meta:1"]["status"] == "pending"


async def test_settling_records_outcomes_and_finishes_the_work(subject: Subject) -> None:
    store = subject.store
    await store.record([meta("1"), meta("2")], NOW)
    claimed = await claim(subject)

    await store.settle(
        [
            AdLeadSettlement("meta:1", "accepted", "created", lead_id="L1"),
            AdLeadSettlement("meta:2", "rejected", "rejected", reasons=(("phone", "bad"),)),
        ],
        claimed,
        NOW,
    )

    first, second = await store.get("meta:1"), await store.get("meta:2")
    assert first is not None and second is not None
    assert (first["status"], first["lead_id"]) == ("accepted", "L1")
    assert (second["status"], second["reasons"]) == ("rejected", [["phone", "bad"]])
    assert await store.pending(["meta:1", "meta:2"]) == {}
    assert await claim(subject) == []
    assert await store.record([meta("1")], NOW) == []  # a retry 36 hours on: still known


async def test_settling_work_another_replica_took_over_changes_nothing(subject: Subject) -> None:
    store = subject.store
    await store.record([meta("1")], NOW)
    stale = await claim(subject)
    await subject.due_work.release(stale, retry_at=NOW)  # as if its lease had lapsed
    await claim(subject)

    with pytest.raises(LeaseLost):
        await store.settle([AdLeadSettlement("meta:1", "accepted", "created", "L1")], stale, NOW)

    still = await store.get("meta:1")
    assert still is not None and still["status"] == "pending"


async def test_a_failed_fetch_is_noted_and_its_work_comes_back_later(subject: Subject) -> None:
    store = subject.store
    await store.record([meta("1")], NOW)
    claimed = await claim(subject)

    await store.note_failure("meta:1", "Graph API 500", NOW)
    await store.retry_later(claimed, NOW + timedelta(seconds=10))

    noted = await store.get("meta:1")
    assert noted is not None
    assert (noted["attempts"], noted["last_error"]) == (1, "Graph API 500")
    assert await claim(subject) == []
    later = await subject.due_work.claim(
        kinds={AD_LEAD_WORK}, now=NOW + timedelta(seconds=10), limit=10, lease=LEASE, token="t"
    )
    assert [c.attempts for c in later] == [1]


async def test_giving_up_parks_the_work_and_keeps_the_lead(subject: Subject) -> None:
    store = subject.store
    await store.record([meta("1")], NOW)
    await store.give_up(await claim(subject), "gone", NOW)

    assert await claim(subject) == []
    parked = await subject.due_work.parked(kinds={AD_LEAD_WORK})
    assert [ad_lead_of(p.work.key) for p in parked] == ["meta:1"]
    assert (await store.pending(["meta:1"])).keys() == {"meta:1"}


async def test_google_forms_are_kept_by_digest_with_a_version(subject: Subject) -> None:
    store = subject.store
    before = await store.google_forms_version()
    await store.save_google_form("40", "digest-1", "spring", NOW)
    await store.save_google_form("40", "digest-2", None, NOW)
    forms = await store.google_forms()
    assert forms["40"]["key_sha256"] == "digest-2"
    assert await store.google_forms_version() == before + 2
