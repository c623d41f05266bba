"""The intake store contract, on MongoDB and in memory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
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
    StoredResponse,
)
from services.intake.usecases import AcceptLeads
from shared.events import (
    Attribution,
    Consent,
    ConsentRecord,
    Contact,
    Event,
    LeadConvertedV1,
    Profile,
)
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
        known = await batch.known(set(owners.values()))
        return (owners, {lead_id: k.contact for lead_id, k in known.items()}), []

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


async def test_a_merge_fills_profile_and_consent_and_appends_its_inquiries(
    store: IntakeStore,
) -> None:
    dana = new_lead(phone="+14155550100")
    await save(store, received(dana))
    again = replace(
        new_lead(phone="+14155550100"),
        profile=Profile(industry="fitness", custom={"意向程度": "high"}),
        consent=Consent(
            sms=True, records=(ConsentRecord(channel="sms", granted=True, at=NOW, source="desk"),)
        ),
        attribution=Attribution(source="friend referral", channel="walk_in"),
        message="visited",
    )

    async def work(batch: AcceptingBatch) -> tuple[None, list[Event]]:
        known = await batch.known({dana.lead_id})
        await batch.save(plan_acceptance([again], {("phone", "+14155550100"): dana.lead_id}, known))
        return None, []

    await store.accept_batch(work)
    stored = await store.get(dana.lead_id)
    assert stored is not None
    assert stored["profile"]["region"] == "west"  # kept
    assert stored["profile"]["industry"] == "fitness"  # filled
    assert stored["profile"]["custom"] == {"意向程度": "high"}
    assert stored["consent"]["sms"] is True
    assert [r["source"] for r in stored["consent"]["records"]] == ["desk"]
    assert [(h["channel"], h["source"], h["message"]) for h in stored["history"]] == [
        ("web_form", "website", "call me"),
        ("walk_in", "friend referral", "visited"),
    ]


async def test_an_external_id_is_stored_once(store: IntakeStore) -> None:
    first = replace(new_lead(phone="+14155550100"), external_id="meta:1")
    await save(store, received(first))

    async def seen(batch: AcceptingBatch) -> tuple[dict[str, str], list[Event]]:
        return await batch.seen_external_ids({"meta:1", "meta:2"}), []

    assert await store.accept_batch(seen) == {"meta:1": first.lead_id}
    again = replace(new_lead(email="x@example.com"), external_id="meta:1")
    with pytest.raises(ContactKeyTaken):
        await save(store, received(again))
    assert await store.get(again.lead_id) is None


async def test_erasure_forgets_the_person_and_frees_the_keys(store: IntakeStore) -> None:
    dana = new_lead(phone="+14155550100", email="dana@example.com", name="Dana")
    await save(store, received(dana))
    assert await store.erase(dana.lead_id, "manager:m1", NOW) is True
    assert await store.erase(dana.lead_id, "manager:m1", NOW) is False
    assert await store.erase("nobody", "manager:m1", NOW) is False
    stored = await store.get(dana.lead_id)
    assert stored is not None
    assert stored["status"] == "erased"
    assert stored["contact"] == Contact().model_dump()
    assert stored["message"] is None
    assert stored["profile"]["region"] is None
    assert all(h["message"] is None for h in stored["history"])
    assert await store.find_by_contact("phone", "+14155550100") is None
    assert await store.find_by_contact("email", "dana@example.com") is None


async def test_a_conversion_makes_the_lead_a_customer_once(store: IntakeStore) -> None:
    dana = new_lead(phone="+14155550100")
    await save(store, received(dana))
    converted = LeadConvertedV1(lead_id=dana.lead_id, rep_id="rita", revenue=90, customer_id="c7")
    await store.record_conversions([converted, converted])
    await store.record_conversions([converted])
    stored = await store.get(dana.lead_id)
    assert stored is not None
    assert (stored["status"], stored["customer_id"], stored["converted_by"]) == (
        "customer",
        "c7",
        "rita",
    )


async def test_an_idempotency_key_is_claimed_once_and_answers_after(store: IntakeStore) -> None:
    stale = timedelta(seconds=30)
    assert await store.claim_request("k1:a", "f", NOW, stale_after=stale) == "claimed"
    assert await store.claim_request("k1:a", "f", NOW, stale_after=stale) == "in_progress"
    answer = StoredResponse("f", 201, {"lead_id": "x"})
    await store.complete_request("k1:a", answer)
    assert await store.claim_request("k1:a", "f", NOW, stale_after=stale) == answer
    # A released claim (the request failed) can be claimed again; a stale one is taken over.
    assert await store.claim_request("k1:b", "f", NOW, stale_after=stale) == "claimed"
    await store.release_request("k1:b")
    assert await store.claim_request("k1:b", "f", NOW, stale_after=stale) == "claimed"
    later = NOW + timedelta(minutes=1)
    assert await store.claim_request("k1:b", "f", later, stale_after=stale) == "claimed"


async def test_configuration_is_versioned(store: IntakeStore) -> None:
    before = await store.config_version()
    await store.put_config("source", "promo", {"source_id": "promo", "name": "Promotion"})
    await store.put_config("form", "f1", {"form_key": "f1"})
    assert await store.config_version() == before + 2
    assert await store.list_config("source") == [{"source_id": "promo", "name": "Promotion"}]
    assert await store.get_config("form", "f1") == {"form_key": "f1"}
    assert await store.get_config("form", "nope") is None
    assert await store.delete_config("source", "promo") is True
    assert await store.delete_config("source", "promo") is False
    assert await store.list_config("source") == []
    assert await store.config_version() == before + 3


async def test_key_owners_are_read_outside_a_transaction_too(store: IntakeStore) -> None:
    leads = [new_lead(phone=f"+1415555{n:04d}", email=f"p{n}@example.com") for n in range(60)]
    await save(store, received(*leads))
    wanted: set[ContactKey] = {
        ("phone", "+14155550007"),
        ("email", "p59@example.com"),
        ("email", "x@example.com"),
    }
    wanted |= {("phone", f"+1415555{n:04d}") for n in range(30, 60)}
    owners = await store.key_owners(wanted)
    assert owners[("phone", "+14155550007")] == leads[7].lead_id
    assert owners[("email", "p59@example.com")] == leads[59].lead_id
    assert ("email", "x@example.com") not in owners
    assert len(owners) == 32
    assert await store.key_owners(set()) == {}
