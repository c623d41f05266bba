"""Pure decisions of nurture: who is enrolled where, on which channels, when a step is due,
and what each lifecycle event does to a lead's nurture state.

No I/O and no clock reads: callers pass `now` and new ids. Times go in and come out in UTC;
send windows and weekdays are read in the lead's own time zone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Final, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_time_zones

from services.nurture.templates import Part, template_problems
from shared.events import (
    Channel,
    Consent,
    Contact,
    EngagementRecordedV1,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadOptedInV1,
    LeadOptedOutV1,
    LeadReceivedV1,
    LeadReturnedToPoolV1,
    LeadRoutedToNurtureV1,
    LossLevel,
    MessageStatusUpdatedV1,
)

WEEKDAYS: Final = range(7)
"""Monday is 0 and Sunday 6, as in `datetime.weekday()`."""


class EnrollmentStatus(StrEnum):
    ACTIVE = "active"
    STOPPED = "stopped"
    COMPLETED = "completed"


class StopReason(StrEnum):
    ASSIGNED = "assigned"
    CONVERTED = "converted"
    ERASED = "erased"
    REPLIED = "replied"
    OPTED_OUT = "opted_out"
    BOUNCED = "bounced"
    REQUALIFIED = "requalified"
    ARCHIVED = "archived"


class SequenceStatus(StrEnum):
    """`paused`: nothing is sent and nobody new is enrolled until it is resumed (enrolled
    leads keep their place); `archived`: for good, its enrollments are stopped."""

    ACTIVE = "active"
    PAUSED = "paused"
    ARCHIVED = "archived"


class StepAnchor(StrEnum):
    """What a step's delay counts from."""

    PREVIOUS = "previous"
    """The previous step's send (or the enrollment, for the first step)."""
    ENROLLMENT = "enrollment"


class SkipCondition(StrEnum):
    """Why a step is not sent (and the sequence moves on to the next one)."""

    OPENED_PREVIOUS = "opened_previous"
    CLICKED_PREVIOUS = "clicked_previous"
    OPENED_ANY = "opened_any"


MANUAL_ENROLLMENT: Final = "manual"
BULK_ENROLLMENT: Final = "bulk"


@dataclass(frozen=True, slots=True)
class SendWindow:
    """Local hours in which messages may go out: [start_hour, end_hour).

    A window whose start is after its end runs overnight (22 to 2 is 22:00-02:00).
    """

    start_hour: int
    end_hour: int


@dataclass(frozen=True, slots=True)
class Step:
    """One message of a sequence, sent `delay_hours` after enrollment or the previous step.

    `body` is the SMS text or the email's plain-text part, `subject` and `html` are email
    only; all three are templates (see `services.nurture.templates`). A step's own
    `send_window` / `weekdays` replace the sequence's for that step."""

    channel: Channel
    delay_hours: int
    body: str
    subject: str | None = None
    html: str | None = None
    after: StepAnchor = StepAnchor.PREVIOUS
    skip_if: tuple[SkipCondition, ...] = ()
    send_window: SendWindow | None = None
    weekdays: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class NurtureSequence:
    sequence_id: str
    name: str
    steps: tuple[Step, ...]
    send_window: SendWindow | None = None
    weekdays: tuple[int, ...] | None = None
    """Local weekdays on which messages may go out; None means every day."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """What is wrong with a request, and where: `loc` as FastAPI reports it, minus 'body'."""

    loc: tuple[str | int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class SequenceRecord:
    """A sequence as stored: its content and the version marketing's edits have reached.

    `history` keeps every earlier version's content: a lead goes through the sequence as it
    was when the lead was enrolled, so editing a live sequence never breaks anyone in it."""

    sequence: NurtureSequence
    version: int
    created_at: datetime
    updated_at: datetime
    status: SequenceStatus = SequenceStatus.ACTIVE
    history: Mapping[int, NurtureSequence] = dataclasses.field(default_factory=dict)

    def at(self, version: int) -> NurtureSequence:
        """The content of `version` (the current one when that version is not kept)."""
        if version == self.version:
            return self.sequence
        return self.history.get(version, self.sequence)


SequenceCatalog = Mapping[str, SequenceRecord]
"""Every sequence by id: the hot configuration enrollments are planned against."""


@dataclass(frozen=True, slots=True)
class Enrollment:
    enrollment_id: str
    lead_id: str
    sequence_id: str
    sequence_version: int
    reason: str
    status: EnrollmentStatus
    enrolled_at: datetime
    triggered_at: datetime
    """When the fact that caused the enrollment happened (the loss, or the manual request)."""
    current_step: int
    next_send_at: datetime | None
    channels: tuple[Channel, ...]
    last_sent_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_reason: StopReason | None = None
    engaged: tuple[str, ...] = ()
    """What the lead did with this enrollment's messages, e.g. 'opened:0', 'clicked:1'."""


@dataclass(frozen=True, slots=True)
class LeadContact:
    """How nurture may reach a lead: the newest contact and consent, each as of the event
    that carried it, or only the time it was erased (its personal data is gone for good)."""

    lead_id: str
    contact: Contact | None = None
    contact_as_of: datetime | None = None
    consent: Consent | None = None
    consent_as_of: datetime | None = None
    erased_at: datetime | None = None
    blocked: tuple[Channel, ...] = ()
    """Channels the lead opted out of (until it opts back in), or whose address
    hard-bounced."""
    opted_as_of: tuple[tuple[Channel, datetime], ...] = ()
    """Per channel, the time of the newest opt-out or opt-in applied: the two travel on
    different topics, so an older one arriving late must not undo a newer one."""
    stage: str | None = None
    """Where the lead last was in its lifecycle (new, assigned, in_pool, nurture, lost-N,
    converted), as of `stage_as_of`: what marketing's bulk enrollment filters on."""
    stage_as_of: datetime | None = None

    @property
    def known(self) -> bool:
        """Some event has told nurture about this lead's contact or consent."""
        return self.contact is not None or self.consent is not None


@dataclass(frozen=True, slots=True)
class LeadNurture:
    """Everything nurture decides on for one lead: its contact and its active enrollments
    (at most one per sequence)."""

    contact: LeadContact
    active: tuple[Enrollment, ...] = ()

    def active_in(self, sequence_id: str) -> Enrollment | None:
        return next((e for e in self.active if e.sequence_id == sequence_id), None)


# --- what can go wrong ----------------------------------------------------------------------


class SequenceNotFoundError(Exception):
    def __init__(self, sequence_id: str) -> None:
        super().__init__(f"sequence '{sequence_id}' not found")


class SequenceExistsError(Exception):
    def __init__(self, sequence_id: str) -> None:
        super().__init__(f"sequence '{sequence_id}' already exists")


