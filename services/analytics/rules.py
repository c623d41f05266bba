"""Pure decisions of analytics' ingest: which counters an event moves, given what is known
about its lead. No I/O and no clock reads: the store persists what these functions decide.

Counters are hourly (UTC) so a report can count days in any whole-hour time zone, and every
lead-scoped counter carries the lead's channel, source, campaign, pool and rep, so a report
filters by any of them while reading only counters, never the event store.

Out of order: an event read before its lead's `lead-received` is counted under channel
"unknown" and remembered on the lead (`pending`); when the `lead-received` arrives, those
increments are moved to the lead's real channel, source and campaign (or dropped, for a
test lead). Figures named `leads_*` count each lead once, in the hour it first reached
that stage; figures counted per event (`conversions`, `losses`, `activities`) count each.

Open leads are a gauge (`open` key per lead): the lead's current place (rep, pool, stage,
age, last touch, SLA due) is kept as a counter that moves -1/+1 when the place changes, so
"open", "overdue", "aging" and "forgotten" are read from a few gauge documents: the gauge
adds the moves up per place (lead dimensions and stage), days and deadlines counted inside.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from services.analytics.events import RawEvent
from shared.events import (
    ActivityLoggedV1,
    CampaignSavedV1,
    EngagementRecordedV1,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadEnrolledV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadOptedOutV1,
    LeadQueuedV1,
    LeadReceivedV1,
    LeadRejectedByRepV1,
    LeadRequalifiedV1,
    LeadReturnedToPoolV1,
    LeadRoutedToNurtureV1,
    MessageFailedV1,
    MessageSentV1,
    MessageStatusUpdatedV1,
    OpportunityOpenedV1,
    SatisfactionRecordedV1,
    SlaBreachedV1,
    VisitCheckedInV1,
    VisitScheduledV1,
)


class Metric(StrEnum):
    INQUIRIES = "inquiries"
    """Every inquiry: a new lead or a repeat inquiry merged into one."""
    LEADS_RECEIVED = "leads_received"
    """New leads, each once."""
    WALK_IN_LEADS = "walk_in_leads"
    """New walk-in leads (dimension contact_kept: yes when a phone or email was taken)."""
    REACHED = "reached"
    """Leads reaching a funnel stage for the first time (dimension stage)."""
    ASSIGNMENTS = "assignments"
    """Every assignment, reassignments included."""
    ACTIVITIES = "activities"
    """Every activity a rep logged (activity, outcome)."""
    FIRST_CONTACTS = "first_contacts"
    """A lead's first contact (speed bucket; amount = seconds since arrival)."""
    SLA_BREACHES = "sla_breaches"
    VISITS_SCHEDULED = "visits_scheduled"
    VISITS = "visits"
    """Visits checked in (walk_in: yes / no)."""
    SATISFACTION = "satisfaction"
    """Next-day satisfaction scores (score)."""
    OPPORTUNITIES = "opportunities"
    """Opportunities opened (currency, stage; amount = expected amount)."""
    CONVERSIONS = "conversions"
    """Every sale (currency; amount = revenue)."""
    LEADS_CONVERTED = "leads_converted"
    LOSSES = "losses"
    """Every loss (level, reason)."""
    LEADS_LOST = "leads_lost"
    """Leads lost for the first time (level)."""
    LEADS_ENROLLED = "leads_enrolled"
    ROUTED_TO_NURTURE = "routed_to_nurture"
    QUEUED = "queued"
    RETURNED_TO_POOL = "returned_to_pool"
    REJECTED_BY_REP = "rejected_by_rep"
    MESSAGES_SENT = "messages_sent"
    """Nurture messages sent (sequence, step, channel)."""
    MESSAGE_STATUS = "message_status"
    """Provider delivery reports (sequence, step, status)."""
    MESSAGES_FAILED = "messages_failed"
    ENGAGEMENTS = "engagements"
    """Opens, clicks, replies, web visits (sequence, step, kind)."""
    OPTED_OUT = "opted_out"
    REQUALIFIED = "requalified"
    CONVERTED_AFTER_NURTURE = "converted_after_nurture"
    UNKNOWN_EVENTS = "unknown_events"
    """Events of a type or version this analytics does not know (event_type, version)."""


UNKNOWN = "unknown"
NONE = ""
"""Dimension value for "not applicable" (no campaign, not assigned yet)."""

LOSS_LEVELS = ("1", "2", "3")
STAGES = ("received", "assigned", "contacted", "visit_scheduled", "visited", "converted")
"""The sales funnel, in order (seed 003)."""
SPEED_BUCKETS = ("lt_5m", "5m_1h", "1h_4h", "4h_24h", "gt_24h", "unknown")
CONTACT_ACTIVITIES = frozenset({"call", "email", "sms", "meeting"})
PERSONAL_FIELDS = ("contact", "message", "note")
"""Event fields holding a person's data, forgotten when the lead is erased."""
REASON_MAX = 80
PENDING_MAX = 500
"""Most increments remembered for a lead whose lead-received has not arrived."""

