"""Which counters each event moves, how days are bucketed, and how reports add up."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from services.analytics.rules import (
    NO_CAMPAIGN,
    UNKNOWN,
    Bucket,
    ChannelFigures,
    Increment,
    LeadFacts,
    Metric,
    Period,
    PeriodError,
    Summary,
    dimensions,
    figures_by_channel,
    report_day,
    report_period,
    stored_payload,
    summarise,
    tally_event,
)
from shared.events import (
    ActivityLoggedV1,
    Attribution,
    Contact,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadEnrolledV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
)

pytestmark = pytest.mark.unit

UTC_ZONE = ZoneInfo("UTC")
SEOUL = ZoneInfo("Asia/Seoul")
NOON = datetime(2026, 5, 14, 12, 0, tzinfo=UTC)
DAY = date(2026, 5, 14)
LEAD = "lead-1"


def received(channel: str = "web_form", campaign: str | None = "spring") -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=LEAD,
        occurred_at=NOON,
        contact=Contact(name="Dana Kim", phone="+14155550100"),
        attribution=Attribution(source="website", channel=channel, campaign=campaign),
        message="call me after six",
    )


def assigned(rep_id: str = "rep-a") -> LeadAssignedV1:
    return LeadAssignedV1(lead_id=LEAD, occurred_at=NOON, rep_id=rep_id, strategy="round_robin")


# --- increments per event ------------------------------------------------------------------


def test_new_lead_is_a_lead_received_and_an_inquiry_by_channel_and_campaign() -> None:
    tally = tally_event(received(), LeadFacts(LEAD), UTC_ZONE)
    where = dimensions(channel="web_form", campaign="spring")
    assert tally.increments == (
        Increment(DAY, Metric.INQUIRIES, where),
        Increment(DAY, Metric.LEADS_RECEIVED, where),
    )
    assert tally.facts.received_on == DAY
    assert tally.facts.channel == "web_form"


def test_merged_repeat_inquiry_is_an_inquiry_but_not_a_new_lead() -> None:
    merged = LeadMergedV1(
        lead_id=LEAD,
        occurred_at=NOON,
        contact=Contact(phone="+14155550100"),
        attribution=Attribution(source="meta", channel="meta_lead_ads"),
        matched_on="phone",
    )
    facts = LeadFacts(LEAD, channel="web_form", received_on=date(2026, 5, 1))
    tally = tally_event(merged, facts, UTC_ZONE)
    assert tally.increments == (
        Increment(DAY, Metric.INQUIRIES, dimensions(channel="meta_lead_ads", campaign=NO_CAMPAIGN)),
    )
    assert tally.facts.channel == "web_form"  # the lead keeps its first channel


def test_first_assignment_counts_the_lead_and_the_assignment() -> None:
    tally = tally_event(assigned("rep-a"), LeadFacts(LEAD), UTC_ZONE)
    assert tally.increments == (
        Increment(DAY, Metric.ASSIGNMENTS, dimensions(rep_id="rep-a")),
        Increment(DAY, Metric.LEADS_ASSIGNED, dimensions(rep_id="rep-a")),
    )
    assert tally.facts.rep_id == "rep-a"


def test_reassignment_counts_an_assignment_but_not_the_lead_again() -> None:
    first = tally_event(assigned("rep-a"), LeadFacts(LEAD), UTC_ZONE)
    again = tally_event(assigned("rep-b"), first.facts, UTC_ZONE)
    assert again.increments == (Increment(DAY, Metric.ASSIGNMENTS, dimensions(rep_id="rep-b")),)
    assert again.facts.rep_id == "rep-b"
    assert again.facts.assigned_on == DAY


def test_loss_is_counted_by_level_and_rep_once_per_lead() -> None:
    lost = LeadLostV1(lead_id=LEAD, occurred_at=NOON, level=2)
    tally = tally_event(lost, LeadFacts(LEAD, rep_id="rep-a"), UTC_ZONE)
    assert tally.increments == (
        Increment(DAY, Metric.LEADS_LOST, dimensions(level="2", rep_id="rep-a")),
    )
    assert tally_event(lost, tally.facts, UTC_ZONE).increments == ()


def test_loss_without_any_known_rep_is_credited_to_unknown() -> None:
    lost = LeadLostV1(lead_id=LEAD, occurred_at=NOON, level=1)
    (increment,) = tally_event(lost, LeadFacts(LEAD), UTC_ZONE).increments
    assert dict(increment.dimensions) == {"level": "1", "rep_id": UNKNOWN}


def test_enrollment_is_counted_by_sequence_once_per_lead() -> None:
    enrolled = LeadEnrolledV1(lead_id=LEAD, occurred_at=NOON, sequence_id="win-back", reason="l3")
    tally = tally_event(enrolled, LeadFacts(LEAD), UTC_ZONE)
    assert tally.increments == (
        Increment(DAY, Metric.LEADS_ENROLLED, dimensions(sequence_id="win-back")),
    )
    assert tally_event(enrolled, tally.facts, UTC_ZONE).increments == ()


def test_sale_carries_revenue_and_is_credited_to_the_leads_first_channel() -> None:
    sale = LeadConvertedV1(lead_id=LEAD, occurred_at=NOON, rep_id="rep-a", revenue=1200.0)
    tally = tally_event(sale, LeadFacts(LEAD, channel="walk_in"), UTC_ZONE)
    assert tally.increments == (
        Increment(
            DAY,
            Metric.CONVERSIONS,
            dimensions(rep_id="rep-a", channel="walk_in", currency="USD"),
            amount=1200.0,
        ),
        Increment(DAY, Metric.LEADS_CONVERTED, dimensions(rep_id="rep-a", channel="walk_in")),
    )


def test_second_sale_adds_revenue_but_not_another_converted_lead() -> None:
    sale = LeadConvertedV1(lead_id=LEAD, occurred_at=NOON, rep_id="rep-a", revenue=80.0)
    facts = LeadFacts(LEAD, converted_on=date(2026, 4, 2))
    (increment,) = tally_event(sale, facts, UTC_ZONE).increments
    assert increment.metric is Metric.CONVERSIONS
    assert increment.amount == 80.0
    assert dict(increment.dimensions)["channel"] == UNKNOWN


def test_events_without_a_report_figure_move_no_counter() -> None:
    call = ActivityLoggedV1(lead_id=LEAD, occurred_at=NOON, rep_id="rep-a", activity="call")
    facts = LeadFacts(LEAD, channel="web_form")
    tally = tally_event(call, facts, UTC_ZONE)
    assert tally.increments == ()
    assert tally.facts == facts


def test_erasure_forgets_personal_data_now_and_in_later_events() -> None:
    tally = tally_event(LeadErasedV1(lead_id=LEAD), LeadFacts(LEAD), UTC_ZONE)
    assert tally.forget_personal_data
    assert tally.facts.erased
    late = stored_payload(received(), erased=True)
    assert "contact" not in late
    assert "message" not in late
    assert late["attribution"]["channel"] == "web_form"
    assert stored_payload(received(), erased=False)["contact"]["name"] == "Dana Kim"


# --- day buckets in the report time zone ---------------------------------------------------


def test_half_past_eleven_utc_is_the_next_day_in_seoul() -> None:
    late_evening_utc = datetime(2026, 5, 14, 23, 30, tzinfo=UTC)
    assert report_day(late_evening_utc, UTC_ZONE) == date(2026, 5, 14)
    assert report_day(late_evening_utc, SEOUL) == date(2026, 5, 15)


def test_counters_land_on_the_report_zones_day() -> None:
    lead = received().model_copy(update={"occurred_at": datetime(2026, 5, 31, 15, 0, tzinfo=UTC)})
    tally = tally_event(lead, LeadFacts(LEAD), SEOUL)
    assert {increment.day for increment in tally.increments} == {date(2026, 6, 1)}


def test_a_day_in_a_zone_behind_utc_starts_later() -> None:
    early_utc = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    assert report_day(early_utc, ZoneInfo("America/New_York")) == date(2025, 12, 31)


# --- adding buckets up ---------------------------------------------------------------------


def bucket(metric: Metric, count: int = 1, amount: float = 0.0, **dims: str) -> Bucket:
    return Bucket(DAY, metric, dims, count, amount)


def test_summary_adds_every_days_buckets() -> None:
    summary = summarise(
        [
            bucket(Metric.LEADS_RECEIVED, 3, channel="web_form"),
            bucket(Metric.LEADS_RECEIVED, 2, channel="walk_in"),
            bucket(Metric.INQUIRIES, 7, channel="web_form"),
            bucket(Metric.LEADS_ASSIGNED, 4, rep_id="a"),
            bucket(Metric.ASSIGNMENTS, 9, rep_id="a"),
            bucket(Metric.LEADS_LOST, 2, level="2", rep_id="a"),
            bucket(Metric.LEADS_LOST, 1, level="3", rep_id="b"),
            bucket(Metric.LEADS_ENROLLED, 1, sequence_id="s"),
            bucket(Metric.LEADS_CONVERTED, 2, rep_id="a", channel="web_form"),
            bucket(Metric.CONVERSIONS, 2, 0.1, rep_id="a", channel="web_form", currency="USD"),
            bucket(Metric.CONVERSIONS, 1, 0.2, rep_id="b", channel="walk_in", currency="USD"),
        ]
    )
    assert summary == Summary(
        leads_received=5,
        inquiries=7,
        leads_assigned=4,
        leads_lost=3,
        lost_by_level={"1": 0, "2": 2, "3": 1},
        leads_enrolled=1,
        leads_converted=2,
        revenue=0.3,
    )


def test_summary_of_no_buckets_is_all_zero_with_every_loss_level() -> None:
    assert summarise([]) == Summary(lost_by_level={"1": 0, "2": 0, "3": 0})


def test_channel_figures_put_the_busiest_channel_first() -> None:
    rows = figures_by_channel(
        [
            bucket(Metric.INQUIRIES, 2, channel="walk_in", campaign=""),
            bucket(Metric.INQUIRIES, 5, channel="web_form", campaign="a"),
            bucket(Metric.INQUIRIES, 1, channel="web_form", campaign="b"),
            bucket(Metric.LEADS_RECEIVED, 4, channel="web_form", campaign="a"),
            bucket(Metric.LEADS_CONVERTED, 1, channel="walk_in", rep_id="r"),
            bucket(Metric.CONVERSIONS, 1, 99.5, channel="walk_in", rep_id="r", currency="USD"),
        ]
    )
    assert rows == [
        ChannelFigures("web_form", inquiries=6, leads_received=4),
        ChannelFigures("walk_in", inquiries=2, leads_converted=1, revenue=99.5),
    ]


# --- report periods ------------------------------------------------------------------------


def test_period_defaults_to_month_to_date() -> None:
    assert report_period(None, None, today=DAY, max_days=366) == Period(date(2026, 5, 1), DAY)


def test_period_without_from_starts_on_the_first_of_tos_month() -> None:
    period = report_period(None, date(2026, 2, 20), today=DAY, max_days=366)
    assert period == Period(date(2026, 2, 1), date(2026, 2, 20))


def test_single_day_period_is_allowed() -> None:
    assert report_period(DAY, DAY, today=DAY, max_days=1) == Period(DAY, DAY)


def test_from_after_to_is_rejected_naming_from() -> None:
    with pytest.raises(PeriodError) as raised:
        report_period(date(2026, 5, 2), date(2026, 5, 1), today=DAY, max_days=366)
    assert raised.value.field == "from"
    assert "after" in raised.value.reason


def test_period_longer_than_the_limit_is_rejected() -> None:
    with pytest.raises(PeriodError, match="at most 366 days"):
        report_period(date(2024, 1, 1), date(2025, 12, 31), today=DAY, max_days=366)
