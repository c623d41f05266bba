"""Nurture's use cases on the in-memory store: what a batch of lifecycle events, a manual
enrollment and a sequence change do, as marketing would see it in the enrollments."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from leadflow.chassis.config_cache import VersionedCache
from services.nurture.rules import (
    DEFAULT_SEQUENCES,
    Enrollment,
    EnrollmentStatus,
    LeadNotFoundError,
    NurtureSequence,
    ScoringPolicy,
    SequenceCatalog,
    SequenceNotFoundError,
    Step,
    StopReason,
)
from services.nurture.rules import AlreadyEnrolledError as AlreadyEnrolled
from services.nurture.store import ContactFilter, EnrollmentFilter
from services.nurture.usecases import ApplyLeadEvents, EnrollByHand, EnrollInBulk, Sequences
from shared.events import (
    Attribution,
    Consent,
    Contact,
    EngagementRecordedV1,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadEnrolledV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadOptedInV1,
    LeadOptedOutV1,
    LeadReceivedV1,
    LeadRequalifiedV1,
    LeadReturnedToPoolV1,
    LeadRoutedToNurtureV1,
    MessageStatusUpdatedV1,
)
from tests.fakes.nurture import InMemoryNurtureStore

pytestmark = pytest.mark.unit

MONDAY = datetime(2025, 3, 3, 1, 0, tzinfo=UTC)  # 10:00 in Seoul
SEOUL = ZoneInfo("Asia/Seoul")


@dataclass
class Ticks:
    """A monotonic clock the cache reads; tests move it on by hand."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Nurture:
    store: InMemoryNurtureStore = field(default_factory=InMemoryNurtureStore)
    now: datetime = MONDAY
    ticks: Ticks = field(default_factory=Ticks)

    def __post_init__(self) -> None:
        self.sequences = self.replica_sequences()
        self.apply = ApplyLeadEvents(
            self.store, self.sequences, default_timezone="UTC", clock=self.clock
        )
        self.enroll = EnrollByHand(
            self.store, self.sequences, default_timezone="UTC", clock=self.clock
        )

    def clock(self) -> datetime:
        return self.now

    def replica_sequences(self) -> Sequences:
        """Sequences as one replica sees them: its own cache over the shared store."""
        cache: VersionedCache[SequenceCatalog] = VersionedCache(
            self.store.sequences_version,
            self.store.sequence_catalog,
            max_age_s=1.0,
            monotonic=self.ticks,
        )
        return Sequences(self.store, cache, clock=self.clock)

    async def enrollments(self, lead_id: str) -> list[Enrollment]:
        """The lead's enrollments, newest first (what GET /v1/enrollments?lead_id= shows)."""
        return await self.store.list_enrollments(EnrollmentFilter(lead_id=lead_id))

    def published(self) -> list[LeadEnrolledV1]:
        return [e for e in self.store.ledger.outbox if isinstance(e, LeadEnrolledV1)]


@pytest.fixture
async def nurture() -> Nurture:
    nurture = Nurture()
    await nurture.sequences.seed(DEFAULT_SEQUENCES)
    return nurture


def at(minutes: int) -> datetime:
    return MONDAY - timedelta(hours=1) + timedelta(minutes=minutes)


def received(
    lead_id: str,
    minutes: int = 0,
    *,
    email: str | None = "dana@example.com",
    timezone: str | None = "Asia/Seoul",
    consent: Consent | None = None,
) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead_id,
        occurred_at=at(minutes),
        contact=Contact(name="Dana Kim", email=email, timezone=timezone),
        attribution=Attribution(source="website", channel="web_form"),
        consent=consent or Consent(email=True),
    )


def lost(lead_id: str, level: int, minutes: int = 10) -> LeadLostV1:
    return LeadLostV1.model_validate(
        {"lead_id": lead_id, "level": level, "occurred_at": at(minutes)}
    )


def assigned(lead_id: str, minutes: int = 20) -> LeadAssignedV1:
    return LeadAssignedV1(
        lead_id=lead_id, occurred_at=at(minutes), rep_id="r2", strategy="round_robin"
    )


def erased(lead_id: str, minutes: int) -> LeadErasedV1:
    return LeadErasedV1(lead_id=lead_id, occurred_at=at(minutes))


# --- the cases asked for -----------------------------------------------------------------------


