"""Pure decisions of analytics: which daily counters an event moves, and how reports add
them up. No I/O and no clock reads: the store persists what these functions decide.

Figures named `leads_*` count each lead once, on the day it first reached that stage (as
CRM "became a <stage> on" dates do): a reassigned lead is not assigned twice, a lead lost
again after requalification is not lost twice. Events that carry money or effort are also
counted one by one (`assignments`, `conversions`), for per-rep and revenue reports.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from shared.events import (
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadEnrolledV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
)


class Metric(StrEnum):
    LEADS_RECEIVED = "leads_received"
    """New leads, each once (dimensions: channel, campaign)."""
    INQUIRIES = "inquiries"
    """Every inquiry: a new lead or a repeat inquiry merged into one (channel, campaign)."""
    LEADS_ASSIGNED = "leads_assigned"
    """Leads assigned to a rep for the first time (rep_id of that first assignee)."""
    ASSIGNMENTS = "assignments"
    """Every assignment, reassignments included (rep_id)."""
    LEADS_LOST = "leads_lost"
    """Leads lost for the first time (level, rep_id)."""
    LEADS_ENROLLED = "leads_enrolled"
    """Leads enrolled in nurture for the first time (sequence_id)."""
    LEADS_CONVERTED = "leads_converted"
    """Leads converted for the first time (rep_id, channel)."""
    CONVERSIONS = "conversions"
    """Every sale, its revenue as the amount (rep_id, channel, currency)."""


UNKNOWN = "unknown"
"""Dimension value when the event does not say (a loss with no rep, a sale of a lead whose
lead-received event has not arrived)."""
NO_CAMPAIGN = ""

LOSS_LEVELS = ("1", "2", "3")

PERSONAL_FIELDS = ("contact", "message", "note")
"""Event fields holding a person's data, forgotten when the lead is erased."""

Dimensions = tuple[tuple[str, str], ...]


def dimensions(**values: str) -> Dimensions:
    """Dimensions in one canonical order, so equal dimensions make equal bucket keys."""
    return tuple(sorted(values.items()))


@dataclass(frozen=True, slots=True)
class Increment:
    """Add `count` (and `amount`, e.g. revenue) to one metric's counter for one day."""

    day: date
    metric: Metric
    dimensions: Dimensions = ()
    count: int = 1
    amount: float = 0.0


@dataclass(frozen=True, slots=True)
class LeadFacts:
    """What analytics remembers about one lead: the day it first reached each stage (so
    it is counted once) and where it came from (so a later sale is credited to a channel)."""

    lead_id: str
    channel: str | None = None
    campaign: str | None = None
    rep_id: str | None = None
    received_on: date | None = None
    assigned_on: date | None = None
    lost_on: date | None = None
    enrolled_on: date | None = None
    converted_on: date | None = None
    erased: bool = False


@dataclass(frozen=True, slots=True)
class Tally:
    """What one event changes: counters to increment and the lead's facts afterwards."""

    increments: tuple[Increment, ...]
    facts: LeadFacts
    forget_personal_data: bool = False


def report_day(instant: datetime, zone: ZoneInfo) -> date:
    """The calendar day `instant` falls on in the report time zone."""
    return instant.astimezone(zone).date()


