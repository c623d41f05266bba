"""A scripted month of a sales floor, as contract events, with the figures every analytics
report should show computed here by plain counting over the script, independently of the
analytics code (nothing from services.analytics is imported).

`build(month, tag)` gives the leads (what happens to each), the events to publish and
`expected(...)` the figures; `tag` keeps ids, reps, pools and campaigns apart from other
tests that share a broker.
"""

from __future__ import annotations

import calendar
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from shared.events import (
    ActivityLoggedV1,
    Attribution,
    CampaignSavedV1,
    Contact,
    EngagementRecordedV1,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadEnrolledV1,
    LeadLostV1,
    LeadMergedV1,
    LeadOptedOutV1,
    LeadReceivedV1,
    LeadRequalifiedV1,
    MessageSentV1,
    MessageStatusUpdatedV1,
    OpportunityOpenedV1,
    SatisfactionRecordedV1,
    SlaBreachedV1,
    VisitCheckedInV1,
    VisitScheduledV1,
)

CHANNELS = ("phone", "web_form", "ad", "walk_in", "referral", "import")
SOURCES = {
    "phone": "flyer",
    "web_form": "blog",
    "ad": "instagram",
    "walk_in": "banner",
    "referral": "member",
    "import": "fair",
}
LOSS_REASONS = {1: "wrong number", 2: "joined another gym", 3: "busy now"}
SPEED_LIMITS = ((300, "lt_5m"), (3600, "5m_1h"), (4 * 3600, "1h_4h"), (86_400, "4h_24h"))


@dataclass
class Lead:
    lead_id: str
    channel: str
    source: str
    campaign: str | None
    arrived: datetime
    pool: str
    rep: str | None
    is_test: bool = False
    contact_kept: bool = True
    first_contact_after: timedelta | None = None
    calls: int = 0
    booked: bool = False
    visited: bool = False
    walk_in_visit: bool = False
    satisfaction: int | None = None
    opportunity: tuple[float, str, str] | None = None
    sale: tuple[float, str] | None = None
    loss: tuple[int, str] | None = None
    sequence: str | None = None
    steps: list[dict[str, bool]] = field(default_factory=list)
    requalified: bool = False
    repeat_channels: list[str] = field(default_factory=list)
    sla_breached: bool = False

    @property
    def assigned_at(self) -> datetime:
        return self.arrived + timedelta(minutes=1)

    @property
    def contacted_at(self) -> datetime | None:
        if self.first_contact_after is None:
            return None
        return self.arrived + self.first_contact_after

    @property
    def closed(self) -> bool:
        return self.sale is not None or self.loss is not None


@dataclass
class Campaign:
    campaign_id: str
    name: str
    channel: str
    cost: float
    currency: str
    starts_on: date
    ends_on: date


@dataclass
class Scenario:
    month: date
    tag: str
    reps: list[str]
    pools: list[str]
    campaigns: list[Campaign]
    leads: list[Lead]
    previous_leads: list[Lead]

    def events(self) -> list[Event]:
        events: list[Event] = [
            CampaignSavedV1(
                lead_id=f"campaign:{c.campaign_id}",
                occurred_at=datetime.combine(c.starts_on, datetime.min.time(), UTC),
                campaign_id=c.campaign_id,
                name=c.name,
                channel=c.channel,
                cost=c.cost,
                currency=c.currency,
                starts_on=c.starts_on,
                ends_on=c.ends_on,
            )
            for c in self.campaigns
        ]
        for lead in self.previous_leads + self.leads:
            events.extend(lead_events(lead))
        return events


