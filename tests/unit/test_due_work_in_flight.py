"""The due-work runner with several batches in flight (`in_flight`): the next batch is
claimed while earlier ones are still firing, never more than `in_flight` at once; each item
still fires once, a failing item is isolated within its own batch, an outage met by a batch
in flight pauses the runner without losing items, and stop waits for the batches in hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.errors import AutoReconnect

from leadflow.chassis.duework import ClaimedWork, DueWork, DueWorkRunner
from tests.fakes.duework import InMemoryDueWork
from tests.support.services import eventually
from tests.unit.test_chassis_duework import running

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


class HeldFiring:
    """A `fire` that holds each batch until the test lets it go (as a batch waits on its
    provider), counting the batches in hand at once."""

    def __init__(self, store: InMemoryDueWork) -> None:
        self.store = store
        self.fired: list[str] = []
        self.attempts: list[list[str]] = []
        self.in_hand = 0
        self.most_in_hand = 0
        self.gate = asyncio.Event()
        self.failing: set[str] = set()
        self.outage_once: set[str] = set()

    async def __call__(self, batch: list[ClaimedWork]) -> None:
        keys = [c.work.key for c in batch]
        self.attempts.append(keys)
        self.in_hand += 1
        self.most_in_hand = max(self.most_in_hand, self.in_hand)
        try:
            await self.gate.wait()
            if self.outage_once & set(keys):
                self.outage_once -= set(keys)
                raise AutoReconnect("connection refused")
            if self.failing & set(keys):
                raise ValueError("bad template")
            await self.store.finish(batch)
            self.fired.extend(keys)
        finally:
            self.in_hand -= 1


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def runner_of(
    store: InMemoryDueWork, firing: HeldFiring, in_flight: int, clock: Clock | None = None
) -> DueWorkRunner:
    return DueWorkRunner(
        store,
        kinds={"send"},
        fire=firing,
        clock=clock or Clock(),
        batch_size=10,
        idle_poll_s=0.01,
        retry_backoff_s=3600.0,
        in_flight=in_flight,
    )


async def scheduled(store: InMemoryDueWork, count: int) -> list[str]:
    keys = [f"send:E{i:03}:0" for i in range(count)]
    await store.schedule(
        [DueWork(key, "send", NOW - timedelta(seconds=count - i)) for i, key in enumerate(keys)]
    )
    return keys


async def test_the_next_batches_are_claimed_while_earlier_ones_are_still_firing() -> None:
    store = InMemoryDueWork()
    keys = await scheduled(store, 100)
    firing = HeldFiring(store)
    runner = runner_of(store, firing, in_flight=3)
    async with running(runner):
        # Three batches in hand at once, none finished yet, and no fourth one claimed.
        await eventually(_in_hand(firing), lambda n: n == 3, timeout_s=5)
        await asyncio.sleep(0.1)
        assert firing.in_hand == 3
        assert len(firing.attempts) == 3
        assert firing.fired == []
        firing.gate.set()
        await eventually(_fired(firing), lambda n: n == 100, timeout_s=5)
    assert sorted(firing.fired) == keys  # each once
    assert firing.most_in_hand == 3
    assert store.items == {}


async def test_one_batch_at_a_time_unless_asked() -> None:
    store = InMemoryDueWork()
    await scheduled(store, 30)
    firing = HeldFiring(store)
    runner = runner_of(store, firing, in_flight=1)
    async with running(runner):
        await eventually(_in_hand(firing), lambda n: n == 1, timeout_s=5)
        await asyncio.sleep(0.1)
        assert len(firing.attempts) == 1
        firing.gate.set()
        await eventually(_fired(firing), lambda n: n == 30, timeout_s=5)
    assert firing.most_in_hand == 1


async def test_stop_waits_for_the_batches_in_hand_and_claims_no_more() -> None:
    store = InMemoryDueWork()
    await scheduled(store, 100)
    firing = HeldFiring(store)
    runner = runner_of(store, firing, in_flight=2)
    task = asyncio.create_task(runner.run())
    await eventually(_in_hand(firing), lambda n: n == 2, timeout_s=5)
    stopping = asyncio.create_task(runner.stop(grace_s=5))
    await asyncio.sleep(0.1)
    assert not task.done()  # the two batches in hand are still firing
    firing.gate.set()
    await asyncio.wait_for(stopping, timeout=5)
    await task
    assert len(firing.fired) == 20  # the two batches in hand, committed; nothing else claimed
    assert len(store.items) == 80
    assert all(item.token is None for item in store.items.values())


async def test_a_failing_item_is_isolated_within_its_batch_while_others_fire() -> None:
    store = InMemoryDueWork()
    keys = await scheduled(store, 50)
    firing = HeldFiring(store)
    firing.failing = {keys[13]}
    firing.gate.set()
    runner = runner_of(store, firing, in_flight=3)
    async with running(runner):
        await eventually(_fired(firing), lambda n: n == 49, timeout_s=5)
    assert sorted(firing.fired) == sorted(set(keys) - {keys[13]})
    assert list(store.items) == [keys[13]]
    assert store.items[keys[13]].attempts == 1  # given back with back-off, not lost


async def test_an_outage_met_by_a_batch_in_flight_loses_nothing() -> None:
    store = InMemoryDueWork()
    keys = await scheduled(store, 40)
    firing = HeldFiring(store)
    firing.outage_once = {keys[15]}
    firing.gate.set()
    clock = Clock()
    runner = runner_of(store, firing, in_flight=2, clock=clock)
    async with running(runner):
        await eventually(_fired(firing), lambda n: n == 30, timeout_s=5)
        await asyncio.sleep(0.1)
        # The batch that met the outage is back in the store, no attempt counted.
        assert sorted(store.items) == keys[10:20]
        assert {(i.token, i.attempts) for i in store.items.values()} == {(None, 0)}
        clock.now += timedelta(hours=2)  # past its back-off
        await eventually(_fired(firing), lambda n: n == 40, timeout_s=5)
    assert sorted(firing.fired) == keys
    assert store.items == {}


def _in_hand(firing: HeldFiring) -> Callable[[], Awaitable[int]]:
    async def probe() -> int:
        return firing.in_hand

    return probe


def _fired(firing: HeldFiring) -> Callable[[], Awaitable[int]]:
    async def probe() -> int:
        return len(firing.fired)

    return probe
