"""The nurture store contract, on MongoDB and in memory."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from leadflow.chassis.config_cache import VersionedCache
from services.nurture.rules import (
    DEFAULT_SEQUENCES,
    SEND_KIND,
    AlreadyEnrolledError,
    Enrollment,
    EnrollmentMovedMeanwhileError,
    EnrollmentStatus,
    LeadContact,
    LeadScore,
    NurtureChanges,
    SendRecord,
    SendStatus,
    SendWindow,
    SequenceCatalog,
    SequenceExistsError,
    SequenceNotFoundError,
    SequenceRecord,
    SequenceStatus,
    SkipCondition,
    Step,
    StepAnchor,
    StepMove,
    StopReason,
    send_key,
)
from services.nurture.store import (
    ContactFilter,
    EnrollmentFilter,
    MongoNurtureStore,
    NurtureStore,
    NurtureTransaction,
)
from services.nurture.usecases import ApplyLeadEvents, EnrollByHand, Sequences
from shared.events import (
    Attribution,
    Consent,
    Contact,
    Event,
    LeadAssignedV1,
    LeadEnrolledV1,
    LeadLostV1,
    LeadReceivedV1,
)
from tests.contract.conftest import NOW, STORE_KINDS, mongo_parts
from tests.fakes.nurture import InMemoryNurtureStore

LATER = NOW + timedelta(hours=1)


@dataclass
class Subject:
    store: NurtureStore
    enrolled: Callable[[], Awaitable[list[LeadEnrolledV1]]]
    """The LeadEnrolledV1 events in the store's outbox, in outbox order."""


@pytest.fixture(params=STORE_KINDS)
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        memory = InMemoryNurtureStore()

        async def in_memory_outbox() -> list[LeadEnrolledV1]:
            return [e for e in memory.ledger.outbox if isinstance(e, LeadEnrolledV1)]

        yield Subject(memory, in_memory_outbox)
        return
    async with mongo_parts(request) as parts:
        mongo = MongoNurtureStore(parts.database, parts.ledger)
        await mongo.ensure_indexes()

        async def mongo_outbox() -> list[LeadEnrolledV1]:
            return [
                LeadEnrolledV1.model_validate_json(record.payload)
                for record in await parts.ledger.pending(10_000)
                if record.event_type == "lead-enrolled"
            ]

        yield Subject(mongo, mongo_outbox)


@pytest.fixture
def store(subject: Subject) -> NurtureStore:
    return subject.store


@dataclass
class Nurture:
    sequences: Sequences
    apply_lead_events: ApplyLeadEvents
    enroll_by_hand: EnrollByHand


async def nurture_on(store: NurtureStore, now: datetime = NOW) -> Nurture:
    cache: VersionedCache[SequenceCatalog] = VersionedCache(
        store.sequences_version, store.sequence_catalog
    )
    sequences = Sequences(store, cache, clock=lambda: now)
    await sequences.seed(DEFAULT_SEQUENCES)
    return Nurture(
        sequences,
        ApplyLeadEvents(store, sequences, default_timezone="UTC", clock=lambda: now),
        EnrollByHand(store, sequences, default_timezone="UTC", clock=lambda: now),
    )


def received(lead_id: str, at: datetime = NOW) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead_id,
        occurred_at=at,
        contact=Contact(name="Dana Kim", email=f"{lead_id}@example.com", timezone="Asia/Seoul"),
        attribution=Attribution(source="website", channel="web_form"),
        consent=Consent(email=True),
    )


def lost(lead_id: str, level: int = 2, at: datetime = NOW) -> LeadLostV1:
    return LeadLostV1.model_validate({"lead_id": lead_id, "level": level, "occurred_at": at})


def enrollment(
    lead_id: str, enrollment_id: str, *, status: EnrollmentStatus = EnrollmentStatus.ACTIVE
) -> Enrollment:
    return Enrollment(
        enrollment_id=enrollment_id,
        lead_id=lead_id,
        sequence_id="loss-level-3",
        sequence_version=1,
        reason="lost-level-3",
        status=status,
        enrolled_at=NOW,
        triggered_at=NOW - timedelta(minutes=5),
        current_step=0,
        next_send_at=NOW + timedelta(days=7),
        channels=("email", "sms"),
    )


async def save(store: NurtureStore, changes: NurtureChanges) -> None:
    async def work(transaction: NurtureTransaction) -> tuple[None, list[Event]]:
        await transaction.save(changes)
        return None, []

    await store.commit(work)