def lead_events(lead: Lead) -> list[Event]:
    """A lead's life as events, in the order they happened."""
    at = lead.arrived
    out: list[Event] = [
        LeadReceivedV1(
            lead_id=lead.lead_id,
            occurred_at=at,
            contact=Contact(
                name="Kim",
                phone="+821012345678" if lead.contact_kept else None,
            ),
            attribution=Attribution(
                source=lead.source, channel=lead.channel, campaign_id=lead.campaign
            ),
            is_test=lead.is_test,
        )
    ]
    for i, channel in enumerate(lead.repeat_channels):
        out.append(
            LeadMergedV1(
                lead_id=lead.lead_id,
                occurred_at=at + timedelta(hours=2, minutes=i),
                contact=Contact(phone="+821012345678"),
                attribution=Attribution(source=SOURCES[channel], channel=channel),
                matched_on="phone",
            )
        )
    if lead.rep is None:
        return out
    out.append(
        LeadAssignedV1(
            lead_id=lead.lead_id,
            occurred_at=lead.assigned_at,
            rep_id=lead.rep,
            pool_id=lead.pool,
            strategy="round_robin",
            received_at=lead.arrived,
            sla_due_at=lead.arrived + timedelta(hours=1),
        )
    )
    if lead.sla_breached:
        out.append(
            SlaBreachedV1(
                lead_id=lead.lead_id,
                occurred_at=lead.arrived + timedelta(hours=1),
                rep_id=lead.rep,
                sla="first_response",
                due_at=lead.arrived + timedelta(hours=1),
                pool_id=lead.pool,
            )
        )
    contacted = lead.contacted_at
    if contacted is not None:
        for i in range(lead.calls):
            out.append(
                ActivityLoggedV1(
                    lead_id=lead.lead_id,
                    occurred_at=contacted + timedelta(minutes=10 * i),
                    rep_id=lead.rep,
                    activity="call",
                    outcome="reached",
                    first_contact=i == 0,
                    received_at=lead.arrived,
                )
            )
    day = contacted or lead.assigned_at
    if lead.booked:
        out.append(
            VisitScheduledV1(
                lead_id=lead.lead_id,
                occurred_at=day + timedelta(hours=1),
                rep_id=lead.rep,
                visit_id=f"v-{lead.lead_id}",
                scheduled_for=day + timedelta(days=1),
            )
        )
    if lead.visited:
        out.append(
            VisitCheckedInV1(
                lead_id=lead.lead_id,
                occurred_at=day + timedelta(days=1),
                rep_id=lead.rep,
                visit_id=f"v-{lead.lead_id}",
                walk_in=lead.walk_in_visit,
            )
        )
    if lead.satisfaction is not None:
        out.append(
            SatisfactionRecordedV1(
                lead_id=lead.lead_id,
                occurred_at=day + timedelta(days=2),
                rep_id=lead.rep,
                score=lead.satisfaction,
            )
        )
    if lead.opportunity is not None:
        amount, currency, stage = lead.opportunity
        out.append(
            OpportunityOpenedV1(
                lead_id=lead.lead_id,
                occurred_at=day + timedelta(days=1, hours=1),
                rep_id=lead.rep,
                opportunity_id=f"o-{lead.lead_id}",
                amount=amount,
                currency=currency,
                stage=stage,
            )
        )
    if lead.sale is not None:
        revenue, currency = lead.sale
        out.append(
            LeadConvertedV1(
                lead_id=lead.lead_id,
                occurred_at=day + timedelta(days=1, hours=2),
                rep_id=lead.rep,
                revenue=revenue,
                currency=currency,
            )
        )
    if lead.loss is not None:
        level, reason = lead.loss
        lost_at = day + timedelta(days=1, hours=3)
        out.append(
            LeadLostV1(
                lead_id=lead.lead_id,
                occurred_at=lost_at,
                rep_id=lead.rep,
                level=level,
                reason=reason,
            )
        )
        if lead.sequence is not None:
            out.extend(nurture_events(lead, lost_at))
    return out


def nurture_events(lead: Lead, lost_at: datetime) -> list[Event]:
    assert lead.sequence is not None
    out: list[Event] = [
        LeadEnrolledV1(
            lead_id=lead.lead_id,
            occurred_at=lost_at + timedelta(minutes=5),
            sequence_id=lead.sequence,
            reason="lost",
        )
    ]
    for step, what in enumerate(lead.steps):
        sent_at = lost_at + timedelta(days=step + 1)
        message_id = f"m-{lead.lead_id}-{step}"
        out.append(
            MessageSentV1(
                lead_id=lead.lead_id,
                occurred_at=sent_at,
                sequence_id=lead.sequence,
                step=step,
                channel="email",
                message_id=message_id,
            )
        )
        if what["delivered"]:
            out.append(
                MessageStatusUpdatedV1(
                    lead_id=lead.lead_id,
                    occurred_at=sent_at + timedelta(minutes=1),
                    sequence_id=lead.sequence,
                    step=step,
                    channel="email",
                    message_id=message_id,
                    status="delivered",
                )
            )
        for kind in ("open", "click", "reply"):
            if what[kind]:
                out.append(
                    EngagementRecordedV1(
                        lead_id=lead.lead_id,
                        occurred_at=sent_at + timedelta(hours=1),
                        kind=kind,
                        message_id=message_id,
                        sequence_id=lead.sequence,
                        step=step,
                        channel="email",
                    )
                )
        if what["opt_out"]:
            out.append(
                LeadOptedOutV1(
                    lead_id=lead.lead_id,
                    occurred_at=sent_at + timedelta(hours=2),
                    channel="email",
                    reason="one_click",
                    sequence_id=lead.sequence,
                )
            )
    if lead.requalified:
        out.append(
            LeadRequalifiedV1(
                lead_id=lead.lead_id,
                occurred_at=lost_at + timedelta(days=len(lead.steps) + 1),
                score=80.0,
                reason="replied",
                sequence_id=lead.sequence,
            )
        )
    return out