class LeadNotFoundError(Exception):
    def __init__(self, lead_id: str) -> None:
        super().__init__(f"lead '{lead_id}' is not known to nurture")


class AlreadyEnrolledError(Exception):
    def __init__(self, lead_id: str, sequence_id: str | None) -> None:
        super().__init__(
            f"lead '{lead_id}' is already in an active enrollment"
            + (f" in '{sequence_id}'" if sequence_id else "")
        )


class EnrollmentMovedMeanwhileError(Exception):
    """A step's move was decided from an enrollment that is no longer stored as it was
    read: nothing of the transaction is written."""

    def __init__(self, enrollment_ids: Collection[str]) -> None:
        super().__init__(f"enrollments moved since they were read: {sorted(enrollment_ids)}")
        self.enrollment_ids = frozenset(enrollment_ids)


class SequenceNotEnrollingError(Exception):
    def __init__(self, sequence_id: str, status: SequenceStatus) -> None:
        super().__init__(f"sequence '{sequence_id}' is {status.value}: it enrolls nobody")


# --- which leads are nurtured, in what ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LossEnrollment:
    sequence_id: str
    reason: str


def enrollment_for_loss(level: LossLevel) -> LossEnrollment | None:
    """Level 2 (bought elsewhere) and 3 (not now) are nurtured; level 1 (invalid contact) never."""
    if level == 1:
        return None
    return LossEnrollment(sequence_id=f"loss-level-{level}", reason=f"lost-level-{level}")


def allowed_channels(
    contact: Contact | None, consent: Consent | None, blocked: Collection[Channel] = ()
) -> tuple[Channel, ...]:
    """Channels the lead agreed to and can be reached on, less those it opted out of or
    that bounced; steps on other channels are skipped."""
    if contact is None or consent is None:
        return ()
    channels: list[Channel] = []
    if consent.email and contact.email and "email" not in blocked:
        channels.append("email")
    if consent.sms and contact.phone and "sms" not in blocked:
        channels.append("sms")
    return tuple(channels)


def _window_errors(
    where: tuple[str | int, ...], window: SendWindow | None, weekdays: tuple[int, ...] | None
) -> list[FieldError]:
    errors: list[FieldError] = []
    if window is not None and window.start_hour == window.end_hour:
        errors.append(
            FieldError(
                (*where, "send_window", "end_hour"),
                "the window opens and closes at the same hour; leave send_window out to send "
                "at any hour",
            )
        )
    if weekdays is not None and not weekdays:
        errors.append(
            FieldError(
                (*where, "weekdays"), "at least one weekday is needed; leave weekdays out for all"
            )
        )
    return errors


def _step_errors(index: int, step: Step, steps: Sequence[Step]) -> list[FieldError]:
    where: tuple[str | int, ...] = ("steps", index)
    errors: list[FieldError] = []
    if step.channel == "sms":
        for part, value in (("subject", step.subject), ("html", step.html)):
            if value is not None:
                errors.append(FieldError((*where, part), f"an SMS step has no {part}"))
    if step.channel == "email" and not step.subject:
        errors.append(FieldError((*where, "subject"), "an email step needs a subject"))
    parts: list[tuple[Part, str | None]] = [
        ("subject", step.subject),
        ("body", step.body),
        ("html", step.html),
    ]
    for part, source in parts:
        if source is not None:
            errors += [
                FieldError((*where, part), str(problem))
                for problem in template_problems(part, source)
            ]
    for condition in step.skip_if:
        if condition in _ABOUT_PREVIOUS and (index == 0 or steps[index - 1].channel != "email"):
            errors.append(
                FieldError(
                    (*where, "skip_if"),
                    f"'{condition}' needs an email step just before this one (opens and "
                    "clicks are tracked on email only)",
                )
            )
    return errors + _window_errors(where, step.send_window, step.weekdays)


_ABOUT_PREVIOUS: Final = frozenset({SkipCondition.OPENED_PREVIOUS, SkipCondition.CLICKED_PREVIOUS})


def sequence_errors(sequence: NurtureSequence) -> list[FieldError]:
    """Every rule a sequence breaks that its fields' own types cannot express, template
    syntax errors and unknown template variables included (with their line)."""
    errors: list[FieldError] = []
    if not sequence.steps:
        errors.append(FieldError(("steps",), "a sequence needs at least one step"))
    for index, step in enumerate(sequence.steps):
        errors += _step_errors(index, step, sequence.steps)
    return errors + _window_errors((), sequence.send_window, sequence.weekdays)


# --- when a step is due ---------------------------------------------------------------------


def is_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def lead_time_zone(name: str | None, default: str, phone: str | None = None) -> str:
    """The lead's own IANA zone if it has a valid one, else the zone its phone number's
    country (or area) is in, else `default`."""
    if name and is_time_zone(name):
        return name
    return (phone and phone_time_zone(phone)) or default


_OFFSET_PROBES: Final = (
    datetime(2025, 1, 15, 12, tzinfo=UTC),
    datetime(2025, 7, 15, 12, tzinfo=UTC),
)


@lru_cache(maxsize=8192)
def phone_time_zone(phone: str) -> str | None:
    """The zone of an E.164 number when its prefix pins one down: a single zone, or zones
    that all keep the same clock (the UK's London, Jersey, Guernsey...). A prefix spanning
    different clocks (+1 without an area code that tells) gives None."""
    try:
        number = phonenumbers.parse(phone)
    except phonenumbers.NumberParseException:
        return None
    zones = [z for z in phone_time_zones.time_zones_for_number(number) if is_time_zone(z)]
    if not zones:
        return None
    clocks = {
        tuple(probe.astimezone(ZoneInfo(z)).utcoffset() for probe in _OFFSET_PROBES) for z in zones
    }
    if len(clocks) != 1:
        return None
    return "Europe/London" if "Europe/London" in zones else zones[0]


def contact_time_zone(contact: Contact | None, default: str) -> str:
    if contact is None:
        return default
    return lead_time_zone(contact.timezone, default, contact.phone)


def _local_hour(day: date, hour: int, zone: ZoneInfo) -> datetime:
    # Adding to a zoned datetime is wall-clock arithmetic: hour 24 is the next midnight.
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    return (midnight + timedelta(hours=hour)).astimezone(UTC)


def _open_periods(
    day: date, window: SendWindow | None, zone: ZoneInfo
) -> list[tuple[datetime, datetime]]:
    """The (opens, closes) UTC periods of local `day` in which a message may go out."""
    if window is None:
        return [(_local_hour(day, 0, zone), _local_hour(day, 24, zone))]
    if window.start_hour < window.end_hour:
        return [
            (_local_hour(day, window.start_hour, zone), _local_hour(day, window.end_hour, zone))
        ]
    return [
        (_local_hour(day, 0, zone), _local_hour(day, window.end_hour, zone)),
        (_local_hour(day, window.start_hour, zone), _local_hour(day, 24, zone)),
    ]