async def test_received_lost_and_assigned_in_one_batch_enrolls_then_stops(
    nurture: Nurture,
) -> None:
    batch: list[Event] = [received("a"), lost("a", 2), assigned("a")]
    enrolled = await nurture.apply(batch)

    assert [(e.lead_id, e.sequence_id, e.reason) for e in enrolled] == [
        ("a", "loss-level-2", "lost-level-2")
    ]
    assert nurture.published() == enrolled
    [enrollment] = await nurture.enrollments("a")
    assert enrollment.status is EnrollmentStatus.STOPPED
    assert enrollment.stop_reason is StopReason.ASSIGNED
    assert enrollment.next_send_at is None
    assert enrollment.channels == ("email",)


async def test_the_same_event_twice_in_a_batch_is_handled_once(nurture: Nurture) -> None:
    loss = lost("twice", 3)
    enrolled = await nurture.apply([loss, loss])
    assert len(enrolled) == 1
    assert [e.status for e in await nurture.enrollments("twice")] == [EnrollmentStatus.ACTIVE]
    assert await nurture.apply([loss]) == []  # and again later: already handled
    assert len(nurture.published()) == 1


async def test_contact_arriving_after_the_loss_replans_the_enrollment(nurture: Nurture) -> None:
    await nurture.apply([lost("late", 3)])
    [early] = await nurture.enrollments("late")
    assert early.channels == ()
    # Not known yet: planned in the default zone (UTC), 7 days on, inside 10-19 UTC.
    assert early.next_send_at == MONDAY + timedelta(days=7, hours=9)

    nurture.now = MONDAY + timedelta(hours=1)
    # The contact was given before the loss; its topic was simply read later.
    assert await nurture.apply([received("late", minutes=0)]) == []
    [updated] = await nurture.enrollments("late")
    assert updated.enrollment_id == early.enrollment_id
    assert updated.channels == ("email",)
    assert updated.next_send_at is not None
    # Now in the lead's zone: 10:00 in Seoul, 7 days after the enrollment (not the replan).
    assert updated.next_send_at.astimezone(SEOUL) == datetime(2025, 3, 10, 10, 0, tzinfo=SEOUL)
    assert len(nurture.published()) == 1


async def test_erased_lead_is_not_filled_in_again_by_a_late_received(nurture: Nurture) -> None:
    await nurture.apply([erased("gone", minutes=30)])
    await nurture.apply([received("gone", minutes=0)])  # sent before the erasure, read after

    with pytest.raises(LeadNotFoundError):
        await nurture.enroll("gone", "loss-level-3")
    assert nurture.store.tables.contacts["gone"].contact is None
    assert nurture.store.tables.contacts["gone"].consent is None
    # Nor does a loss read after the erasure enroll it.
    assert await nurture.apply([lost("gone", 2, minutes=40)]) == []
    assert await nurture.enrollments("gone") == []


async def test_level_1_loss_is_never_nurtured(nurture: Nurture) -> None:
    assert await nurture.apply([received("invalid"), lost("invalid", 1)]) == []
    assert await nurture.enrollments("invalid") == []
    assert nurture.published() == []


# --- more of the batch's rules ------------------------------------------------------------------


async def test_a_batch_reads_each_collection_once(nurture: Nurture) -> None:
    leads = [f"lead-{i}" for i in range(50)]
    batch: list[Event] = [received(i) for i in leads] + [lost(i, 2) for i in leads]
    await nurture.apply([lost("first", 3)])  # the replica's first batch loads the sequences
    nurture.store.reads.clear()

    enrolled = await nurture.apply(batch)

    assert len(enrolled) == 50
    assert nurture.store.reads["contacts"] == 1
    assert nurture.store.reads["enrollments"] == 1
    assert nurture.store.reads["sequences"] == 0  # unchanged since the first batch


async def test_an_older_assignment_read_after_the_loss_does_not_stop_it(nurture: Nurture) -> None:
    await nurture.apply([lost("kept", 2, minutes=10)])
    await nurture.apply([assigned("kept", minutes=5)])
    assert [e.status for e in await nurture.enrollments("kept")] == [EnrollmentStatus.ACTIVE]

    await nurture.apply(
        [LeadConvertedV1(lead_id="kept", occurred_at=at(30), rep_id="r1", revenue=9)]
    )
    [stopped] = await nurture.enrollments("kept")
    assert stopped.stop_reason is StopReason.CONVERTED


async def test_erasure_stops_nurturing_in_whichever_order_the_events_are_read(
    nurture: Nurture,
) -> None:
    # The loss happened after the erasure but is read first: the lead, now without any
    # contact, must not stay enrolled (had they been read in order, it never would be).
    await nurture.apply([received("order"), lost("order", 3, minutes=20)])
    await nurture.apply([erased("order", minutes=15)])
    [enrollment] = await nurture.enrollments("order")
    assert enrollment.stop_reason is StopReason.ERASED


