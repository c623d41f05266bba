"""Assignment's use cases on the in-memory store: routing batches, the sales workflow and
the team's configuration, as a replica runs them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from services.assignment.rules import (
    Lead,
    LeadStatus,
    NotOwnerError,
    Pool,
    PoolMatch,
    Rep,
    TransitionRefusedError,
    UnknownRepsError,
)
from services.assignment.usecases import (
    ConfigurationCache,
    ManageTeam,
    RouteLeads,
    configuration_cache,
)
from services.assignment.workflow import WorkLeads
from shared.events import (
    Attribution,
    Contact,
    Event,
    LeadAssignedV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
    LeadReturnedToPoolV1,
    Profile,
)
from tests.fakes.assignment import InMemoryAssignmentStore

pytestmark = pytest.mark.unit

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Ticking:
    """A clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@dataclass
class Replica:
    """What one assignment replica wires up, on a shared in-memory store."""

    store: InMemoryAssignmentStore
    cache: ConfigurationCache
    route: RouteLeads
    team: ManageTeam
    leads: WorkLeads
    clock: Ticking


def replica(store: InMemoryAssignmentStore | None = None) -> Replica:
    store = store or InMemoryAssignmentStore()
    cache = configuration_cache(store, max_age_s=60)
    clock = Ticking()
    return Replica(
        store,
        cache,
        RouteLeads(store, cache, clock=clock),
        ManageTeam(store, cache, clock=clock),
        WorkLeads(store, cache),
        clock,
    )


@pytest.fixture
def app() -> Replica:
    return replica()


async def staff(app: Replica, pool_id: str, *rep_ids: str, region: str | None = None) -> None:
    """Reps (made if new) and a pool taking leads from `region` (default: the pool id)."""
    known = {rep.rep_id for rep in await app.team.reps()}
    for rep_id in rep_ids:
        if rep_id not in known:
            await app.team.add_rep(Rep(rep_id, rep_id.title()), START)
    match = PoolMatch(region=region or pool_id)
    await app.team.add_pool(Pool(pool_id, pool_id.title(), tuple(rep_ids), match), START)


_serial = iter(range(1_000_000))


def received(region: str, lead_id: str | None = None) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead_id or f"lead-{next(_serial)}",
        occurred_at=START,
        contact=Contact(name="Dana Kim", phone="+14155550100"),
        attribution=Attribution(source="website", channel="web_form"),
        profile=Profile(region=region),
        message="call me after six",
    )


def merged(lead_id: str, email: str) -> LeadMergedV1:
    return LeadMergedV1(
        lead_id=lead_id,
        occurred_at=START + timedelta(minutes=1),
        contact=Contact(name="Dana Kim", phone="+14155550100", email=email),
        attribution=Attribution(source="desk", channel="phone"),
        matched_on="phone",
    )


async def route_in_batches(app: Replica, events: Sequence[Event], size: int) -> None:
    for start in range(0, len(events), size):
        await app.route(events[start : start + size])


async def reps_of(app: Replica, events: Iterable[Event]) -> list[str | None]:
    return [lead.rep_id if (lead := await app.store.get_lead(e.lead_id)) else None for e in events]


def assigned_events(app: Replica) -> list[LeadAssignedV1]:
    return [e for e in app.store.ledger.outbox if isinstance(e, LeadAssignedV1)]


def within_one_of_the_mean(counts: Counter[str | None], reps: Iterable[str]) -> bool:
    shares = [counts[rep] for rep in reps]
    mean = sum(shares) / len(shares)
    return all(abs(share - mean) <= 1 for share in shares)


# --- fairness -------------------------------------------------------------------------------


async def test_a_thousand_leads_are_shared_evenly_by_ten_reps(app: Replica) -> None:
    reps = [f"rep{i}" for i in range(10)]
    await staff(app, "all", *reps)
    events = [received("all") for _ in range(1000)]
    await route_in_batches(app, events, 137)  # batches that do not divide the reps evenly

    dealt = Counter(await reps_of(app, events))
    assert None not in dealt
    assert within_one_of_the_mean(dealt, reps)
    announced = assigned_events(app)
    assert sorted(e.lead_id for e in announced) == sorted(e.lead_id for e in events)


