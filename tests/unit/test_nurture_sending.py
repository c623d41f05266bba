"""The send loop on the in-memory store and due work: what leaves, when, and how often.

The providers are stand-ins that record what they were handed (the real SMTP and Twilio
senders are exercised against loopback servers in the integration tests)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from leadflow.chassis.config_cache import VersionedCache
from leadflow.chassis.duework import ClaimedWork, DueWorkRunner, LeaseLost
from services.nurture.channels.email import OutboundEmail
from services.nurture.channels.errors import PermanentSendError, RetryableSendError
from services.nurture.channels.sms import OutboundSms
from services.nurture.channels.usecases import ChannelFeedback
from services.nurture.rules import (
    SEND_KIND,
    EnrollmentStatus,
    FrequencyCap,
    NurtureChanges,
    NurtureSequence,
    QuietHours,
    SendPolicy,
    SendStatus,
    SendWindow,
    SequenceCatalog,
    SequenceStatus,
    SkipCondition,
    Step,
)
from services.nurture.sending import SendDueSteps, Senders, SendSettings
from services.nurture.settings import Settings as NurtureSettings
from services.nurture.store import EnrollmentFilter, NurtureTransaction
from services.nurture.usecases import ApplyLeadEvents, EnrollByHand, Sequences
from shared.events import (
    Attribution,
    Consent,
    Contact,
    EngagementRecordedV1,
    Event,
    LeadReceivedV1,
    MessageFailedV1,
    MessageSentV1,
)
from tests.fakes.nurture import InMemoryNurtureStore
from tests.fakes.nurture_channels import InMemoryChannelStore

pytestmark = pytest.mark.unit

# Monday 3 March 2025, 10:00 in Seoul (UTC+9).
MONDAY_10_SEOUL = datetime(2025, 3, 3, 1, 0, tzinfo=UTC)


@dataclass
class Provider:
    """Records every message handed to it; raises the queued errors first."""

    sent: list[OutboundEmail | OutboundSms] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    meanwhile: Callable[[], Awaitable[None]] | None = None
    """What happens elsewhere while the provider takes the message."""

    async def send(self, message: OutboundEmail | OutboundSms) -> str:
        if self.meanwhile is not None:
            await self.meanwhile()
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(message)
        return f"provider-{len(self.sent)}"


@dataclass
class Clock:
    now: datetime = MONDAY_10_SEOUL

    def __call__(self) -> datetime:
        return self.now


class RunningClock(Clock):
    """Stands still until `start()`, then runs with real time from `now`."""

    started: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()

    def __call__(self) -> datetime:
        if self.started is None:
            return self.now
        return self.now + timedelta(seconds=time.monotonic() - self.started)


POLICY = SendPolicy(
    max_lateness=timedelta(hours=6),
    quiet_hours=QuietHours(21, 8),
    caps={"email": FrequencyCap(per_day=2, per_week=5), "sms": FrequencyCap(1, 3)},
)


@dataclass
class World:
    store: InMemoryNurtureStore = field(default_factory=InMemoryNurtureStore)
    clock: Clock = field(default_factory=Clock)
    email: Provider = field(default_factory=Provider)
    sms: Provider = field(default_factory=Provider)
    rate: dict[str, int] = field(default_factory=lambda: {"email": 1000, "sms": 1000})
    channels: InMemoryChannelStore = field(default_factory=InMemoryChannelStore)
    """The channels' opt-outs, checked right before sending."""

    def __post_init__(self) -> None:
        cache: VersionedCache[SequenceCatalog] = VersionedCache(
            self.store.sequences_version, self.store.sequence_catalog
        )
        self.sequences = Sequences(self.store, cache, clock=self.clock)
        self.apply = ApplyLeadEvents(
            self.store, self.sequences, default_timezone="UTC", clock=self.clock
        )
        self.enroll = EnrollByHand(
            self.store, self.sequences, default_timezone="UTC", clock=self.clock
        )

    def replica(self, **settings: object) -> DueWorkRunner:
        send = SendDueSteps(
            self.store,
            self.sequences,
            Senders(email=self.email, sms=self.sms),
            SendSettings(
                policy=settings.pop("policy", POLICY),  # type: ignore[arg-type]
                default_timezone="UTC",
                rate_per_second=self.rate,
                provider_attempts=3,
                retry_base=timedelta(seconds=30),
            ),
            clock=self.clock,
            opt_outs=self.channels,
        )
        return DueWorkRunner(
            self.store.due,
            kinds={SEND_KIND},
            fire=send,
            clock=self.clock,
            lease_s=30,
            lookahead_s=float(settings.pop("lookahead_s", 0.0)),  # type: ignore[arg-type]
        )

    async def lead(self, lead_id: str, *, phone: str | None = None) -> None:
        await self.apply(
            [
                LeadReceivedV1(
                    lead_id=lead_id,
                    occurred_at=self.clock.now - timedelta(minutes=1),
                    contact=Contact(
                        name="Dana Kim",
                        email=f"{lead_id}@example.com",
                        phone=phone,
                        timezone="Asia/Seoul",
                    ),
                    attribution=Attribution(source="website", channel="web_form"),
                    consent=Consent(email=True, sms=phone is not None),
                )
            ]
        )

    async def sequence(self, *steps: Step, window: SendWindow | None = None) -> str:
        sequence_id = f"s-{uuid.uuid4().hex[:8]}"
        await self.sequences.create(NurtureSequence(sequence_id, "Spring", steps, window))
        return sequence_id

    async def run(self, runner: DueWorkRunner | None = None) -> int:
        """Fire everything due now; how many items were claimed."""
        runner = runner or self.replica()
        total = 0
        while claimed := await runner.run_once():
            total += claimed
        return total

    def published(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.store.ledger.outbox if isinstance(e, kind)]

    async def enrollment(self, lead_id: str):  # type: ignore[no-untyped-def]
        [found] = await self.store.list_enrollments(EnrollmentFilter(lead_id=lead_id))
        return found