def tally_event(event: Event, facts: LeadFacts, zone: ZoneInfo) -> Tally:
    """The counters `event` moves, given what is known about its lead so far."""
    day = report_day(event.occurred_at, zone)
    increments: list[Increment] = []
    replace = dataclasses.replace
    match event:
        case LeadReceivedV1(attribution=attribution) | LeadMergedV1(attribution=attribution):
            where = dimensions(
                channel=attribution.channel, campaign=attribution.campaign or NO_CAMPAIGN
            )
            increments.append(Increment(day, Metric.INQUIRIES, where))
            if isinstance(event, LeadReceivedV1) and facts.received_on is None:
                increments.append(Increment(day, Metric.LEADS_RECEIVED, where))
                facts = replace(
                    facts,
                    received_on=day,
                    channel=attribution.channel,
                    campaign=attribution.campaign,
                )
        case LeadAssignedV1(rep_id=rep_id):
            increments.append(Increment(day, Metric.ASSIGNMENTS, dimensions(rep_id=rep_id)))
            if facts.assigned_on is None:
                increments.append(Increment(day, Metric.LEADS_ASSIGNED, dimensions(rep_id=rep_id)))
                facts = replace(facts, assigned_on=day)
            facts = replace(facts, rep_id=rep_id)
        case LeadLostV1(level=level, rep_id=rep_id):
            if facts.lost_on is None:
                lost = dimensions(level=str(level), rep_id=rep_id or facts.rep_id or UNKNOWN)
                increments.append(Increment(day, Metric.LEADS_LOST, lost))
                facts = replace(facts, lost_on=day)
        case LeadEnrolledV1(sequence_id=sequence_id):
            if facts.enrolled_on is None:
                enrolled = dimensions(sequence_id=sequence_id)
                increments.append(Increment(day, Metric.LEADS_ENROLLED, enrolled))
                facts = replace(facts, enrolled_on=day)
        case LeadConvertedV1(rep_id=rep_id, revenue=revenue, currency=currency):
            channel = facts.channel or UNKNOWN
            sale = dimensions(rep_id=rep_id, channel=channel, currency=currency)
            increments.append(Increment(day, Metric.CONVERSIONS, sale, amount=revenue))
            if facts.converted_on is None:
                converted = dimensions(rep_id=rep_id, channel=channel)
                increments.append(Increment(day, Metric.LEADS_CONVERTED, converted))
                facts = replace(facts, converted_on=day)
        case LeadErasedV1():
            return Tally((), replace(facts, erased=True), forget_personal_data=True)
        case _:
            # Stored in the event store but not counted yet (visits, activities, messages).
            return Tally((), facts)
    return Tally(tuple(increments), facts)


def stored_payload(event: Event, *, erased: bool) -> dict[str, Any]:
    """The event as JSON-able data for the event store; without personal data once the
    lead is erased (an event can arrive after the erasure, on another topic)."""
    payload = event.model_dump(mode="json")
    if erased:
        for name in PERSONAL_FIELDS:
            payload.pop(name, None)
    return payload


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the event store keeps it."""

    event_id: str
    event_type: str
    lead_id: str
    occurred_at: datetime
    recorded_at: datetime
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class BatchTally:
    """What a batch of events changes: what to store, which facts, which counters."""

    recorded: tuple[RecordedEvent, ...]
    facts: tuple[LeadFacts, ...]
    """The facts of every lead the batch changed, as they stand after it."""
    increments: tuple[Increment, ...]
    """One increment per counter, the batch's events added up."""
    erased_leads: frozenset[str]
    """Leads whose personal data must go from every stored event."""


def tally_batch(
    events: Sequence[Event],
    known: Mapping[str, LeadFacts],
    zone: ZoneInfo,
    recorded_at: datetime,
) -> BatchTally:
    """Tally `events` in order, each on the facts its predecessors left (`tally_event`)."""
    facts = dict(known)
    changed: dict[str, LeadFacts] = {}
    increments: list[Increment] = []
    recorded: list[RecordedEvent] = []
    erased: set[str] = set()
    for event in events:
        before = facts.get(event.lead_id, LeadFacts(event.lead_id))
        tally = tally_event(event, before, zone)
        recorded.append(
            RecordedEvent(
                event_id=str(event.event_id),
                event_type=event.event_type,
                lead_id=event.lead_id,
                occurred_at=event.occurred_at,
                recorded_at=recorded_at,
                payload=stored_payload(event, erased=tally.facts.erased),
            )
        )
        increments.extend(tally.increments)
        if tally.forget_personal_data:
            erased.add(event.lead_id)
        if tally.facts != before:
            facts[event.lead_id] = changed[event.lead_id] = tally.facts
    return BatchTally(
        recorded=tuple(recorded),
        facts=tuple(changed.values()),
        increments=tuple(merge_increments(increments)),
        erased_leads=frozenset(erased),
    )


def merge_increments(increments: Iterable[Increment]) -> list[Increment]:
    """Increments of the same counter added into one."""
    merged: dict[tuple[date, Metric, Dimensions], Increment] = {}
    for increment in increments:
        key = (increment.day, increment.metric, increment.dimensions)
        known = merged.get(key)
        merged[key] = (
            increment
            if known is None
            else dataclasses.replace(
                known,
                count=known.count + increment.count,
                amount=known.amount + increment.amount,
            )
        )
    return list(merged.values())


