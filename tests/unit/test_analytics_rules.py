"""Which counters each event moves, out-of-order arrival, test leads, unknown events, and
how report queries are read."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.analytics.events import PARSER, RawEvent
from services.analytics.reports import QueryError, ReportQuery, parse_query
from services.analytics.rules import (
    LeadFacts,
    Metric,
    hour_of,
    open_key,
    speed_bucket,
    stored_payload,
    tally_batch,
)
from shared.events import (
    ActivityLoggedV1,
    Attribution,
    Contact,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
)

pytestmark = pytest.mark.unit

NOON = datetime(2026, 5, 14, 12, 0, tzinfo=UTC)
LEAD = "lead-1"


def received(channel: str = "web_form", *, is_test: bool = False) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=LEAD,
        occurred_at=NOON,
        contact=Contact(name="Dana Kim", phone="+14155550100"),
        attribution=Attribution(source="google", channel=channel, campaign_id="spring"),
        message="call me after six",
        is_test=is_test,
    )


def assigned(rep_id: str = "rep-a", pool: str = "seoul") -> LeadAssignedV1:
    return LeadAssignedV1(
        lead_id=LEAD, occurred_at=NOON, rep_id=rep_id, pool_id=pool, strategy="round_robin"
    )


def totals(events: list[Event], known: dict[str, LeadFacts] | None = None) -> dict[str, int]:
    tally = tally_batch(events, known or {}, recorded_at=NOON)
    out: dict[str, int] = {}
    for i in tally.increments:
        key = i.metric.value + "".join(f"|{k}={v}" for k, v in i.dimensions if k != "source")
        out[key] = out.get(key, 0) + i.count
    return {k: v for k, v in out.items() if v}


def test_a_new_lead_counts_as_inquiry_lead_and_funnel_entry_with_its_attribution() -> None:
    counted = totals([received(), assigned()])
    assert counted["leads_received|campaign=spring|channel=web_form|pool=seoul|rep="] == 1
    assert counted["inquiries|campaign=spring|channel=web_form|pool=seoul|rep="] == 1
    assert counted["reached|campaign=spring|channel=web_form|pool=seoul|rep=rep-a|stage=assigned"]
    assert counted["reached|campaign=spring|channel=web_form|pool=seoul|rep=|stage=received"]


def test_a_merged_repeat_inquiry_is_an_inquiry_not_a_new_lead() -> None:
    merged = LeadMergedV1(
        lead_id=LEAD,
        occurred_at=NOON,
        contact=Contact(phone="+14155550100"),
        attribution=Attribution(source="front desk", channel="phone"),
        matched_on="phone",
    )
    tally = tally_batch([received(), merged], {}, recorded_at=NOON)
    metrics = [i.metric for i in tally.increments for _ in range(i.count)]
    assert metrics.count(Metric.INQUIRIES) == 2
    assert metrics.count(Metric.LEADS_RECEIVED) == 1


def test_events_before_the_lead_received_are_moved_to_its_channel() -> None:
    sale = LeadConvertedV1(lead_id=LEAD, occurred_at=NOON, rep_id="rep-a", revenue=10.0)
    late = totals([sale, assigned(), received("phone")])
    assert not any("channel=unknown" in key for key in late)
    in_order = totals([received("phone"), assigned(), sale])
    assert late == in_order


def test_a_test_lead_counts_nothing_whenever_its_flag_arrives() -> None:
    sale = LeadConvertedV1(lead_id=LEAD, occurred_at=NOON, rep_id="rep-a", revenue=10.0)
    assert totals([sale, received(is_test=True), assigned()]) == {}
    assert totals([received(is_test=True), assigned(), sale]) == {}


def test_first_contact_is_bucketed_by_time_since_arrival_even_when_read_first() -> None:
    call = ActivityLoggedV1(
        lead_id=LEAD,
        occurred_at=NOON + timedelta(minutes=3),
        rep_id="rep-a",
        activity="call",
        outcome="reached",
    )
    for order in ([received(), assigned(), call], [call, assigned(), received()]):
        counted = totals(order)
        speed = [k for k in counted if k.startswith("first_contacts")]
        assert len(speed) == 1
        assert "speed=lt_5m" in speed[0]


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0, "lt_5m"),
        (299, "lt_5m"),
        (300, "5m_1h"),
        (3599, "5m_1h"),
        (3600, "1h_4h"),
        (86_399, "4h_24h"),
        (86_400, "gt_24h"),
        (None, "unknown"),
        (-1, "unknown"),
    ],
)
def test_speed_buckets(seconds: float | None, bucket: str) -> None:
    assert speed_bucket(seconds) == bucket


def test_a_lead_is_open_from_assignment_until_lost_or_sold() -> None:
    facts = tally_batch([received(), assigned()], {}, recorded_at=NOON).facts[0]
    key = open_key(facts)
    assert key is not None
    assert (key.rep, key.pool, key.stage, key.channel) == ("rep-a", "seoul", "assigned", "web_form")
    lost = LeadLostV1(lead_id=LEAD, occurred_at=NOON + timedelta(hours=1), level=3)
    after = tally_batch([lost], {LEAD: facts}, recorded_at=NOON)
    assert open_key(after.facts[0]) is None
    assert [(m.key.rep, m.count) for m in after.gauge] == [("rep-a", -1)]


def test_unknown_types_and_versions_parse_raw_and_bad_known_events_do_not() -> None:
    raw = PARSER.validate_json(json.dumps({"event_type": "lead-beamed", "lead_id": "x", "a": 1}))
    assert isinstance(raw, RawEvent)
    v2 = PARSER.validate_json(
        json.dumps({"event_type": "lead-lost", "schema_version": 2, "lead_id": "x"})
    )
    assert isinstance(v2, RawEvent)
    assert isinstance(
        PARSER.validate_json(json.dumps({"event_type": "lead-lost", "lead_id": "x", "level": 2})),
        LeadLostV1,
    )
    with pytest.raises(ValueError, match="level"):
        PARSER.validate_json(json.dumps({"event_type": "lead-lost", "lead_id": "x", "level": 9}))
    tally = tally_batch([raw], {}, recorded_at=NOON)
    assert tally.unknown_events == 1
    assert [(i.metric, dict(i.dimensions)) for i in tally.increments] == [
        (Metric.UNKNOWN_EVENTS, {"event_type": "lead-beamed", "version": "1"})
    ]
    assert tally.recorded[0].payload["a"] == 1


def test_erasure_drops_personal_fields_from_later_payloads() -> None:
    assert "contact" not in stored_payload(received(), erased=True)
    assert "contact" in stored_payload(received(), erased=False)
    tally = tally_batch([received(), LeadErasedV1(lead_id=LEAD)], {}, recorded_at=NOON)
    assert tally.erased_leads == {LEAD}


def test_hours_are_utc() -> None:
    seoul = datetime(2026, 5, 15, 0, 30, tzinfo=ZoneInfo("Asia/Seoul"))
    assert hour_of(seoul) == datetime(2026, 5, 14, 15, 0, tzinfo=UTC)


# --- queries -----------------------------------------------------------------------------


def query(**overrides: object) -> ReportQuery:
    arguments: dict[str, object] = {
        "first_day": None,
        "last_day": None,
        "month": None,
        "timezone": None,
        "filters": {},
        "today_in": lambda zone: date(2026, 5, 20),
        "default_zone": ZoneInfo("UTC"),
        "max_days": 400,
    }
    arguments.update(overrides)
    return parse_query(**arguments)  # type: ignore[arg-type]


def test_a_month_covers_its_days_in_the_zone_asked() -> None:
    q = query(month="2026-02", timezone="Asia/Seoul")
    assert (q.first_day, q.last_day) == (date(2026, 2, 1), date(2026, 2, 28))
    assert q.first_hour == datetime(2026, 1, 31, 15, tzinfo=UTC)
    assert q.last_hour == datetime(2026, 2, 28, 14, tzinfo=UTC)
    previous = q.previous()
    assert (previous.first_day, previous.last_day) == (date(2026, 1, 1), date(2026, 1, 31))


def test_default_is_month_to_date() -> None:
    q = query()
    assert (q.first_day, q.last_day) == (date(2026, 5, 1), date(2026, 5, 20))


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"month": "2026-13"}, "month", "not a month"),
        ({"month": "2026-05", "first_day": date(2026, 5, 1)}, "month", "not both"),
        ({"timezone": "Mars/Olympus"}, "tz", "unknown time zone"),
        ({"timezone": "Asia/Kolkata"}, "tz", "whole number of hours"),
        ({"first_day": date(2026, 5, 2), "last_day": date(2026, 5, 1)}, "from", "after"),
        ({"first_day": date(2020, 1, 1)}, "from", "at most"),
        ({"filters": {"rep": ""}}, "rep", "1 to 128"),
        ({"filters": {"color": "red"}}, "color", "unknown filter"),
    ],
)
def test_bad_queries_name_the_parameter(
    overrides: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(QueryError) as caught:
        query(**overrides)
    assert caught.value.field == field
    assert reason in caught.value.reason