async def test_a_rep_in_two_pools_is_not_favoured(app: Replica) -> None:
    await staff(app, "p1", "ana", "ben")
    await staff(app, "p2", "ana", "cho")
    events = [received("p1" if i % 2 else "p2") for i in range(300)]
    await route_in_batches(app, events, 50)
    dealt = Counter(await reps_of(app, events))
    # A round robin per pool would give Ana half of every lead (150).
    assert within_one_of_the_mean(dealt, ["ana", "ben", "cho"])


async def test_reps_who_are_away_or_inactive_are_skipped(app: Replica) -> None:
    await staff(app, "all", "ana", "ben", "cho")
    await app.team.change_rep("ana", {"away": True}, START)
    await app.team.change_rep("cho", {"active": False}, START)
    events = [received("all") for _ in range(4)]
    await app.route(events)
    assert await reps_of(app, events) == ["ben"] * 4


async def test_a_rep_back_from_away_gets_no_burst(app: Replica) -> None:
    await staff(app, "all", "ana", "ben", "cho")
    await route_in_batches(app, [received("all") for _ in range(30)], 30)
    await app.team.change_rep("cho", {"away": True}, START)
    await route_in_batches(app, [received("all") for _ in range(30)], 7)
    await app.team.change_rep("cho", {"away": False}, START)

    back = [received("all") for _ in range(30)]
    await route_in_batches(app, back, 5)
    dealt = await reps_of(app, back)
    # Cho waited longest, so Cho is next; then the usual rotation, not a catch-up.
    assert dealt[:3] == ["cho", "ana", "ben"]
    assert Counter(dealt) == {"ana": 10, "ben": 10, "cho": 10}


async def test_a_newly_added_rep_gets_no_burst(app: Replica) -> None:
    await staff(app, "all", "ana", "ben")
    await route_in_batches(app, [received("all") for _ in range(40)], 40)
    await app.team.add_rep(Rep("dee", "Dee"), START)
    await app.team.change_pool("all", {"rep_ids": ("ana", "ben", "dee")}, START)

    after = [received("all") for _ in range(30)]
    await route_in_batches(app, after, 30)
    dealt = await reps_of(app, after)
    assert dealt[0] == "dee"
    assert Counter(dealt) == {"ana": 10, "ben": 10, "dee": 10}


# --- intake's events -------------------------------------------------------------------------


async def test_a_repeat_inquiry_read_before_its_lead_is_counted_when_it_arrives(
    app: Replica,
) -> None:
    await staff(app, "all", "ana")
    lead = received("all")
    await app.route([merged(lead.lead_id, "dana@example.com")])
    assert await app.store.get_lead(lead.lead_id) is None  # not a lead until it is received

    await app.route([lead])
    routed = await app.store.get_lead(lead.lead_id)
    assert routed is not None
    assert (routed.status, routed.rep_id, routed.inquiries) == (LeadStatus.ASSIGNED, "ana", 2)
    assert routed.contact.email == "dana@example.com"
    assert routed.last_inquiry_at == START + timedelta(minutes=1)


async def test_repeat_inquiries_count_once_each_however_often_delivered(app: Replica) -> None:
    await staff(app, "all", "ana")
    lead = received("all")
    first, second = merged(lead.lead_id, "a@example.com"), merged(lead.lead_id, "b@example.com")
    await app.route([lead, first, first])  # the same event twice in one batch
    await app.route([lead, first, second])  # redelivered, with one new inquiry
    await app.route([second])
    routed = await app.store.get_lead(lead.lead_id)
    assert routed is not None
    assert (routed.inquiries, routed.contact.email) == (3, "b@example.com")
    assert len(assigned_events(app)) == 1


