"""Pure decisions of nurture: who is enrolled where, on which channels, and when a step is due.

No I/O and no clock reads: callers pass `now`. Times go in and come out in UTC; send windows
and weekdays are read in the lead's own time zone.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.events import Channel, Consent, Contact, LossLevel

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
