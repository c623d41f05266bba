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
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.events import (
    Channel,
    Consent,
    Contact,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
    LossLevel,
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


MANUAL_ENROLLMENT: Final = "manual"


@dataclass(frozen=True, slots=True)
class Step:
    """One message of a sequence, sent `delay_hours` after enrollment or the previous step."""

    channel: Channel
    delay_hours: int
    body: str
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class SendWindow:
    """Local hours in which messages may go out: [start_hour, end_hour).

    A window whose start is after its end runs overnight (22 to 2 is 22:00-02:00).
    """

    start_hour: int
    end_hour: int


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
    """A sequence as stored: its content and the version marketing's edits have reached."""

    sequence: NurtureSequence
    version: int
    created_at: datetime
    updated_at: datetime


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

    @property
    def known(self) -> bool:
        """Some event has told nurture about this lead's contact or consent."""
        return self.contact is not None or self.consent is not None


@dataclass(frozen=True, slots=True)
class LeadNurture:
    """Everything nurture decides on for one lead: its contact and its active enrollment."""

    contact: LeadContact
    active: Enrollment | None = None


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


def allowed_channels(contact: Contact | None, consent: Consent | None) -> tuple[Channel, ...]:
    """Channels the lead agreed to and can be reached on; steps on other channels are skipped."""
    if contact is None or consent is None:
        return ()
    channels: list[Channel] = []
    if consent.email and contact.email:
        channels.append("email")
    if consent.sms and contact.phone:
        channels.append("sms")
    return tuple(channels)


def sequence_errors(sequence: NurtureSequence) -> list[FieldError]:
    """Every rule a sequence breaks that its fields' own types cannot express."""
    errors: list[FieldError] = []
    if not sequence.steps:
        errors.append(FieldError(("steps",), "a sequence needs at least one step"))
    for index, step in enumerate(sequence.steps):
        if step.channel == "sms" and step.subject is not None:
            errors.append(FieldError(("steps", index, "subject"), "an SMS step has no subject"))
        if step.channel == "email" and not step.subject:
            errors.append(FieldError(("steps", index, "subject"), "an email step needs a subject"))
    window = sequence.send_window
    if window is not None and window.start_hour == window.end_hour:
        errors.append(
            FieldError(
                ("send_window", "end_hour"),
                "the window opens and closes at the same hour; leave send_window out to send "
                "at any hour",
            )
        )
    if sequence.weekdays is not None and not sequence.weekdays:
        errors.append(
            FieldError(("weekdays",), "at least one weekday is needed; leave weekdays out for all")
        )
    return errors


# --- when a step is due ---------------------------------------------------------------------


def is_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def lead_time_zone(name: str | None, default: str) -> str:
    """The lead's own IANA zone if it has a valid one, else `default`."""
    return name if name and is_time_zone(name) else default


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


def plan_step(
    sequence: NurtureSequence,
    step_index: int,
    since: datetime,
    *,
    contact: Contact | None,
    consent: Consent | None,
    default_timezone: str,
) -> EnrollmentPlan:
    """An enrollment's channels and when its step `step_index` is due, counted from `since`
    (enrollment or the previous send), for the lead's current contact and consent."""
    channels = allowed_channels(contact, consent)
    if step_index >= len(sequence.steps):
        return EnrollmentPlan(channels=channels, next_send_at=None)
    timezone = lead_time_zone(contact.timezone if contact else None, default_timezone)
    due = next_send_time(
        sequence.steps[step_index], since, timezone, sequence.send_window, sequence.weekdays
    )
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


def why_not_enrolled(lead: LeadNurture, *, must_be_known: bool) -> Exception | None:
    """Why `lead` cannot start an enrollment now, or None if it can. One active enrollment
    per lead; an erased lead is never enrolled; marketing may enroll only leads it knows."""
    if lead.active is not None:
        return AlreadyEnrolledError(lead.contact.lead_id, lead.active.sequence_id)
    if lead.contact.erased_at is not None or (must_be_known and not lead.contact.known):
        return LeadNotFoundError(lead.contact.lead_id)
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
    and the time its current step is due (counted, as before, from the last send)."""
    plan = plan_step(
        record.sequence,
        enrollment.current_step,
        enrollment.last_sent_at or enrollment.enrolled_at,
        contact=lead.contact,
        consent=lead.consent,
        default_timezone=default_timezone,
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
    """A lead after one event, the enrollment the event started or changed (if any), and
    why a loss enrolled nobody (if it did not)."""

    lead: LeadNurture
    enrollment: Enrollment | None = None
    not_enrolled: str | None = None


_STOPS: Final[Mapping[type[Event], StopReason]] = {
    LeadAssignedV1: StopReason.ASSIGNED,
    LeadConvertedV1: StopReason.CONVERTED,
}


def apply_event(
    lead: LeadNurture,
    event: Event,
    catalog: SequenceCatalog,
    *,
    now: datetime,
    default_timezone: str,
) -> Applied:
    """What one lifecycle event does to a lead's nurture state.

    - received / merged / lost carry contact and consent: the newest wins; an active
      enrollment is replanned when they change;
    - a loss at level 2 or 3 enrolls the lead in that level's sequence (level 1 never),
      unless it is already enrolled or was erased;
    - an assignment or a conversion that happened after the enrollment was triggered stops
      it (an older one, arriving late, does not);
    - an erasure stops the active enrollment whenever it was triggered (the lead has no
      contact left, and a loss arriving after the erasure would not enroll it either) and
      forgets the contact for good.
    """
    zone = default_timezone
    at, now = to_stored_precision(event.occurred_at), to_stored_precision(now)
    match event:
        case LeadReceivedV1(contact=contact, consent=consent):
            return _contact_changed(lead, at, contact, consent, catalog, zone)
        case LeadMergedV1(contact=contact):
            return _contact_changed(lead, at, contact, None, catalog, zone)
        case LeadLostV1(contact=contact, consent=consent):
            applied = _contact_changed(lead, at, contact, consent, catalog, zone)
            return _enroll_on_loss(applied, event, catalog, now=now, default_timezone=zone)
        case LeadErasedV1():
            ended = None if lead.active is None else stopped(lead.active, StopReason.ERASED, now)
            return Applied(LeadNurture(erased(lead.contact, now)), enrollment=ended)
        case LeadAssignedV1() | LeadConvertedV1():
            active = lead.active
            if active is None or active.triggered_at >= at:
                return Applied(lead)
            ended = stopped(active, _STOPS[type(event)], now)
            return Applied(LeadNurture(lead.contact), enrollment=ended)
    return Applied(lead)


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
    if lead.active is None:
        return Applied(LeadNurture(newer))
    active = replanned(
        lead.active, sequence_of(catalog, lead.active.sequence_id), newer, default_timezone
    )
    return Applied(LeadNurture(newer, active), enrollment=None if active == lead.active else active)


def _enroll_on_loss(
    applied: Applied,
    event: LeadLostV1,
    catalog: SequenceCatalog,
    *,
    now: datetime,
    default_timezone: str,
) -> Applied:
    loss = enrollment_for_loss(event.level)
    if loss is None:
        return applied
    refusal = why_not_enrolled(applied.lead, must_be_known=False)
    if refusal is not None:
        return dataclasses.replace(applied, not_enrolled=str(refusal))
    enrollment = start_enrollment(
        applied.lead.contact,
        sequence_of(catalog, loss.sequence_id),
        # The loss's own id: the same loss can only ever make the same enrollment.
        enrollment_id=event.event_id.hex,
        reason=loss.reason,
        triggered_at=to_stored_precision(event.occurred_at),
        now=now,
        default_timezone=default_timezone,
    )
    return Applied(LeadNurture(applied.lead.contact, enrollment), enrollment=enrollment)


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
    """(lead_id, why) of each loss that enrolled nobody."""


def sequences_needed(events: Iterable[Event], active: Iterable[Enrollment]) -> set[str]:
    """The sequences a batch may plan against: those its losses enroll in, and those of the
    leads' active enrollments (replanned when a contact changes)."""
    needed = {enrollment.sequence_id for enrollment in active}
    for event in events:
        if isinstance(event, LeadLostV1):
            loss = enrollment_for_loss(event.level)
            if loss is not None:
                needed.add(loss.sequence_id)
    return needed


def nurture_batch(
    events: Sequence[Event],
    contacts: Mapping[str, LeadContact],
    active: Mapping[str, Enrollment],
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
            contacts.get(lead_id) or LeadContact(lead_id), active.get(lead_id)
        )
        applied = apply_event(lead, event, catalog, now=now, default_timezone=default_timezone)
        leads[lead_id] = applied.lead
        if applied.enrollment is not None:
            touched[applied.enrollment.enrollment_id] = applied.enrollment
        if applied.not_enrolled is not None:
            not_enrolled.append((lead_id, applied.not_enrolled))
    before = {enrollment.enrollment_id: enrollment for enrollment in active.values()}
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
) -> Enrollment:
    """Marketing enrolls a lead it knows. Raises AlreadyEnrolledError, SequenceNotFoundError
    or LeadNotFoundError (never seen, or erased)."""
    if lead.active is not None:
        raise AlreadyEnrolledError(lead.contact.lead_id, lead.active.sequence_id)
    record = sequence_of(catalog, sequence_id)
    refusal = why_not_enrolled(lead, must_be_known=True)
    if refusal is not None:
        raise refusal
    now = to_stored_precision(now)
    return start_enrollment(
        lead.contact,
        record,
        enrollment_id=enrollment_id,
        reason=MANUAL_ENROLLMENT,
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
)
