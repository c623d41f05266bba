"""Routing in working time and the rep's and manager's workflow, with timers, on the
in-memory store: what a rep or manager would see on the lead and in the published events."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pytest

from leadflow.chassis.duework import DueWorkRunner
from services.assignment.rules import (
    Actor,
    Conversion,
    LeadStatus,
    NotOwnerError,
    Pool,
    PoolMatch,
    RefusedError,
    Rep,
    RoutingSettings,
    Strategy,
    TerritoryRule,
    TransitionRefusedError,
)
from services.assignment.shifts import AwayPeriod, Shift, WorkingTime, add_working_time
from services.assignment.store import ConfigurationInTransaction
from services.assignment.timers import TIMER_KINDS, FireTimers
from services.assignment.usecases import ManageTeam, RouteLeads, configuration_cache
from services.assignment.workflow import WorkLeads
from shared.events import (
    ActivityLoggedV1,
    Attribution,
    Contact,
    Event,
    FitScore,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadMergedV1,
    LeadQueuedV1,
    LeadReceivedV1,
    LeadRequalifiedV1,
    LeadRoutedToNurtureV1,
    OpportunityOpenedV1,
    Profile,
    SatisfactionRecordedV1,
    SlaBreachedV1,
)
from tests.fakes.assignment import InMemoryAssignmentStore

pytestmark = pytest.mark.unit

# A Monday, 08:00 UTC.
MONDAY = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
NINE_TO_SIX = tuple(Shift(day, time(9), time(18)) for day in range(5))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class App:
    store: InMemoryAssignmentStore
    clock: Clock
    route: RouteLeads
    team: ManageTeam
    leads: WorkLeads
    timers: DueWorkRunner

    def published(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.store.ledger.outbox if isinstance(e, kind)]

    async def fire_due(self) -> int:
        fired = 0
        while count := await self.timers.run_once():
            fired += count
        return fired


@pytest.fixture
def app() -> App:
    store = InMemoryAssignmentStore()
    clock = Clock(MONDAY)
    cache = configuration_cache(store, max_age_s=0)
    leads = WorkLeads(store, cache)
    runner = DueWorkRunner(
        store.due,
        kinds=TIMER_KINDS,
        fire=FireTimers(store, cache, leads, clock=clock),
        clock=clock,
    )
    return App(
        store,
        clock,
        RouteLeads(store, cache, clock=clock),
        ManageTeam(store, cache, clock=clock),
        leads,
        runner,
    )


async def setup(
    app: App,
    *reps: Rep,
    pools: tuple[Pool, ...] = (),
    rules: tuple[TerritoryRule, ...] = (),
    settings: RoutingSettings | None = None,
) -> None:
    async def add(team: ConfigurationInTransaction) -> None:
        for rep in reps:
            await team.add_rep(rep, MONDAY)
        for pool in pools:
            await team.add_pool(pool, MONDAY)
        for rule in rules:
            await team.add_rule(rule, MONDAY)
        if settings is not None:
            await team.save_settings(settings, MONDAY)

    await app.store.change_configuration(add)


_serial = iter(range(1_000_000))


def received(region: str = "west", **profile: object) -> LeadReceivedV1:
    grade = profile.pop("grade", None)
    return LeadReceivedV1(
        lead_id=f"lead-{next(_serial)}",
        occurred_at=MONDAY,
        contact=Contact(name="Dana Kim", phone="+14155550100"),
        attribution=Attribution(source="website", channel="web_form"),
        profile=Profile.model_validate({"region": region, **profile}),
        fit=FitScore.model_validate({"score": 50, "grade": grade}) if grade else None,
    )


def west(*rep_ids: str, **fields: object) -> Pool:
    return Pool("west", "West", rep_ids=rep_ids, match=PoolMatch(region="west"), **fields)  # type: ignore[arg-type]


async def lead_of(app: App, event: LeadReceivedV1) -> object:
    lead = await app.store.get_lead(event.lead_id)
    assert lead is not None
    return lead


# --- working time -----------------------------------------------------------------------


def test_sla_counts_only_working_time() -> None:
    working = WorkingTime(timezone="Asia/Seoul", shifts=NINE_TO_SIX)
    # Friday 17:30 in Seoul (08:30 UTC) + 60 working minutes = Monday 09:30 Seoul.
    friday = datetime(2026, 3, 6, 8, 30, tzinfo=UTC)
    due = add_working_time(working, friday, timedelta(minutes=60))
    assert due == datetime(2026, 3, 9, 0, 30, tzinfo=UTC)


def test_public_holidays_and_away_periods_are_not_working_time() -> None:
    # 2026-03-02 is a substitute holiday in Korea (for 3/1 on a Sunday).
    working = WorkingTime(timezone="Asia/Seoul", shifts=NINE_TO_SIX, holiday_country="KR")
    due = add_working_time(working, datetime(2026, 3, 2, 0, 0, tzinfo=UTC), timedelta(hours=1))
    assert due == datetime(2026, 3, 3, 1, 0, tzinfo=UTC)  # Tuesday 10:00 Seoul
    away = WorkingTime(away=(AwayPeriod(MONDAY, MONDAY + timedelta(hours=2)),))
    assert add_working_time(away, MONDAY, timedelta(minutes=30)) == MONDAY + timedelta(
        hours=2, minutes=30
    )


async def test_rep_off_shift_is_skipped_and_the_lead_waits_for_the_first_shift(app: App) -> None:
    # Ana works 9-18 in Seoul (already off at 17:00 UTC = 02:00 Seoul), Ben 9-18 in New York.
    app.clock.now = MONDAY.replace(hour=17)
    ana = Rep("ana", "Ana", timezone="Asia/Seoul", working_hours=NINE_TO_SIX)
    ben = Rep("ben", "Ben", timezone="America/New_York", working_hours=NINE_TO_SIX)
    await setup(app, ana, ben, pools=(west("ana", "ben"),))
    event = received()
    await app.route([event])
    lead = await app.store.get_lead(event.lead_id)
    assert lead is not None
    assert (lead.status, lead.rep_id) == (LeadStatus.ASSIGNED, "ben")
    assert lead.why is not None and lead.why.skipped == {"ana": "off shift"}

    app.clock.now = MONDAY.replace(hour=23)  # Ben off (18:00 NY), Ana not yet on (08:00 Seoul)
    later = received()
    await app.route([later])
    waiting = await app.store.get_lead(later.lead_id)
    assert waiting is not None
    assert (waiting.status, waiting.rep_id, waiting.pool_id) == (LeadStatus.NEW, None, "west")
    assert waiting.queued_at is not None
    [queued] = [e for e in app.published(LeadQueuedV1) if e.lead_id == later.lead_id]
    assert isinstance(queued, LeadQueuedV1) and queued.why is not None
    assert set(queued.why.skipped) == {"ana", "ben"}

    assert await app.fire_due() == 0  # nothing is due before Ana's shift
    app.clock.now = datetime(2026, 3, 3, 0, 0, 1, tzinfo=UTC)  # 09:00:01 Seoul
    assert await app.fire_due() == 1
    dealt = await app.store.get_lead(later.lead_id)
    assert dealt is not None
    assert (dealt.status, dealt.rep_id, dealt.queued_at) == (LeadStatus.ASSIGNED, "ana", None)


async def test_inactive_and_away_reps_never_receive_and_nobody_means_the_queue(app: App) -> None:
    await setup(
        app,
        Rep("ana", "Ana", active=False),
        Rep("ben", "Ben", away=True),
        pools=(west("ana", "ben"),),
    )
    event = received()
    await app.route([event])
    lead = await app.store.get_lead(event.lead_id)
    assert lead is not None
    assert (lead.status, lead.rep_id) == (LeadStatus.NEW, None)
    assert lead.why is not None and lead.why.skipped == {"ana": "inactive", "ben": "away"}
    # Ben comes back: the queue is dealt at once, to him, not to the inactive Ana.
    await app.team.change_rep("ben", {"away": False}, app.clock.now)
    await app.fire_due()
    lead = await app.store.get_lead(event.lead_id)
    assert lead is not None and lead.rep_id == "ben"


async def test_full_rep_is_skipped_and_a_waiting_lead_is_dealt_when_capacity_frees(
    app: App,
) -> None:
    await setup(app, Rep("ana", "Ana", max_open=1), pools=(west("ana"),))
    first, second = received(), received()
    await app.route([first, second])
    waiting = await app.store.get_lead(second.lead_id)
    assert waiting is not None and waiting.status is LeadStatus.NEW
    assert waiting.why is not None and waiting.why.skipped == {"ana": "at capacity"}

    await app.leads.mark_lost(first.lead_id, 1, "wrong number", None, app.clock.now)
    await app.fire_due()
    dealt = await app.store.get_lead(second.lead_id)
    assert dealt is not None and (dealt.status, dealt.rep_id) == (LeadStatus.ASSIGNED, "ana")


async def test_daily_quota_counts_the_reps_own_day(app: App) -> None:
    await setup(
        app,
        Rep("ana", "Ana", daily_quota=2),
        Rep("ben", "Ben"),
        pools=(west("ana", "ben", strategy=Strategy.LEAST_OPEN),),
    )
    events = [received() for _ in range(6)]
    await app.route(events)
    reps = Counter([lead.rep_id for e in events if (lead := await app.store.get_lead(e.lead_id))])
    assert reps == {"ana": 2, "ben": 4}


# --- strategies --------------------------------------------------------------------------


async def test_weighted_pool_shares_in_proportion(app: App) -> None:
    await setup(
        app,
        Rep("ana", "Ana"),
        Rep("ben", "Ben"),
        pools=(west("ana", "ben", strategy=Strategy.WEIGHTED, weights={"ana": 3, "ben": 1}),),
    )
    events = [received() for _ in range(40)]
    for start in range(0, 40, 7):
        await app.route(events[start : start + 7])
    reps = Counter([lead.rep_id for e in events if (lead := await app.store.get_lead(e.lead_id))])
    assert reps == {"ana": 30, "ben": 10}


async def test_skills_match_first(app: App) -> None:
    await setup(
        app,
        Rep("ana", "Ana", languages=("en",)),
        Rep("ben", "Ben", languages=("ko",), product_lines=("pt",)),
        pools=(west("ana", "ben", strategy=Strategy.SKILLS),),
    )
    korean = received(language="ko", product_line="pt")
    await app.route([korean])
    lead = await app.store.get_lead(korean.lead_id)
    assert lead is not None and lead.rep_id == "ben"


async def test_territory_rule_wins_over_pool_criteria_and_low_fit_goes_to_nurture(app: App) -> None:
    seoul = Pool("seoul", "Seoul", rep_ids=("cho",))
    await setup(
        app,
        Rep("ana", "Ana"),
        Rep("cho", "Cho"),
        pools=(west("ana"), seoul),
        rules=(
            TerritoryRule(
                "kr-postal",
                priority=10,
                countries=("KR",),
                postal_prefixes=("06",),
                pool_id="seoul",
            ),
            TerritoryRule("vip", priority=20, fit_grades=("A",), rep_id="ana"),
        ),
        settings=RoutingSettings(nurture_below="C"),
    )
    by_postal = received(country="kr", postal_code="06236")
    vip = received(country="KR", postal_code="06236", grade="A")
    weak = received(grade="D")
    await app.route([by_postal, vip, weak])
    lead = await app.store.get_lead(by_postal.lead_id)
    assert lead is not None and (lead.rep_id, lead.pool_id) == ("cho", "seoul")
    assert lead.why is not None and lead.why.rule_id == "kr-postal"
    lead = await app.store.get_lead(vip.lead_id)
    assert lead is not None and lead.rep_id == "ana"
    assert lead.why is not None and (lead.why.rule_id, lead.why.strategy) == (
        "vip",
        "territory_rule",
    )
    lead = await app.store.get_lead(weak.lead_id)
    assert lead is not None and (lead.status, lead.rep_id) == (LeadStatus.NURTURING, None)
    [nurtured] = app.published(LeadRoutedToNurtureV1)
    assert nurtured.lead_id == weak.lead_id

    answer = await app.team.dry_run(
        Profile(country="KR", postal_code="06100"),
        Attribution(source="x", channel="web_form"),
        None,
    )
    assert (
        answer.rep.rep_id if answer.rep else None,
        answer.why.rule_id if answer.why else None,
    ) == ("cho", "kr-postal")


async def test_requalified_lead_goes_back_to_its_previous_owner(app: App) -> None:
    await setup(app, Rep("ana", "Ana"), Rep("ben", "Ben"), pools=(west("ana", "ben"),))
    event = received()
    await app.route([event])
    await app.leads.mark_lost(event.lead_id, 3, "not now", None, app.clock.now)
    await app.route([received()])  # Ben's turn next by round robin
    await app.route(
        [LeadRequalifiedV1(lead_id=event.lead_id, score=80, reason="hot", previous_rep_id="ana")]
    )
    lead = await app.store.get_lead(event.lead_id)
    assert lead is not None and (lead.status, lead.rep_id) == (LeadStatus.ASSIGNED, "ana")
    back = [
        e
        for e in app.published(LeadAssignedV1)
        if isinstance(e, LeadAssignedV1) and e.lead_id == event.lead_id
    ]
    assert [(e.how, e.rep_id) for e in back] == [("routed", "ana"), ("requalified", "ana")]


# --- the rep's work ----------------------------------------------------------------------


async def test_rejected_lead_goes_to_another_rep_never_back_to_a_rejecter(app: App) -> None:
    await setup(app, Rep("ana", "Ana"), Rep("ben", "Ben"), pools=(west("ana", "ben"),))
    event = received()
    await app.route([event])
    lead = await app.leads.reject(event.lead_id, "not my product", "ana", app.clock.now)
    assert (lead.rep_id, lead.rejected_by) == ("ben", ("ana",))
    lead = await app.leads.reject(event.lead_id, "me neither", "ben", app.clock.now)
    assert (lead.status, lead.rep_id) == (LeadStatus.NEW, None)
    assert lead.why is not None and lead.why.skipped == {
        "ana": "rejected this lead",
        "ben": "rejected this lead",
    }
    with pytest.raises(NotOwnerError):
        await app.leads.reject(event.lead_id, "again", "ana", app.clock.now)


async def test_first_contact_stops_the_sla_and_a_missed_sla_reassigns(app: App) -> None:
    await setup(
        app,
        Rep("ana", "Ana", manager_id="mia"),
        Rep("ben", "Ben"),
        Rep("mia", "Mia"),
        pools=(west("ana", "ben", sla_minutes=30, sla_reassign=True),),
    )
    kept, missed = received(), received()
    await app.route([kept])
    await app.route([missed])
    assert (await app.store.get_lead(missed.lead_id)).rep_id == "ben"  # type: ignore[union-attr]
    app.clock.now += timedelta(minutes=10)
    contacted = await app.leads.log_activity(
        kept.lead_id, "call", "reached", None, "ana", app.clock.now
    )
    assert (contacted.status, contacted.first_contact_at) == (LeadStatus.CONTACTED, app.clock.now)
    [logged] = app.published(ActivityLoggedV1)
    assert isinstance(logged, ActivityLoggedV1) and logged.first_contact is True

    app.clock.now = MONDAY + timedelta(minutes=31)
    assert await app.fire_due() >= 1
    [breach] = app.published(SlaBreachedV1)
    assert isinstance(breach, SlaBreachedV1)
    assert (breach.lead_id, breach.rep_id, breach.reassigned) == (missed.lead_id, "ben", True)
    moved = await app.store.get_lead(missed.lead_id)
    assert moved is not None and moved.rep_id == "ana"
    # Fired once: nothing more is due, and the kept lead never breached.
    assert await app.fire_due() == 0
    assert len(app.published(SlaBreachedV1)) == 1


async def test_visit_checked_in_gets_a_next_day_callback_and_a_low_score_alerts_the_manager(
    app: App,
) -> None:
    await setup(app, Rep("mia", "Mia"), Rep("ana", "Ana", manager_id="mia"), pools=(west("ana"),))
    event = received()
    await app.route([event])
    booked = await app.leads.book_visit(
        event.lead_id, MONDAY + timedelta(days=1), "ana", app.clock.now
    )
    [visit] = booked.visits
    assert booked.status is LeadStatus.VISIT_SCHEDULED
    visited = await app.leads.check_in(event.lead_id, visit.visit_id, "ana", app.clock.now)
    assert visited.status is LeadStatus.VISITED and visited.visits[0].walk_in is False
    walk_in = await app.leads.check_in(event.lead_id, None, "ana", app.clock.now)
    assert walk_in.visits[-1].walk_in is True

    app.clock.now = MONDAY + timedelta(days=1, hours=3)  # the next day, 11:00 UTC
    await app.fire_due()
    lead = await app.store.get_lead(event.lead_id)
    assert lead is not None and all(v.callback_open for v in lead.visits)
    scored = await app.leads.record_satisfaction(
        event.lead_id, visit.visit_id, 6, "waited long", "ana", app.clock.now
    )
    assert scored.visits[0].satisfaction == 6 and not scored.visits[0].callback_open
    [recorded] = app.published(SatisfactionRecordedV1)
    assert isinstance(recorded, SatisfactionRecordedV1) and recorded.score == 6
    [alert] = [
        e
        for e in app.published(SlaBreachedV1)
        if isinstance(e, SlaBreachedV1) and e.sla == "satisfaction"
    ]
    assert alert.escalated_to == "mia"


async def test_convert_with_an_opportunity_and_a_closed_lead_cannot_be_converted(app: App) -> None:
    await setup(app, Rep("ana", "Ana"), pools=(west("ana"),))
    event = received()
    await app.route([event])
    conversion = Conversion(
        "M-1", 890000, "KRW", "12m", app.clock.now, "opp-1", 1000000, "proposal"
    )
    lead = await app.leads.convert(event.lead_id, conversion, "ana")
    assert lead.status is LeadStatus.CONVERTED
    [won] = app.published(LeadConvertedV1)
    assert isinstance(won, LeadConvertedV1) and (won.revenue, won.currency, won.customer_id) == (
        890000,
        "KRW",
        "M-1",
    )
    [opened] = app.published(OpportunityOpenedV1)
    assert isinstance(opened, OpportunityOpenedV1) and opened.stage == "proposal"
    with pytest.raises(TransitionRefusedError):
        await app.leads.convert(event.lead_id, conversion, "ana")


async def test_overdue_follow_up_reminds_the_rep_then_the_manager(app: App) -> None:
    await setup(
        app,
        Rep("mia", "Mia"),
        Rep("ana", "Ana", manager_id="mia"),
        pools=(west("ana"),),
        settings=RoutingSettings(
            grades={"H": 24}, escalate_after_hours=4, forgotten_after_days=None
        ),
    )
    event = received()
    await app.route([event])
    await app.leads.log_activity(event.lead_id, "call", "no_answer", None, "ana", app.clock.now)
    graded = await app.leads.set_grade(event.lead_id, "H", "ana", app.clock.now)
    assert graded.next_follow_up_at == MONDAY + timedelta(hours=24)
    app.clock.now = MONDAY + timedelta(hours=24, seconds=1)
    await app.fire_due()
    reminders = [e for e in app.published(SlaBreachedV1) if isinstance(e, SlaBreachedV1)]
    assert [(r.sla, r.escalated_to) for r in reminders] == [("follow_up", None)]
    app.clock.now += timedelta(hours=4)
    await app.fire_due()
    reminders = [e for e in app.published(SlaBreachedV1) if isinstance(e, SlaBreachedV1)]
    assert [(r.sla, r.escalated_to) for r in reminders] == [
        ("follow_up", None),
        ("follow_up", "mia"),
    ]


async def test_a_forgotten_lead_reminds_the_rep_then_the_manager_unless_worked_on(
    app: App,
) -> None:
    await setup(
        app,
        Rep("mia", "Mia"),
        Rep("ana", "Ana", manager_id="mia"),
        pools=(west("ana"),),
        settings=RoutingSettings(forgotten_after_days=3, escalate_after_hours=4),
    )
    forgotten, worked_on = received(), received()
    await app.route([forgotten, worked_on])

    def reminders() -> set[tuple[str, str, str | None]]:
        return {
            (e.lead_id, e.sla, e.escalated_to)
            for e in app.published(SlaBreachedV1)
            if isinstance(e, SlaBreachedV1)
        }

    app.clock.now = MONDAY + timedelta(days=3, seconds=1)
    await app.fire_due()
    assert reminders() == {
        (forgotten.lead_id, "forgotten", None),
        (worked_on.lead_id, "forgotten", None),
    }
    # The rep works on one of them before the manager would hear of it.
    await app.leads.log_activity(worked_on.lead_id, "call", "reached", None, "ana", app.clock.now)
    app.clock.now += timedelta(hours=4)
    await app.fire_due()
    app.clock.now += timedelta(days=1)
    await app.fire_due()
    assert reminders() == {
        (forgotten.lead_id, "forgotten", None),
        (worked_on.lead_id, "forgotten", None),
        (forgotten.lead_id, "forgotten", "mia"),
    }
    assert len(app.published(SlaBreachedV1)) == 3


# --- the manager's work ------------------------------------------------------------------


async def test_handover_reassigns_every_open_lead_and_keeps_history(app: App) -> None:
    await setup(
        app,
        Rep("mia", "Mia"),
        Rep("ana", "Ana", manager_id="mia"),
        Rep("ben", "Ben", manager_id="mia"),
        Rep("cho", "Cho", manager_id="mia"),
        pools=(west("ana", "ben", "cho"),),
    )
    events = [received() for _ in range(6)]
    await app.route(events)
    await app.team.change_rep("ana", {"active": False}, app.clock.now)
    moved = await app.leads.handover(
        "ana", None, Actor("mia", frozenset({"ana", "ben", "cho"})), app.clock.now
    )
    assert len(moved) == 2
    assert all(lead.rep_id in {"ben", "cho"} for lead in moved)
    # History kept: each lead still shows it was Ana's first.
    assert all(lead.history[0].rep_id == "ana" for lead in moved)
    handed = await app.leads.reassign([events[1].lead_id], "cho", Actor(None), app.clock.now)
    assert handed[0].rep_id == "cho"
    with pytest.raises(RefusedError):
        await app.leads.reassign([events[2].lead_id], "ana", Actor(None), app.clock.now)


async def test_a_rep_may_not_work_another_reps_lead_but_their_manager_may(app: App) -> None:
    await setup(
        app,
        Rep("mia", "Mia"),
        Rep("ana", "Ana", manager_id="mia"),
        Rep("ben", "Ben"),
        pools=(west("ana"),),
    )
    event = received()
    await app.route([event])
    with pytest.raises(NotOwnerError):
        await app.leads.log_activity(event.lead_id, "sms", None, None, "ben", app.clock.now)
    mia = Actor("mia", frozenset({"ana"}))
    joined = await app.leads.join(event.lead_id, mia, app.clock.now)
    assert joined.helpers == ("mia",)
    await app.leads.log_activity(
        event.lead_id, "tm_note", None, "second negotiation", mia, app.clock.now
    )


async def test_claim_from_a_claimable_pool_within_the_limit(app: App) -> None:
    await setup(
        app,
        Rep("ana", "Ana"),
        pools=(west("ana", strategy=Strategy.CLAIM, claimable=True, claim_limit=1),),
    )
    first, second = received(), received()
    await app.route([first, second])
    claimed = await app.leads.claim(first.lead_id, "ana", app.clock.now)
    assert (claimed.status, claimed.rep_id) == (LeadStatus.ASSIGNED, "ana")
    with pytest.raises(RefusedError, match="claim limit"):
        await app.leads.claim(second.lead_id, "ana", app.clock.now)
    with pytest.raises(NotOwnerError):
        await app.leads.claim(second.lead_id, "ben", app.clock.now)


def test_days_off_are_respected() -> None:
    working = WorkingTime(days_off=frozenset({date(2026, 3, 2)}))
    assert add_working_time(working, MONDAY, timedelta(hours=1)) == datetime(
        2026, 3, 3, 1, 0, tzinfo=UTC
    )


async def test_a_queue_waiting_on_a_used_up_quota_is_dealt_the_next_day(app: App) -> None:
    await setup(app, Rep("ana", "Ana", daily_quota=1, timezone="UTC"), pools=(west("ana"),))
    first, second = received(), received()
    await app.route([first, second])
    waiting = await app.store.get_lead(second.lead_id)
    assert waiting is not None and waiting.why is not None
    assert waiting.why.skipped == {"ana": "daily quota reached"}
    app.clock.now = MONDAY.replace(hour=23, minute=59)
    assert await app.fire_due() == 0
    app.clock.now = MONDAY + timedelta(hours=16, seconds=1)  # Tuesday 00:00:01 UTC
    assert await app.fire_due() == 1
    dealt = await app.store.get_lead(second.lead_id)
    assert dealt is not None and dealt.rep_id == "ana"


async def test_a_repeat_inquiry_reopens_a_nurtured_lead_for_its_owner(app: App) -> None:
    await setup(app, Rep("ana", "Ana"), Rep("ben", "Ben"), pools=(west("ana", "ben"),))
    event = received()
    await app.route([event])
    await app.leads.mark_lost(event.lead_id, 2, "bought elsewhere", "ana", app.clock.now)
    repeat = LeadMergedV1(
        lead_id=event.lead_id,
        contact=Contact(name="Dana Kim", phone="+14155550100"),
        attribution=Attribution(source="desk", channel="phone"),
        matched_on="phone",
    )
    await app.route([repeat])
    lead = await app.store.get_lead(event.lead_id)
    assert lead is not None
    assert (lead.status, lead.rep_id, lead.inquiries, lead.lost_level) == (
        LeadStatus.ASSIGNED,
        "ana",
        2,
        None,
    )
    reopened = [e for e in app.published(LeadAssignedV1) if isinstance(e, LeadAssignedV1)]
    assert [(e.how, e.previous_rep_id) for e in reopened] == [("routed", None), ("repeat", "ana")]


async def test_a_rep_added_to_a_weighted_pool_gets_no_burst(app: App) -> None:
    pool = west("ana", "ben", strategy=Strategy.WEIGHTED)
    await setup(app, Rep("ana", "Ana"), Rep("ben", "Ben"), Rep("cho", "Cho"), pools=(pool,))
    await app.route([received() for _ in range(20)])
    await app.team.change_pool("west", {"rep_ids": ("ana", "ben", "cho")}, app.clock.now)
    later = [received() for _ in range(6)]
    await app.route(later)
    reps = [lead.rep_id for e in later if (lead := await app.store.get_lead(e.lead_id))]
    assert Counter(reps) == {"ana": 2, "ben": 2, "cho": 2}