def email(delay_hours: int = 0, **more: object) -> Step:
    return Step(
        channel="email",
        delay_hours=delay_hours,
        subject="Hi {{ first_name }}",
        body="Hello {{ name }}",
        **more,  # type: ignore[arg-type]
    )


@pytest.fixture
def world() -> World:
    return World()


async def test_a_due_step_is_sent_rendered_and_the_next_one_planned(world: World) -> None:
    await world.lead("a")
    sequence_id = await world.sequence(email(0), email(24))
    await world.enroll("a", sequence_id)

    assert await world.run() == 1
    [message] = world.email.sent
    assert isinstance(message, OutboundEmail)
    assert (message.to, message.subject, message.text) == (
        "a@example.com",
        "Hi Dana",
        "Hello Dana Kim",
    )
    [sent] = world.published(MessageSentV1)
    assert (sent.sequence_id, sent.step, sent.channel) == (sequence_id, 0, "email")
    enrollment = await world.enrollment("a")
    assert enrollment.current_step == 1
    assert enrollment.next_send_at == MONDAY_10_SEOUL + timedelta(hours=24)
    assert await world.run() == 0  # nothing else due yet

    world.clock.now += timedelta(hours=24)
    assert await world.run() == 1
    assert len(world.email.sent) == 2
    assert (await world.enrollment("a")).status is EnrollmentStatus.COMPLETED


async def test_an_engagement_recorded_while_the_message_is_sent_is_kept(world: World) -> None:
    """The commit decides from the enrollment as read before sending: one changed meanwhile
    is moved on from its current state, not overwritten."""
    await world.lead("r")
    sequence_id = await world.sequence(email(0), email(24))
    await world.enroll("r", sequence_id)

    async def opened() -> None:
        current = await world.enrollment("r")
        engaged = dataclasses.replace(current, engaged=("opened:0",))

        async def record(transaction: NurtureTransaction) -> tuple[None, list[Event]]:
            await transaction.save(NurtureChanges(changed=(engaged,)))
            return None, []

        await world.store.commit(record)

    world.email.meanwhile = opened
    await world.run()  # the change voids the claim; the step is claimed again, not resent
    world.email.meanwhile = None
    assert len(world.email.sent) == 1
    assert len(world.published(MessageSentV1)) == 1
    enrollment = await world.enrollment("r")
    assert (enrollment.current_step, enrollment.engaged) == (1, ("opened:0",))
    assert enrollment.next_send_at == MONDAY_10_SEOUL + timedelta(hours=24)