async def test_a_lead_is_active_once_per_sequence_until_it_stops(nurture: Nurture) -> None:
    batch: list[Event] = [
        lost("again", 3, minutes=10),
        lost("again", 3, minutes=11),  # already in loss-level-3: not enrolled twice
        lost("again", 2, minutes=12),  # another sequence: enrolled there too
        assigned("again", minutes=13),  # sales has it: both stop
        lost("again", 3, minutes=14),  # back from sales and lost again: a new enrollment
    ]
    enrolled = await nurture.apply(batch)
    assert [e.sequence_id for e in enrolled] == ["loss-level-3", "loss-level-2", "loss-level-3"]
    newest, *older = await nurture.enrollments("again")
    assert (newest.sequence_id, newest.status) == ("loss-level-3", EnrollmentStatus.ACTIVE)
    assert sorted((e.sequence_id, e.stop_reason) for e in older) == [
        ("loss-level-2", StopReason.ASSIGNED),
        ("loss-level-3", StopReason.ASSIGNED),
    ]


async def test_the_newest_contact_wins_whatever_the_reading_order(nurture: Nurture) -> None:
    newer = LeadMergedV1(
        lead_id="c",
        occurred_at=at(30),
        contact=Contact(email="new@example.com", phone="+821012345678"),
        attribution=Attribution(source="website", channel="web_form"),
        matched_on="email",
    )
    older = received("c", minutes=0, consent=Consent(email=True, sms=True))
    await nurture.apply([newer, older])
    contact = nurture.store.tables.contacts["c"]
    assert contact.contact is not None
    assert contact.contact.email == "new@example.com"
    assert contact.consent == Consent(email=True, sms=True)  # only the older one carried it
    await nurture.apply([lost("c", 3, minutes=40)])
    [enrollment] = await nurture.enrollments("c")
    assert enrollment.channels == ("email", "sms")


async def test_a_loss_whose_sequence_is_missing_fails_and_changes_nothing() -> None:
    nurture = Nurture()  # nothing seeded
    with pytest.raises(SequenceNotFoundError, match="loss-level-2"):
        await nurture.apply([received("x"), lost("x", 2)])
    assert nurture.store.tables.contacts == {}
    assert nurture.store.ledger.inbox == set()  # so the chassis can retry or park it


# --- manual enrollment --------------------------------------------------------------------------


async def test_marketing_enrolls_a_known_lead_once(nurture: Nurture) -> None:
    await nurture.apply([received("m", consent=Consent(email=True, sms=True))])
    enrollment = await nurture.enroll("m", "loss-level-3")
    assert (enrollment.reason, enrollment.triggered_at, enrollment.channels) == (
        "manual",
        MONDAY,
        ("email",),  # consented to SMS, but no phone
    )
    assert [(e.lead_id, e.reason) for e in nurture.published()] == [("m", "manual")]
    with pytest.raises(AlreadyEnrolled):
        await nurture.enroll("m", "loss-level-3")
    other = await nurture.enroll("m", "loss-level-2")  # another sequence takes it
    assert other.status is EnrollmentStatus.ACTIVE


async def test_manual_enrollment_needs_a_known_lead_and_sequence(nurture: Nurture) -> None:
    with pytest.raises(LeadNotFoundError):
        await nurture.enroll("stranger", "loss-level-3")
    await nurture.apply([received("known")])
    with pytest.raises(SequenceNotFoundError):
        await nurture.enroll("known", "no-such-sequence")
    assert nurture.published() == []


# --- sequences: hot configuration ---------------------------------------------------------------


def spring(name: str = "Spring") -> NurtureSequence:
    return NurtureSequence(
        sequence_id="spring",
        name=name,
        steps=(Step(channel="sms", delay_hours=1, body="Hi {{name}}"),),
    )


async def test_sequences_are_read_again_only_after_they_change(nurture: Nurture) -> None:
    await nurture.apply([lost("s1", 2)])
    assert nurture.store.reads["sequences"] == 1  # the first batch loads them
    nurture.ticks.now += 5  # long after the cache's max age: the version is checked
    await nurture.apply([lost("s2", 2)])
    assert nurture.store.reads["config_versions"] == 2
    assert nurture.store.reads["sequences"] == 1  # but the sequences are not read again

    await nurture.sequences.create(spring())
    await nurture.apply([received("s3")])
    assert nurture.store.reads["sequences"] == 2
    assert (await nurture.enroll("s3", "spring")).sequence_version == 1