def next_send_time(
    step: Step,
    since: datetime,
    timezone: str,
    send_window: SendWindow | None,
    weekdays: Collection[int] | None,
) -> datetime:
    """When `step` is due: its delay after `since` (enrollment or the previous send), moved
    forward to the first moment inside the send window on an allowed weekday, both read in
    the lead's `timezone`. Returns UTC; raises ValueError when no weekday is allowed.
    """
    zone = ZoneInfo(timezone)
    earliest = (since + timedelta(hours=step.delay_hours)).astimezone(UTC)
    first_day = earliest.astimezone(zone).date()
    for offset in range(len(WEEKDAYS) + 1):
        day = first_day + timedelta(days=offset)
        if weekdays is not None and day.weekday() not in weekdays:
            continue
        for opens, closes in _open_periods(day, send_window, zone):
            if closes > earliest:
                return max(opens, earliest)
    raise ValueError("the sequence allows no weekday, so no step can ever be sent")


@dataclass(frozen=True, slots=True)
class EnrollmentPlan:
    channels: tuple[Channel, ...]
    next_send_at: datetime | None
    """None when the sequence has no step left at that index."""


def step_due(
    sequence: NurtureSequence,
    step_index: int,
    since: datetime,
    timezone: str,
    *,
    enrolled_at: datetime | None = None,
) -> datetime:
    """When step `step_index` is due in `timezone`: its delay after `since` (the previous
    send, or the enrollment) or after `enrolled_at` (a step anchored on the enrollment),
    then into its own window and weekdays, or else the sequence's."""
    step = sequence.steps[step_index]
    anchor = enrolled_at if step.after is StepAnchor.ENROLLMENT and enrolled_at else since
    return next_send_time(
        step,
        anchor,
        timezone,
        step.send_window or sequence.send_window,
        step.weekdays if step.weekdays is not None else sequence.weekdays,
    )


def plan_step(
    sequence: NurtureSequence,
    step_index: int,
    since: datetime,
    *,
    contact: Contact | None,
    consent: Consent | None,
    default_timezone: str,
    enrolled_at: datetime | None = None,
    blocked: Collection[Channel] = (),
) -> EnrollmentPlan:
    """An enrollment's channels and when its step `step_index` is due, counted from `since`
    (enrollment or the previous send), for the lead's current contact and consent."""
    channels = allowed_channels(contact, consent, blocked)
    if step_index >= len(sequence.steps):
        return EnrollmentPlan(channels=channels, next_send_at=None)
    timezone = contact_time_zone(contact, default_timezone)
    due = step_due(sequence, step_index, since, timezone, enrolled_at=enrolled_at)
    return EnrollmentPlan(channels=channels, next_send_at=due)


# --- what an event does to a lead ------------------------------------------------------------


def to_stored_precision(moment: datetime) -> datetime:
    """`moment` to the millisecond, as MongoDB keeps it. Events carry microseconds; times
    are kept and compared at the stored precision, so a decision never depends on whether
    one of the times it compares has been through the database yet."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def with_newer_contact(
    lead: LeadContact,
    as_of: datetime,
    contact: Contact | None = None,
    consent: Consent | None = None,
) -> LeadContact:
    """The lead's contact and consent, each replaced only by a newer one (`as_of`: the time of
    the event carrying it). Events about a lead arrive on several topics, which Kafka does not
    order among themselves; an erased lead is never filled in again."""
    if lead.erased_at is not None:
        return lead
    if contact is not None and (lead.contact_as_of is None or lead.contact_as_of < as_of):
        lead = dataclasses.replace(lead, contact=contact, contact_as_of=as_of)
    if consent is not None and (lead.consent_as_of is None or lead.consent_as_of < as_of):
        lead = dataclasses.replace(lead, consent=consent, consent_as_of=as_of)
    return lead


def erased(lead: LeadContact, now: datetime) -> LeadContact:
    """Right to erasure: nothing personal is kept, only when it was erased."""
    return LeadContact(lead.lead_id, erased_at=lead.erased_at or now)


def why_not_enrolled(
    lead: LeadNurture, record: SequenceRecord, *, must_be_known: bool
) -> Exception | None:
    """Why `lead` cannot start an enrollment in `record` now, or None if it can. One active
    enrollment per lead per sequence; an erased lead is never enrolled; marketing may enroll
    only leads it knows; a paused or archived sequence takes nobody new."""
    sequence_id = record.sequence.sequence_id
    if lead.active_in(sequence_id) is not None:
        return AlreadyEnrolledError(lead.contact.lead_id, sequence_id)
    if lead.contact.erased_at is not None or (must_be_known and not lead.contact.known):
        return LeadNotFoundError(lead.contact.lead_id)
    if record.status is not SequenceStatus.ACTIVE:
        return SequenceNotEnrollingError(sequence_id, record.status)
    return None


def start_enrollment(
    lead: LeadContact,
    record: SequenceRecord,
    *,
    enrollment_id: str,
    reason: str,
    triggered_at: datetime,
    now: datetime,
    default_timezone: str,
) -> Enrollment:
    """A new active enrollment of `lead` in `record`'s sequence, its first step planned."""
    plan = plan_step(
        record.sequence,
        0,
        now,
        contact=lead.contact,
        consent=lead.consent,
        default_timezone=default_timezone,
        enrolled_at=now,
        blocked=lead.blocked,
    )
    return Enrollment(
        enrollment_id=enrollment_id,
        lead_id=lead.lead_id,
        sequence_id=record.sequence.sequence_id,
        sequence_version=record.version,
        reason=reason,
        status=EnrollmentStatus.ACTIVE,
        enrolled_at=now,
        triggered_at=triggered_at,
        current_step=0,
        next_send_at=plan.next_send_at,
        channels=plan.channels,
    )


def replanned(
    enrollment: Enrollment, record: SequenceRecord, lead: LeadContact, default_timezone: str
) -> Enrollment:
    """The lead's channels and time zone may have changed: so may its enrollment's channels
    and the time its current step is due (counted, as before, from the last send), on the
    version of the sequence the lead was enrolled in."""
    plan = plan_step(
        record.at(enrollment.sequence_version),
        enrollment.current_step,
        enrollment.last_sent_at or enrollment.enrolled_at,
        contact=lead.contact,
        consent=lead.consent,
        default_timezone=default_timezone,
        enrolled_at=enrollment.enrolled_at,
        blocked=lead.blocked,
    )
    return dataclasses.replace(enrollment, channels=plan.channels, next_send_at=plan.next_send_at)


