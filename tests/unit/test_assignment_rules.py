"""Routing and lifecycle decisions of assignment, on plain values."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from services.assignment.rules import (
    LeadStatus,
    Pool,
    PoolMatch,
    Rep,
    TransitionRefusedError,
    choose_pool,
    choose_rep,
    ensure_returnable,
    route_in_pool,
    status_after_loss,
    take_turn,
)
from shared.events import LossLevel, Profile

pytestmark = pytest.mark.unit

START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def reps_named(
    *rep_ids: str, away: tuple[str, ...] = (), inactive: tuple[str, ...] = ()
) -> dict[str, Rep]:
    return {
        rep_id: Rep(rep_id, rep_id.title(), active=rep_id not in inactive, away=rep_id in away)
        for rep_id in rep_ids
    }


def deal(pool: Pool, reps: dict[str, Rep], leads: int) -> tuple[list[str | None], Pool]:
    """Route `leads` leads one after another, a minute apart, as the store would."""
    dealt: list[str | None] = []
    for minute in range(leads):
        routing = route_in_pool(pool, reps, START + timedelta(minutes=minute))
        dealt.append(routing.rep.rep_id if routing.rep else None)
        pool = Pool(pool.pool_id, pool.name, pool.rep_ids, rotation=routing.rotation)
    return dealt, pool


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


def test_round_robin_alternates_over_reps_in_pool_order() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben"))
    dealt, _ = deal(pool, reps_named("ana", "ben"), 4)
    assert dealt == ["ana", "ben", "ana", "ben"]


def test_round_robin_is_fair_over_many_leads() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben", "cho"))
    dealt, _ = deal(pool, reps_named("ana", "ben", "cho"), 30)
    assert Counter(dealt) == {"ana": 10, "ben": 10, "cho": 10}


def test_rep_who_never_had_a_lead_goes_first() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben"))
    _, pool = deal(pool, reps_named("ana", "ben"), 3)  # ana, ben, ana
    joined = Pool("p", "P", rep_ids=("ana", "ben", "dee"), rotation=pool.rotation)
    dealt, _ = deal(joined, reps_named("ana", "ben", "dee"), 3)
    assert dealt == ["dee", "ben", "ana"]


def test_rep_who_is_away_or_inactive_is_skipped() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben", "cho"))
    dealt, _ = deal(pool, reps_named("ana", "ben", "cho", away=("ben",), inactive=("cho",)), 3)
    assert dealt == ["ana", "ana", "ana"]


def test_rep_back_from_away_is_next_because_their_last_lead_is_oldest() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben"))
    _, pool = deal(pool, reps_named("ana", "ben"), 2)  # ana, ben
    _, pool = deal(pool, reps_named("ana", "ben", away=("ana",)), 2)  # ben, ben
    dealt, _ = deal(pool, reps_named("ana", "ben"), 2)
    assert dealt == ["ana", "ben"]


def test_nobody_available_leaves_the_lead_unassigned() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben", "gone"))
    routing = route_in_pool(pool, reps_named("ana", "ben", away=("ana", "ben")), START)
    assert routing.rep is None
    assert routing.pool == pool
    assert routing.status is LeadStatus.NEW
    assert routing.rotation == pool.rotation
    assert choose_rep(Pool("empty", "Empty"), {}) is None


def test_no_pool_leaves_the_lead_unassigned() -> None:
    routing = route_in_pool(None, reps_named("ana"), START)
    assert (routing.pool, routing.rep, routing.status) == (None, None, LeadStatus.NEW)


def test_returning_rep_is_passed_over() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben"))
    rep = choose_rep(pool, reps_named("ana", "ben"), passing_over={"ana"})
    assert rep is not None
    assert rep.rep_id == "ben"
    assert choose_rep(pool, reps_named("ana"), passing_over={"ana"}) is None


def test_taking_a_turn_moves_the_rep_to_the_back_with_the_time() -> None:
    pool = Pool("p", "P", rep_ids=("ana", "ben"))
    rotation = take_turn(pool, "ana", START)
    rotation = take_turn(Pool("p", "P", rotation=rotation), "ben", START + timedelta(seconds=1))
    rotation = take_turn(Pool("p", "P", rotation=rotation), "ana", START + timedelta(seconds=2))
    assert [(t.rep_id, t.number, t.taken_at) for t in rotation] == [
        ("ben", 2, START + timedelta(seconds=1)),
        ("ana", 3, START + timedelta(seconds=2)),
    ]


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


def test_only_a_lead_held_and_not_yet_met_can_be_returned() -> None:
    ensure_returnable(LeadStatus.ASSIGNED)
    ensure_returnable(LeadStatus.CONTACTED)
    for current in (LeadStatus.NEW, LeadStatus.VISIT_SCHEDULED, LeadStatus.LOST):
        with pytest.raises(TransitionRefusedError):
            ensure_returnable(current)