async def test_a_sequence_changed_on_another_replica_is_used_within_the_max_age(
    nurture: Nurture,
) -> None:
    other_replica = nurture.replica_sequences()
    await nurture.apply([received("r")])
    await nurture.sequences.catalog()  # this replica's cache is warm

    await other_replica.create(spring())
    # A sequence this replica has not seen is looked for again at once.
    assert (await nurture.enroll("r", "spring")).sequence_version == 1

    await other_replica.replace(spring(name="Renamed"))
    assert (await nurture.sequences.catalog())["spring"].sequence.name == "Spring"  # cached
    nurture.ticks.now += 1.5
    assert (await nurture.sequences.catalog())["spring"].sequence.name == "Renamed"


async def test_seeding_again_keeps_marketing_edits(nurture: Nurture) -> None:
    level_2, *_ = DEFAULT_SEQUENCES
    edited = NurtureSequence(
        sequence_id=level_2.sequence_id, name="Our own", steps=level_2.steps[:1]
    )
    await nurture.sequences.replace(edited)
    await nurture.sequences.seed(DEFAULT_SEQUENCES)
    record = await nurture.sequences.get(level_2.sequence_id)
    assert (record.sequence.name, record.version) == ("Our own", 2)


# --- more triggers and exits ---------------------------------------------------------------------


async def test_a_lead_returned_to_the_pool_or_routed_to_nurture_is_enrolled(
    nurture: Nurture,
) -> None:
    await nurture.apply(
        [
            received("pool"),
            LeadReturnedToPoolV1(lead_id="pool", occurred_at=at(5), rep_id="r1"),
            LeadRoutedToNurtureV1(
                lead_id="low-fit",
                occurred_at=at(5),
                reason="fit grade D",
                contact=Contact(email="low@example.com"),
                consent=Consent(email=True),
            ),
        ]
    )
    [pool] = await nurture.enrollments("pool")
    [low_fit] = await nurture.enrollments("low-fit")
    assert (pool.sequence_id, pool.reason) == ("returned-to-pool", "returned-to-pool")
    assert (low_fit.sequence_id, low_fit.channels) == ("routed-to-nurture", ("email",))


def engagement(lead_id: str, kind: str, minutes: int, **more: object) -> EngagementRecordedV1:
    return EngagementRecordedV1.model_validate(
        {"lead_id": lead_id, "kind": kind, "occurred_at": at(minutes), **more}
    )


async def test_a_reply_stops_every_sequence_and_hands_the_lead_back() -> None:
    nurture = Nurture()
    await nurture.sequences.seed(DEFAULT_SEQUENCES)
    nurture.apply = ApplyLeadEvents(
        nurture.store,
        nurture.sequences,
        default_timezone="UTC",
        clock=nurture.clock,
        scoring=SCORING,
    )
    await nurture.apply([received("talks"), lost("talks", 3), lost("talks", 2, minutes=11)])
    await nurture.apply([engagement("talks", "reply", 30)])
    stops = {e.sequence_id: e.stop_reason for e in await nurture.enrollments("talks")}
    assert stops == {"loss-level-2": StopReason.REPLIED, "loss-level-3": StopReason.REPLIED}
    [handed_back] = [e for e in nurture.store.ledger.outbox if isinstance(e, LeadRequalifiedV1)]
    assert handed_back.reason == "replied"


def on_email_and_sms(lead_id: str) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead_id,
        occurred_at=at(0),
        contact=Contact(email=f"{lead_id}@example.com", phone="+821012345678"),
        attribution=Attribution(source="website", channel="web_form"),
        consent=Consent(email=True, sms=True),
    )


async def test_opting_out_of_the_only_channel_stops_and_of_another_keeps_going(
    nurture: Nurture,
) -> None:
    await nurture.apply([on_email_and_sms("opts"), lost("opts", 3)])
    await nurture.apply([LeadOptedOutV1(lead_id="opts", occurred_at=at(20), channel="sms")])
    [still] = await nurture.enrollments("opts")
    assert (still.status, still.channels) == (EnrollmentStatus.ACTIVE, ("email",))
    await nurture.apply([LeadOptedOutV1(lead_id="opts", occurred_at=at(21), channel="email")])
    [ended] = await nurture.enrollments("opts")
    assert ended.stop_reason is StopReason.OPTED_OUT