async def test_a_batch_reads_its_enrollments_once_and_moves_them_on(world: World) -> None:
    """The commit moves each enrollment on from its state as read when deciding (a change
    since then voids the timer's claim), reading none again."""
    for lead_id in ("m1", "m2"):
        await world.lead(lead_id)
    sequence_id = await world.sequence(email(0), email(24))
    for lead_id in ("m1", "m2"):
        await world.enroll(lead_id, sequence_id)
    reads = world.store.reads["enrollments"]
    assert await world.run() == 2
    assert world.store.reads["enrollments"] == reads + 1
    assert len(world.published(MessageSentV1)) == 2
    for lead_id in ("m1", "m2"):
        enrollment = await world.enrollment(lead_id)
        assert (enrollment.current_step, enrollment.last_sent_at) == (1, MONDAY_10_SEOUL)
        assert enrollment.next_send_at == MONDAY_10_SEOUL + timedelta(hours=24)


async def claimed_twice(world: World) -> tuple[list[ClaimedWork], list[ClaimedWork]]:
    """The due sends claimed by one replica ("a"), then again by another ("b") once the
    first one's 30 s lease has lapsed."""
    lease = timedelta(seconds=30)
    first = await world.store.due.claim(
        kinds={SEND_KIND}, now=world.clock.now, limit=10, lease=lease, token="a"
    )
    world.clock.now += lease + timedelta(seconds=1)
    second = await world.store.due.claim(
        kinds={SEND_KIND}, now=world.clock.now, limit=10, lease=lease, token="b"
    )
    return first, second


async def test_a_replica_whose_lease_lapsed_mid_send_never_makes_a_second_send(
    world: World,
) -> None:
    await world.lead("slow")
    sequence_id = await world.sequence(email(0), email(48))
    await world.enroll("slow", sequence_id)
    first, second = world.replica(), world.replica()
    # The first replica claims, then stalls past its lease; the second claims it again.
    claimed_first, claimed_second = await claimed_twice(world)
    assert [c.work.key for c in claimed_first] == [c.work.key for c in claimed_second]
    fire_first = first._fire
    fire_second = second._fire
    results = await asyncio.gather(
        fire_first(claimed_first), fire_second(claimed_second), return_exceptions=True
    )
    # The stalled one sent and then lost its commit; the other found the send record.
    assert sum(isinstance(r, Exception) for r in results) == 1
    world.clock.now += timedelta(seconds=61)
    await world.run()  # whatever the race left is fired again
    assert len(world.email.sent) == 1
    assert len(world.published(MessageSentV1)) == 1
    assert (await world.enrollment("slow")).current_step == 1


async def test_a_send_whose_commit_lost_its_lease_is_published_as_sent_by_the_next_replica(
    world: World,
) -> None:
    await world.lead("stalled")
    sequence_id = await world.sequence(email(0), email(48))
    await world.enroll("stalled", sequence_id)
    first, second = world.replica(), world.replica()
    claimed_first, claimed_second = await claimed_twice(world)
    # The first replica sends, then its commit finds the timer claimed by the second.
    with pytest.raises(LeaseLost):
        await first._fire(claimed_first)
    [key] = [c.work.key for c in claimed_first]
    # The provider's answer was stored all the same, beside the aborted commit...
    assert (await world.store.send_records([key]))[key].status is SendStatus.SENT
    # ...so the next replica publishes the send instead of an unknown outcome or a resend.
    await second._fire(claimed_second)
    assert len(world.email.sent) == 1
    assert len(world.published(MessageSentV1)) == 1
    assert world.published(MessageFailedV1) == []
    assert (await world.enrollment("stalled")).current_step == 1