async def test_a_lead_received_twice_keeps_its_first_routing(app: Replica) -> None:
    await staff(app, "all", "ana", "ben")
    lead = received("all")
    await app.route([lead])
    again = lead.model_copy(update={"event_id": received("all").event_id})
    await app.route([again, received("all", "next")])
    assert await reps_of(app, [lead]) == ["ana"]
    # The second copy took no turn: the next lead goes to Ben.
    assert await reps_of(app, [received("all", "next")]) == ["ben"]
    assert [e.lead_id for e in assigned_events(app)] == [lead.lead_id, "next"]


async def test_an_erased_lead_keeps_no_personal_data(app: Replica) -> None:
    await staff(app, "all", "ana")
    lead = received("all")
    await app.route([lead, LeadErasedV1(lead_id=lead.lead_id)])
    erased = await app.store.get_lead(lead.lead_id)
    assert erased is not None
    assert (erased.contact, erased.message, erased.rep_id) == (Contact(), None, "ana")


async def test_a_lead_no_pool_takes_waits_unassigned(app: Replica) -> None:
    await staff(app, "all", "ana")
    lead = received("nowhere")
    await app.route([lead])
    waiting = await app.store.get_lead(lead.lead_id)
    assert waiting is not None
    assert (waiting.status, waiting.pool_id, waiting.rep_id) == (LeadStatus.NEW, None, None)
    assert assigned_events(app) == []


# --- configuration cache ---------------------------------------------------------------------


async def test_routing_loads_the_configuration_once_and_uses_a_change_for_the_next_lead(
    app: Replica,
) -> None:
    await staff(app, "all", "ana", "ben")
    events = [received("all") for _ in range(50)]
    await route_in_batches(app, events, 10)
    assert app.cache.loads == 1

    await app.team.change_rep("ana", {"away": True}, START)
    await app.team.change_rep("ben", {"away": True}, START)
    await app.team.add_rep(Rep("cho", "Cho"), START)
    await app.team.change_pool("all", {"rep_ids": ("ana", "ben", "cho")}, START)
    following = [received("all") for _ in range(3)]
    await app.route(following)
    assert await reps_of(app, following) == ["cho"] * 3
    assert app.cache.loads == 2


async def test_another_replicas_change_is_used_once_its_version_is_read() -> None:
    first = replica()
    await staff(first, "all", "ana", "ben")
    second = replica(first.store)
    second.cache = configuration_cache(first.store, max_age_s=0)
    second.route = RouteLeads(first.store, second.cache, clock=second.clock)
    await second.route([received("all")])
    await first.team.change_rep("ana", {"away": True}, START)
    later = [received("all"), received("all")]
    await second.route(later)
    assert await reps_of(second, later) == ["ben", "ben"]


# --- the sales workflow -----------------------------------------------------------------------


async def test_a_rep_marks_their_lead_lost_and_nurture_is_told(app: Replica) -> None:
    await staff(app, "all", "ana", "ben")
    lead = received("all")
    await app.route([lead])
    with pytest.raises(NotOwnerError):
        await app.leads.mark_lost(lead.lead_id, 2, None, "ben", START)
    lost = await app.leads.mark_lost(lead.lead_id, 2, "joined a rival gym", "ana", START)
    assert (lost.status, lost.lost_level) == (LeadStatus.NURTURING, 2)
    assert await app.store.get_lead(lead.lead_id) == lost
    [event] = [e for e in app.store.ledger.outbox if isinstance(e, LeadLostV1)]
    assert (event.rep_id, event.level, event.reason) == ("ana", 2, "joined a rival gym")
    assert event.contact == lead.contact
    with pytest.raises(TransitionRefusedError):
        await app.leads.mark_lost(lead.lead_id, 1, None, None, START)


async def test_a_returned_lead_goes_to_the_next_rep_and_takes_their_turn(app: Replica) -> None:
    await staff(app, "all", "ana", "ben", "cho")
    lead = received("all")
    await app.route([lead])
    returned = await app.leads.return_to_pool(lead.lead_id, "no answer", "ana", START)
    assert (returned.status, returned.rep_id, returned.returned_by) == (
        LeadStatus.ASSIGNED,
        "ben",
        ("ana",),
    )
    outbox = app.store.ledger.outbox
    assert isinstance(outbox[-2], LeadReturnedToPoolV1)
    assert isinstance(outbox[-1], LeadAssignedV1)
    assert (outbox[-1].rep_id, outbox[-1].previous_rep_id) == ("ben", "ana")
    # Ben's turn is used up by the returned lead: the next new lead goes to Cho.
    following = [received("all")]
    await app.route(following)
    assert await reps_of(app, following) == ["cho"]


