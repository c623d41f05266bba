"""The intake store contract, on MongoDB and in memory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from services.intake.rules import (
    Acceptance,
    AcceptancePlan,
    ContactKey,
    LeadMerge,
    NewLead,
    plan_acceptance,
)
from services.intake.store import (
    AcceptingBatch,
    ContactKeyTaken,
    IntakeStore,
    MongoIntakeStore,
)
from services.intake.usecases import AcceptLeads
from shared.events import Attribution, Consent, Contact, Event, Profile
from tests.contract.conftest import NOW, STORE_KINDS, mongo_parts
from tests.fakes.intake import InMemoryIntakeStore


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[IntakeStore]:
    if request.param == "memory":
        yield InMemoryIntakeStore()
        return
    async with mongo_parts(request) as parts:
        mongo = MongoIntakeStore(parts.database, parts.ledger)
        await mongo.ensure_indexes()
        yield mongo


def new_lead(
    *, phone: str | None = None, email: str | None = None, name: str | None = None
) -> NewLead:
    return NewLead(
        lead_id=uuid.uuid4().hex,
        contact=Contact(name=name, phone=phone, email=email),
        attribution=Attribution(source="website", channel="web_form"),
        consent=Consent(email=True),
        profile=Profile(region="west"),
        message="call me",
        received_at=NOW,
    )


async def save(store: IntakeStore, plan: AcceptancePlan) -> None:
    async def work(batch: AcceptingBatch) -> tuple[None, list[Event]]:
        await batch.save(plan)
        return None, []

    await store.accept_batch(work)


async def read(
    store: IntakeStore, keys: set[ContactKey]
) -> tuple[dict[ContactKey, str], dict[str, Contact]]:
    async def work(
        batch: AcceptingBatch,
    ) -> tuple[tuple[dict[ContactKey, str], dict[str, Contact]], list[Event]]:
        owners = await batch.key_owners(keys)
        return (owners, await batch.contacts(set(owners.values()))), []

    return await store.accept_batch(work)


def received(*leads: NewLead) -> AcceptancePlan:
    return plan_acceptance(leads, {}, {})


async def test_new_leads_are_found_by_id_and_by_each_contact_key(store: IntakeStore) -> None:
    dana = new_lead(phone="+14155550100", email="dana@example.com", name="Dana")
    lee = new_lead(email="lee@example.com")
    await save(store, received(dana, lee))

    stored = await store.get(dana.lead_id)
    assert stored is not None
    assert stored["contact"]["name"] == "Dana"
    assert stored["attribution"]["channel"] == "web_form"
    assert stored["consent"]["email"] is True
    assert stored["profile"]["region"] == "west"
    assert stored["message"] == "call me"
    assert stored["received_at"] == stored["last_inquiry_at"] == NOW
    assert stored["inquiries"] == 1
    assert (await store.find_by_contact("phone", "+14155550100") or {})["_id"] == dana.lead_id
    assert (await store.find_by_contact("email", "dana@example.com") or {})["_id"] == dana.lead_id
    assert (await store.find_by_contact("email", "lee@example.com") or {})["_id"] == lee.lead_id
    assert await store.find_by_contact("phone", "+14155550199") is None
    assert await store.get("nobody") is None


async def test_a_batch_reads_the_owners_of_known_keys_and_their_contacts(
    store: IntakeStore,
) -> None:
    dana = new_lead(phone="+14155550100", name="Dana")
    await save(store, received(dana))
    owners, contacts = await read(store, {("phone", "+14155550100"), ("email", "x@example.com")})
    assert owners == {("phone", "+14155550100"): dana.lead_id}
    assert contacts == {dana.lead_id: Contact(name="Dana", phone="+14155550100")}
    assert await read(store, set()) == ({}, {})


async def test_merges_add_inquiries_and_keep_the_latest_inquiry_time(store: IntakeStore) -> None:
    dana = new_lead(phone="+14155550100")
    await save(store, received(dana))
    later = NOW + timedelta(hours=1)
    fuller = Contact(name="Dana", phone="+14155550100", email="dana@example.com")
    await save(store, AcceptancePlan(merges=[LeadMerge(dana.lead_id, fuller, 2, later)]))
    # A merge whose inquiry is older (another replica's, say) does not move the time back.
    await save(store, AcceptancePlan(merges=[LeadMerge(dana.lead_id, fuller, 1, NOW)]))
    stored = await store.get(dana.lead_id)
    assert stored is not None
    assert stored["inquiries"] == 4
    assert stored["last_inquiry_at"] == later
    assert stored["received_at"] == NOW
    assert stored["contact"]["email"] == "dana@example.com"


async def test_a_key_stored_meanwhile_fails_the_whole_batch(store: IntakeStore) -> None:
    first = new_lead(phone="+14155550100")
    await save(store, received(first))
    late = new_lead(phone="+14155550100")  # planned as if its phone were unknown
    other = new_lead(email="other@example.com")
    with pytest.raises(ContactKeyTaken):
        await save(store, received(other, late))
    assert await store.get(other.lead_id) is None
    assert await store.get(late.lead_id) is None
    assert await store.find_by_contact("email", "other@example.com") is None
    assert (await store.find_by_contact("phone", "+14155550100") or {})["_id"] == first.lead_id


async def test_a_failing_unit_of_work_leaves_nothing_behind(store: IntakeStore) -> None:
    doomed = new_lead(email="doomed@example.com")

    async def fail_after_saving(batch: AcceptingBatch) -> tuple[None, list[Event]]:
        await batch.save(received(doomed))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.accept_batch(fail_after_saving)
    assert await store.get(doomed.lead_id) is None
    assert await store.find_by_contact("email", "doomed@example.com") is None


async def test_replicas_accepting_the_same_contacts_at_once_make_one_lead_each(
    store: IntakeStore,
) -> None:
    phones = [f"+1415555{n:04d}" for n in range(100, 108)]
    # Three replicas, each with a batch of every phone, starting at a different one.
    batches = [
        [new_lead(phone=phones[(i + start) % len(phones)]) for i in range(len(phones))]
        for start in (0, 3, 5)
    ]
    outcomes = await asyncio.gather(*(AcceptLeads(store)(batch) for batch in batches))

    lead_of: dict[str, str] = {}
    for phone in phones:
        stored = await store.find_by_contact("phone", phone)
        assert stored is not None
        assert stored["inquiries"] == len(batches)
        lead_of[phone] = stored["_id"]
    assert len(set(lead_of.values())) == len(phones)
    answers = [
        (lead, result)
        for batch, results in zip(batches, outcomes, strict=True)
        for lead, result in zip(batch, results, strict=True)
    ]
    assert all(isinstance(result, Acceptance) for _, result in answers)
    accepted = [(lead, result) for lead, result in answers if isinstance(result, Acceptance)]
    assert all(result.lead_id == lead_of[lead.contact.phone or ""] for lead, result in accepted)
    assert sum(result.outcome == "received" for _, result in accepted) == len(phones)