async def test_after_downtime_a_step_too_late_is_skipped_and_the_next_one_planned(
    world: World,
) -> None:
    await world.lead("late")
    sequence_id = await world.sequence(email(0), email(24))
    await world.enroll("late", sequence_id)
    world.clock.now += timedelta(hours=7)  # the scheduler was down longer than 6 h

    await world.run()
    assert world.email.sent == []
    enrollment = await world.enrollment("late")
    assert enrollment.current_step == 1
    # Counted from when the skipped step was due, as if it had gone out.
    assert enrollment.next_send_at == MONDAY_10_SEOUL + timedelta(hours=24)


async def test_a_step_late_within_the_limit_is_still_sent(world: World) -> None:
    await world.lead("caught-up")
    await world.enroll("caught-up", await world.sequence(email(0)))
    world.clock.now += timedelta(hours=5)
    await world.run()
    assert len(world.email.sent) == 1


async def test_a_capped_message_waits_for_the_next_day_and_is_not_dropped(world: World) -> None:
    await world.lead("busy")
    for _ in range(3):  # three sequences, one email each, all due now; cap: 2 a day
        await world.enroll("busy", await world.sequence(email(0)))
    await world.run()
    assert len(world.email.sent) == 2
    [waiting] = [
        e
        for e in await world.store.list_enrollments(EnrollmentFilter(lead_id="busy"))
        if e.status is EnrollmentStatus.ACTIVE
    ]
    # Tuesday 08:00 in Seoul: after midnight the cap lets it go, after quiet hours it may.
    assert waiting.next_send_at == datetime(2025, 3, 3, 23, 0, tzinfo=UTC)
    world.clock.now = waiting.next_send_at
    await world.run()
    assert len(world.email.sent) == 3


async def test_quiet_hours_in_the_lead_zone_hold_a_message_until_morning(world: World) -> None:
    world.clock.now = datetime(2025, 3, 3, 13, 30, tzinfo=UTC)  # 22:30 in Seoul
    await world.lead("night")
    await world.enroll("night", await world.sequence(email(0)))
    await world.run()
    assert world.email.sent == []
    assert (await world.enrollment("night")).next_send_at == datetime(2025, 3, 3, 23, 0, tzinfo=UTC)


async def test_temporary_provider_errors_are_retried_then_the_message_fails(
    world: World,
) -> None:
    await world.lead("flaky")
    await world.enroll("flaky", await world.sequence(email(0), email(24)))
    world.email.errors = [RetryableSendError("email", "421 try later")] * 3

    await world.run()
    assert (await world.enrollment("flaky")).current_step == 0  # waits 30 s
    for _ in range(2):
        world.clock.now += timedelta(minutes=5)
        await world.run()
    assert world.email.sent == []
    [failed] = world.published(MessageFailedV1)
    assert "gave up after 3 attempts" in failed.error
    assert (await world.enrollment("flaky")).current_step == 1


async def test_a_temporary_error_then_success_sends_once(world: World) -> None:
    await world.lead("second-try")
    await world.enroll("second-try", await world.sequence(email(0)))
    world.email.errors = [RetryableSendError("email", "421 try later")]
    await world.run()
    world.clock.now += timedelta(seconds=31)
    await world.run()
    assert len(world.email.sent) == 1
    assert len(world.published(MessageSentV1)) == 1
    assert world.published(MessageFailedV1) == []


async def test_a_refused_message_fails_at_once_and_the_sequence_goes_on(world: World) -> None:
    await world.lead("refused")
    await world.enroll("refused", await world.sequence(email(0), email(24)))
    world.email.errors = [PermanentSendError("email", "550 no such user", code="550")]
    await world.run()
    [failed] = world.published(MessageFailedV1)
    assert "550" in failed.error
    assert (await world.enrollment("refused")).current_step == 1