async def stored(
    store: NurtureStore, *lead_ids: str
) -> tuple[dict[str, LeadContact], dict[str, tuple[Enrollment, ...]]]:
    """The leads' contacts and active enrollments, as a use case reads them."""

    async def read(
        transaction: NurtureTransaction,
    ) -> tuple[tuple[dict[str, LeadContact], dict[str, tuple[Enrollment, ...]]], list[Event]]:
        contacts = await transaction.contacts(lead_ids)
        active = await transaction.active_enrollments(lead_ids)
        return (contacts, active), []

    return await store.commit(read)


async def active_of(store: NurtureStore, lead_id: str) -> list[Enrollment]:
    where = EnrollmentFilter(status=EnrollmentStatus.ACTIVE, lead_id=lead_id)
    return await store.list_enrollments(where)


# --- consumed events --------------------------------------------------------------------------


async def test_a_batch_is_applied_once_even_when_delivered_again(subject: Subject) -> None:
    nurture = await nurture_on(subject.store)
    batch: list[Event] = [received("a"), lost("a"), lost("b", level=3)]
    first = await nurture.apply_lead_events(batch)
    assert [(e.lead_id, e.sequence_id) for e in first] == [
        ("a", "loss-level-2"),
        ("b", "loss-level-3"),
    ]
    assert await nurture.apply_lead_events(batch) == []  # redelivered: nothing new
    assert [(e.lead_id, e.reason) for e in await subject.enrolled()] == [
        ("a", "lost-level-2"),
        ("b", "lost-level-3"),
    ]
    [a] = await active_of(subject.store, "a")
    assert a.channels == ("email",)
    assert a.triggered_at == NOW


async def test_an_assignment_just_before_the_loss_does_not_stop_it(subject: Subject) -> None:
    # Events carry microseconds, MongoDB keeps milliseconds: both times fall in one stored
    # millisecond, and the assignment, 0.4 ms older than the loss, must still count as older.
    nurture = await nurture_on(subject.store)
    loss_at = NOW + timedelta(microseconds=900)
    await nurture.apply_lead_events([lost("close", at=loss_at)])
    stale = LeadAssignedV1(
        lead_id="close",
        rep_id="r1",
        strategy="round_robin",
        occurred_at=loss_at - timedelta(microseconds=400),
    )
    await nurture.apply_lead_events([stale])
    assert [e.status for e in await active_of(subject.store, "close")] == [EnrollmentStatus.ACTIVE]


async def test_a_failing_unit_of_work_leaves_nothing_behind(subject: Subject) -> None:
    store = subject.store
    event = lost("doomed")

    async def fail_after_saving(
        transaction: NurtureTransaction, fresh: list[Event]
    ) -> tuple[None, list[Event]]:
        await transaction.save(NurtureChanges(started=(enrollment("doomed", "e1"),)))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.commit_batch([event], fail_after_saving)
    assert await active_of(store, "doomed") == []
    # Not remembered as handled: a retry applies it.
    assert len(await (await nurture_on(store)).apply_lead_events([event])) == 1


async def test_contacts_and_enrollments_are_stored_as_saved(store: NurtureStore) -> None:
    known = LeadContact(
        "k",
        contact=Contact(name="Kim", phone="+821012345678", timezone="Asia/Seoul"),
        contact_as_of=NOW,
        consent=Consent(email=True, sms=True),
        consent_as_of=LATER,
    )
    gone = LeadContact("g", erased_at=NOW)
    active = enrollment("k", "e-k")
    await save(store, NurtureChanges(contacts=(known, gone), started=(active,)))

    contacts, actives = await stored(store, "k", "g", "nobody")
    assert contacts == {"k": known, "g": gone}
    assert actives == {"k": (active,)}
    assert await store.latest_enrollment("k") == active
    assert await store.latest_enrollment("nobody") is None
    assert await store.enrollments_with_contacts({"e-k", "e-nobody"}) == (
        {"e-k": active},
        {"k": known},
    )