def stopped(enrollment: Enrollment, reason: StopReason, now: datetime) -> Enrollment:
    return dataclasses.replace(
        enrollment,
        status=EnrollmentStatus.STOPPED,
        stop_reason=reason,
        stopped_at=now,
        next_send_at=None,
    )


def sequence_of(catalog: SequenceCatalog, sequence_id: str) -> SequenceRecord:
    record = catalog.get(sequence_id)
    if record is None:
        raise SequenceNotFoundError(sequence_id)
    return record


@dataclass(frozen=True, slots=True)
class Applied:
    """A lead after one event, the enrollments the event started or changed, and why a
    trigger enrolled nobody (if it did not)."""

    lead: LeadNurture
    enrollments: tuple[Enrollment, ...] = ()
    not_enrolled: str | None = None


_STOPS: Final[Mapping[type[Event], StopReason]] = {
    LeadAssignedV1: StopReason.ASSIGNED,
    LeadConvertedV1: StopReason.CONVERTED,
}


@dataclass(frozen=True, slots=True)
class Trigger:
    """A lifecycle event that enrolls a lead: in which sequence, and the reason recorded."""

    sequence_id: str
    reason: str


RETURNED_TO_POOL: Final = Trigger("returned-to-pool", "returned-to-pool")
ROUTED_TO_NURTURE: Final = Trigger("routed-to-nurture", "routed-to-nurture")


def trigger_of(event: Event) -> Trigger | None:
    """The sequence an event enrolls its lead in, if any."""
    match event:
        case LeadLostV1(level=level):
            loss = enrollment_for_loss(level)
            return None if loss is None else Trigger(loss.sequence_id, loss.reason)
        case LeadReturnedToPoolV1():
            return RETURNED_TO_POOL
        case LeadRoutedToNurtureV1():
            return ROUTED_TO_NURTURE
    return None


def apply_event(
    lead: LeadNurture,
    event: Event,
    catalog: SequenceCatalog,
    *,
    now: datetime,
    default_timezone: str,
) -> Applied:
    """What one event does to a lead's nurture state.

    - received / merged / lost / routed-to-nurture carry contact and consent: the newest
      wins; active enrollments are replanned when they change;
    - a loss at level 2 or 3, a return to the pool and a routing to nurture enroll the lead
      in their sequence (a loss at level 1 never), unless it is already active in it, was
      erased, or the sequence is paused or archived;
    - an assignment or a conversion that happened after an enrollment was triggered stops
      it (an older one, arriving late, does not);
    - a reply stops every active enrollment; an opt-out or a hard bounce blocks the channel
      (an enrollment left with no channel stops), an opt-in newer than the opt-out lifts
      the block (active enrollments are replanned); opens and clicks are noted on the
      enrollment whose message they were about (skip conditions read them);
    - an erasure stops every active enrollment whenever it was triggered and forgets the
      contact for good.
    """
    zone = default_timezone
    at, now = to_stored_precision(event.occurred_at), to_stored_precision(now)
    lead = _with_stage(lead, event, at)
    applied = Applied(lead)
    match event:
        case LeadReceivedV1(contact=contact, consent=consent):
            applied = _contact_changed(lead, at, contact, consent, catalog, zone)
        case LeadMergedV1(contact=contact):
            applied = _contact_changed(lead, at, contact, None, catalog, zone)
        case (
            LeadLostV1(contact=contact, consent=consent)
            | LeadRoutedToNurtureV1(contact=contact, consent=consent)
        ):
            applied = _contact_changed(lead, at, contact, consent, catalog, zone)
        case LeadErasedV1():
            ended = tuple(stopped(e, StopReason.ERASED, now) for e in lead.active)
            return Applied(LeadNurture(erased(lead.contact, now)), enrollments=ended)
        case LeadAssignedV1() | LeadConvertedV1():
            ending = [e for e in lead.active if e.triggered_at < at]
            ended = tuple(stopped(e, _STOPS[type(event)], now) for e in ending)
            kept = tuple(e for e in lead.active if e.triggered_at >= at)
            return Applied(LeadNurture(lead.contact, kept), enrollments=ended)
        case EngagementRecordedV1():
            return _engaged(lead, event, now)
        case LeadOptedOutV1(channel=channel):
            both: tuple[Channel, ...] = ("email", "sms")
            newer = _opt_newer(lead, both if channel == "all" else (channel,), at)
            return _blocked(newer.lead, newer.channels, StopReason.OPTED_OUT, catalog, zone, now)
        case LeadOptedInV1(channel=channel):
            newer = _opt_newer(lead, (channel,), at)
            return _unblocked(newer.lead, newer.channels, catalog, zone)
        case MessageStatusUpdatedV1(status="bounced", channel=channel):
            return _blocked(lead, (channel,), StopReason.BOUNCED, catalog, zone, now)
    trigger = trigger_of(event)
    if trigger is None:
        return applied
    return _enroll_on_trigger(applied, event, trigger, catalog, now=now, default_timezone=zone)


def stage_of(event: Event) -> str | None:
    """The lifecycle stage an event puts its lead in, if it is one that does."""
    match event:
        case LeadReceivedV1():
            return "new"
        case LeadAssignedV1():
            return "assigned"
        case LeadReturnedToPoolV1():
            return "in_pool"
        case LeadRoutedToNurtureV1():
            return "nurture"
        case LeadLostV1(level=level):
            return f"lost-{level}"
        case LeadConvertedV1():
            return "converted"
    return None


def _with_stage(lead: LeadNurture, event: Event, at: datetime) -> LeadNurture:
    stage, contact = stage_of(event), lead.contact
    if stage is None or contact.erased_at is not None:
        return lead
    if contact.stage_as_of is not None and contact.stage_as_of >= at:
        return lead  # an older fact arriving late
    return dataclasses.replace(
        lead, contact=dataclasses.replace(contact, stage=stage, stage_as_of=at)
    )


def _merge(applied: Applied, more: Iterable[Enrollment]) -> tuple[Enrollment, ...]:
    touched = {e.enrollment_id: e for e in applied.enrollments}
    touched.update((e.enrollment_id, e) for e in more)
    return tuple(touched.values())


def _contact_changed(  # noqa: PLR0917 - the parts of one contact update, in their order
    lead: LeadNurture,
    as_of: datetime,
    contact: Contact | None,
    consent: Consent | None,
    catalog: SequenceCatalog,
    default_timezone: str,
) -> Applied:
    newer = with_newer_contact(lead.contact, as_of, contact, consent)
    if newer == lead.contact:
        return Applied(lead)
    return _replanned_all(lead, newer, catalog, default_timezone)


def _replanned_all(
    lead: LeadNurture, newer: LeadContact, catalog: SequenceCatalog, default_timezone: str
) -> Applied:
    active = tuple(
        replanned(e, sequence_of(catalog, e.sequence_id), newer, default_timezone)
        for e in lead.active
    )
    changed = tuple(a for a, b in zip(active, lead.active, strict=True) if a != b)
    return Applied(LeadNurture(newer, active), enrollments=changed)


