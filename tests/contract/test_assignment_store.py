"""The assignment store contract, on MongoDB and in memory."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date, time, timedelta

import pytest
from pydantic import TypeAdapter

from services.assignment.rules import (
    AlreadyExistsError,
    AwaitedLead,
    LastAssignment,
    Lead,
    LeadStatus,
    Notify,
    Pool,
    PoolMatch,
    Rep,
    RoutingSettings,
    Strategy,
    TerritoryRule,
    Timer,
)
from services.assignment.shifts import AwayPeriod, Shift
from services.assignment.store import (
    AssignmentStore,
    ConfigurationInTransaction,
    LeadQuery,
    LeadsInTransaction,
    MongoAssignmentStore,
)
from shared.events import (
    AnyEvent,
    Attribution,
    Consent,
    Contact,
    Event,
    LeadErasedV1,
    LeadLostV1,
    LeadReceivedV1,
    Profile,
    RoutingReason,
)
from tests.contract.conftest import NOW, STORE_KINDS, mongo_parts
from tests.fakes.assignment import InMemoryAssignmentStore

Published = Callable[[], Awaitable[list[Event]]]


@dataclass
class Subject:
    store: AssignmentStore
    published: Published
    """The events committed for publishing, in commit order."""


@pytest.fixture(params=STORE_KINDS)
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        memory = InMemoryAssignmentStore()

        async def in_outbox() -> list[Event]:
            return list(memory.ledger.outbox)

        yield Subject(memory, in_outbox)
        return
    async with mongo_parts(request) as parts:
        mongo = MongoAssignmentStore(parts.database, parts.ledger)
        await mongo.ensure_indexes()
        adapter: TypeAdapter[Event] = TypeAdapter(AnyEvent)

        async def pending() -> list[Event]:
            return [adapter.validate_json(r.payload) for r in await parts.ledger.pending(1000)]

        yield Subject(mongo, pending)


@pytest.fixture
def store(subject: Subject) -> AssignmentStore:
    return subject.store


def a_lead(lead_id: str, **fields: object) -> Lead:
    values: dict[str, object] = {
        "lead_id": lead_id,
        "status": LeadStatus.ASSIGNED,
        "contact": Contact(name="Dana Kim", phone="+14155550100"),
        "consent": Consent(email=True),
        "attribution": Attribution(source="website", channel="web_form", campaign="spring"),
        "profile": Profile(region="west", industry="fitness", company_size=12),
        "received_at": NOW,
        "rep_id": "ana",
        "pool_id": "west",
        "assigned_at": NOW + timedelta(seconds=1),
        "fit_score": 70,
        "message": "call after six",
        "inquiries": 2,
        "last_inquiry_at": NOW + timedelta(minutes=5),
        "returned_by": ("ben",),
        "updated_at": NOW + timedelta(minutes=5),
    }
    values.update(fields)
    return Lead(**values)  # type: ignore[arg-type]


async def add_team(store: AssignmentStore, *reps: Rep, pools: tuple[Pool, ...] = ()) -> None:
    async def add(team: ConfigurationInTransaction) -> None:
        for rep in reps:
            await team.add_rep(rep, NOW)
        for pool in pools:
            await team.add_pool(pool, NOW)

    await store.change_configuration(add)


async def save(store: AssignmentStore, *leads: Lead | AwaitedLead) -> None:
    async def work(book: LeadsInTransaction) -> tuple[None, list[Event]]:
        await book.save(leads, [])
        return None, []

    await store.change_leads(work)


# --- configuration -----------------------------------------------------------------------


async def test_every_configuration_change_moves_its_version(store: AssignmentStore) -> None:
    assert await store.configuration_version() == 0
    await add_team(store, Rep("ana", "Ana"), Rep("ben", "Ben", away=True))
    assert await store.configuration_version() == 1

    async def change(team: ConfigurationInTransaction) -> None:
        await team.save_rep(Rep("ana", "Ana Park", timezone="Asia/Seoul"), NOW)
        await team.add_pool(Pool("west", "West", ("ana", "ben"), PoolMatch(region="west")), NOW)

    await store.change_configuration(change)
    assert await store.configuration_version() == 2
    config = await store.load_configuration()
    assert config.reps == {
        "ana": Rep("ana", "Ana Park", timezone="Asia/Seoul"),
        "ben": Rep("ben", "Ben", away=True),
    }
    assert config.pools == (Pool("west", "West", ("ana", "ben"), PoolMatch(region="west")),)


async def test_a_taken_id_is_refused_and_the_change_leaves_nothing(store: AssignmentStore) -> None:
    await add_team(store, Rep("ana", "Ana"), pools=(Pool("west", "West"),))
    with pytest.raises(AlreadyExistsError, match="rep 'ana'"):
        await add_team(store, Rep("cho", "Cho"), Rep("ana", "Another Ana"))
    with pytest.raises(AlreadyExistsError, match="pool 'west'"):
        await add_team(store, pools=(Pool("west", "Again"),))
    assert await store.list_reps() == [Rep("ana", "Ana")]
    assert await store.get_rep("cho") is None
    assert await store.list_pools() == [Pool("west", "West")]
    assert await store.configuration_version() == 1


async def test_reps_and_pools_are_read_in_their_order(store: AssignmentStore) -> None:
    await add_team(
        store,
        Rep("ana", "Ana"),
        Rep("ben", "Ben"),
        pools=(Pool("b", "B", priority=1), Pool("a", "A", priority=1), Pool("z", "Z", priority=9)),
    )
    assert [rep.rep_id for rep in await store.list_reps()] == ["ana", "ben"]
    assert [pool.pool_id for pool in await store.list_pools()] == ["z", "a", "b"]
    assert await store.get_pool("a") == Pool("a", "A", priority=1)
    assert await store.get_pool("nope") is None
    assert await store.get_rep("ben") == Rep("ben", "Ben")


async def test_known_reps_and_one_default_pool(store: AssignmentStore) -> None:
    await add_team(
        store,
        Rep("ana", "Ana"),
        pools=(Pool("old", "Old", is_default=True), Pool("other", "Other")),
    )

    async def make_new_default(team: ConfigurationInTransaction) -> set[str]:
        known = await team.known_rep_ids(["ana", "ghost"])
        await team.demote_default_pools(keeping="new")
        await team.add_pool(Pool("new", "New", ("ana",), is_default=True), NOW)
        return known

    assert await store.change_configuration(make_new_default) == {"ana"}
    defaults = [pool.pool_id for pool in await store.list_pools() if pool.is_default]
    assert defaults == ["new"]


# --- leads ---------------------------------------------------------------------------------


async def test_leads_read_back_as_saved_and_awaited_ones_are_no_leads(
    store: AssignmentStore,
) -> None:
    lead = a_lead("full", erased_at=NOW + timedelta(hours=1), lost_level=3, lost_reason="busy")
    awaited = AwaitedLead(
        "early",
        Contact(email="dana@example.com"),
        inquiries=2,
        last_inquiry_at=NOW,
        updated_at=NOW,
    )
    await save(store, lead, awaited)

    async def read(book: LeadsInTransaction) -> tuple[object, list[Event]]:
        return await book.leads(["full", "early", "unknown"]), []

    assert await store.change_leads(read) == {"full": lead, "early": awaited}
    assert await store.get_lead("full") == lead
    assert await store.get_lead("early") is None
    assert [lead.lead_id for lead in await store.list_leads(LeadQuery())] == ["full"]


async def test_a_lead_read_in_a_transaction_is_replaced_by_its_change(
    store: AssignmentStore,
) -> None:
    await save(
        store, AwaitedLead("l1", Contact(email="dana@example.com"), inquiries=1), a_lead("l2")
    )
    received = a_lead("l1", inquiries=2, contact=Contact(email="dana@example.com"))
    lost = a_lead("l2", status=LeadStatus.LOST, lost_level=1, lost_reason="wrong number")

    async def change(book: LeadsInTransaction) -> tuple[None, list[Event]]:
        assert set(await book.leads(["l1", "l2"])) == {"l1", "l2"}
        await book.save([received, lost], [])
        return None, []

    await store.change_leads(change)
    assert await store.get_lead("l1") == received
    assert await store.get_lead("l2") == lost
    assert len(await store.list_leads(LeadQuery())) == 2


async def test_leads_are_listed_newest_first_by_status_rep_and_pool(
    store: AssignmentStore,
) -> None:
    minute = timedelta(minutes=1)
    await save(
        store,
        a_lead("l1", received_at=NOW),
        a_lead("l2", received_at=NOW + minute, rep_id="ben"),
        a_lead("l3", received_at=NOW + 2 * minute, status=LeadStatus.NEW, rep_id=None),
        a_lead("l4", received_at=NOW + 3 * minute, pool_id="east"),
    )

    async def ids(**query: object) -> list[str]:
        return [lead.lead_id for lead in await store.list_leads(LeadQuery(**query))]  # type: ignore[arg-type]

    assert await ids() == ["l4", "l3", "l2", "l1"]
    assert await ids(limit=2) == ["l4", "l3"]
    assert await ids(status=LeadStatus.ASSIGNED, pool_id="west") == ["l2", "l1"]
    assert await ids(rep_id="ana") == ["l4", "l1"]


async def test_last_assignments_read_back_per_rep(store: AssignmentStore) -> None:
    ana = LastAssignment("ana", 7, NOW, "west")
    ben = LastAssignment("ben", 3, NOW - timedelta(hours=1), None)

    async def deal(book: LeadsInTransaction) -> tuple[None, list[Event]]:
        await book.save([], [ana, ben])
        await book.save([], [LastAssignment("ana", 9, NOW + timedelta(seconds=1), "east")])
        return None, []

    await store.change_leads(deal)
    assert await store.last_assignments(["ana", "ben", "cho"]) == {
        "ana": LastAssignment("ana", 9, NOW + timedelta(seconds=1), "east"),
        "ben": ben,
    }
    assert await store.last_assignments([]) == {}


async def test_turns_are_numbered_on_and_concurrent_takers_get_their_own(
    store: AssignmentStore,
) -> None:
    async def take(count: int) -> int:
        async def work(book: LeadsInTransaction) -> tuple[int, list[Event]]:
            return await book.take_turns(count), []

        return await store.change_leads(work)

    assert await take(3) == 1
    firsts = await asyncio.gather(*(take(2) for _ in range(5)))
    taken = sorted(turn for first in firsts for turn in (first, first + 1))
    assert taken == list(range(4, 14))
    assert await take(1) == 14


# --- transactions, inbox and outbox --------------------------------------------------------


async def test_a_batch_sees_only_events_not_handled_before(subject: Subject) -> None:
    first, second, third = (LeadErasedV1(lead_id=f"l{i}") for i in range(3))
    seen: list[list[str]] = []

    async def note(book: LeadsInTransaction, fresh: list[Event]) -> tuple[int, list[Event]]:
        seen.append([event.lead_id for event in fresh])
        return len(fresh), []

    assert await subject.store.handle_batch([first, second, first], note) == 2
    assert await subject.store.handle_batch([second, first], note) is None
    assert await subject.store.handle_batch([third, second], note) == 1
    assert seen == [["l0", "l1"], ["l2"]]


async def test_events_of_a_committed_change_are_published_in_order(subject: Subject) -> None:
    lost = LeadLostV1(lead_id="l1", occurred_at=NOW, level=2)
    received = LeadReceivedV1(
        lead_id="l2",
        occurred_at=NOW,
        contact=Contact(),
        attribution=Attribution(source="x", channel="y"),
    )

    async def announce(book: LeadsInTransaction) -> tuple[None, list[Event]]:
        return None, [lost]

    async def announce_for_batch(
        book: LeadsInTransaction, fresh: list[Event]
    ) -> tuple[None, list[Event]]:
        return None, [received]

    await subject.store.change_leads(announce)
    await subject.store.handle_batch([LeadErasedV1(lead_id="l2")], announce_for_batch)
    assert await subject.published() == [lost, received]


async def test_a_failing_unit_of_work_leaves_nothing_behind(subject: Subject) -> None:
    store = subject.store
    erased = LeadErasedV1(lead_id="doomed")

    async def fail_after_writing(
        book: LeadsInTransaction, fresh: list[Event]
    ) -> tuple[None, list[Event]]:
        await book.take_turns(5)
        await book.save([a_lead("doomed")], [LastAssignment("ana", 5, NOW, "west")])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.handle_batch([erased], fail_after_writing)

    async def fail_configuration(team: ConfigurationInTransaction) -> None:
        await team.add_rep(Rep("ana", "Ana"), NOW)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.change_configuration(fail_configuration)

    assert await store.get_lead("doomed") is None
    assert await store.last_assignments(["ana"]) == {}
    assert await store.list_reps() == []
    assert await store.configuration_version() == 0
    assert await subject.published() == []

    async def handle(book: LeadsInTransaction, fresh: list[Event]) -> tuple[int, list[Event]]:
        return await book.take_turns(1), []

    # Not remembered as handled, and the turns were not used up: a retry starts afresh.
    assert await store.handle_batch([erased], handle) == 1


# --- the configuration and workflow added with territory rules and timers -----------------


FULL_REP = Rep(
    "jin",
    "Jin Kim",
    email="jin@example.com",
    timezone="Asia/Seoul",
    manager_id="mia",
    team="Gangnam",
    product_lines=("pt",),
    regions=("seoul",),
    languages=("ko", "en"),
    skills=("fitness",),
    max_open=30,
    daily_quota=12,
    working_hours=(Shift(0, time(9), time(18)), Shift(5, time(10), time(14, 30))),
    holiday_country="KR",
    days_off=(date(2026, 12, 24),),
    away_periods=(AwayPeriod(NOW, NOW + timedelta(days=2), "training"),),
    notify=Notify(
        email="jin@example.com",
        webhook_url="https://hooks.example.com/jin",
        webhook_secret="s" * 20,
        slack=True,
        channels=("email", "webhook", "sse"),
    ),
)


async def test_every_rep_pool_rule_and_setting_field_reads_back(store: AssignmentStore) -> None:
    pool = Pool(
        "seoul",
        "Seoul",
        ("jin", "mia"),
        strategy=Strategy.WEIGHTED,
        weights={"jin": 3},
        default_assignee="mia",
        claimable=True,
        claim_limit=4,
        sla_minutes=30,
        sla_reassign=True,
        manager_id="mia",
    )
    rules = (
        TerritoryRule("low", priority=1, regions=("west",), pool_id="seoul"),
        TerritoryRule(
            "kr",
            "Korea",
            priority=9,
            countries=("KR",),
            postal_prefixes=("06",),
            postal_from="06000",
            postal_to="06999",
            min_company_size=5,
            fit_grades=("A", "B"),
            rep_id="jin",
        ),
    )
    settings = RoutingSettings(
        nurture_below="C",
        fallback_pool_id="seoul",
        company_days_off=(date(2026, 12, 31),),
        grades={"H": 12},
        forgotten_after_days=5,
        escalate_after_hours=6,
        satisfaction_alert_below=7,
    )

    async def add(team: ConfigurationInTransaction) -> None:
        await team.add_rep(Rep("mia", "Mia"), NOW)
        await team.add_rep(FULL_REP, NOW)
        await team.add_pool(pool, NOW)
        for rule in rules:
            await team.add_rule(rule, NOW)
        await team.save_settings(settings, NOW)

    await store.change_configuration(add)
    config = await store.load_configuration()
    assert config.reps["jin"] == FULL_REP
    assert config.pools == (pool,)
    assert config.rules == (rules[1], rules[0])  # highest priority first
    assert config.settings == settings

    async def change(team: ConfigurationInTransaction) -> bool:
        await team.save_rule(dataclasses.replace(rules[0], priority=20), NOW)
        return await team.delete_rule("kr") and not await team.delete_rule("kr")

    assert await store.change_configuration(change)
    assert [(r.rule_id, r.priority) for r in await store.list_rules()] == [("low", 20)]


async def test_waiting_held_and_claimed_leads_are_found_in_a_transaction(
    store: AssignmentStore,
) -> None:
    why = RoutingReason(pool_id="west", strategy="claimed")
    await save(
        store,
        a_lead("late", status=LeadStatus.NEW, rep_id=None, queued_at=NOW + timedelta(minutes=2)),
        a_lead("early", status=LeadStatus.NEW, rep_id=None, queued_at=NOW),
        a_lead("elsewhere", status=LeadStatus.NEW, rep_id=None, pool_id="east", queued_at=NOW),
        a_lead("held", why=why),
        a_lead("met", status=LeadStatus.VISITED),
        a_lead("won", status=LeadStatus.CONVERTED, why=why),
    )

    async def look(
        leads: LeadsInTransaction,
    ) -> tuple[tuple[list[str], list[str], int], list[Event]]:
        waiting = [lead.lead_id for lead in await leads.queued("west", 10)]
        held = sorted(lead.lead_id for lead in await leads.open_leads_of("ana"))
        return (waiting, held, await leads.claimed_open("ana", "west")), []

    assert await store.change_leads(look) == (["early", "late"], ["held", "met"], 1)
    queued = await store.list_leads(LeadQuery(pool_id="west", queued=True))
    assert sorted(lead.lead_id for lead in queued) == ["early", "late"]


async def test_timers_are_written_and_cancelled_with_the_change(store: AssignmentStore) -> None:
    later = NOW + timedelta(minutes=30)

    async def schedule(leads: LeadsInTransaction) -> tuple[None, list[Event]]:
        await leads.schedule([Timer("sla:l1:1", "sla", later), Timer("deal:west", "deal", NOW)])
        await leads.cancel(["deal:west"])
        return None, []

    await store.change_leads(schedule)
    assert await store.due_work.next_due(kinds=["sla", "deal"]) == later  # type: ignore[attr-defined]