async def test_opting_back_into_sms_lets_the_enrollment_text_again(nurture: Nurture) -> None:
    await nurture.apply([on_email_and_sms("back"), lost("back", 3)])
    await nurture.apply([LeadOptedOutV1(lead_id="back", occurred_at=at(20), channel="sms")])
    await nurture.apply([LeadOptedInV1(lead_id="back", occurred_at=at(25), channel="sms")])
    [again] = await nurture.enrollments("back")
    assert (again.status, again.channels) == (EnrollmentStatus.ACTIVE, ("email", "sms"))
    # The opt-out, redelivered late from its own topic, does not undo the newer opt-in.
    await nurture.apply([LeadOptedOutV1(lead_id="back", occurred_at=at(20), channel="sms")])
    [still] = await nurture.enrollments("back")
    assert still.channels == ("email", "sms")
    # Nor does an opt-in older than a later STOP lift that STOP.
    await nurture.apply([LeadOptedOutV1(lead_id="back", occurred_at=at(40), channel="sms")])
    await nurture.apply([LeadOptedInV1(lead_id="back", occurred_at=at(30), channel="sms")])
    [blocked] = await nurture.enrollments("back")
    assert blocked.channels == ("email",)
    # A new enrollment after the opt-in may text too.
    await nurture.apply([LeadOptedInV1(lead_id="back", occurred_at=at(50), channel="sms")])
    await nurture.apply([lost("back", 2, minutes=60)])
    assert {e.sequence_id: e.channels for e in await nurture.enrollments("back")} == {
        "loss-level-2": ("email", "sms"),
        "loss-level-3": ("email", "sms"),
    }


async def test_a_hard_bounce_blocks_email_for_good(nurture: Nurture) -> None:
    await nurture.apply([received("bounce"), lost("bounce", 2)])
    bounced = MessageStatusUpdatedV1(
        lead_id="bounce", occurred_at=at(30), channel="email", message_id="m", status="bounced"
    )
    await nurture.apply([bounced])
    [ended] = await nurture.enrollments("bounce")
    assert ended.stop_reason is StopReason.BOUNCED
    await nurture.apply([lost("bounce", 3, minutes=40)])
    newest = (await nurture.enrollments("bounce"))[0]
    assert newest.channels == ()  # the address stays blocked


SCORING = ScoringPolicy(
    weights={"open": 1, "click": 3, "reply": 10, "web_visit": 4},
    half_life=timedelta(days=14),
    warm_at=5,
    hot_at=12,
    high_intent_paths=("/pricing",),
)


async def test_clicks_warm_a_nurtured_lead_until_it_is_hot_and_handed_back_once() -> None:
    nurture = Nurture()
    await nurture.sequences.seed(DEFAULT_SEQUENCES)
    nurture.apply = ApplyLeadEvents(
        nurture.store,
        nurture.sequences,
        default_timezone="UTC",
        clock=nurture.clock,
        scoring=SCORING,
    )
    await nurture.apply([received("warm"), lost("warm", 3)])
    await nurture.apply([engagement("warm", "click", 20 + n) for n in range(3)])
    assert [e for e in nurture.store.ledger.outbox if isinstance(e, LeadRequalifiedV1)] == []
    await nurture.apply([engagement("warm", "click", 30), engagement("warm", "click", 31)])
    [back] = [e for e in nurture.store.ledger.outbox if isinstance(e, LeadRequalifiedV1)]
    assert "hot" in back.reason and back.sequence_id == "loss-level-3"
    [ended] = await nurture.enrollments("warm")
    assert ended.stop_reason is StopReason.REQUALIFIED


async def test_bulk_enrollment_by_filter_takes_the_unpaid_reachable_leads_once(
    nurture: Nurture,
) -> None:
    sms = Consent(email=False, sms=True)
    phone = "+821012345678"

    def lead(lead_id: str) -> LeadReceivedV1:
        return LeadReceivedV1(
            lead_id=lead_id,
            occurred_at=at(0),
            contact=Contact(name="Kim", phone=phone),
            attribution=Attribution(source="walk-in", channel="front_desk"),
            consent=sms,
        )

    await nurture.apply([lead("unpaid-1"), lead("unpaid-2"), lead("paid")])
    await nurture.apply(
        [LeadConvertedV1(lead_id="paid", occurred_at=at(5), rep_id="r1", revenue=100)]
    )
    bulk = EnrollInBulk(
        nurture.store, nurture.sequences, default_timezone="UTC", clock=nurture.clock
    )
    where = ContactFilter(exclude_stages=("converted",), reachable_on="sms")
    first = await bulk("loss-level-3", lead_ids=None, where=where)
    again = await bulk("loss-level-3", lead_ids=None, where=where)
    assert (first.enrolled, first.already_enrolled) == (2, 0)
    assert (again.enrolled, again.already_enrolled) == (0, 2)
    assert await nurture.enrollments("paid") == []
    unknown = await bulk("loss-level-3", lead_ids=["nobody"], where=where)
    assert unknown.refused_lead_ids == ("nobody",)