async def test_a_template_a_lead_cannot_fill_fails_that_message_not_the_loop(
    world: World,
) -> None:
    await world.lead("custom", phone="+821012345678")
    await world.lead("plain", phone="+821087654321")
    broken = Step(channel="sms", delay_hours=0, body="Your branch: {{ custom.branch }}")
    sequence_id = await world.sequence(broken, email(0))
    await world.enroll("custom", sequence_id)
    await world.enroll("plain", sequence_id)
    await world.run()
    failures = world.published(MessageFailedV1)
    assert sorted(f.lead_id for f in failures) == ["custom", "plain"]
    assert all("template" in f.error and "branch" in f.error for f in failures)
    assert world.sms.sent == []
    # The loop went on: each lead's next step is planned and goes out.
    assert len(world.email.sent) == 2


async def test_an_opt_out_of_one_channel_skips_only_that_channels_steps(world: World) -> None:
    """Checked right before sending, against the channels' own opt-outs (nurture may not
    have consumed the opt-out event yet)."""
    await world.lead("half", phone="+821011112222")
    await world.lead("other", phone="+821033334444")
    text = Step(channel="sms", delay_hours=0, body="Hi {{ first_name }}")
    emails, texts = await world.sequence(email(0)), await world.sequence(text)
    for lead_id in ("half", "other"):
        await world.enroll(lead_id, emails)
        await world.enroll(lead_id, texts)
    await ChannelFeedback(world.channels, clock=world.clock).opt_out("half", "email", "one_click")

    await world.run()
    assert [m.lead_id for m in world.email.sent] == ["other"]
    assert sorted(m.lead_id for m in world.sms.sent) == ["half", "other"]
    assert sorted((e.lead_id, e.channel) for e in world.published(MessageSentV1)) == [
        ("half", "sms"),
        ("other", "email"),
        ("other", "sms"),
    ]


async def test_a_paused_sequence_holds_its_steps_until_resumed(world: World) -> None:
    await world.lead("paused")
    sequence_id = await world.sequence(email(0))
    await world.enroll("paused", sequence_id)
    await world.sequences.set_status(sequence_id, SequenceStatus.PAUSED)
    await world.run()
    assert world.email.sent == []
    await world.sequences.set_status(sequence_id, SequenceStatus.ACTIVE)
    world.clock.now += timedelta(minutes=1)
    await world.run()
    assert len(world.email.sent) == 1


async def test_a_step_is_skipped_when_the_previous_email_was_opened(world: World) -> None:
    await world.lead("reader")
    sequence_id = await world.sequence(
        email(0), email(24, skip_if=(SkipCondition.OPENED_PREVIOUS,)), email(48)
    )
    await world.enroll("reader", sequence_id)
    await world.run()
    await world.apply(
        [
            EngagementRecordedV1(
                lead_id="reader",
                occurred_at=world.clock.now + timedelta(hours=1),
                kind="open",
                sequence_id=sequence_id,
                step=0,
                channel="email",
            )
        ]
    )
    world.clock.now += timedelta(hours=24)
    await world.run()
    assert len(world.email.sent) == 1  # step 1 skipped
    enrollment = await world.enrollment("reader")
    assert enrollment.current_step == 2


async def test_the_global_rate_limit_defers_the_excess_to_the_next_second(
    world: World,
) -> None:
    world.rate["email"] = 2
    sequence_id = await world.sequence(email(0))
    for n in range(5):
        await world.lead(f"r{n}")
        await world.enroll(f"r{n}", sequence_id)
    runner = world.replica()
    await runner.run_once()
    assert len(world.email.sent) == 2
    world.clock.now += timedelta(seconds=1)
    await runner.run_once()
    assert len(world.email.sent) == 4
    world.clock.now += timedelta(seconds=1)
    await runner.run_once()
    assert len(world.email.sent) == 5


async def test_editing_a_live_sequence_keeps_enrolled_leads_on_their_version(
    world: World,
) -> None:
    await world.lead("v1")
    sequence_id = await world.sequence(email(0), email(24))
    await world.enroll("v1", sequence_id)
    edited = NurtureSequence(
        sequence_id,
        "Spring",
        (Step(channel="email", delay_hours=0, subject="New", body="New text"),),
    )
    await world.sequences.replace(edited)
    await world.run()
    world.clock.now += timedelta(hours=24)
    await world.run()
    assert [m.subject for m in world.email.sent if isinstance(m, OutboundEmail)] == [
        "Hi Dana",
        "Hi Dana",
    ]