async def test_a_stopped_enrollment_makes_room_for_a_new_one(store: NurtureStore) -> None:
    first = enrollment("r", "e1")
    await save(store, NurtureChanges(started=(first,)))
    ended = dataclasses.replace(
        first,
        status=EnrollmentStatus.STOPPED,
        stop_reason=StopReason.ASSIGNED,
        stopped_at=LATER,
        next_send_at=None,
    )
    second = dataclasses.replace(enrollment("r", "e2"), triggered_at=NOW)
    await save(store, NurtureChanges(changed=(ended,), started=(second,)))

    _, actives = await stored(store, "r")
    assert actives == {"r": (second,)}
    # Both enrolled at NOW: the later trigger is the newer enrollment.
    listed = await store.list_enrollments(EnrollmentFilter(lead_id="r"))
    assert listed == [second, ended]


async def test_a_lead_is_never_active_twice_in_one_sequence(store: NurtureStore) -> None:
    await save(store, NurtureChanges(started=(enrollment("twice", "e1"),)))
    with pytest.raises(AlreadyEnrolledError, match="twice"):
        await save(store, NurtureChanges(started=(enrollment("twice", "e2"),)))
    assert [e.enrollment_id for e in await active_of(store, "twice")] == ["e1"]
    elsewhere = dataclasses.replace(enrollment("twice", "e3"), sequence_id="loss-level-2")
    await save(store, NurtureChanges(started=(elsewhere,)))
    assert sorted(e.enrollment_id for e in await active_of(store, "twice")) == ["e1", "e3"]


async def test_enrollments_are_listed_newest_first_and_filtered(store: NurtureStore) -> None:
    old = dataclasses.replace(
        enrollment("f1", "old"), enrolled_at=NOW - timedelta(days=1), sequence_id="loss-level-2"
    )
    new = enrollment("f2", "new")
    done = dataclasses.replace(enrollment("f1", "done"), status=EnrollmentStatus.COMPLETED)
    await save(store, NurtureChanges(started=(old, new, done)))

    everything = await store.list_enrollments(EnrollmentFilter())
    assert [e.enrollment_id for e in everything] == ["new", "done", "old"]
    assert [e.enrollment_id for e in await store.list_enrollments(EnrollmentFilter(limit=1))] == [
        "new"
    ]
    by_sequence = await store.list_enrollments(EnrollmentFilter(sequence_id="loss-level-2"))
    assert [e.enrollment_id for e in by_sequence] == ["old"]
    completed = await store.list_enrollments(EnrollmentFilter(status=EnrollmentStatus.COMPLETED))
    assert [e.enrollment_id for e in completed] == ["done"]


# --- sequences ----------------------------------------------------------------------------------


def a_sequence(sequence_id: str, name: str = "Spring") -> SequenceRecord:
    [first, *_] = DEFAULT_SEQUENCES
    return SequenceRecord(
        dataclasses.replace(
            first,
            sequence_id=sequence_id,
            name=name,
            steps=(Step(channel="sms", delay_hours=1, body="Hi {{name}}"),),
        ),
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )


async def test_every_sequence_change_moves_the_version(store: NurtureStore) -> None:
    assert await store.sequences_version() == 0
    spring = a_sequence("spring")
    await store.insert_sequence(spring)
    after_insert = await store.sequences_version()
    assert after_insert > 0
    assert await store.get_sequence("spring") == spring

    renamed = dataclasses.replace(spring.sequence, name="Renamed")
    updated = await store.update_sequence(renamed, LATER)
    assert (updated.sequence, updated.version, updated.created_at, updated.updated_at) == (
        renamed,
        2,
        NOW,
        LATER,
    )
    assert await store.sequences_version() > after_insert
    assert await store.sequence_catalog() == {"spring": updated}


async def test_an_edit_keeps_every_earlier_version_for_the_leads_in_it(
    store: NurtureStore,
) -> None:
    spring = a_sequence("versions")
    await store.insert_sequence(spring)
    rich = dataclasses.replace(
        spring.sequence,
        steps=(
            Step(
                channel="email",
                delay_hours=0,
                subject="Hi {{ first_name }}",
                body="Text",
                html="<p>Hi</p>",
                after=StepAnchor.ENROLLMENT,
                send_window=SendWindow(9, 18),
                weekdays=(0, 1),
            ),
            Step(
                channel="email",
                delay_hours=24,
                subject="Again",
                body="More",
                skip_if=(SkipCondition.OPENED_PREVIOUS,),
            ),
        ),
    )
    second = await store.update_sequence(rich, LATER)
    third = await store.update_sequence(dataclasses.replace(rich, name="Third"), LATER)
    assert (second.version, third.version) == (2, 3)
    stored_record = await store.get_sequence("versions")
    assert stored_record == third
    assert stored_record.at(1) == spring.sequence
    assert stored_record.at(2) == rich
    assert stored_record.at(3).name == "Third"


