"""Routing and lifecycle decisions of assignment, on plain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.assignment.rules import (
    AwaitedLead,
    BatchOutcome,
    KnownLead,
    LastAssignment,
    Lead,
    LeadStatus,
    Pool,
    PoolMatch,
    Rep,
    RoutingConfig,
    TransitionRefusedError,
    choose_pool,
    choose_rep,
    ensure_returnable,
    lose_lead,
    pool_members,
    reps_who_may_be_dealt,
    return_to_pool,
    route_in_pool,
    status_after_loss,
    take_in_batch,
)
from shared.events import (
    Attribution,
    Contact,
    Event,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
    LossLevel,
    Profile,
)

pytestmark = pytest.mark.unit

START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def reps_named(
    *rep_ids: str, away: tuple[str, ...] = (), inactive: tuple[str, ...] = ()
) -> dict[str, Rep]:
    return {
        rep_id: Rep(rep_id, rep_id.title(), active=rep_id not in inactive, away=rep_id in away)
        for rep_id in rep_ids
    }


def lasts(*turns: tuple[str, int]) -> dict[str, LastAssignment]:
    return {
        rep_id: LastAssignment(rep_id, turn, START + timedelta(minutes=turn), "p")
        for rep_id, turn in turns
    }


def received(lead_id: str, region: str = "west") -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead_id,
        occurred_at=START,
        contact=Contact(name="Dana Kim", phone="+14155550100"),
        attribution=Attribution(source="website", channel="web_form"),
        profile=Profile(region=region),
        message="call me",
    )


def merged(lead_id: str, email: str, minutes: int = 1) -> LeadMergedV1:
    return LeadMergedV1(
        lead_id=lead_id,
        occurred_at=START + timedelta(minutes=minutes),
        contact=Contact(name="Dana Kim", email=email),
        attribution=Attribution(source="desk", channel="phone"),
        matched_on="phone",
    )


WEST = Pool("west", "West", rep_ids=("ana", "ben"), match=PoolMatch(region="west"))
CONFIG = RoutingConfig(reps=reps_named("ana", "ben"), pools=(WEST,))


# --- choose_pool ---------------------------------------------------------------------


def test_highest_priority_matching_pool_wins() -> None:
    fitness = Pool("fitness", "Gyms", match=PoolMatch(industry="fitness"), priority=1)
    west_fitness = Pool(
        "west-fitness", "West gyms", match=PoolMatch(industry="fitness", region="west"), priority=5
    )
    profile = Profile(industry="fitness", region="west")
    assert choose_pool(profile, [fitness, west_fitness]) == west_fitness
    assert choose_pool(Profile(industry="fitness", region="east"), [fitness, west_fitness]) == (
        fitness
    )


def test_every_criterion_must_hold() -> None:
    pool = Pool(
        "mid-market",
        "Mid-market SaaS",
        match=PoolMatch(industry="saas", country="KR", min_company_size=50, max_company_size=500),
    )
    assert choose_pool(Profile(industry="SaaS", country="kr", company_size=50), [pool]) == pool
    assert choose_pool(Profile(industry="saas", country="KR", company_size=501), [pool]) is None
    assert choose_pool(Profile(industry="saas", country="KR"), [pool]) is None
    assert choose_pool(Profile(industry="retail", country="KR", company_size=100), [pool]) is None


def test_unmatched_lead_goes_to_the_default_pool() -> None:
    west = Pool("west", "West", match=PoolMatch(region="west"), priority=9)
    default = Pool("everyone", "Everyone else", match=PoolMatch(region="nowhere"), is_default=True)
    assert choose_pool(Profile(region="east"), [west, default]) == default


def test_no_matching_pool_and_no_default_means_no_pool() -> None:
    west = Pool("west", "West", match=PoolMatch(region="west"))
    assert choose_pool(Profile(region="east"), [west]) is None
    assert choose_pool(Profile(), []) is None


def test_equal_priorities_are_settled_by_pool_id() -> None:
    b = Pool("b", "B", priority=3)
    a = Pool("a", "A", priority=3)
    assert choose_pool(Profile(), [b, a]) == a


# --- choose_rep ----------------------------------------------------------------------


def test_reps_who_never_had_a_lead_go_first_in_pool_order() -> None:
    pool = Pool("p", "P", rep_ids=("cho", "ana", "ben"))
    rep = choose_rep(pool, reps_named("ana", "ben", "cho"), lasts(("cho", 4)), now=START)
    assert rep is not None
    assert rep.rep_id == "ana"


def test_the_rep_whose_last_lead_from_any_pool_is_oldest_goes_next() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben", "cho"))
    # Ben's last lead (turn 2) may have come from another pool: it counts the same.
    rep = choose_rep(
        pool, reps_named("ana", "ben", "cho"), lasts(("ana", 5), ("ben", 2), ("cho", 3)), now=START
    )
    assert rep is not None
    assert rep.rep_id == "ben"


def test_rep_who_is_away_or_inactive_is_skipped() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben", "cho"))
    reps = reps_named("ana", "ben", "cho", away=("ana",), inactive=("ben",))
    rep = choose_rep(pool, reps, lasts(("cho", 9)), now=START)
    assert rep is not None
    assert rep.rep_id == "cho"


def test_returning_rep_is_passed_over() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben"))
    rep = choose_rep(pool, reps_named("ana", "ben"), {}, passing_over={"ana"}, now=START)
    assert rep is not None
    assert rep.rep_id == "ben"
    assert choose_rep(pool, reps_named("ana"), {}, passing_over={"ana"}, now=START) is None


def test_a_member_who_is_no_rep_is_never_dealt() -> None:
    assert choose_rep(Pool("p", "P", rep_ids=("gone",)), reps_named("ana"), {}, now=START) is None
    assert choose_rep(Pool("empty", "Empty"), {}, {}, now=START) is None


def test_routing_in_a_pool_takes_the_turn_for_the_rep() -> None:
    routing = route_in_pool(WEST, CONFIG.reps, lasts(("ana", 1)), turn=8, now=START)
    assert routing.rep == CONFIG.reps["ben"]
    assert routing.status is LeadStatus.ASSIGNED
    assert routing.taken is not None
    assert (routing.taken.rep_id, routing.taken.turn, routing.taken.open) == ("ben", 8, 1)


def test_nobody_available_or_no_pool_leaves_the_lead_unassigned() -> None:
    away = reps_named("ana", "ben", away=("ana", "ben"))
    nobody = route_in_pool(WEST, away, {}, turn=1, now=START)
    assert (nobody.pool, nobody.rep, nobody.taken, nobody.status) == (
        WEST,
        None,
        None,
        LeadStatus.NEW,
    )
    nowhere = route_in_pool(None, CONFIG.reps, {}, turn=1, now=START)
    assert (nowhere.pool, nowhere.rep, nowhere.status) == (None, None, LeadStatus.NEW)


def test_only_available_members_of_the_batchs_pools_may_be_dealt() -> None:
    east = Pool("east", "East", rep_ids=("cho", "dee"), match=PoolMatch(region="east"))
    config = RoutingConfig(reps_named("ana", "ben", "cho", "dee", away=("dee",)), (WEST, east))
    events = [received("l1", "east"), merged("l2", "x@example.com"), received("l3", "north")]
    # Everyone who might be dealt one, away or not: their state is read to decide.
    assert reps_who_may_be_dealt(events, config) == {"cho", "dee"}


def test_pool_members_are_listed_in_the_order_they_are_dealt_next() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben", "cho", "dee"))
    reps = reps_named("ana", "ben", "cho", "dee", away=("ben",))
    members = pool_members(pool, reps, lasts(("ana", 3), ("ben", 1), ("cho", 2)))
    assert [(m.rep_id, m.available) for m in members] == [
        ("dee", True),
        ("cho", True),
        ("ana", True),
        ("ben", False),
    ]
    assert members[0].last_assigned_at is None
    assert members[1].last_assigned_at == START + timedelta(minutes=2)


# --- a batch of intake's events ------------------------------------------------------


def take(events: list[Event], known: dict[str, KnownLead] | None = None) -> BatchOutcome:
    return take_in_batch(events, known or {}, CONFIG, {}, first_turn=11, now=START)


def test_a_batch_deals_its_leads_in_order_on_consecutive_turns() -> None:
    outcome = take([received("l1"), received("l2"), received("l3", "north"), received("l4")])
    assert [(lead.lead_id, lead.rep_id) for lead in outcome.assigned] == [
        ("l1", "ana"),
        ("l2", "ben"),
        ("l4", "ana"),
    ]
    assert [lead.lead_id for lead in outcome.unassigned] == ["l3"]
    assert {(t.rep_id, t.turn, t.open, t.day_count) for t in outcome.last_assignments} == {
        ("ana", 13, 2, 2),
        ("ben", 12, 1, 1),
    }
    first = outcome.assigned[0]
    assert (first.status, first.pool_id, first.assigned_at, first.inquiries) == (
        LeadStatus.ASSIGNED,
        "west",
        START,
        1,
    )
    assert first.message == "call me"


def test_a_lead_received_again_keeps_its_first_routing() -> None:
    known: dict[str, KnownLead] = {"l1": take([received("l1")]).assigned[0]}
    outcome = take([received("l1"), received("l2")], known)
    assert outcome.received_twice == ("l1",)
    assert [lead.lead_id for lead in outcome.leads] == ["l2"]


def test_repeat_inquiries_before_the_lead_are_folded_into_it() -> None:
    outcome = take([merged("l1", "new@example.com"), merged("l1", "newest@example.com", 2)])
    [awaited] = outcome.leads
    assert awaited == AwaitedLead(
        "l1",
        Contact(name="Dana Kim", email="newest@example.com"),
        inquiries=2,
        last_inquiry_at=START + timedelta(minutes=2),
        updated_at=START,
    )
    later = take([received("l1")], {"l1": awaited})
    [lead] = later.leads
    assert isinstance(lead, Lead)
    assert (lead.status, lead.inquiries, lead.contact.email) == (
        LeadStatus.ASSIGNED,
        3,
        "newest@example.com",
    )
    assert lead.last_inquiry_at == START + timedelta(minutes=2)


def test_a_repeat_inquiry_after_the_lead_counts_and_keeps_the_rep() -> None:
    outcome = take([received("l1"), merged("l1", "dana@example.com")])
    [lead] = outcome.leads
    assert isinstance(lead, Lead)
    assert (lead.rep_id, lead.inquiries, lead.contact.email) == ("ana", 2, "dana@example.com")


def test_erasure_drops_personal_data_even_when_read_before_the_lead() -> None:
    erased_first = take([LeadErasedV1(lead_id="l1"), received("l1")])
    [lead] = erased_first.leads
    assert isinstance(lead, Lead)
    assert (lead.contact, lead.message, lead.erased_at) == (Contact(), None, START)
    assert lead.rep_id == "ana"  # still routed: its anonymous history is kept

    erased_after = take([received("l2"), LeadErasedV1(lead_id="l2")])
    [lead] = erased_after.leads
    assert isinstance(lead, Lead)
    assert (lead.contact, lead.message, lead.lost_reason) == (Contact(), None, None)


def test_an_event_assignment_does_not_take_in_is_refused() -> None:
    with pytest.raises(TypeError, match="lead-lost"):
        take([LeadLostV1(lead_id="l1", level=1)])


# --- lifecycle -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [(1, LeadStatus.LOST), (2, LeadStatus.NURTURING), (3, LeadStatus.NURTURING)],
)
def test_loss_level_decides_lost_or_nurturing(level: LossLevel, expected: LeadStatus) -> None:
    assert status_after_loss(LeadStatus.ASSIGNED, level) is expected


@pytest.mark.parametrize(
    "current",
    [LeadStatus.NEW, LeadStatus.CONTACTED, LeadStatus.VISITED, LeadStatus.REQUALIFIED],
)
def test_open_lead_can_be_lost(current: LeadStatus) -> None:
    assert status_after_loss(current, 3) is LeadStatus.NURTURING


@pytest.mark.parametrize("current", [LeadStatus.LOST, LeadStatus.NURTURING, LeadStatus.CONVERTED])
def test_closed_lead_cannot_be_lost_again(current: LeadStatus) -> None:
    with pytest.raises(TransitionRefusedError, match=f"'{current}'"):
        status_after_loss(current, 1)


def test_a_lost_lead_keeps_its_level_and_reason() -> None:
    lead = take([received("l1")]).assigned[0]
    lost = lose_lead(lead, 2, "bought elsewhere", START + timedelta(hours=1))
    assert (lost.status, lost.lost_level, lost.lost_reason, lost.rep_id) == (
        LeadStatus.NURTURING,
        2,
        "bought elsewhere",
        "ana",
    )


def test_a_returned_lead_goes_to_a_rep_who_has_not_returned_it() -> None:
    lead = take([received("l1")]).assigned[0]
    later = START + timedelta(hours=1)
    returned, routing = return_to_pool(lead, WEST, CONFIG.reps, {}, turn=20, now=later)
    assert (returned.rep_id, returned.returned_by, returned.assigned_at) == ("ben", ("ana",), later)
    assert routing.taken is not None
    assert (routing.taken.rep_id, routing.taken.turn, routing.taken.assigned_at) == (
        "ben",
        20,
        later,
    )
    again, routing = return_to_pool(returned, WEST, CONFIG.reps, {}, turn=21, now=later)
    assert (again.status, again.rep_id, again.returned_by) == (LeadStatus.NEW, None, ("ana", "ben"))
    assert routing.taken is None


def test_only_a_lead_held_and_not_yet_met_can_be_returned() -> None:
    ensure_returnable(LeadStatus.ASSIGNED)
    ensure_returnable(LeadStatus.CONTACTED)
    for current in (LeadStatus.NEW, LeadStatus.VISIT_SCHEDULED, LeadStatus.LOST):
        with pytest.raises(TransitionRefusedError):
            ensure_returnable(current)