LEAD_DIMENSIONS = ("channel", "source", "campaign", "pool", "rep")
"""Dimensions every lead-scoped counter carries; reports filter on them."""

Dimensions = tuple[tuple[str, str], ...]


def dimensions(**values: str) -> Dimensions:
    """Dimensions in one canonical order, so equal dimensions make equal counter keys."""
    return tuple(sorted(values.items()))


def hour_of(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class Increment(NamedTuple):
    """Add `count` (and `amount`: money, seconds) to one counter for one UTC hour.

    Tuples, as the other values the tally makes by the thousand (`OpenKey`, `GaugeMove`,
    `LeadFacts`): built, compared and hashed in C, where a frozen dataclass runs Python
    code for each field (a fifth of the tally's CPU)."""

    hour: datetime
    metric: Metric
    dimensions: Dimensions = ()
    count: int = 1  # type: ignore[assignment]  # the counter's count, not tuple.count
    amount: float = 0.0


def counter_key(increment: Increment) -> str:
    return json.dumps(
        [hour_key(increment.hour), increment.metric.value, increment.dimensions],
        separators=(",", ":"),
        ensure_ascii=False,
    )


@functools.lru_cache(maxsize=4096)
def hour_key(hour: datetime) -> str:
    """Hours as sortable text: `2026-11-23T09`."""
    return hour.astimezone(UTC).strftime("%Y-%m-%dT%H")


def hour_from_key(key: str) -> datetime:
    # Sliced rather than strptime: this runs for every counter a report or batch reads.
    return datetime(int(key[0:4]), int(key[5:7]), int(key[8:10]), int(key[11:13]), tzinfo=UTC)


class OpenKey(NamedTuple):
    """Where an open lead stands now: one gauge counter per distinct place."""

    channel: str
    source: str
    campaign: str
    pool: str
    rep: str
    stage: str
    received_day: str
    last_touch_day: str
    sla_due_hour: str
    """The first-response deadline while the lead waits for its first contact, else ""."""

    def as_dimensions(self) -> Dimensions:
        return tuple(sorted(self._asdict().items()))

    def place(self) -> OpenPlace:
        return OpenPlace(self.channel, self.source, self.campaign, self.pool, self.rep, self.stage)


class OpenPlace(NamedTuple):
    """The lead dimensions and stage of open leads: the gauge keeps one entry per place, so
    a report reads as many as there are places in use, whatever the number of leads."""

    channel: str
    source: str
    campaign: str
    pool: str
    rep: str
    stage: str


@dataclass(frozen=True, slots=True)
class OpenLeads:
    """The open leads at one place, and how their days and deadlines are spread."""

    place: OpenPlace
    count: int
    received: Mapping[str, int]
    """Received day (UTC, ISO) -> leads."""
    touched: Mapping[str, int]
    """Last-touch day (UTC, ISO) -> leads."""
    awaiting: Mapping[tuple[str, str], int]
    """(received day, SLA-due hour) -> leads still waiting for their first contact; the
    hour is `PAST_DUE` for those whose deadline had passed when the gauge was folded."""


PAST_DUE = ""
"""The SLA-due "hour" of awaiting leads whose deadline had passed (by more than
`PAST_DUE_MARGIN`) when their place's gauge was last folded: overdue for any later now
(it sorts before every hour). Without it a place kept an entry per received day and due
hour for as long as its leads wait (up to 24 a day, 720 a month), so reports reading
the spread grew with the data; collapsed, a place holds one per received day plus the
deadlines still to come."""

PAST_DUE_MARGIN = timedelta(hours=1)
"""How long after its hour has begun a deadline is left unfolded: a report asked a little
earlier (another replica's clock, slightly behind) still tells it from one not yet due."""


def past_due_before(now: datetime) -> str:
    """Deadlines in hours before this one are overdue for every report asked from `now`
    on (and folded into `PAST_DUE`)."""
    return hour_key(hour_of(now - PAST_DUE_MARGIN))


def fold_past_due(
    awaiting: Mapping[tuple[str, str], int], before: str
) -> dict[tuple[str, str], int]:
    """`awaiting` with the deadlines in hours before `before` added up per received day
    under `PAST_DUE`; entries that came to 0 dropped."""
    folded: Counter[tuple[str, str]] = Counter()
    for (day, due), n in awaiting.items():
        folded[day, PAST_DUE if due < before else due] += n
    return {key: n for key, n in sorted(folded.items()) if n}


class OpenGaugeSums:
    """Adds gauge moves (one lead's place, +1 or -1) and stored per-place gauges up into
    one `OpenLeads` per place."""

    def __init__(self) -> None:
        self._places: dict[
            OpenPlace, tuple[list[int], Counter[str], Counter[str], Counter[tuple[str, str]]]
        ] = {}

    def _sums(
        self, place: OpenPlace
    ) -> tuple[list[int], Counter[str], Counter[str], Counter[tuple[str, str]]]:
        sums = self._places.get(place)
        if sums is None:
            sums = self._places[place] = ([0], Counter(), Counter(), Counter())
        return sums

    def move(self, key: OpenKey, n: int) -> None:
        total, received, touched, awaiting = self._sums(key.place())
        total[0] += n
        received[key.received_day] += n
        touched[key.last_touch_day] += n
        if key.sla_due_hour:
            awaiting[key.received_day, key.sla_due_hour] += n

    def add(self, gauge: OpenLeads) -> None:
        total, received, touched, awaiting = self._sums(gauge.place)
        total[0] += gauge.count
        received.update(gauge.received)
        touched.update(gauge.touched)
        awaiting.update(gauge.awaiting)

    def places(self, *, open_only: bool = True) -> list[OpenLeads]:
        """Every place (with open leads only, unless `open_only` is False: a fold must also
        write a place whose leads only moved between days), without entries that are 0."""
        return [
            OpenLeads(
                place,
                total[0],
                {day: n for day, n in sorted(received.items()) if n},
                {day: n for day, n in sorted(touched.items()) if n},
                {due: n for due, n in sorted(awaiting.items()) if n},
            )
            for place, (total, received, touched, awaiting) in self._places.items()
            if total[0] > 0
            or (
                not open_only
                and any((total[0], *received.values(), *touched.values(), *awaiting.values()))
            )
        ]


def open_leads_at(moves: Iterable[tuple[OpenKey, int]]) -> list[OpenLeads]:
    """Gauge moves (or per-lead-place counts) added up per place: what reports read."""
    sums = OpenGaugeSums()
    for key, n in moves:
        sums.move(key, n)
    return sums.places()


class GaugeMove(NamedTuple):
    key: OpenKey
    count: int  # type: ignore[assignment]  # leads moved, not tuple.count


class LeadFacts(NamedTuple):
    """What analytics remembers about one lead."""

    lead_id: str
    channel: str | None = None
    source: str | None = None
    campaign: str | None = None
    pool: str | None = None
    """The lead's home pool: the first it was routed to (counters carry it)."""
    current_pool: str | None = None
    """Where it is now (the open-lead gauge carries it)."""
    rep: str | None = None
    received_at: datetime | None = None
    first_contact_at: datetime | None = None
    is_test: bool = False
    erased: bool = False
    reached: Mapping[str, datetime] = {}
    """Funnel stage -> when the lead first reached it (a new mapping for every change:
    the default is one shared empty dict)."""
    last_assigned_at: datetime | None = None
    last_closed_at: datetime | None = None
    """When it was last converted, lost or routed to nurture (it leaves the sales floor)."""
    last_touch_at: datetime | None = None
    sla_due_at: datetime | None = None
    lost_at: datetime | None = None
    enrolled_at: datetime | None = None
    converted_at: datetime | None = None
    sequence: str | None = None
    step: int | None = None
    pending: tuple[Increment, ...] = ()
    """Increments counted before the lead's lead-received arrived, moved to the right
    channel once it does (stored as `pending_entry`)."""
    open_key: OpenKey | None = None


_FACT_INDEX = {name: i for i, name in enumerate(LeadFacts._fields)}
_new_facts = functools.partial(tuple.__new__, LeadFacts)


def _replace(facts: LeadFacts, **changes: Any) -> LeadFacts:
    """`facts._replace`, without its keyword checks: the tally makes one or two of these
    an event."""
    values = list(facts)
    for name, value in changes.items():
        values[_FACT_INDEX[name]] = value
    return _new_facts(values)


@dataclass(frozen=True, slots=True)
class Campaign:
    campaign_id: str
    name: str
    channel: str
    cost: float
    currency: str
    starts_on: str | None
    ends_on: str | None
    saved_at: datetime


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the event store keeps it."""

    event_id: str
    event_type: str
    lead_id: str
    occurred_at: datetime
    recorded_at: datetime
    payload: Mapping[str, Any]
    known: bool = True


@dataclass(frozen=True, slots=True)
class BatchTally:
    """What a batch of events changes: what to store, which facts, which counters."""

    recorded: tuple[RecordedEvent, ...]
    facts: tuple[LeadFacts, ...]
    increments: tuple[Increment, ...]
    gauge: tuple[GaugeMove, ...]
    campaigns: tuple[Campaign, ...]
    erased_leads: frozenset[str]
    unknown_events: int = 0


def is_known(event: Event) -> bool:
    """Whether the event is one of the contract's (else it is kept raw and counted)."""
    return not isinstance(event, RawEvent)


# --- one event ------------------------------------------------------------------------------


@dataclass
class _Work:
    """The changes of one event, gathered while it is tallied."""

    facts: LeadFacts
    hour: datetime
    """The event's hour: every counter it moves is of that hour."""
    increments: list[Increment] = field(default_factory=list)
    forget_personal_data: bool = False
    stage_and_touch: dict[str, Any] = field(default_factory=dict)
    """`reached` and `last_touch_at` as the event leaves them, copied into the facts by
    `settle` with the rest (they change no counter's dimensions): a copy of the facts
    fewer."""


def _lead_dims(facts: LeadFacts, **extra: str) -> Dimensions:
    lead = (
        facts.channel or UNKNOWN,
        facts.source or UNKNOWN,
        facts.campaign or NONE,
        facts.pool or NONE,
        facts.rep or NONE,
    )
    return _lead_dimensions(lead, tuple(extra.items()))


@functools.lru_cache(maxsize=1 << 16)
def _lead_dimensions(lead: tuple[str, ...], extra: Dimensions) -> Dimensions:
    # Cached: the same combinations make most counters (a replica's first minutes meet
    # mostly new ones: the names' order is cached apart, so a new one costs no sort).
    names, picks = _dimension_order(tuple(name for name, _ in extra))
    values = (*lead, *(value for _, value in extra))
    return tuple(zip(names, map(values.__getitem__, picks), strict=True))


@functools.lru_cache(maxsize=256)
def _dimension_order(extra: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The dimension names of a counter with these extra dimensions, in their canonical
    order, and where each one's value is among the lead's five and the extra ones (an
    extra one, `rep`, overrides the lead's)."""
    at = {name: i for i, name in enumerate((*LEAD_DIMENSIONS, *extra))}
    names = tuple(sorted(at))
    return names, tuple(at[name] for name in names)


def speed_bucket(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "unknown"
    if seconds < 5 * 60:
        return "lt_5m"
    if seconds < 3600:
        return "5m_1h"
    if seconds < 4 * 3600:
        return "1h_4h"
    if seconds < 24 * 3600:
        return "4h_24h"
    return "gt_24h"


def _reach(work: _Work, stage: str, at: datetime, *, rep: str | None = None) -> None:
    """The lead reached `stage` (counted the first time only; `rep`: who got it there)."""
    reached = work.stage_and_touch.get("reached", work.facts.reached)
    if stage in reached:
        return
    work.stage_and_touch["reached"] = {**reached, stage: at}
    who = {} if rep is None else {"rep": rep or NONE}
    work.increments.append(
        Increment(work.hour, Metric.REACHED, _lead_dims(work.facts, stage=stage, **who))
    )


def _count(
    work: _Work,
    metric: Metric,
    *,
    amount: float = 0.0,
    rep: str | None = None,
    **extra: str,
) -> None:
    """Count one for the lead; `rep` credits the rep who did it rather than the owner."""
    if rep is not None:
        extra["rep"] = rep or NONE
    work.increments.append(Increment(work.hour, metric, _lead_dims(work.facts, **extra), 1, amount))


def _touch(work: _Work, at: datetime) -> None:
    last = work.stage_and_touch.get("last_touch_at", work.facts.last_touch_at)
    if last is None or at > last:
        work.stage_and_touch["last_touch_at"] = at


def tally_event(event: Event, facts: LeadFacts) -> _Work:  # noqa: PLR0912, PLR0915 - one case per event type
    """What `event` changes, given what is known about its lead so far."""
    at = event.occurred_at
    hour = hour_of(at)
    work = _Work(facts, hour)
    replace = _replace
    match event:
        case LeadReceivedV1(attribution=attribution) if facts.received_at is None:
            work.facts = replace(
                facts,
                channel=attribution.channel,
                source=attribution.source,
                campaign=attribution.campaign_id or attribution.campaign or NONE,
                received_at=at,
                is_test=event.is_test,
            )
            # An arrival precedes any rep: counted with no rep.
            _touch(work, at)
            _count(work, Metric.INQUIRIES, rep=NONE)
            _count(work, Metric.LEADS_RECEIVED, rep=NONE)
            _reach(work, "received", at, rep=NONE)
            if attribution.channel == "walk_in":
                kept = bool(event.contact.phone or event.contact.email)
                _count(work, Metric.WALK_IN_LEADS, rep=NONE, contact_kept="yes" if kept else "no")
        case LeadReceivedV1(attribution=attribution) | LeadMergedV1(attribution=attribution):
            # A repeat inquiry (or the lead received again): an inquiry, credited where it
            # came from this time; the lead keeps its first attribution.
            again = replace(
                facts,
                channel=attribution.channel,
                source=attribution.source,
                campaign=attribution.campaign_id or attribution.campaign or NONE,
            )
            if not event.is_test:
                work.increments.append(
                    Increment(hour, Metric.INQUIRIES, _lead_dims(again, rep=NONE))
                )
            _touch(work, at)
        case LeadAssignedV1(rep_id=rep_id, pool_id=pool_id):
            work.facts = replace(
                facts,
                rep=rep_id,
                pool=facts.pool or pool_id,
                current_pool=pool_id or facts.current_pool,
                last_assigned_at=max(filter(None, (facts.last_assigned_at, at))),
                sla_due_at=event.sla_due_at or facts.sla_due_at,
            )
            _count(work, Metric.ASSIGNMENTS, how=event.how)
            _reach(work, "assigned", at)
        case LeadQueuedV1(pool_id=pool_id):
            work.facts = replace(facts, pool=facts.pool or pool_id, current_pool=pool_id)
            _count(work, Metric.QUEUED)
        case LeadReturnedToPoolV1(rep_id=rep_id, pool_id=pool_id):
            work.facts = replace(facts, current_pool=pool_id or facts.current_pool)
            _count(work, Metric.RETURNED_TO_POOL, by=rep_id)
        case LeadRejectedByRepV1(rep_id=rep_id):
            _count(work, Metric.REJECTED_BY_REP, by=rep_id)
        case LeadRoutedToNurtureV1():
            work.facts = replace(
                facts, last_closed_at=max(filter(None, (facts.last_closed_at, at)))
            )
            _count(work, Metric.ROUTED_TO_NURTURE, reason=event.reason[:REASON_MAX])
        case ActivityLoggedV1(rep_id=rep_id, activity=activity):
            work.facts = replace(facts, rep=facts.rep or rep_id)
            _count(
                work,
                Metric.ACTIVITIES,
                rep=rep_id,
                activity=activity,
                outcome=(event.outcome or NONE)[:REASON_MAX],
            )
            _touch(work, at)
            is_first = "contacted" not in facts.reached and (
                event.first_contact or activity in CONTACT_ACTIVITIES
            )
            if is_first:
                arrived = event.received_at or facts.received_at
                seconds = None if arrived is None else (at - arrived).total_seconds()
                _count(
                    work,
                    Metric.FIRST_CONTACTS,
                    amount=seconds or 0.0,
                    rep=rep_id,
                    speed=speed_bucket(seconds),
                )
                work.facts = replace(work.facts, first_contact_at=at)
                _reach(work, "contacted", at, rep=rep_id)
        case SlaBreachedV1(rep_id=rep_id, pool_id=pool_id):
            work.facts = replace(facts, pool=facts.pool or pool_id)
            breached = replace(work.facts, rep=rep_id)
            work.increments.append(
                Increment(hour, Metric.SLA_BREACHES, _lead_dims(breached, sla=event.sla))
            )
        case VisitScheduledV1(rep_id=rep_id):
            _count(work, Metric.VISITS_SCHEDULED, rep=rep_id)
            _reach(work, "visit_scheduled", at, rep=rep_id)
            _touch(work, at)
        case VisitCheckedInV1(walk_in=walk_in, rep_id=rep_id):
            _count(work, Metric.VISITS, rep=rep_id, walk_in="yes" if walk_in else "no")
            _reach(work, "visited", at, rep=rep_id)
            _touch(work, at)
        case SatisfactionRecordedV1(score=score, rep_id=rep_id):
            _count(work, Metric.SATISFACTION, rep=rep_id, score=str(score))
        case OpportunityOpenedV1(amount=amount, currency=currency, stage=stage, rep_id=rep_id):
            _count(
                work,
                Metric.OPPORTUNITIES,
                amount=amount,
                rep=rep_id,
                currency=currency,
                stage=stage[:40],
            )
            _touch(work, at)
        case LeadConvertedV1(revenue=revenue, currency=currency, rep_id=rep_id):
            work.facts = replace(
                facts,
                rep=facts.rep or rep_id,
                converted_at=facts.converted_at or at,
                last_closed_at=max(filter(None, (facts.last_closed_at, at))),
            )
            sale = replace(work.facts, rep=rep_id)
            work.increments.append(
                Increment(hour, Metric.CONVERSIONS, _lead_dims(sale, currency=currency), 1, revenue)
            )
            if facts.converted_at is None:
                work.increments.append(Increment(hour, Metric.LEADS_CONVERTED, _lead_dims(sale)))
                if facts.enrolled_at is not None:
                    seq, step_ = _nurture_dims(facts, None, None)
                    work.increments.append(
                        Increment(
                            hour,
                            Metric.CONVERTED_AFTER_NURTURE,
                            _lead_dims(sale, currency=currency, sequence=seq, step=step_),
                            1,
                            revenue,
                        )
                    )
            _reach(work, "converted", at, rep=rep_id)
        case LeadLostV1(level=level):
            lost = replace(
                facts,
                rep=event.rep_id or facts.rep,
                lost_at=facts.lost_at or at,
                last_closed_at=max(filter(None, (facts.last_closed_at, at))),
            )
            work.facts = lost
            reason = (event.reason or NONE)[:REASON_MAX]
            _count(work, Metric.LOSSES, level=str(level), reason=reason)
            if facts.lost_at is None:
                _count(work, Metric.LEADS_LOST, level=str(level))
        case LeadEnrolledV1(sequence_id=sequence_id):
            work.facts = replace(facts, enrolled_at=facts.enrolled_at or at, sequence=sequence_id)
            if facts.enrolled_at is None:
                _count(work, Metric.LEADS_ENROLLED, sequence=sequence_id)
        case MessageSentV1(sequence_id=sequence_id, step=step, channel=channel):
            work.facts = replace(facts, sequence=sequence_id, step=step)
            _count(work, Metric.MESSAGES_SENT, sequence=sequence_id, step=str(step), medium=channel)
        case MessageStatusUpdatedV1(status=status):
            seq, step_ = _nurture_dims(facts, event.sequence_id, event.step)
            _count(work, Metric.MESSAGE_STATUS, status=status, sequence=seq, step=step_)
        case MessageFailedV1(sequence_id=sequence_id, step=step):
            _count(work, Metric.MESSAGES_FAILED, sequence=sequence_id, step=str(step))
        case EngagementRecordedV1(kind=kind):
            seq, step_ = _nurture_dims(facts, event.sequence_id, event.step)
            _count(work, Metric.ENGAGEMENTS, kind=kind, sequence=seq, step=step_)
            _touch(work, at)
        case LeadOptedOutV1(channel=channel):
            seq, step_ = _nurture_dims(facts, event.sequence_id, None)
            _count(work, Metric.OPTED_OUT, medium=channel, sequence=seq, step=step_)
        case LeadRequalifiedV1():
            seq, step_ = _nurture_dims(facts, event.sequence_id, None)
            _count(work, Metric.REQUALIFIED, sequence=seq, step=step_)
        case LeadErasedV1():
            work.facts = replace(facts, erased=True)
            work.forget_personal_data = True
        case _:
            pass
    return work


def _nurture_dims(facts: LeadFacts, sequence: str | None, step: int | None) -> tuple[str, str]:
    """The sequence and step a nurture event belongs to. The step only ever comes from the
    event (a sequence-level row otherwise): taking it from the last message read would
    depend on the order events of different topics are read in."""
    return sequence or facts.sequence or UNKNOWN, NONE if step is None else str(step)


_STAGES_LAST_FIRST = STAGES[::-1]


def open_key(
    facts: LeadFacts,
    *,
    reached: Mapping[str, datetime] | None = None,
    last_touch_at: datetime | None = None,
) -> OpenKey | None:
    """The lead's place among open leads, None when it is not open: an open lead is
    assigned and was not converted, lost or sent to nurture after its last assignment.
    `reached` and `last_touch_at`: the facts' own unless given (an event's, not yet
    copied into them)."""
    if facts.is_test or facts.last_assigned_at is None:
        return None
    if facts.last_closed_at is not None and facts.last_closed_at >= facts.last_assigned_at:
        return None
    if reached is None:
        reached = facts.reached
    stage = "assigned"
    for furthest in _STAGES_LAST_FIRST:
        if furthest in reached:
            stage = furthest
            break
    awaiting_contact = "contacted" not in reached
    received = facts.received_at or facts.last_assigned_at
    touched = last_touch_at or facts.last_touch_at or received
    return OpenKey(
        channel=facts.channel or UNKNOWN,
        source=facts.source or UNKNOWN,
        campaign=facts.campaign or NONE,
        pool=facts.current_pool or facts.pool or NONE,
        rep=facts.rep or NONE,
        stage=stage,
        received_day=received.astimezone(UTC).date().isoformat(),
        last_touch_day=touched.astimezone(UTC).date().isoformat(),
        sla_due_hour=hour_key(facts.sla_due_at)
        if awaiting_contact and facts.sla_due_at is not None
        else NONE,
    )


def _complete(facts: LeadFacts) -> bool:
    """Whether counters of the lead carry their final channel, source, campaign and pool."""
    return facts.received_at is not None and facts.pool is not None


def _moved(old: Increment, facts: LeadFacts) -> Increment:
    """A pending increment with what is now known of the lead's attribution and pool."""
    values = dict(old.dimensions)
    if facts.received_at is not None and values.get("channel") == UNKNOWN:
        # Counted before the lead's attribution was known (a repeat inquiry keeps its own).
        values.update(
            channel=facts.channel or UNKNOWN,
            source=facts.source or UNKNOWN,
            campaign=facts.campaign or NONE,
        )
    if facts.pool is not None and not values.get("pool"):
        values["pool"] = facts.pool
    amount = old.amount
    unknown_speed = old.metric is Metric.FIRST_CONTACTS and values.get("speed") == "unknown"
    if unknown_speed and facts.first_contact_at is not None and facts.received_at is not None:
        # The first contact was read before the lead's arrival time was known.
        amount = (facts.first_contact_at - facts.received_at).total_seconds()
        values["speed"] = speed_bucket(amount)
    # Values of dimensions it had keep their canonical order: sorted only if one was added.
    dims = tuple(values.items())
    if len(dims) != len(old.dimensions):
        dims = tuple(sorted(dims))
    return Increment(old.hour, old.metric, dims, old.count, amount)


def pending_entry(increment: Increment) -> list[Any]:
    """A pending increment as the lead's facts store it: [hour, metric, dims, count,
    amount]. Kept as `Increment` in memory: a lead's pending increments are mostly
    settled within the batch that made them, never stored."""
    return [
        hour_key(increment.hour),
        increment.metric.value,
        [list(pair) for pair in increment.dimensions],
        increment.count,
        increment.amount,
    ]


def pending_increment(entry: Sequence[Any]) -> Increment:
    hour, metric, dims, count, amount = entry
    return Increment(
        hour_from_key(hour), Metric(metric), tuple((k, v) for k, v in dims), count, amount
    )


def _gauge_moves(old: OpenKey | None, new: OpenKey | None) -> list[GaugeMove]:
    """A lead's place among open leads went from `old` to `new` (None: not open)."""
    moves: list[GaugeMove] = []
    if new != old:
        if old is not None:
            moves.append(GaugeMove(old, -1))
        if new is not None:
            moves.append(GaugeMove(new, 1))
    return moves


def settle(
    before: LeadFacts, work: _Work, held: int = 0
) -> tuple[LeadFacts, list[Increment], list[GaugeMove], int]:
    """Turn one event's work into what is counted: nothing for a test lead; increments
    counted before the lead's attribution and home pool were known are remembered
    (`pending`) and moved once both are, whatever order the events came in.

    `held`: how many of the last of `before.pending` this batch has not counted yet. An
    incomplete lead's increments are held back until the lead is complete or the batch
    ends (`tally_batch` counts them then, as they are): counting them at once and moving
    them a few events later (the lead's assignment follows its arrival) made the same
    sums with three increments instead of one. Returns the facts, the increments to count,
    the gauge moves and how many of the facts' pending increments are held."""
    facts = work.facts
    increments: list[Increment] = []
    pending: tuple[Increment, ...] = ()
    counted = before.pending[: len(before.pending) - held]
    held_after = 0
    if facts.is_test:
        # Known to be a test lead only now: take back what its earlier events counted.
        for old in counted:
            increments.append(
                Increment(old.hour, old.metric, old.dimensions, -old.count, -old.amount)
            )
    else:
        learned = (before.received_at is None and facts.received_at is not None) or (
            before.pool is None and facts.pool is not None
        )
        moved = before.pending
        if learned and before.pending:
            # Move what was counted before to where the lead is now known to belong.
            moved = tuple(_moved(old, facts) for old in before.pending)
            for old, new in zip(counted, moved, strict=False):
                if new != old:
                    increments.append(
                        Increment(old.hour, old.metric, old.dimensions, -old.count, -old.amount)
                    )
                    increments.append(new)
        if _complete(facts):
            increments.extend(moved[len(moved) - held :])
            increments.extend(work.increments)
        else:
            pending = (*moved, *work.increments)[-PENDING_MAX:]
            held_after = min(held + len(work.increments), len(pending))
    # The event's stages and last touch join the facts here, in the one copy of them.
    stage_and_touch = work.stage_and_touch
    new_key = open_key(
        facts,
        reached=stage_and_touch.get("reached"),
        last_touch_at=stage_and_touch.get("last_touch_at"),
    )
    gauge = _gauge_moves(before.open_key, new_key)
    settled: dict[str, Any] = {}
    if pending != facts.pending:
        settled["pending"] = pending
    if new_key != facts.open_key:
        settled["open_key"] = new_key
    if stage_and_touch or settled:
        facts = _replace(facts, **stage_and_touch, **settled)
    return facts, increments, gauge, held_after


# --- a batch --------------------------------------------------------------------------------


def stored_payload(event: Event, *, erased: bool) -> dict[str, Any]:
    """The event as JSON-able data for the event store; without personal data once the
    lead is erased (an event can arrive after the erasure, on another topic)."""
    payload = event.model_dump(mode="json")
    if erased:
        for name in PERSONAL_FIELDS:
            payload.pop(name, None)
    return payload


def presumed_new_leads(events: Sequence[Event]) -> set[str]:
    """Leads whose first event here is their lead-received: usually nothing is known of
    them yet (a store may take that on trust, and must find out when it is wrong)."""
    first: dict[str, Event] = {}
    for event in events:
        first.setdefault(event.lead_id, event)
    return {lead for lead, event in first.items() if isinstance(event, LeadReceivedV1)}


def is_campaign(event: Event) -> bool:
    return isinstance(event, CampaignSavedV1)


def tally_batch(
    events: Sequence[Event],
    known: Mapping[str, LeadFacts],
    recorded_at: datetime,
) -> BatchTally:
    """Tally `events` in order, each on the facts its predecessors left."""
    facts = dict(known)
    changed: dict[str, LeadFacts] = {}
    increments: list[Increment] = []
    gauge: list[GaugeMove] = []
    recorded: list[RecordedEvent] = []
    campaigns: dict[str, Campaign] = {}
    erased: set[str] = set()
    held: dict[str, int] = {}
    unknown = 0
    for event in events:
        known_type = is_known(event)
        if not known_type:
            unknown += 1
            increments.append(
                Increment(
                    hour_of(event.occurred_at),
                    Metric.UNKNOWN_EVENTS,
                    dimensions(event_type=event.event_type[:64], version=str(event.schema_version)),
                )
            )
            recorded.append(_recorded(event, recorded_at, event.model_dump(mode="json"), False))
            continue
        if isinstance(event, CampaignSavedV1):
            campaign = campaign_of(event)
            previous = campaigns.get(campaign.campaign_id)
            if previous is None or campaign.saved_at >= previous.saved_at:
                campaigns[campaign.campaign_id] = campaign
            recorded.append(_recorded(event, recorded_at, event.model_dump(mode="json"), True))
            continue
        lead_id = event.lead_id
        before = facts.get(lead_id)
        if before is None:
            before = LeadFacts(lead_id)
        work = tally_event(event, before)
        after, counted, moves, held[lead_id] = settle(before, work, held.get(lead_id, 0))
        recorded.append(
            _recorded(event, recorded_at, stored_payload(event, erased=after.erased), True)
        )
        increments.extend(counted)
        gauge.extend(moves)
        if work.forget_personal_data:
            erased.add(lead_id)
        if after != before:
            facts[lead_id] = changed[lead_id] = after
    for lead_id, count in held.items():
        if count:
            # Still incomplete: its increments counted as they are, and remembered.
            increments.extend(facts[lead_id].pending[-count:])
    return BatchTally(
        recorded=tuple(recorded),
        facts=tuple(changed.values()),
        increments=tuple(merge_increments(increments)),
        gauge=tuple(merge_gauge(gauge)),
        campaigns=tuple(campaigns.values()),
        erased_leads=frozenset(erased),
        unknown_events=unknown,
    )


def _recorded(
    event: Event, recorded_at: datetime, payload: dict[str, Any], known: bool
) -> RecordedEvent:
    return RecordedEvent(
        event_id=str(event.event_id),
        event_type=event.event_type,
        lead_id=event.lead_id,
        occurred_at=event.occurred_at,
        recorded_at=recorded_at,
        payload=payload,
        known=known,
    )


def campaign_of(event: CampaignSavedV1) -> Campaign:
    return Campaign(
        campaign_id=event.campaign_id,
        name=event.name,
        channel=event.channel,
        cost=event.cost,
        currency=event.currency,
        starts_on=None if event.starts_on is None else event.starts_on.isoformat(),
        ends_on=None if event.ends_on is None else event.ends_on.isoformat(),
        saved_at=event.occurred_at,
    )


def merge_increments(increments: Iterable[Increment]) -> list[Increment]:
    """Increments of the same counter added into one (those that cancel out dropped)."""
    merged: dict[tuple[datetime, Metric, Dimensions], Increment] = {}
    for i in increments:
        key = (i.hour, i.metric, i.dimensions)
        if (before := merged.get(key)) is None:
            merged[key] = i  # most counters get one increment a batch: kept as it is
        else:
            merged[key] = Increment(
                i.hour, i.metric, i.dimensions, before.count + i.count, before.amount + i.amount
            )
    return [i for i in merged.values() if i.count != 0 or abs(i.amount) > 1e-9]


def merge_gauge(moves: Iterable[GaugeMove]) -> list[GaugeMove]:
    merged: dict[OpenKey, int] = {}
    for move in moves:
        merged[move.key] = merged.get(move.key, 0) + move.count
    return [GaugeMove(key, count) for key, count in merged.items() if count != 0]