async def test_pausing_resuming_and_archiving_keep_the_content(store: NurtureStore) -> None:
    await store.insert_sequence(a_sequence("paused"))
    before = await store.sequences_version()
    paused = await store.set_sequence_status("paused", SequenceStatus.PAUSED, LATER)
    assert (paused.status, paused.version) == (SequenceStatus.PAUSED, 1)
    assert await store.sequences_version() > before  # caches see the pause at once
    resumed = await store.set_sequence_status("paused", SequenceStatus.ACTIVE, LATER)
    assert resumed.status is SequenceStatus.ACTIVE
    with pytest.raises(SequenceNotFoundError):
        await store.set_sequence_status("missing", SequenceStatus.ARCHIVED, LATER)
    assert await store.get_sequence("paused") == resumed


async def test_sequence_mistakes_change_nothing(store: NurtureStore) -> None:
    await store.insert_sequence(a_sequence("taken"))
    version = await store.sequences_version()
    with pytest.raises(SequenceExistsError):
        await store.insert_sequence(a_sequence("taken", name="Other"))
    with pytest.raises(SequenceNotFoundError):
        await store.update_sequence(a_sequence("missing").sequence, LATER)
    assert await store.sequences_version() == version
    assert [r.sequence.name for r in await store.list_sequences()] == ["Spring"]


async def test_seeding_adds_only_missing_sequences(store: NurtureStore) -> None:
    await store.insert_sequence(a_sequence("edited", name="Marketing's"))
    seeds = [a_sequence("edited", name="Default"), a_sequence("fresh")]
    assert await store.insert_missing_sequences(seeds) == 1
    version = await store.sequences_version()
    assert await store.insert_missing_sequences(seeds) == 0
    assert await store.sequences_version() == version  # nothing new: caches stay valid
    names = {r.sequence.sequence_id: r.sequence.name for r in await store.list_sequences()}
    assert names == {"edited": "Marketing's", "fresh": "Spring"}


# --- races -------------------------------------------------------------------------------------


async def test_manual_enrollment_racing_a_consumed_loss_enrolls_once(subject: Subject) -> None:
    store = subject.store
    nurture = await nurture_on(store)
    leads = [f"race-{i}" for i in range(8)]
    await nurture.apply_lead_events([received(lead_id) for lead_id in leads])

    async def by_hand(lead_id: str) -> Enrollment | AlreadyEnrolledError:
        try:
            return await nurture.enroll_by_hand(lead_id, "loss-level-2")
        except AlreadyEnrolledError as refused:
            return refused

    manual, consumed = await asyncio.gather(
        asyncio.gather(*(by_hand(lead_id) for lead_id in leads)),
        asyncio.gather(
            *(nurture.apply_lead_events([lost(lead_id, at=LATER)]) for lead_id in leads)
        ),
    )
    for lead_id, by_marketing, from_loss in zip(leads, manual, consumed, strict=True):
        [active] = await active_of(store, lead_id)
        if isinstance(by_marketing, Enrollment):
            assert active == by_marketing
            assert from_loss == []
        else:
            assert active.reason == "lost-level-2"
            assert isinstance(by_marketing, AlreadyEnrolledError)
            assert [e.lead_id for e in from_loss] == [lead_id]
    enrolled = [e.lead_id for e in await subject.enrolled()]
    assert sorted(enrolled) == sorted(leads)  # one LeadEnrolledV1 per lead


async def test_the_same_loss_consumed_twice_at_once_enrolls_once(subject: Subject) -> None:
    nurture = await nurture_on(subject.store)
    event = lost("both")
    results = await asyncio.gather(
        nurture.apply_lead_events([event]), nurture.apply_lead_events([event])
    )
    assert sorted(len(r) for r in results) == [0, 1]
    assert len(await active_of(subject.store, "both")) == 1
    assert [e.lead_id for e in await subject.enrolled()] == ["both"]


# --- timers, send records, rates, scores, bulk selection ---------------------------------------