async def test_a_lead_returned_by_everyone_waits_in_its_pool(app: Replica) -> None:
    await staff(app, "all", "ana", "ben")
    lead = received("all")
    await app.route([lead])
    await app.leads.return_to_pool(lead.lead_id, None, "ana", START)
    waiting = await app.leads.return_to_pool(lead.lead_id, None, "ben", START)
    assert (waiting.status, waiting.rep_id, waiting.pool_id) == (LeadStatus.NEW, None, "all")
    with pytest.raises(TransitionRefusedError):
        await app.leads.return_to_pool(lead.lead_id, None, None, START)


async def test_a_rep_sees_a_lead_only_when_it_is_theirs(app: Replica) -> None:
    await staff(app, "all", "ana", "ben")
    lead = received("all")
    await app.route([lead])
    assert (await app.leads.lead(lead.lead_id, "ana")).rep_id == "ana"
    assert isinstance(await app.leads.lead(lead.lead_id, None), Lead)
    with pytest.raises(NotOwnerError):
        await app.leads.lead(lead.lead_id, "ben")


async def test_losing_and_a_repeat_inquiry_at_once_both_land(app: Replica) -> None:
    await staff(app, "all", "ana")
    lead = received("all")
    await app.route([lead])
    await asyncio.gather(
        app.leads.mark_lost(lead.lead_id, 3, "busy", None, START),
        app.route([merged(lead.lead_id, "dana@example.com")]),
    )
    final = await app.store.get_lead(lead.lead_id)
    assert final is not None
    # Whichever ran first, both land: lost at level 3 and then reopened by the repeat
    # inquiry (back to Ana), or the inquiry counted and then the lead lost.
    assert (final.inquiries, final.contact.email) == (2, "dana@example.com")
    assert (final.status, final.rep_id) in {
        (LeadStatus.ASSIGNED, "ana"),
        (LeadStatus.NURTURING, "ana"),
    }


# --- reps and pools --------------------------------------------------------------------------


async def test_a_pool_of_unknown_reps_is_refused_naming_them(app: Replica) -> None:
    await app.team.add_rep(Rep("ana", "Ana"), START)
    with pytest.raises(UnknownRepsError) as refused:
        await app.team.add_pool(Pool("p", "P", ("ana", "ghost", "phantom")), START)
    assert refused.value.rep_ids == ["ghost", "phantom"]
    await app.team.add_pool(Pool("p", "P", ("ana",)), START)
    with pytest.raises(UnknownRepsError):
        await app.team.change_pool("p", {"rep_ids": ("ana", "ghost")}, START)
    assert (await app.team.pool("p")).pool.rep_ids == ("ana",)


async def test_naming_a_new_default_pool_demotes_the_old_one(app: Replica) -> None:
    await app.team.add_pool(Pool("old", "Old", is_default=True), START)
    await app.team.add_pool(Pool("other", "Other"), START)
    await app.team.change_pool("other", {"is_default": True}, START)
    defaults = [view.pool.pool_id for view in await app.team.pools() if view.pool.is_default]
    assert defaults == ["other"]


async def test_a_pool_shows_its_members_in_the_order_they_are_dealt_next(app: Replica) -> None:
    await staff(app, "all", "ana", "ben", "cho")
    await app.route([received("all"), received("all")])  # ana, ben
    await app.team.change_rep("cho", {"away": True}, START)
    view = await app.team.pool("all")
    assert [(m.rep_id, m.available) for m in view.members] == [
        ("ana", True),
        ("ben", True),
        ("cho", False),
    ]
    assert view.members[0].last_assigned_at is not None
    assert view.members[2].last_assigned_at is None