def _blocked(  # noqa: PLR0917 - one channel block, then what it does to each enrollment
    lead: LeadNurture,
    channels: tuple[Channel, ...],
    reason: StopReason,
    catalog: SequenceCatalog,
    default_timezone: str,
    now: datetime,
) -> Applied:
    """The lead can no longer be reached on `channels`: enrollments keep the other channels,
    and those left with none stop with `reason`."""
    contact = lead.contact
    if contact.erased_at is not None:
        return Applied(lead)
    newer = dataclasses.replace(contact, blocked=tuple(sorted({*contact.blocked, *channels})))
    if newer == contact:
        return Applied(lead)
    applied = _replanned_all(lead, newer, catalog, default_timezone)
    ending = [e for e in applied.lead.active if not e.channels]
    ended = [stopped(e, reason, now) for e in ending]
    kept = tuple(e for e in applied.lead.active if e.channels)
    return Applied(LeadNurture(newer, kept), enrollments=_merge(applied, ended))


@dataclass(frozen=True, slots=True)
class _OptNewer:
    lead: LeadNurture
    channels: tuple[Channel, ...]
    """Those of the asked channels on which this opt change is the newest."""


def _opt_newer(lead: LeadNurture, channels: tuple[Channel, ...], at: datetime) -> _OptNewer:
    """Of `channels`, those no newer opt change was applied to, and the lead with `at`
    noted as their newest (an erased lead is left alone)."""
    contact = lead.contact
    if contact.erased_at is not None:
        return _OptNewer(lead, ())
    as_of = dict(contact.opted_as_of)
    newer = tuple(c for c in channels if c not in as_of or as_of[c] < at)
    if not newer:
        return _OptNewer(lead, ())
    as_of.update((c, at) for c in newer)
    noted = dataclasses.replace(contact, opted_as_of=tuple(sorted(as_of.items())))
    return _OptNewer(LeadNurture(noted, lead.active), newer)


def _unblocked(
    lead: LeadNurture,
    channels: tuple[Channel, ...],
    catalog: SequenceCatalog,
    default_timezone: str,
) -> Applied:
    """The lead opted back into `channels`: its active enrollments may use them again, their
    current step replanned (an enrollment the opt-out stopped stays stopped)."""
    contact = lead.contact
    newer = dataclasses.replace(
        contact, blocked=tuple(c for c in contact.blocked if c not in channels)
    )
    if newer.blocked == contact.blocked:
        return Applied(lead)
    return _replanned_all(lead, newer, catalog, default_timezone)


def _engaged(lead: LeadNurture, event: EngagementRecordedV1, now: datetime) -> Applied:
    if event.kind == "reply":
        ended = tuple(stopped(e, StopReason.REPLIED, now) for e in lead.active)
        return Applied(LeadNurture(lead.contact), enrollments=ended)
    if event.kind not in {"open", "click"} or event.sequence_id is None or event.step is None:
        return Applied(lead)
    mark = f"{'opened' if event.kind == 'open' else 'clicked'}:{event.step}"
    enrollment = lead.active_in(event.sequence_id)
    if enrollment is None or mark in enrollment.engaged:
        return Applied(lead)
    noted = dataclasses.replace(enrollment, engaged=(*enrollment.engaged, mark))
    active = tuple(noted if e is enrollment else e for e in lead.active)
    return Applied(LeadNurture(lead.contact, active), enrollments=(noted,))


def _enroll_on_trigger(
    applied: Applied,
    event: Event,
    trigger: Trigger,
    catalog: SequenceCatalog,
    *,
    now: datetime,
    default_timezone: str,
) -> Applied:
    record = sequence_of(catalog, trigger.sequence_id)
    refusal = why_not_enrolled(applied.lead, record, must_be_known=False)
    if refusal is not None:
        return dataclasses.replace(applied, not_enrolled=str(refusal))
    enrollment = start_enrollment(
        applied.lead.contact,
        record,
        # The trigger's own id: the same event can only ever make the same enrollment.
        enrollment_id=event.event_id.hex,
        reason=trigger.reason,
        triggered_at=to_stored_precision(event.occurred_at),
        now=now,
        default_timezone=default_timezone,
    )
    lead = LeadNurture(applied.lead.contact, (*applied.lead.active, enrollment))
    return Applied(lead, enrollments=_merge(applied, [enrollment]))


@dataclass(frozen=True, slots=True)
class NurtureChanges:
    """What to store after a batch of events (or one manual enrollment)."""

    contacts: tuple[LeadContact, ...] = ()
    """Leads whose contact, consent or erasure changed, as they are now."""
    started: tuple[Enrollment, ...] = ()
    """New enrollments, as they are now (one may already be stopped again)."""
    changed: tuple[Enrollment, ...] = ()
    """Enrollments that existed before and changed (replanned or stopped), as they are now."""
    not_enrolled: tuple[tuple[str, str], ...] = ()
    """(lead_id, why) of each trigger that enrolled nobody."""


@dataclass(frozen=True, slots=True)
class StepMove:
    """An enrollment moved past (or re-planned at) its current step, decided from
    `before` as it was read after its step's timer was claimed."""

    before: Enrollment
    after: Enrollment


def sequences_needed(events: Iterable[Event], active: Iterable[Enrollment]) -> set[str]:
    """The sequences a batch may plan against: those its triggers enroll in, and those of
    the leads' active enrollments (replanned when a contact changes)."""
    needed = {enrollment.sequence_id for enrollment in active}
    for event in events:
        trigger = trigger_of(event)
        if trigger is not None:
            needed.add(trigger.sequence_id)
    return needed


def nurture_batch(
    events: Sequence[Event],
    contacts: Mapping[str, LeadContact],
    active: Mapping[str, Sequence[Enrollment]],
    catalog: SequenceCatalog,
    *,
    now: datetime,
    default_timezone: str,
) -> NurtureChanges:
    """Apply `events` in order to the leads' stored state (`contacts` and `active`
    enrollments, by lead id); only what ends up different is returned to be stored."""
    leads: dict[str, LeadNurture] = {}
    touched: dict[str, Enrollment] = {}
    not_enrolled: list[tuple[str, str]] = []
    for event in events:
        lead_id = event.lead_id
        lead = leads.get(lead_id) or LeadNurture(
            contacts.get(lead_id) or LeadContact(lead_id), tuple(active.get(lead_id, ()))
        )
        applied = apply_event(lead, event, catalog, now=now, default_timezone=default_timezone)
        leads[lead_id] = applied.lead
        for enrollment in applied.enrollments:
            touched[enrollment.enrollment_id] = enrollment
        if applied.not_enrolled is not None:
            not_enrolled.append((lead_id, applied.not_enrolled))
    before = {e.enrollment_id: e for enrollments in active.values() for e in enrollments}
    return NurtureChanges(
        contacts=tuple(
            lead.contact
            for lead_id, lead in leads.items()
            if lead.contact != (contacts.get(lead_id) or LeadContact(lead_id))
        ),
        started=tuple(e for i, e in touched.items() if i not in before),
        changed=tuple(e for i, e in touched.items() if i in before and e != before[i]),
        not_enrolled=tuple(not_enrolled),
    )