def build(month: date, tag: str, *, count: int = 60, seed: int = 7) -> Scenario:
    """A month of leads: every channel, two pools, three reps, two campaigns (one in KRW),
    sales in two currencies, losses of every level, walk-ins, nurture, a test lead, repeat
    inquiries, and a few leads in the month before (for month-over-month)."""
    rng = random.Random(seed)
    reps = [f"{tag}-rita", f"{tag}-minho", f"{tag}-jun"]
    pools = [f"{tag}-north", f"{tag}-south"]
    days = calendar.monthrange(month.year, month.month)[1]
    first = month.replace(day=1)
    last = first + timedelta(days=days - 1)
    # The flyers run from the 6th into the next month: their cost is split by days.
    flyers = (first + timedelta(days=5), last + timedelta(days=5))
    campaigns = [
        Campaign(f"{tag}-spring", "Spring promo", "ad", 600.0, "USD", first, last),
        Campaign(f"{tag}-flyers", "Flyers", "phone", 300000.0, "KRW", *flyers),
    ]

    def make(index: int, arrived: datetime) -> Lead:
        channel = CHANNELS[index % len(CHANNELS)]
        campaign = None
        if channel == "ad":
            campaign = campaigns[0].campaign_id
        elif channel == "phone" and index % 4 == 0:
            campaign = campaigns[1].campaign_id
        assigned = index % 9 != 8  # some leads are never assigned
        lead = Lead(
            lead_id=f"{tag}-lead-{index}",
            channel=channel,
            source=SOURCES[channel],
            campaign=campaign,
            arrived=arrived,
            pool=pools[index % 2],
            rep=reps[index % 3] if assigned else None,
            contact_kept=not (channel == "walk_in" and index % 5 == 0),
        )
        if not assigned:
            return lead
        delays = [2, 4, 30, 50, 90, 300, 1500, None]
        delay = delays[rng.randrange(len(delays))]
        if delay is not None:
            lead.first_contact_after = timedelta(minutes=delay)
            lead.calls = 1 + rng.randrange(3)
        lead.sla_breached = delay is None or delay >= 60
        outcome = rng.random()
        if delay is not None and outcome < 0.55:
            lead.booked = channel != "walk_in"
            lead.visited = outcome < 0.45
            lead.walk_in_visit = lead.visited and not lead.booked
            if lead.visited:
                lead.satisfaction = rng.choice([6, 7, 8, 9, 10, 10])
            if outcome < 0.3:
                currency = "KRW" if campaign == campaigns[1].campaign_id else "USD"
                amount = 500000.0 if currency == "KRW" else float(100 + 10 * rng.randrange(50))
                lead.opportunity = (amount, currency, "proposal")
                if outcome < 0.22:
                    lead.sale = (amount, currency)
        if not lead.closed and outcome > 0.7:
            level = 1 + rng.randrange(3)
            lead.loss = (level, LOSS_REASONS[level])
            if level in (2, 3):
                lead.sequence = f"{tag}-winback" if level == 2 else f"{tag}-later"
                for _ in range(1 + rng.randrange(3)):
                    lead.steps.append(
                        {
                            "delivered": rng.random() < 0.9,
                            "open": rng.random() < 0.6,
                            "click": rng.random() < 0.3,
                            "reply": rng.random() < 0.15,
                            "opt_out": False,
                        }
                    )
                lead.steps[-1]["opt_out"] = rng.random() < 0.2
                lead.requalified = lead.steps[0]["reply"]
        if channel in ("web_form", "phone") and index % 7 == 0:
            lead.repeat_channels = ["phone"]
        return lead

    midnight = datetime.combine(first, datetime.min.time(), UTC)
    leads = [
        make(i, midnight + timedelta(days=(i * 20) // count, hours=9 + i % 8, minutes=i))
        for i in range(count)
    ]
    test_lead = make(
        1, datetime.combine(first, datetime.min.time(), UTC) + timedelta(days=3, hours=10)
    )
    test_lead.lead_id = f"{tag}-test-lead"
    test_lead.is_test = True
    leads.append(test_lead)
    before = first - timedelta(days=10)
    previous = [
        make(100 + i, datetime.combine(before, datetime.min.time(), UTC) + timedelta(hours=9 + i))
        for i in range(8)
    ]
    for lead in previous:
        # Closed within the previous month, so they leave nothing open in this one.
        lead.steps, lead.sequence, lead.requalified = [], None, False
        if lead.rep is not None and not lead.closed:
            lead.loss = (1, LOSS_REASONS[1])
    return Scenario(month, tag, reps, pools, campaigns, leads, previous)


# --- the expected figures, by counting over the script ------------------------------------


def _in(at: datetime | None, first: date, last: date) -> bool:
    return at is not None and first <= at.date() <= last


def _money(pairs: list[tuple[float, str]]) -> dict[str, float]:
    out: defaultdict[str, float] = defaultdict(float)
    for amount, currency in pairs:
        out[currency] += amount
    return {cur: round(v, 2) for cur, v in sorted(out.items())}


def _rate(part: float, whole: float) -> float | None:
    return None if not whole else round(part / whole, 4)


def _speed(seconds: float) -> str:
    for limit, name in SPEED_LIMITS:
        if seconds < limit:
            return name
    return "gt_24h"


def _sale_at(lead: Lead) -> datetime:
    return (lead.contacted_at or lead.assigned_at) + timedelta(days=1, hours=2)


def _visit_at(lead: Lead) -> datetime:
    return (lead.contacted_at or lead.assigned_at) + timedelta(days=1)


def expected(scenario: Scenario, now: datetime) -> dict[str, Any]:
    """Every report's figures for the scenario's month (UTC days), as of `now`."""
    first = scenario.month.replace(day=1)
    last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    real = [lead for lead in scenario.leads if not lead.is_test]
    prev_first = (first - timedelta(days=1)).replace(day=1)
    prev_last = first - timedelta(days=1)

    def inquiries(leads: list[Lead], lo: date, hi: date, channels: set[str] | None) -> int:
        n = 0
        for lead in leads:
            if lead.is_test:
                continue
            if _in(lead.arrived, lo, hi) and (channels is None or lead.channel in channels):
                n += 1
            for i, ch in enumerate(lead.repeat_channels):
                at = lead.arrived + timedelta(hours=2, minutes=i)
                if _in(at, lo, hi) and (channels is None or ch in channels):
                    n += 1
        return n

    def monthly(leads: list[Lead], lo: date, hi: date) -> dict[str, Any]:
        visits = [lead for lead in leads if lead.visited and _in(_visit_at(lead), lo, hi)]
        sales = [lead for lead in leads if lead.sale and _in(_sale_at(lead), lo, hi)]
        return {
            "phone_inquiries": inquiries(leads, lo, hi, {"phone"}),
            "online_inquiries": inquiries(leads, lo, hi, {"web_form", "ad"}),
            "walk_in_inquiries": inquiries(leads, lo, hi, {"walk_in"}),
            "other_inquiries": inquiries(leads, lo, hi, {"referral", "import"}),
            "inquiries": inquiries(leads, lo, hi, None),
            "new_leads": sum(1 for lead in leads if _in(lead.arrived, lo, hi)),
            "visits_reserved": sum(1 for lead in visits if not lead.walk_in_visit),
            "visits_walk_in": sum(1 for lead in visits if lead.walk_in_visit),
            "visits": len(visits),
            "conversions": len(sales),
            "sales": len(sales),
            "new_revenue": _money([lead.sale for lead in sales if lead.sale]),
        }

    prev_real = [lead for lead in scenario.previous_leads if not lead.is_test]
    out: dict[str, Any] = {
        "monthly": monthly(real, first, last),
        "monthly_previous": monthly(prev_real, prev_first, prev_last),
    }

    # channels
    channels: dict[str, dict[str, Any]] = {}
    for ch in CHANNELS:
        mine = [lead for lead in real if lead.channel == ch]
        leads_n = sum(1 for lead in mine if _in(lead.arrived, first, last))
        sold = [lead for lead in mine if lead.sale and _in(_sale_at(lead), first, last)]
        channels[ch] = {
            "inquiries": inquiries(mine, first, last, {ch})
            + sum(
                1 for lead in real if lead.channel != ch for c in lead.repeat_channels if c == ch
            ),
            "leads_received": leads_n,
            "contacted": sum(1 for lead in mine if _in(lead.contacted_at, first, last)),
            "visits": sum(1 for lead in mine if lead.visited and _in(_visit_at(lead), first, last)),
            "leads_converted": len(sold),
            "revenue": _money([lead.sale for lead in sold if lead.sale]),
        }
    out["channels"] = channels

    # campaigns
    camp: dict[str, dict[str, Any]] = {}
    for c in scenario.campaigns:
        mine = [lead for lead in real if lead.campaign == c.campaign_id]
        leads_n = sum(1 for lead in mine if _in(lead.arrived, first, last))
        sold = [lead for lead in mine if lead.sale and _in(_sale_at(lead), first, last)]
        revenue = _money([lead.sale for lead in sold if lead.sale])
        days = (c.ends_on - c.starts_on).days + 1
        overlap = (min(c.ends_on, last) - max(c.starts_on, first)).days + 1
        cost = round(c.cost * overlap / days, 2)
        opps = [lead for lead in mine if lead.opportunity]
        camp[c.campaign_id] = {
            "leads": leads_n,
            "opportunities": len(opps),
            "opportunity_amount": _money(
                [(o[0], o[1]) for o in (x.opportunity for x in opps) if o]
            ),
            "leads_converted": len(sold),
            "revenue": revenue,
            "cost": cost,
            "cost_per_lead": round(cost / leads_n, 2) if leads_n else None,
            "roi": round((revenue.get(c.currency, 0.0) - cost) / cost, 4)
            if set(revenue) <= {c.currency}
            else None,
        }
    out["campaigns"] = camp

    # reps
    reps: dict[str, dict[str, Any]] = {}
    for rep in scenario.reps:
        mine = [lead for lead in real if lead.rep == rep]
        calls = sum(lead.calls for lead in mine)
        bookings = sum(1 for lead in mine if lead.booked)
        visits = sum(1 for lead in mine if lead.visited)
        sold = [lead for lead in mine if lead.sale]
        is_open = [lead for lead in mine if not lead.closed]
        reps[rep] = {
            "leads_assigned": len(mine),
            "calls": calls,
            "visit_bookings": bookings,
            "booking_rate": _rate(bookings, calls),
            "consultations": visits,
            "sales": len(sold),
            "close_rate": _rate(len(sold), visits),
            "revenue": _money([lead.sale for lead in sold if lead.sale]),
            "leads_converted": len(sold),
            "conversion_rate": _rate(len(sold), len(mine)),
            "open_leads": len(is_open),
            "overdue_leads": sum(
                1
                for lead in is_open
                if lead.contacted_at is None and lead.arrived + timedelta(hours=1) < now
            ),
        }
    out["reps"] = reps

    # speed to lead
    contacted = [lead for lead in real if lead.contacted_at is not None]
    buckets = Counter(
        _speed(lead.first_contact_after.total_seconds())
        for lead in contacted
        if lead.first_contact_after
    )
    fast = buckets["lt_5m"]
    hour = fast + buckets["5m_1h"]
    open_leads = [lead for lead in real if lead.rep is not None and not lead.closed]
    today = now.date()
    out["speed"] = {
        "first_contacts": len(contacted),
        "distribution": dict(buckets),
        "within_5m": _rate(fast, len(contacted)),
        "within_1h": _rate(hour, len(contacted)),
        "sla_breaches": sum(1 for lead in real if lead.sla_breached and lead.rep),
        "sla_breaches_by_pool": dict(
            Counter(lead.pool for lead in real if lead.sla_breached and lead.rep)
        ),
        "open_leads": len(open_leads),
        "forgotten_leads": sum(
            1 for lead in open_leads if (today - _last_touch(lead).date()).days >= 3
        ),
    }

    # losses
    lost = [lead for lead in real if lead.loss]
    out["losses"] = {
        "total": len(lost),
        "by_level": {
            str(level): sum(1 for lead in lost if lead.loss and lead.loss[0] == level)
            for level in (1, 2, 3)
        },
    }

    # walk-ins and satisfaction
    walk_ins = [
        lead for lead in real if lead.channel == "walk_in" and _in(lead.arrived, first, last)
    ]
    scores = [lead.satisfaction for lead in real if lead.satisfaction is not None]
    out["walk_ins"] = {
        "walk_in_leads": len(walk_ins),
        "contact_kept": sum(1 for lead in walk_ins if lead.contact_kept),
        "retention_rate": _rate(sum(1 for lead in walk_ins if lead.contact_kept), len(walk_ins)),
        "satisfaction_responses": len(scores),
        "satisfaction_average": round(sum(scores) / len(scores), 2) if scores else None,
        "below_8": sum(1 for s in scores if s < 8),
        "below_8_share": _rate(sum(1 for s in scores if s < 8), len(scores)),
        "distribution": dict(Counter(scores)),
    }

    # nurture
    steps: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for lead in real:
        if lead.sequence is None:
            continue
        for i, what in enumerate(lead.steps):
            row = steps[(lead.sequence, str(i))]
            row["sent"] += 1
            row["delivered"] += what["delivered"]
            row["opened"] += what["open"]
            row["clicked"] += what["click"]
            row["replied"] += what["reply"]
            if what["opt_out"]:
                # An opt-out carries its sequence but no step: the sequence's own row.
                steps[(lead.sequence, "")]["opted_out"] += 1
        if lead.requalified:
            steps[(lead.sequence, "")]["requalified"] += 1
    out["nurture"] = {key: {k: v for k, v in value.items() if v} for key, value in steps.items()}
    out["enrolled"] = dict(Counter(lead.sequence for lead in real if lead.sequence))

    # funnel and forecast
    in_month = [lead for lead in real if _in(lead.arrived, first, last)]
    reached = {
        "received": len(in_month),
        "assigned": sum(1 for lead in real if lead.rep),
        "contacted": len(contacted),
        "visit_scheduled": sum(1 for lead in real if lead.booked),
        "visited": sum(1 for lead in real if lead.visited),
        "converted": sum(1 for lead in real if lead.sale),
    }
    stage_of = Counter(_furthest(lead) for lead in open_leads)
    expected_conversions = 0.0
    for stage in ("received", "assigned", "contacted", "visit_scheduled", "visited"):
        if reached[stage]:
            expected_conversions += stage_of[stage] * min(
                reached["converted"] / reached[stage], 1.0
            )
    out["forecast"] = {
        "reached": reached,
        "pipeline": dict(stage_of),
        "expected_conversions": round(expected_conversions, 2),
    }
    return out


def _furthest(lead: Lead) -> str:
    if lead.visited:
        return "visited"
    if lead.booked:
        return "visit_scheduled"
    if lead.contacted_at is not None:
        return "contacted"
    return "assigned"


def _last_touch(lead: Lead) -> datetime:
    """The last thing that happened to an open lead (its arrival, a merge, a call, a visit
    booking or check-in, an opportunity)."""
    times = [lead.arrived]
    times += [
        lead.arrived + timedelta(hours=2, minutes=i) for i in range(len(lead.repeat_channels))
    ]
    if lead.contacted_at is not None:
        times.append(lead.contacted_at + timedelta(minutes=10 * (lead.calls - 1)))
    day = lead.contacted_at or lead.assigned_at
    if lead.booked:
        times.append(day + timedelta(hours=1))
    if lead.visited:
        times.append(day + timedelta(days=1))
    if lead.opportunity:
        times.append(day + timedelta(days=1, hours=1))
    return max(times)


async def publish_all(bootstrap: str, events: list[Event]) -> None:
    """Publish `events` with one producer, keyed by lead as the services do."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415 - only the Kafka tests need it

    from shared.topics import topic_for  # noqa: PLC0415

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(
                topic_for(event),
                event.model_dump_json().encode(),
                key=event.lead_id.encode(),
                headers=[("content-type", b"application/json")],
            )
            for event in events
        ]
        for delivery in sent:
            await delivery
    finally:
        await producer.stop()
