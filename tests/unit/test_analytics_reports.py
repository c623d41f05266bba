"""Every report on a scripted month (tests/support/analytics_scenario.py), against figures
the scenario computes by plain counting over its script, not with analytics code; and the
same reports whatever order the topics are read in, and after a rebuild."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.analytics.reports import ReportQuery
from services.analytics.usecases import REPORTS, BuildReport, RebuildRollups, RecordEvents
from shared.events import Event
from shared.topics import topic_for
from tests.fakes.analytics import InMemoryAnalyticsStore
from tests.support.analytics_scenario import CHANNELS, build, expected

pytestmark = pytest.mark.unit

MONTH = date(2026, 10, 1)
NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
SCENARIO = build(MONTH, "u")
EXPECTED = expected(SCENARIO, NOW)


def interleaved(events: list[Event], seed: int) -> list[Event]:
    """The events as a consumer of every topic may read them: each topic (and so each
    lead's events on it) in order, the topics mixed at random."""
    by_topic: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_topic[topic_for(event)].append(event)
    rng = random.Random(seed)
    queues = [list(reversed(q)) for q in by_topic.values()]
    out: list[Event] = []
    while queues:
        queue = rng.choice(queues)
        out.append(queue.pop())
        if not queue:
            queues.remove(queue)
    return out


async def recorded(events: list[Event], batch: int = 97) -> InMemoryAnalyticsStore:
    store = InMemoryAnalyticsStore()
    record = RecordEvents(store, clock=lambda: NOW)
    for start in range(0, len(events), batch):
        await record(events[start : start + batch])
    return store


async def all_reports(store: InMemoryAnalyticsStore, **filters: str) -> dict[str, Any]:
    query = ReportQuery(
        MONTH, date(2026, 10, 31), ZoneInfo("UTC"), filters, now=NOW, forgotten_after_days=3
    )
    build_report = BuildReport(store)
    return {name: (await build_report(name, query)).as_json() for name in REPORTS}


@pytest.fixture(scope="module")
async def reports() -> dict[str, Any]:
    return await all_reports(await recorded(SCENARIO.events()))


def rows(report: dict[str, Any], table: str, key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in report["tables"][table]["rows"]}


def test_the_scenario_exercises_every_report() -> None:
    # A scenario too thin to tell right from wrong would pass anything.
    e = EXPECTED
    assert e["monthly"]["visits_walk_in"] > 0
    assert e["monthly"]["visits_reserved"] > 0
    assert set(e["monthly"]["new_revenue"]) == {"KRW", "USD"}
    assert all(e["losses"]["by_level"][level] > 0 for level in ("1", "2", "3"))
    assert e["walk_ins"]["below_8"] > 0
    assert 0 < e["walk_ins"]["contact_kept"] < e["walk_ins"]["walk_in_leads"]
    assert e["speed"]["open_leads"] > 0
    assert e["speed"]["forgotten_leads"] > 0
    assert e["nurture"]
    assert e["monthly_previous"]["inquiries"] > 0


def test_monthly_sales_report(reports: dict[str, Any]) -> None:
    figures = reports["monthly"]["figures"]
    for name, value in EXPECTED["monthly"].items():
        assert figures[name] == value, name
    for name, value in EXPECTED["monthly_previous"].items():
        assert figures["previous"][name] == value, name
    table = rows(reports["monthly"], "figures", "figure")
    phone = EXPECTED["monthly"]["phone_inquiries"]
    before = EXPECTED["monthly_previous"]["phone_inquiries"]
    assert table["phone_inquiries"]["change"] == phone - before
    assert table["new_revenue USD"]["this_period"] == EXPECTED["monthly"]["new_revenue"]["USD"]


def test_channel_and_source_analysis(reports: dict[str, Any]) -> None:
    by_channel = rows(reports["channels"], "channels", "channel")
    for channel in CHANNELS:
        want = EXPECTED["channels"][channel]
        got = by_channel[channel]
        for name, value in want.items():
            assert got[name] == value, (channel, name)
    by_source = rows(reports["channels"], "sources", "source")
    want = EXPECTED["channels"]["ad"]["leads_received"]
    assert by_source["instagram"]["leads_received"] == want


def test_campaign_report(reports: dict[str, Any]) -> None:
    by_campaign = rows(reports["campaigns"], "campaigns", "campaign")
    assert set(by_campaign) == set(EXPECTED["campaigns"])
    for campaign, want in EXPECTED["campaigns"].items():
        for name, value in want.items():
            assert by_campaign[campaign][name] == value, (campaign, name)
    assert by_campaign["u-flyers"]["cost_currency"] == "KRW"


def test_per_rep_funnel(reports: dict[str, Any]) -> None:
    by_rep = rows(reports["reps"], "reps", "rep")
    assert set(by_rep) == set(SCENARIO.reps)
    for rep, want in EXPECTED["reps"].items():
        for name, value in want.items():
            assert by_rep[rep][name] == value, (rep, name)


def test_speed_to_lead(reports: dict[str, Any]) -> None:
    speed = reports["speed"]
    want = EXPECTED["speed"]
    for name in ("first_contacts", "within_5m", "within_1h", "sla_breaches", "open_leads"):
        assert speed["figures"][name] == want[name], name
    assert speed["figures"]["forgotten_leads"] == want["forgotten_leads"]
    distribution = {r["bucket"]: r["leads"] for r in speed["tables"]["distribution"]["rows"]}
    assert {k: v for k, v in distribution.items() if v} == want["distribution"]
    pools = {r["pool"]: r["sla_breaches"] for r in speed["tables"]["by_pool"]["rows"]}
    assert {k: v for k, v in pools.items() if v} == want["sla_breaches_by_pool"]
    aging = speed["tables"]["aging"]["rows"]
    assert sum(r["open_leads"] for r in aging) == want["open_leads"]


def test_losses(reports: dict[str, Any]) -> None:
    losses = reports["losses"]
    assert losses["figures"]["losses"] == EXPECTED["losses"]["total"]
    by_level = {r["level"]: r["losses"] for r in losses["tables"]["by_level"]["rows"]}
    assert by_level == EXPECTED["losses"]["by_level"]
    reasons = {
        (r["level"], r["reason"]): r["losses"] for r in losses["tables"]["by_reason"]["rows"]
    }
    assert reasons[("2", "joined another gym")] == EXPECTED["losses"]["by_level"]["2"]


def test_walk_in_retention_and_satisfaction(reports: dict[str, Any]) -> None:
    figures = reports["walk-ins"]["figures"]
    want = EXPECTED["walk_ins"]
    for name in (
        "walk_in_leads",
        "contact_kept",
        "retention_rate",
        "satisfaction_responses",
        "satisfaction_average",
        "below_8",
        "below_8_share",
    ):
        assert figures[name] == want[name], name
    assert figures["retention_target"] == 0.95
    assert figures["meets_target"] is (want["retention_rate"] >= 0.95)
    scores = {
        r["score"]: r["responses"] for r in reports["walk-ins"]["tables"]["satisfaction"]["rows"]
    }
    assert {k: v for k, v in scores.items() if v} == want["distribution"]


def test_nurture_performance(reports: dict[str, Any]) -> None:
    got = {
        (r["sequence"], r["step"]): {
            k: r[k]
            for k in (
                "sent",
                "delivered",
                "opened",
                "clicked",
                "replied",
                "opted_out",
                "requalified",
            )
            if r[k]
        }
        for r in reports["nurture"]["tables"]["steps"]["rows"]
    }
    assert got == EXPECTED["nurture"]
    enrolled = {
        r["sequence"]: r["enrolled"] for r in reports["nurture"]["tables"]["enrolled"]["rows"]
    }
    assert enrolled == EXPECTED["enrolled"]


def test_funnel_and_forecast(reports: dict[str, Any]) -> None:
    forecast = reports["forecast"]
    funnel = {r["stage"]: r["leads"] for r in forecast["tables"]["funnel"]["rows"]}
    assert funnel == EXPECTED["forecast"]["reached"]
    pipeline = {r["stage"]: r["open_leads"] for r in forecast["tables"]["pipeline"]["rows"]}
    assert {k: v for k, v in pipeline.items() if v} == EXPECTED["forecast"]["pipeline"]
    assert (
        forecast["figures"]["expected_conversions"] == EXPECTED["forecast"]["expected_conversions"]
    )
    assert any("method" in note for note in forecast["notes"])


def test_test_leads_are_kept_out(reports: dict[str, Any]) -> None:
    # The script has one test lead; its channel would otherwise show one more lead.
    assert any(lead.is_test for lead in SCENARIO.leads)
    assert reports["summary"]["figures"]["leads_received"] == EXPECTED["monthly"]["new_leads"]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_reports_do_not_depend_on_the_order_topics_are_read_in(
    reports: dict[str, Any], seed: int
) -> None:
    mixed = await all_reports(await recorded(interleaved(SCENARIO.events(), seed), batch=41))
    assert mixed == reports


async def test_a_rebuild_gives_the_same_reports(reports: dict[str, Any]) -> None:
    store = await recorded(interleaved(SCENARIO.events(), 9))
    await RebuildRollups(store, clock=lambda: NOW, chunk=50)()
    assert await all_reports(store) == reports


async def test_filters_narrow_every_report(reports: dict[str, Any]) -> None:
    store = await recorded(SCENARIO.events())
    rita = "u-rita"
    filtered = await all_reports(store, rep=rita)
    (row,) = filtered["reps"]["tables"]["reps"]["rows"]
    assert row == rows(reports["reps"], "reps", "rep")[rita]
    north = await all_reports(store, pool="u-north")
    want = sum(1 for lead in SCENARIO.leads if lead.pool == "u-north" and not lead.is_test)
    # Leads of the month routed to the north pool (never-assigned leads have no pool).
    assigned = sum(
        1 for lead in SCENARIO.leads if lead.pool == "u-north" and lead.rep and not lead.is_test
    )
    assert north["summary"]["figures"]["leads_received"] == assigned
    assert want >= assigned
    ads = await all_reports(store, channel="ad")
    assert ads["monthly"]["figures"]["online_inquiries"] == EXPECTED["channels"]["ad"]["inquiries"]
