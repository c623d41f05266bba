"""AcceptLeads on the in-memory store: new leads, repeat inquiries, and batches that hold
several inquiries from one contact."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from services.intake.rules import (
    Acceptance,
    AcceptancePlan,
    ContactKey,
    KnownLead,
    LeadRejected,
    NewLead,
)
from services.intake.store import AcceptingBatch, AcceptWork, ContactKeyTaken
from services.intake.usecases import AcceptLeads
from shared.events import (
    Attribution,
    Consent,
    Contact,
    Event,
    LeadMergedV1,
    LeadReceivedV1,
    Profile,
)
from tests.fakes.intake import InMemoryIntakeStore

pytestmark = pytest.mark.unit

T = TypeVar("T")
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DANA_PHONE = "+14155550100"
DANA_EMAIL = "dana@example.com"


def lead(
    *,
    phone: str | None = None,
    email: str | None = None,
    name: str | None = None,
    at: datetime = NOW,
    channel: str = "web_form",
) -> NewLead:
    return NewLead(
        lead_id=uuid.uuid4().hex,
        contact=Contact(name=name, phone=phone, email=email),
        attribution=Attribution(source="website", channel=channel),
        consent=Consent(),
        profile=Profile(),
        message=None,
        received_at=at,
    )


@pytest.fixture
def store() -> InMemoryIntakeStore:
    return InMemoryIntakeStore()


async def test_a_new_contact_is_received_stored_and_published(store: InMemoryIntakeStore) -> None:
    dana = lead(phone=DANA_PHONE, name="Dana")
    assert await AcceptLeads(store)([dana]) == [Acceptance(dana.lead_id, "received")]
    stored = await store.get(dana.lead_id)
    assert stored is not None
    assert stored["inquiries"] == 1
    assert stored["contact"]["name"] == "Dana"
    [event] = store.ledger.outbox
    assert isinstance(event, LeadReceivedV1)
    assert (event.lead_id, event.occurred_at, event.contact) == (dana.lead_id, NOW, dana.contact)


async def test_a_repeat_inquiry_merges_into_the_known_lead(store: InMemoryIntakeStore) -> None:
    first = lead(phone=DANA_PHONE)
    await AcceptLeads(store)([first])
    later = NOW + timedelta(minutes=5)
    again = lead(phone=DANA_PHONE, name="Dana", email=DANA_EMAIL, at=later, channel="phone")

    assert await AcceptLeads(store)([again]) == [Acceptance(first.lead_id, "merged", "phone")]
    stored = await store.get(first.lead_id)
    assert stored is not None
    assert stored["inquiries"] == 2
    assert stored["last_inquiry_at"] == later
    assert Contact.model_validate(stored["contact"]) == first.contact.model_copy(
        update={"name": "Dana", "email": DANA_EMAIL}
    )
    assert await store.get(again.lead_id) is None
    # The email it brought now finds the lead too.
    assert (await store.find_by_contact("email", DANA_EMAIL) or {})["_id"] == first.lead_id
    merged = store.ledger.outbox[-1]
    assert isinstance(merged, LeadMergedV1)
    assert (merged.lead_id, merged.matched_on, merged.occurred_at) == (
        first.lead_id,
        "phone",
        later,
    )
    assert merged.attribution.channel == "phone"  # the inquiry keeps where it came from


async def test_a_repeat_by_email_merges_matched_on_email(store: InMemoryIntakeStore) -> None:
    first = lead(email=DANA_EMAIL)
    await AcceptLeads(store)([first])
    again = lead(phone=DANA_PHONE, email=DANA_EMAIL)
    assert await AcceptLeads(store)([again]) == [Acceptance(first.lead_id, "merged", "email")]
    assert (await store.find_by_contact("phone", DANA_PHONE) or {})["_id"] == first.lead_id


async def test_the_same_phone_twice_in_one_batch_merges_the_later_into_the_earlier(
    store: InMemoryIntakeStore,
) -> None:
    first = lead(phone=DANA_PHONE)
    second = lead(phone=DANA_PHONE, email=DANA_EMAIL, at=NOW + timedelta(seconds=1))
    # A third inquiry in the batch knows only the email the second one brought.
    third = lead(email=DANA_EMAIL, at=NOW + timedelta(seconds=2))
    other = lead(phone="+14155550101")

    outcomes = await AcceptLeads(store)([first, second, other, third])

    assert outcomes == [
        Acceptance(first.lead_id, "received"),
        Acceptance(first.lead_id, "merged", "phone"),
        Acceptance(other.lead_id, "received"),
        Acceptance(first.lead_id, "merged", "email"),
    ]
    stored = await store.get(first.lead_id)
    assert stored is not None
    assert stored["inquiries"] == 3
    assert stored["last_inquiry_at"] == NOW + timedelta(seconds=2)
    assert stored["contact"]["email"] == DANA_EMAIL
    assert set(store.tables.leads) == {first.lead_id, other.lead_id}
    assert [(type(e).__name__, e.lead_id) for e in store.ledger.outbox] == [
        ("LeadReceivedV1", first.lead_id),
        ("LeadMergedV1", first.lead_id),
        ("LeadReceivedV1", other.lead_id),
        ("LeadMergedV1", first.lead_id),
    ]


async def test_phone_of_one_lead_and_email_of_another_merges_by_phone(
    store: InMemoryIntakeStore,
) -> None:
    by_phone = lead(phone=DANA_PHONE)
    by_email = lead(email=DANA_EMAIL)
    await AcceptLeads(store)([by_phone, by_email])

    both = lead(phone=DANA_PHONE, email=DANA_EMAIL)
    assert await AcceptLeads(store)([both]) == [Acceptance(by_phone.lead_id, "merged", "phone")]
    # The email stays with the lead it identified first; neither lead is touched otherwise.
    assert (await store.find_by_contact("email", DANA_EMAIL) or {})["_id"] == by_email.lead_id
    assert (await store.get(by_email.lead_id) or {})["inquiries"] == 1
    assert (await store.get(by_phone.lead_id) or {})["inquiries"] == 2


async def test_a_lead_without_phone_or_email_is_refused_alone(
    store: InMemoryIntakeStore,
) -> None:
    nameless = lead(name="Only A Name")
    dana = lead(phone=DANA_PHONE)
    refused, accepted = await AcceptLeads(store)([nameless, dana])
    assert isinstance(refused, LeadRejected)
    assert refused.field == "phone"
    assert accepted == Acceptance(dana.lead_id, "received")
    assert await store.get(nameless.lead_id) is None
    assert len(store.ledger.outbox) == 1


async def test_an_empty_batch_changes_nothing(store: InMemoryIntakeStore) -> None:
    assert await AcceptLeads(store)([]) == []
    assert store.ledger.outbox == []


class _HidingBatch:
    """Reads the directory as it was before `hidden` keys were stored."""

    def __init__(self, batch: AcceptingBatch, hidden: set[ContactKey]) -> None:
        self._batch = batch
        self._hidden = hidden

    async def key_owners(self, keys: Collection[ContactKey]) -> dict[ContactKey, str]:
        owners = await self._batch.key_owners(keys)
        return {key: owner for key, owner in owners.items() if key not in self._hidden}

    async def known(self, lead_ids: Collection[str]) -> dict[str, KnownLead]:
        return await self._batch.known(lead_ids)

    async def seen_external_ids(self, ids: Collection[str]) -> dict[str, str]:
        return await self._batch.seen_external_ids(ids)

    async def save(self, plan: AcceptancePlan) -> None:
        await self._batch.save(plan)


class RaceLosingStore(InMemoryIntakeStore):
    """Its next `stale_reads` batches miss the keys in `hidden`: what a replica sees when
    another commits the same contact between this one's read and its write."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: set[ContactKey] = set()
        self.stale_reads = 0
        self.attempts = 0

    async def accept_batch(self, work: AcceptWork[T]) -> T:
        self.attempts += 1
        if self.stale_reads == 0:
            return await super().accept_batch(work)
        self.stale_reads -= 1

        async def stale(batch: AcceptingBatch) -> tuple[T, Sequence[Event]]:
            return await work(_HidingBatch(batch, self.hidden))

        return await super().accept_batch(stale)


async def test_a_contact_accepted_meanwhile_by_another_replica_is_merged_into() -> None:
    store = RaceLosingStore()
    rival = lead(phone=DANA_PHONE)
    await AcceptLeads(store)([rival])  # the other replica's commit
    store.hidden, store.stale_reads = {("phone", DANA_PHONE)}, 1
    store.attempts = 0

    mine = lead(phone=DANA_PHONE)
    assert await AcceptLeads(store)([mine]) == [Acceptance(rival.lead_id, "merged", "phone")]
    assert store.attempts == 2  # the first attempt failed on the taken key, nothing kept
    assert set(store.tables.leads) == {rival.lead_id}
    assert (await store.get(rival.lead_id) or {})["inquiries"] == 2


async def test_a_race_lost_every_time_gives_up_with_the_conflict() -> None:
    store = RaceLosingStore()
    await AcceptLeads(store)([lead(phone=DANA_PHONE)])
    store.hidden, store.stale_reads = {("phone", DANA_PHONE)}, 3
    with pytest.raises(ContactKeyTaken):
        await AcceptLeads(store, max_attempts=3)([lead(phone=DANA_PHONE)])
    assert len(store.tables.leads) == 1