# --- reports -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    """One stored counter: a metric's total for one day and one set of dimensions."""

    day: date
    metric: Metric
    dimensions: Mapping[str, str]
    count: int
    amount: float = 0.0


class PeriodError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Period:
    """Report days, both ends included, in the report time zone."""

    first_day: date
    last_day: date


def report_period(
    first_day: date | None, last_day: date | None, *, today: date, max_days: int
) -> Period:
    """The period a report covers: `to` defaults to today, `from` to the first of `to`'s
    month (month to date, what a sales meeting looks at). Raises PeriodError naming the
    query field that is wrong."""
    last = last_day or today
    first = first_day or last.replace(day=1)
    if first > last:
        raise PeriodError("from", f"'from' ({first}) is after 'to' ({last})")
    days = (last - first).days + 1
    if days > max_days:
        raise PeriodError("from", f"a report covers at most {max_days} days; this asks {days}")
    return Period(first, last)


SUMMARY_METRICS = (
    Metric.LEADS_RECEIVED,
    Metric.INQUIRIES,
    Metric.LEADS_ASSIGNED,
    Metric.LEADS_LOST,
    Metric.LEADS_ENROLLED,
    Metric.LEADS_CONVERTED,
    Metric.CONVERSIONS,
)


@dataclass(frozen=True, slots=True)
class Summary:
    leads_received: int = 0
    inquiries: int = 0
    leads_assigned: int = 0
    leads_lost: int = 0
    lost_by_level: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(LOSS_LEVELS, 0))
    leads_enrolled: int = 0
    leads_converted: int = 0
    revenue: float = 0.0


def summarise(buckets: Iterable[Bucket]) -> Summary:
    """Add the buckets of a period up into the summary figures."""
    counts: Counter[Metric] = Counter()
    lost_by_level = dict.fromkeys(LOSS_LEVELS, 0)
    revenue = 0.0
    for bucket in buckets:
        counts[bucket.metric] += bucket.count
        if bucket.metric is Metric.LEADS_LOST:
            level = bucket.dimensions.get("level", UNKNOWN)
            lost_by_level[level] = lost_by_level.get(level, 0) + bucket.count
        elif bucket.metric is Metric.CONVERSIONS:
            revenue += bucket.amount
    return Summary(
        leads_received=counts[Metric.LEADS_RECEIVED],
        inquiries=counts[Metric.INQUIRIES],
        leads_assigned=counts[Metric.LEADS_ASSIGNED],
        leads_lost=counts[Metric.LEADS_LOST],
        lost_by_level=lost_by_level,
        leads_enrolled=counts[Metric.LEADS_ENROLLED],
        leads_converted=counts[Metric.LEADS_CONVERTED],
        revenue=round(revenue, 2),
    )


CHANNEL_METRICS = (
    Metric.INQUIRIES,
    Metric.LEADS_RECEIVED,
    Metric.LEADS_CONVERTED,
    Metric.CONVERSIONS,
)


@dataclass(frozen=True, slots=True)
class ChannelFigures:
    channel: str
    inquiries: int = 0
    leads_received: int = 0
    leads_converted: int = 0
    revenue: float = 0.0


def figures_by_channel(buckets: Iterable[Bucket]) -> list[ChannelFigures]:
    """Inquiries, new leads, conversions and revenue per channel, busiest channel first.
    A sale counts for the channel its lead first came in through."""
    totals: dict[str, Counter[Metric]] = {}
    revenue: defaultdict[str, float] = defaultdict(float)
    for bucket in buckets:
        channel = bucket.dimensions.get("channel", UNKNOWN)
        totals.setdefault(channel, Counter())[bucket.metric] += bucket.count
        if bucket.metric is Metric.CONVERSIONS:
            revenue[channel] += bucket.amount
    rows = [
        ChannelFigures(
            channel=channel,
            inquiries=counts[Metric.INQUIRIES],
            leads_received=counts[Metric.LEADS_RECEIVED],
            leads_converted=counts[Metric.LEADS_CONVERTED],
            revenue=round(revenue[channel], 2),
        )
        for channel, counts in totals.items()
    ]
    return sorted(rows, key=lambda row: (-row.inquiries, -row.leads_received, row.channel))