async def due_keys(store: NurtureStore) -> dict[str, datetime]:
    """Every pending timer of kind send, by key (claimed far in the future, then let go)."""
    due = store.due
    claimed = await due.claim(
        kinds={SEND_KIND},
        now=NOW + timedelta(days=3650),
        limit=1000,
        lease=timedelta(seconds=1),
        token="peek",
    )
    await due.release(claimed, retry_at=NOW, failed=False)
    return {c.work.key: c.work.due_at for c in claimed}


async def test_saving_an_enrollment_schedules_its_step_and_stopping_cancels_it(
    store: NurtureStore,
) -> None:
    active = enrollment("timed", "e-timed")
    await save(store, NurtureChanges(started=(active,)))
    assert await due_keys(store) == {send_key("e-timed", 0): active.next_send_at}

    moved = dataclasses.replace(active, next_send_at=LATER)
    await save(store, NurtureChanges(changed=(moved,)))
    assert await due_keys(store) == {send_key("e-timed", 0): LATER}

    ended = dataclasses.replace(
        moved, status=EnrollmentStatus.STOPPED, stop_reason=StopReason.REPLIED, next_send_at=None
    )
    await save(store, NurtureChanges(changed=(ended,)))
    assert await due_keys(store) == {}


async def move_on(store: NurtureStore, *moves: StepMove) -> None:
    async def work(transaction: NurtureTransaction) -> tuple[None, list[Event]]:
        await transaction.move_on(moves)
        return None, []

    await store.commit(work)


async def test_a_step_move_writes_only_what_moved_and_keeps_a_change_made_meanwhile(
    store: NurtureStore,
) -> None:
    read = enrollment("mover", "e-mover")
    await save(store, NurtureChanges(started=(read,)))
    # Engaged while the step was being sent, by a write that left the step alone.
    engaged = dataclasses.replace(read, engaged=("opened:0",))
    await save(store, NurtureChanges(changed=(engaged,)))

    after = dataclasses.replace(read, current_step=1, last_sent_at=NOW, next_send_at=LATER)
    await move_on(store, StepMove(read, after))

    [now] = await active_of(store, "mover")
    assert now == dataclasses.replace(after, engaged=("opened:0",))
    # The next step's timer is scheduled (the sent one's is finished by the commit).
    assert (await due_keys(store))[send_key("e-mover", 1)] == LATER

    done = dataclasses.replace(
        now, current_step=2, status=EnrollmentStatus.COMPLETED, next_send_at=None, stopped_at=LATER
    )
    await move_on(store, StepMove(now, done))
    assert await active_of(store, "mover") == []
    assert await store.latest_enrollment("mover") == done


async def test_a_step_move_of_an_enrollment_not_stored_writes_nothing(
    store: NurtureStore,
) -> None:
    first, missing = enrollment("one", "e-one"), enrollment("two", "e-two")
    await save(store, NurtureChanges(started=(first,)))

    with pytest.raises(EnrollmentMovedMeanwhileError):
        await move_on(
            store,
            StepMove(first, dataclasses.replace(first, current_step=1, next_send_at=LATER)),
            StepMove(missing, dataclasses.replace(missing, current_step=1, next_send_at=LATER)),
        )
    assert await store.latest_enrollment("one") == first
    assert await store.latest_enrollment("two") is None
    assert await due_keys(store) == {send_key("e-one", 0): first.next_send_at}


async def test_archiving_stops_its_active_enrollments_at_once_and_cancels_their_timers(
    store: NurtureStore,
) -> None:
    await store.insert_sequence(a_sequence("loss-level-3"))
    await store.insert_sequence(a_sequence("other"))
    kept = dataclasses.replace(enrollment("c", "e-other"), sequence_id="other")
    done = dataclasses.replace(
        enrollment("d", "e-done"), status=EnrollmentStatus.COMPLETED, next_send_at=None
    )
    ending = (enrollment("a", "e-a"), enrollment("b", "e-b"))
    await save(store, NurtureChanges(started=(*ending, kept, done)))
    assert len(await due_keys(store)) == 3

    await store.set_sequence_status("loss-level-3", SequenceStatus.ARCHIVED, LATER)

    assert await due_keys(store) == {send_key("e-other", 0): kept.next_send_at}
    listed = {e.enrollment_id: e for e in await store.list_enrollments(EnrollmentFilter())}
    for enrollment_id in ("e-a", "e-b"):
        stopped = listed[enrollment_id]
        assert (stopped.status, stopped.stop_reason) == (
            EnrollmentStatus.STOPPED,
            StopReason.ARCHIVED,
        )
        assert (stopped.stopped_at, stopped.next_send_at) == (LATER, None)
    assert listed["e-other"] == kept
    assert listed["e-done"] == done