def enroll_by_hand(
    lead: LeadNurture,
    catalog: SequenceCatalog,
    sequence_id: str,
    *,
    enrollment_id: str,
    now: datetime,
    default_timezone: str,
    reason: str = MANUAL_ENROLLMENT,
) -> Enrollment:
    """Marketing enrolls a lead it knows. Raises AlreadyEnrolledError, SequenceNotFoundError,
    SequenceNotEnrollingError or LeadNotFoundError (never seen, or erased)."""
    record = sequence_of(catalog, sequence_id)
    refusal = why_not_enrolled(lead, record, must_be_known=True)
    if refusal is not None:
        raise refusal
    now = to_stored_precision(now)
    return start_enrollment(
        lead.contact,
        record,
        enrollment_id=enrollment_id,
        reason=reason,
        triggered_at=now,
        now=now,
        default_timezone=default_timezone,
    )


# --- the sequences every installation starts with -----------------------------------------

_OFFICE_HOURS = SendWindow(start_hour=10, end_hour=19)
_WORKDAYS_AND_SATURDAY = (0, 1, 2, 3, 4, 5)
_DAY = 24

DEFAULT_SEQUENCES: Final[tuple[NurtureSequence, ...]] = (
    NurtureSequence(
        sequence_id="loss-level-2",
        name="Bought elsewhere: satisfaction check-in, then future offers",
        steps=(
            Step(
                channel="email",
                delay_hours=3 * _DAY,
                subject="How is it going, {{name}}?",
                body="Hi {{name}}, we hope you found what you were looking for. How satisfied "
                "are you so far? If anything falls short, reply and we will help.",
            ),
            Step(
                channel="sms",
                delay_hours=14 * _DAY,
                body="Hi {{name}}, a quick check-in: if your plans change, we are one reply away.",
            ),
            Step(
                channel="email",
                delay_hours=60 * _DAY,
                subject="Something new for you, {{name}}",
                body="Hi {{name}}, here is what is new with us this season, and an offer for "
                "returning visitors.",
            ),
            Step(
                channel="email",
                delay_hours=120 * _DAY,
                subject="Our offers this month",
                body="Hi {{name}}, when it is time to renew or upgrade, talk to us first: "
                "this month's offers are inside.",
            ),
        ),
        send_window=_OFFICE_HOURS,
        weekdays=_WORKDAYS_AND_SATURDAY,
    ),
    NurtureSequence(
        sequence_id="loss-level-3",
        name="Not now: retry later",
        steps=(
            Step(
                channel="email",
                delay_hours=7 * _DAY,
                subject="Is now a better time, {{name}}?",
                body="Hi {{name}}, last time was not the right moment. Reply with a time that "
                "suits you and we will call.",
            ),
            Step(
                channel="sms",
                delay_hours=14 * _DAY,
                body="Hi {{name}}, still interested? Reply YES and we will call you back.",
            ),
            Step(
                channel="email",
                delay_hours=30 * _DAY,
                subject="We kept your place, {{name}}",
                body="Hi {{name}}, whenever you are ready, book a visit and we will pick up "
                "where we left off.",
            ),
        ),
        send_window=_OFFICE_HOURS,
        weekdays=_WORKDAYS_AND_SATURDAY,
    ),
    NurtureSequence(
        sequence_id=RETURNED_TO_POOL.sequence_id,
        name="Back in the pool: keep in touch until a rep reaches them",
        steps=(
            Step(
                channel="sms",
                delay_hours=2,
                body="Hi {{name}}, we tried to reach you. Reply with a good time to call.",
            ),
            Step(
                channel="email",
                delay_hours=2 * _DAY,
                subject="Sorry we missed you, {{name}}",
                body="Hi {{name}}, we could not reach you by phone. Reply to this email with a "
                "time that suits you, or book a visit online.",
            ),
        ),
        send_window=_OFFICE_HOURS,
        weekdays=_WORKDAYS_AND_SATURDAY,
    ),
    NurtureSequence(
        sequence_id=ROUTED_TO_NURTURE.sequence_id,
        name="Not a fit for sales yet: helpful content until they warm up",
        steps=(
            Step(
                channel="email",
                delay_hours=1 * _DAY,
                subject="Thanks for your interest, {{name}}",
                body="Hi {{name}}, here is how others get started with us. Reply any time "
                "with a question.",
            ),
            Step(
                channel="email",
                delay_hours=7 * _DAY,
                subject="A closer look, {{name}}",
                body="Hi {{name}}, a short guide to what we offer and what it costs.",
                skip_if=(SkipCondition.OPENED_PREVIOUS,),
            ),
        ),
        send_window=_OFFICE_HOURS,
        weekdays=_WORKDAYS_AND_SATURDAY,
    ),
)


# --- sending: when a due step may really go out -----------------------------------------------

SEND_KIND: Final = "send"
"""The due-work kind of a step falling due."""


def send_key(enrollment_id: str, step: int) -> str:
    """The one key of an enrollment's step: its timer and its send record. However many
    replicas fire it, a step is sent at most once."""
    return f"send:{enrollment_id}:{step}"


