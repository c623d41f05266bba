"""The chassis' due-work store contract, on MongoDB and in memory: claims under leases,
finish only by the claim's token, release with attempts, parking, next due time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest

from leadflow.chassis.duework import ClaimedWork, DueWork, DueWorkStore, LeaseLost
from leadflow.chassis.store import Document, MongoDueWork, Session
from tests.contract.conftest import NOW, STORE_KINDS, MongoParts, mongo_parts
from tests.fakes.duework import InMemoryDueWork

LEASE = timedelta(seconds=30)
KINDS = {"sla", "send"}


@dataclass
class Subject:
    store: DueWorkStore
    mongo: MongoParts | None


@pytest.fixture(params=STORE_KINDS)
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        yield Subject(InMemoryDueWork(), None)
        return
    async with mongo_parts(request) as parts:
        store = MongoDueWork(parts.database)
        await store.ensure_indexes()
        yield Subject(store, parts)


def due(key: str, seconds: float, kind: str = "sla", **payload: object) -> DueWork:
    return DueWork(key, kind, NOW + timedelta(seconds=seconds), payload)


async def claim(
    store: DueWorkStore, *, at: float, limit: int = 100, kinds: set[str] = KINDS
) -> list[ClaimedWork]:
    return await store.claim(
        kinds=kinds,
        now=NOW + timedelta(seconds=at),
        limit=limit,
        lease=LEASE,
        token=uuid.uuid4().hex,
    )


def keys(claimed: list[ClaimedWork]) -> list[str]:
    return [c.work.key for c in claimed]


async def test_an_item_is_claimed_once_due_earliest_first_with_its_payload(
    subject: Subject,
) -> None:
    store = subject.store
    await store.schedule([due("b", 20, lead="L2"), due("a", 10, lead="L1"), due("c", 30)])
    assert await claim(store, at=9.999) == []
    claimed = await claim(store, at=25)
    assert keys(claimed) == ["a", "b"]
    assert claimed[0].work == due("a", 10, lead="L1")
    assert claimed[0].attempts == 0
    assert len({c.token for c in claimed}) == 1


async def test_a_claim_takes_only_its_kinds_and_at_most_its_limit(subject: Subject) -> None:
    store = subject.store
    await store.schedule([due(f"s{i}", i) for i in range(5)] + [due("n", 0, kind="send")])
    first = await claim(store, at=10, limit=3, kinds={"sla"})
    assert keys(first) == ["s0", "s1", "s2"]
    assert keys(await claim(store, at=10, limit=3, kinds={"sla"})) == ["s3", "s4"]
    assert keys(await claim(store, at=10, kinds={"send", "other"})) == ["n"]


async def test_a_claimed_item_is_not_claimed_again_until_its_lease_lapses(
    subject: Subject,
) -> None:
    store = subject.store
    await store.schedule([due("a", 0)])
    first = await claim(store, at=1)
    assert await claim(store, at=1 + LEASE.total_seconds() - 0.01) == []
    second = await claim(store, at=1 + LEASE.total_seconds())
    assert keys(second) == ["a"]
    assert second[0].token != first[0].token


async def test_finish_removes_the_item_for_good(subject: Subject) -> None:
    store = subject.store
    await store.schedule([due("a", 0), due("b", 0)])
    claimed = await claim(store, at=0)
    await store.finish(claimed)
    assert await claim(store, at=3600) == []
    assert await store.next_due(kinds=KINDS) is None


async def test_finish_after_the_lease_was_taken_over_raises_and_removes_nothing(
    subject: Subject,
) -> None:
    store = subject.store
    await store.schedule([due("a", 0), due("b", 0), due("c", 60)])
    stale = await claim(store, at=0)
    [taken_over] = await claim(store, at=LEASE.total_seconds() + 1, limit=1)
    with pytest.raises(LeaseLost) as lost:
        await store.finish(stale)
    assert lost.value.keys == {taken_over.work.key}
    # Nothing of the stale claim was removed: the one still held goes on once its lease ends.
    [other] = [c for c in stale if c.work.key != taken_over.work.key]
    assert keys(await claim(store, at=LEASE.total_seconds() + 1)) == [other.work.key]
    await store.finish([taken_over])
    assert await store.next_due(kinds=KINDS) is not None


async def test_rescheduling_or_cancelling_a_claimed_item_voids_the_claim(
    subject: Subject,
) -> None:
    store = subject.store
    await store.schedule([due("moved", 0), due("gone", 0)])
    claimed = await claim(store, at=0)
    await store.schedule([due("moved", 100)])
    await store.cancel(["gone", "never-scheduled"])
    for item in claimed:
        with pytest.raises(LeaseLost):
            await store.finish([item])
    assert await claim(store, at=99) == []
    assert keys(await claim(store, at=100)) == ["moved"]


async def test_scheduling_the_same_key_again_keeps_one_item(subject: Subject) -> None:
    store = subject.store
    await store.schedule([due("a", 10)])
    await store.schedule([due("a", 20, lead="L9"), due("a", 20, lead="L9")])
    assert await claim(store, at=15) == []
    [claimed] = await claim(store, at=20)
    assert claimed.work.payload == {"lead": "L9"}


async def test_a_released_item_is_due_again_at_retry_time_with_one_more_attempt(
    subject: Subject,
) -> None:
    store = subject.store
    await store.schedule([due("a", 0), due("b", 0)])
    a, b = await claim(store, at=0)
    await store.release([a], retry_at=NOW + timedelta(seconds=5))
    await store.release([b], retry_at=NOW + timedelta(seconds=5), failed=False)
    assert await store.next_due(kinds=KINDS) == NOW + timedelta(seconds=5)
    assert await claim(store, at=4) == []
    again = await claim(store, at=5)
    assert [(c.work.key, c.attempts) for c in again] == [("a", 1), ("b", 0)]
    # The due time users set is kept; only when it may be claimed moved.
    assert again[0].work.due_at == NOW


async def test_release_and_park_by_a_stale_claim_change_nothing(subject: Subject) -> None:
    store = subject.store
    await store.schedule([due("a", 0)])
    stale = await claim(store, at=0)
    current = await claim(store, at=LEASE.total_seconds())
    await store.release(stale, retry_at=NOW)
    await store.park(stale, error="late", now=NOW)
    assert await claim(store, at=LEASE.total_seconds()) == []
    assert await store.parked(kinds=KINDS) == []
    await store.finish(current)


async def test_a_parked_item_is_kept_visible_and_never_claimed_until_scheduled_again(
    subject: Subject,
) -> None:
    store = subject.store
    await store.schedule([due("a", 0, lead="L1"), due("b", 0, kind="send")])
    claimed = await claim(store, at=0)
    await store.park(claimed, error="ValueError('bad template')", now=NOW)
    assert await claim(store, at=3600 * 24) == []
    assert await store.next_due(kinds=KINDS) is None
    parked = await store.parked(kinds={"sla"})
    assert [(p.work, p.attempts, p.error, p.parked_at) for p in parked] == [
        (due("a", 0, lead="L1"), 1, "ValueError('bad template')", NOW)
    ]
    await store.schedule([due("a", 10, lead="L1")])
    assert await store.parked(kinds={"sla"}) == []
    assert [(c.work.key, c.attempts) for c in await claim(store, at=10)] == [("a", 0)]


async def test_next_due_is_the_earliest_claimable_time_within_the_window(
    subject: Subject,
) -> None:
    store = subject.store
    assert await store.next_due(kinds=KINDS) is None
    await store.schedule([due("a", 5), due("b", 9, kind="send"), due("c", 1, kind="other")])
    assert await store.next_due(kinds=KINDS) == NOW + timedelta(seconds=5)
    assert await store.next_due(kinds={"send"}) == NOW + timedelta(seconds=9)
    assert await store.next_due(kinds=KINDS, before=NOW + timedelta(seconds=5)) is None
    await claim(store, at=5, kinds={"sla"})
    # A claimed item is next claimable when its lease ends.
    assert await store.next_due(kinds={"sla"}) == NOW + timedelta(seconds=5) + LEASE


async def test_a_backlog_is_claimed_earliest_first_and_late_comers_are_not_starved(
    subject: Subject,
) -> None:
    """Working off an overdue backlog: an item given back, or scheduled with a due time
    earlier than what is being claimed, or falling due after a long gap, is still claimed."""
    store = subject.store
    await store.schedule([due(f"b{i:03}", i / 10) for i in range(300)])
    claimed: list[str] = []
    for round_ in range(100):  # bounded: each round claims up to 5 of ~300 items
        batch = await claim(store, at=600, limit=5)
        if round_ == 0:
            assert keys(batch) == ["b000", "b001", "b002", "b003", "b004"]
        if round_ == 30:
            # Half way through: due long before what is being claimed now.
            await store.schedule([due("early", -50), due("after-gap", 3000)])
            await store.release(batch, retry_at=NOW + timedelta(seconds=1), failed=False)
            continue
        if not batch:
            break
        await store.finish(batch)
        claimed += keys(batch)
    assert sorted(claimed) == sorted([f"b{i:03}" for i in range(300)] + ["early"])
    assert len(claimed) == len(set(claimed))
    assert keys(await claim(store, at=3000)) == ["after-gap"]


async def test_claims_keep_up_with_items_falling_due_as_time_moves_on(subject: Subject) -> None:
    store = subject.store
    await store.schedule([due(f"t{i:03}", i) for i in range(120)])
    claimed: list[str] = []
    for second in range(0, 130, 7):
        batch = await claim(store, at=second, limit=50)
        await store.finish(batch)
        claimed += keys(batch)
    assert claimed == [f"t{i:03}" for i in range(120)]


async def test_concurrent_claims_never_hand_out_an_item_twice(subject: Subject) -> None:
    store = subject.store
    await store.schedule([due(f"k{i:03}", i % 7) for i in range(120)])
    claimed: list[str] = []
    for _ in range(120):  # bounded: each round claims at least one item
        batches = await asyncio.gather(*(claim(store, at=10, limit=25) for _ in range(8)))
        taken = [key for batch in batches for key in keys(batch)]
        if not taken:
            break
        claimed.extend(taken)
    # Racing claims may come back empty (another took the same items), never overlapping.
    assert len(claimed) == len(set(claimed))
    assert sorted(claimed) == sorted(f"k{i:03}" for i in range(120))


async def test_concurrent_schedules_of_the_same_keys_keep_one_item_per_key(
    subject: Subject,
) -> None:
    store = subject.store
    await store.schedule([due("k00", 0)])
    await asyncio.gather(
        *(store.schedule([due(f"k{i:02}", n) for i in range(30)]) for n in range(1, 6))
    )
    claimed = await claim(store, at=10)
    assert sorted(keys(claimed)) == [f"k{i:02}" for i in range(30)]
    # Whichever schedule came last, each item is one of them, whole.
    assert {c.work.due_at for c in claimed} <= {NOW + timedelta(seconds=n) for n in range(1, 6)}


async def test_naive_due_times_are_refused(subject: Subject) -> None:
    with pytest.raises(ValueError, match="aware"):
        await subject.store.schedule([DueWork("a", "sla", NOW.replace(tzinfo=None))])


# MongoDB only: the timer shares the caller's transaction.


async def in_transaction(parts: MongoParts, work: Callable[[Session], Awaitable[None]]) -> None:
    async with parts.client.start_session() as session:
        await session.with_transaction(work)


async def test_a_timer_scheduled_in_an_aborted_transaction_does_not_exist(
    parts: MongoParts,
) -> None:
    store = MongoDueWork(parts.database)
    await store.ensure_indexes()

    async def schedule_then_fail(session: Session) -> None:
        await store.schedule([due("a", 0)], session=session)
        raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        await in_transaction(parts, schedule_then_fail)
    assert await claim(store, at=10) == []


async def test_effects_of_a_stale_claim_roll_back_with_its_finish(parts: MongoParts) -> None:
    store = MongoDueWork(parts.database)
    await store.ensure_indexes()
    effects = parts.database["effects"]
    await store.schedule([due("a", 0)])
    stale = await claim(store, at=0)
    current = await claim(store, at=LEASE.total_seconds())

    def fire(claimed: list[ClaimedWork]) -> Callable[[Session], Awaitable[None]]:
        async def work(session: Session) -> None:
            docs: list[Document] = [{"_id": c.work.key, "token": c.token} for c in claimed]
            await effects.insert_many(docs, session=session)
            await store.finish(claimed, session=session)

        return work

    with pytest.raises(LeaseLost):
        await in_transaction(parts, fire(stale))
    await in_transaction(parts, fire(current))
    assert await effects.find({}).to_list() == [{"_id": "a", "token": current[0].token}]