async def _handed_over_at(world: World) -> list[datetime]:
    """When each email reaches its provider, on the world's clock."""
    times: list[datetime] = []

    async def record() -> None:
        times.append(world.clock())

    world.email.meanwhile = record
    return times


async def test_a_step_claimed_ahead_of_time_is_sent_when_due_not_before() -> None:
    world = World(clock=RunningClock())
    due = MONDAY_10_SEOUL
    await world.lead("a")
    await world.enroll("a", await world.sequence(email(0)))
    handed_over = await _handed_over_at(world)
    world.clock.now = due - timedelta(seconds=0.5)
    world.clock.start()  # type: ignore[attr-defined]

    assert await world.replica(lookahead_s=1.0).run_once() == 1  # claimed before it is due
    [at] = handed_over
    assert due <= at < due + timedelta(seconds=5)
    [sent] = world.published(MessageSentV1)
    assert sent.due_at == due <= sent.occurred_at


async def test_steps_claimed_ahead_count_against_the_rate_of_the_second_they_go_in() -> None:
    """Two steps due a second apart, claimed together before either is due: each takes its
    own second's one send, neither is deferred."""
    world = World(clock=RunningClock())
    world.rate["email"] = 1
    first = MONDAY_10_SEOUL
    sequence_id = await world.sequence(email(0))
    for lead_id, due in (("a", first), ("b", first + timedelta(seconds=1))):
        world.clock.now = due
        await world.lead(lead_id)
        await world.enroll(lead_id, sequence_id)
    handed_over = await _handed_over_at(world)
    world.clock.now = first - timedelta(seconds=0.3)
    world.clock.start()  # type: ignore[attr-defined]

    assert await world.replica(lookahead_s=2.0).run_once() == 2
    assert [m.lead_id for m in world.email.sent] == ["a", "b"]
    assert first <= handed_over[0] < first + timedelta(seconds=1)
    assert first + timedelta(seconds=1) <= handed_over[1]
    assert len(world.published(MessageSentV1)) == 2


def _send_delays(channel: str) -> tuple[float, float]:
    """How many sends `leadflow_nurture_send_delay_seconds` counted so far, and their sum."""
    labels = {"channel": channel}
    count = REGISTRY.get_sample_value("leadflow_nurture_send_delay_seconds_count", labels)
    total = REGISTRY.get_sample_value("leadflow_nurture_send_delay_seconds_sum", labels)
    return count or 0.0, total or 0.0


async def test_the_send_delay_metric_is_the_time_from_due_to_the_provider(world: World) -> None:
    """A step sent 90 s after it fell due (the service was down) counts 90 s; one claimed
    ahead and handed over at its due time counts (almost) nothing."""
    await world.lead("late")
    await world.enroll("late", await world.sequence(email(0)))
    before_count, before_sum = _send_delays("email")
    world.clock.now = MONDAY_10_SEOUL + timedelta(seconds=90)

    assert await world.run() == 1
    count, total = _send_delays("email")
    assert count - before_count == 1
    assert total - before_sum == pytest.approx(90.0)

    ahead = World(clock=RunningClock())
    await ahead.lead("on-time")
    await ahead.enroll("on-time", await ahead.sequence(email(0)))
    ahead.clock.now = MONDAY_10_SEOUL - timedelta(seconds=0.5)
    ahead.clock.start()  # type: ignore[attr-defined]
    assert await ahead.replica(lookahead_s=1.0).run_once() == 1
    after_count, after_sum = _send_delays("email")
    assert after_count - count == 1
    assert 0.0 <= after_sum - total < 1.0


def test_a_look_ahead_not_shorter_than_the_lease_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError) as refused:
        NurtureSettings(scheduler_lookahead_s=5, scheduler_lease_s=5)
    assert "scheduler_lookahead_s (5.0) must be shorter than scheduler_lease_s" in str(
        refused.value
    )
    assert NurtureSettings(scheduler_lookahead_s=4, scheduler_lease_s=5).scheduler_lookahead_s == 4