@dataclass(frozen=True, slots=True)
class QuietHours:
    """Local hours in which nothing is sent whatever a sequence says: [start, end),
    overnight when start > end (21 to 8 is 21:00-08:00)."""

    start_hour: int
    end_hour: int


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most `per_day` messages a local day and `per_week` a local (ISO) week, per lead
    and channel, across all sequences."""

    per_day: int
    per_week: int


@dataclass(frozen=True, slots=True)
class SendPolicy:
    max_lateness: timedelta
    """A step found due longer ago than this (the scheduler was down) is skipped."""
    quiet_hours: QuietHours | None
    caps: Mapping[Channel, FrequencyCap]


def _in_quiet_hours(local: datetime, quiet: QuietHours) -> bool:
    hour = local.hour
    if quiet.start_hour < quiet.end_hour:
        return quiet.start_hour <= hour < quiet.end_hour
    return hour >= quiet.start_hour or hour < quiet.end_hour


def _after_quiet_hours(local: datetime, zone: ZoneInfo, quiet: QuietHours) -> datetime:
    day = local.date()
    if quiet.start_hour >= quiet.end_hour and local.hour >= quiet.start_hour:
        day += timedelta(days=1)
    return _local_hour(day, quiet.end_hour, zone)


def _week_start(local: datetime) -> date:
    return local.date() - timedelta(days=local.weekday())


def _next_capped_slot(
    moment: datetime, zone: ZoneInfo, sent: Sequence[datetime], cap: FrequencyCap
) -> datetime | None:
    """None if a message may go out at `moment`, else the local midnight from which the
    cap no longer holds it back (the next day, or the next week)."""
    local = moment.astimezone(zone)
    same_day = sum(1 for at in sent if at.astimezone(zone).date() == local.date())
    same_week = sum(1 for at in sent if _week_start(at.astimezone(zone)) == _week_start(local))
    if same_week >= cap.per_week:
        return _local_hour(_week_start(local) + timedelta(days=7), 0, zone)
    if same_day >= cap.per_day:
        return _local_hour(local.date() + timedelta(days=1), 0, zone)
    return None


def next_allowed_time(
    candidate: datetime,
    timezone: str,
    *,
    send_window: SendWindow | None,
    weekdays: Collection[int] | None,
    quiet_hours: QuietHours | None,
    sent: Sequence[datetime] = (),
    cap: FrequencyCap | None = None,
) -> datetime:
    """The first moment from `candidate` on that is inside the send window on an allowed
    weekday, outside quiet hours, and under the lead's frequency cap for the channel (`sent`:
    the times of its messages on that channel), all read in the lead's `timezone` (DST-
    correct). A capped message moves to the next allowed slot; it is never dropped."""
    zone = ZoneInfo(timezone)
    at = candidate.astimezone(UTC)
    anytime = Step(channel="email", delay_hours=0, body="")
    for _ in range(64):  # each round moves forward; a few always settle it
        at = next_send_time(anytime, at, timezone, send_window, weekdays)
        local = at.astimezone(zone)
        if quiet_hours is not None and _in_quiet_hours(local, quiet_hours):
            at = _after_quiet_hours(local, zone, quiet_hours)
            continue
        later = None if cap is None else _next_capped_slot(at, zone, sent, cap)
        if later is not None:
            at = later
            continue
        return at
    raise ValueError("no moment satisfies the send window, quiet hours and caps")


class StepOutcome(StrEnum):
    SEND = "send"
    DEFER = "defer"
    """Not now (quiet hours, window, cap, paused sequence): the same step, later."""
    SKIP = "skip"
    """Not this step (too late, no channel for it, a skip condition): on to the next one."""
    STOP = "stop"
    DROP = "drop"
    """The timer is stale (enrollment gone, stopped, or already past this step)."""


@dataclass(frozen=True, slots=True)
class StepDecision:
    outcome: StepOutcome
    why: str = ""
    at: datetime | None = None
    """DEFER: when to try again."""
    stop_reason: StopReason | None = None


def skip_condition_met(step: Step, index: int, engaged: Collection[str]) -> SkipCondition | None:
    for condition in step.skip_if:
        if condition is SkipCondition.OPENED_PREVIOUS and f"opened:{index - 1}" in engaged:
            return condition
        if condition is SkipCondition.CLICKED_PREVIOUS and f"clicked:{index - 1}" in engaged:
            return condition
        if condition is SkipCondition.OPENED_ANY and any(
            mark.startswith("opened:") for mark in engaged
        ):
            return condition
    return None


def decide_step(
    enrollment: Enrollment | None,
    step_index: int,
    record: SequenceRecord | None,
    lead: LeadContact | None,
    *,
    due_at: datetime,
    now: datetime,
    policy: SendPolicy,
    default_timezone: str,
    sent: Sequence[datetime] = (),
) -> StepDecision:
    """What to do with step `step_index` of `enrollment`, fallen due at `due_at`."""
    if (
        enrollment is None
        or enrollment.status is not EnrollmentStatus.ACTIVE
        or enrollment.current_step != step_index
        or record is None
    ):
        return StepDecision(StepOutcome.DROP, "the enrollment is no longer at this step")
    if record.status is SequenceStatus.ARCHIVED:
        return StepDecision(StepOutcome.STOP, "archived", stop_reason=StopReason.ARCHIVED)
    sequence = record.at(enrollment.sequence_version)
    if step_index >= len(sequence.steps):
        return StepDecision(StepOutcome.DROP, "the sequence has no such step")
    if record.status is SequenceStatus.PAUSED:
        return StepDecision(StepOutcome.DEFER, "paused", at=now + PAUSED_RECHECK)
    if now - due_at > policy.max_lateness:
        return StepDecision(StepOutcome.SKIP, f"too late: due {due_at.isoformat()}")
    step = sequence.steps[step_index]
    if step.channel not in enrollment.channels or lead is None or lead.erased_at is not None:
        return StepDecision(StepOutcome.SKIP, f"the lead cannot be reached by {step.channel}")
    condition = skip_condition_met(step, step_index, enrollment.engaged)
    if condition is not None:
        return StepDecision(StepOutcome.SKIP, condition.value)
    allowed = next_allowed_time(
        now,
        contact_time_zone(lead.contact, default_timezone),
        send_window=step.send_window or sequence.send_window,
        weekdays=step.weekdays if step.weekdays is not None else sequence.weekdays,
        quiet_hours=policy.quiet_hours,
        sent=sent,
        cap=policy.caps.get(step.channel),
    )
    if allowed > now:
        return StepDecision(StepOutcome.DEFER, "window, quiet hours or frequency cap", at=allowed)
    return StepDecision(StepOutcome.SEND)


PAUSED_RECHECK: Final = timedelta(minutes=1)
"""How soon a step of a paused sequence is looked at again (resuming needs no other write)."""


def after_step(
    enrollment: Enrollment,
    record: SequenceRecord,
    lead: LeadContact | None,
    *,
    sent_at: datetime | None,
    counted_from: datetime,
    default_timezone: str,
) -> Enrollment:
    """The enrollment moved on past its current step (sent at `sent_at`, or skipped: then
    the next delay counts from `counted_from`), its next step planned, or completed."""
    sequence = record.at(enrollment.sequence_version)
    following = enrollment.current_step + 1
    last_sent = sent_at or enrollment.last_sent_at
    if following >= len(sequence.steps):
        return dataclasses.replace(
            enrollment,
            current_step=following,
            last_sent_at=last_sent,
            next_send_at=None,
            status=EnrollmentStatus.COMPLETED,
            stopped_at=sent_at or counted_from,
        )
    zone = contact_time_zone(lead.contact if lead else None, default_timezone)
    due = step_due(
        sequence, following, sent_at or counted_from, zone, enrolled_at=enrollment.enrolled_at
    )
    return dataclasses.replace(
        enrollment, current_step=following, last_sent_at=last_sent, next_send_at=due
    )


def retry_delay(attempts: int, base: timedelta, ceiling: timedelta) -> timedelta:
    """Back-off before sending again after the provider's `attempts`-th temporary refusal."""
    return min(base * (1 << max(0, attempts - 1)), ceiling)