def a_send(key: str, lead_id: str = "l", at: datetime = NOW) -> SendRecord:
    return SendRecord(
        key=key,
        lead_id=lead_id,
        enrollment_id="e",
        sequence_id="s",
        step=0,
        channel="email",
        status=SendStatus.SENDING,
        reserved_at=at,
    )


async def test_a_send_key_is_reserved_once_however_many_ask_at_once(store: NurtureStore) -> None:
    record = a_send("send:e:0")
    results = await asyncio.gather(*(store.reserve_sends([record]) for _ in range(5)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 0, 1]
    # A temporary refusal lets the next attempt take it back, once.
    await store.record_outcomes(
        [dataclasses.replace(record, status=SendStatus.RETRYABLE, error="421")]
    )
    again = await asyncio.gather(*(store.reserve_sends([record]) for _ in range(3)))
    assert sorted(again, key=len) == [{}, {}, {"send:e:0": 2}]
    sent = dataclasses.replace(record, status=SendStatus.SENT, sent_at=LATER, provider_id="p1")
    await store.record_outcomes([sent])
    assert await store.reserve_sends([record]) == {}
    stored_send = (await store.send_records(["send:e:0", "nope"]))["send:e:0"]
    assert (stored_send.status, stored_send.provider_id, stored_send.attempts) == (
        SendStatus.SENT,
        "p1",
        2,
    )


async def test_recent_sends_are_found_by_lead_for_the_caps(store: NurtureStore) -> None:
    await store.reserve_sends(
        [a_send("k1", "capped", NOW - timedelta(days=9)), a_send("k2", "capped", NOW)]
    )
    found = await store.sends_since(["capped", "other"], NOW - timedelta(days=8))
    assert {lead: [r.key for r in rs] for lead, rs in found.items()} == {"capped": ["k2"]}


async def test_the_rate_window_grants_at_most_its_limit_across_callers(
    store: NurtureStore,
) -> None:
    # Twelve callers at once on each of 20 new windows: the race of opening a window
    # (SecantusDB let concurrent upserts each create it) is met every time, not once.
    for window in range(20):
        second = NOW + timedelta(seconds=window)
        granted = await asyncio.gather(*(store.take_rate("sms", second, 3, 10) for _ in range(12)))
        assert sum(granted) == 10, f"window {window}: {granted}"
    assert await store.take_rate("sms", NOW + timedelta(seconds=20), 3, 10) == 3


async def test_scores_are_kept_per_lead(store: NurtureStore) -> None:
    score = LeadScore("warm-lead", 6.5, NOW, "warm")

    async def write(transaction: NurtureTransaction) -> tuple[None, list[Event]]:
        await transaction.save_scores([score])
        return None, []

    async def read(
        transaction: NurtureTransaction,
    ) -> tuple[dict[str, LeadScore], list[Event]]:
        return await transaction.scores(["warm-lead", "nobody"]), []

    await store.commit(write)
    assert await store.commit(read) == {"warm-lead": score}


async def test_bulk_selection_filters_by_stage_and_reachable_channel(store: NurtureStore) -> None:
    def lead(lead_id: str, stage: str, *, sms: bool = True, erased: bool = False) -> LeadContact:
        if erased:
            return LeadContact(lead_id, erased_at=NOW)
        return LeadContact(
            lead_id,
            contact=Contact(phone="+821012345678", email=f"{lead_id}@example.com"),
            contact_as_of=NOW,
            consent=Consent(email=True, sms=sms),
            consent_as_of=NOW,
            stage=stage,
            stage_as_of=NOW,
        )

    leads = (
        lead("b-paid", "converted"),
        lead("b-unpaid", "lost-3"),
        lead("b-new", "new"),
        lead("b-no-sms", "assigned", sms=False),
        lead("b-gone", "lost-3", erased=True),
    )
    await save(store, NurtureChanges(contacts=leads))
    unpaid = ContactFilter(exclude_stages=("converted",), reachable_on="sms")
    assert await store.contacts_matching(unpaid) == ["b-new", "b-unpaid"]
    lost = ContactFilter(stages=("lost-3",))
    assert await store.contacts_matching(lost) == ["b-unpaid"]