# --- engagement score and requalification ----------------------------------------------------

Temperature = Literal["cold", "warm", "hot"]
EngagementKind = Literal["open", "click", "reply", "web_visit"]


@dataclass(frozen=True, slots=True)
class ScoringPolicy:
    weights: Mapping[str, float]
    """Points per engagement kind (open, click, reply, web_visit)."""
    half_life: timedelta
    """Every point is worth half as much after this long."""
    warm_at: float
    hot_at: float
    high_intent_paths: tuple[str, ...] = ()
    """Web pages (path prefixes, e.g. '/pricing') whose visit hands the lead back at once."""


@dataclass(frozen=True, slots=True)
class LeadScore:
    lead_id: str
    score: float
    as_of: datetime
    temperature: Temperature


def decayed(score: float, since: datetime, now: datetime, half_life: timedelta) -> float:
    """`score` as of `since`, decayed exponentially to `now` (never grows back in time)."""
    elapsed = max(0.0, (now - since).total_seconds())
    return float(score * 0.5 ** (elapsed / half_life.total_seconds()))


def temperature_of(score: float, policy: ScoringPolicy) -> Temperature:
    if score >= policy.hot_at:
        return "hot"
    if score >= policy.warm_at:
        return "warm"
    return "cold"


def scored(
    previous: LeadScore | None, lead_id: str, kind: str, at: datetime, policy: ScoringPolicy
) -> LeadScore:
    """The lead's score after one engagement at `at`: the old score decayed to `at` plus the
    kind's weight. Equal to summing every engagement's decayed weight, kept in O(1).
    An engagement older than the stored score counts decayed to the stored time."""
    weight = policy.weights.get(kind, 0.0)
    if previous is None:
        total, as_of = weight, at
    elif at >= previous.as_of:
        total, as_of = decayed(previous.score, previous.as_of, at, policy.half_life) + weight, at
    else:
        total = previous.score + decayed(weight, at, previous.as_of, policy.half_life)
        as_of = previous.as_of
    return LeadScore(lead_id, total, as_of, temperature_of(total, policy))


def is_high_intent(url: str | None, policy: ScoringPolicy) -> bool:
    if not url:
        return False
    path = urlsplit(url).path or "/"
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in policy.high_intent_paths)


def requalification_reason(
    before: LeadScore | None, after: LeadScore, kind: str, url: str | None, policy: ScoringPolicy
) -> str | None:
    """Why this engagement hands the lead back to sales, or None: a reply, a visit to a
    high-intent page, or the score crossing into hot."""
    if kind == "reply":
        return "replied"
    if kind == "web_visit" and is_high_intent(url, policy):
        return f"visited a high-intent page: {urlsplit(url or '').path}"
    was_hot = before is not None and before.temperature == "hot"
    if after.temperature == "hot" and not was_hot:
        return f"score {after.score:.1f} crossed into hot (>= {policy.hot_at:g})"
    return None


# --- send records ---------------------------------------------------------------------------


class SendStatus(StrEnum):
    SENDING = "sending"
    """Reserved by a replica that is handing it to the provider (or died doing so)."""
    SENT = "sent"
    RETRYABLE = "retryable"
    """The provider refused it for now: the next attempt may take the record again."""
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SendRecord:
    """One step's message, keyed by `send_key`: the guard that it goes out at most once,
    and the history frequency caps count."""

    key: str
    lead_id: str
    enrollment_id: str
    sequence_id: str
    step: int
    channel: Channel
    status: SendStatus
    reserved_at: datetime
    attempts: int = 1
    sent_at: datetime | None = None
    provider_id: str | None = None
    error: str | None = None

    @property
    def counts_for_caps(self) -> bool:
        return self.status in {SendStatus.SENDING, SendStatus.SENT}


@dataclass(frozen=True, slots=True)
class Requalification:
    lead_id: str
    score: float
    reason: str
    at: datetime
    sequence_id: str | None


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    scores: tuple[LeadScore, ...]
    requalified: tuple[Requalification, ...]


def score_batch(
    engagements: Sequence[EngagementRecordedV1],
    stored: Mapping[str, LeadScore],
    nurtured: Mapping[str, str | None],
    policy: ScoringPolicy,
) -> ScoredBatch:
    """Scores after these engagements, and the nurtured leads (`nurtured`: lead id to the
    sequence it is in) they hand back to sales, once each per batch. A lead nobody nurtures
    is scored but never requalified by nurture."""
    scores: dict[str, LeadScore] = dict(stored)
    changed: dict[str, LeadScore] = {}
    requalified: dict[str, Requalification] = {}
    for event in engagements:
        lead_id, at = event.lead_id, to_stored_precision(event.occurred_at)
        before = scores.get(lead_id)
        if before is not None and at > before.as_of:
            value = decayed(before.score, before.as_of, at, policy.half_life)
            before = LeadScore(lead_id, value, at, temperature_of(value, policy))
        after = scored(before, lead_id, event.kind, at, policy)
        scores[lead_id] = changed[lead_id] = after
        reason = requalification_reason(before, after, event.kind, event.url, policy)
        if reason is not None and lead_id in nurtured and lead_id not in requalified:
            requalified[lead_id] = Requalification(
                lead_id, after.score, reason, at, event.sequence_id or nurtured[lead_id]
            )
    return ScoredBatch(tuple(changed.values()), tuple(requalified.values()))


def stop_requalified(
    changes: NurtureChanges,
    active: Mapping[str, Sequence[Enrollment]],
    lead_ids: Collection[str],
    now: datetime,
) -> NurtureChanges:
    """`changes` with every enrollment of `lead_ids` still active after them stopped: the
    lead is back with sales."""
    if not lead_ids:
        return changes
    now = to_stored_precision(now)
    latest = {e.enrollment_id: e for es in active.values() for e in es if e.lead_id in lead_ids}
    latest.update((e.enrollment_id, e) for e in (*changes.changed, *changes.started))
    ending = {
        i: stopped(e, StopReason.REQUALIFIED, now)
        for i, e in latest.items()
        if e.lead_id in lead_ids and e.status is EnrollmentStatus.ACTIVE
    }
    started = tuple(ending.get(e.enrollment_id, e) for e in changes.started)
    new_ids = {e.enrollment_id for e in changes.started}
    changed = {e.enrollment_id: e for e in changes.changed}
    changed.update((i, e) for i, e in ending.items() if i not in new_ids)
    return dataclasses.replace(changes, started=started, changed=tuple(changed.values()))
