"""The due-work runner on the in-memory store with a clock the test moves: fires when due
and not before, wakes on demand, retries with back-off, parks after its last attempt,
stops at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from leadflow.chassis.duework import ClaimedWork, DueWork, DueWorkRunner, LeaseLost
from shared.events import utc_now
from tests.fakes.duework import InMemoryDueWork
from tests.support.cancellation import CancelSwallowed
from tests.support.services import eventually

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


class MovableClock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Firing:
    """A `fire` that records what it fired (and when, on the runner's clock) and finishes
    it; `failing` keys raise instead, `error` is what they raise."""

    def __init__(self, store: InMemoryDueWork, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock
        self.fired: list[tuple[str, datetime]] = []
        self.calls: list[list[str]] = []
        self.failing: set[str] = set()
        self.error: Exception = ValueError("bad template")

    async def __call__(self, batch: list[ClaimedWork]) -> None:
        self.calls.append([c.work.key for c in batch])
        if any(c.work.key in self.failing for c in batch):
            raise self.error
        await self.store.finish(batch)
        self.fired.extend((c.work.key, self.clock()) for c in batch)

    def keys(self) -> list[str]:
        return [key for key, _ in self.fired]


@asynccontextmanager
async def running(runner: DueWorkRunner) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        await asyncio.wait_for(runner.stop(), timeout=5)
        await task


def make(
    clock: Callable[[], datetime], *, kinds: Collection[str] = ("sla",), **options: float
) -> tuple[InMemoryDueWork, Firing, DueWorkRunner]:
    store = InMemoryDueWork()
    firing = Firing(store, clock)
    settings: dict[str, float] = {"idle_poll_s": 0.01, "retry_backoff_s": 5.0, **options}
    runner = DueWorkRunner(store, kinds=kinds, fire=firing, clock=clock, **settings)  # type: ignore[arg-type]
    return store, firing, runner


async def fired_keys(firing: Firing, expected: list[str]) -> list[str]:
    async def probe() -> list[str]:
        return sorted(firing.keys())

    return await eventually(probe, lambda keys: keys == sorted(expected), timeout_s=5)


async def test_an_item_fires_once_when_due_and_not_before() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock)
    await store.schedule([DueWork("sla:L1:1", "sla", NOW + timedelta(seconds=10), {"lead": "L1"})])
    async with running(runner):
        clock.advance(9.99)
        await asyncio.sleep(0.2)  # many idle polls
        assert firing.fired == []
        clock.advance(0.01)
        await fired_keys(firing, ["sla:L1:1"])
        await asyncio.sleep(0.1)
    assert firing.fired == [("sla:L1:1", NOW + timedelta(seconds=10))]
    assert store.items == {}


async def test_with_a_look_ahead_items_are_claimed_that_long_before_they_fall_due() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock, lookahead_s=2.0)
    await store.schedule(
        [
            DueWork("soon", "sla", NOW + timedelta(seconds=1.5)),
            DueWork("later", "sla", NOW + timedelta(seconds=3)),
        ]
    )
    async with running(runner):
        await fired_keys(firing, ["soon"])  # the clock has not moved
        await asyncio.sleep(0.2)  # many idle polls
        assert firing.keys() == ["soon"]
        clock.advance(1.0)
        await fired_keys(firing, ["soon", "later"])
    assert firing.fired == [("soon", NOW), ("later", NOW + timedelta(seconds=1))]


def test_a_look_ahead_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError, match="look-ahead"):
        make(MovableClock(), lookahead_s=30.0, lease_s=30.0)
    with pytest.raises(ValueError, match="look-ahead"):
        make(MovableClock(), lookahead_s=-1.0)


async def test_items_of_other_kinds_are_left_alone() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock, kinds={"sla"})
    await store.schedule([DueWork("send:E1:0", "send", NOW), DueWork("sla:L1:1", "sla", NOW)])
    async with running(runner):
        await fired_keys(firing, ["sla:L1:1"])
    assert list(store.items) == ["send:E1:0"]


async def test_a_due_backlog_fires_in_batches_earliest_first() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock, batch_size=50)
    await store.schedule(
        [DueWork(f"k{i:03}", "sla", NOW - timedelta(seconds=i)) for i in range(120)]
    )
    async with running(runner):
        await fired_keys(firing, [f"k{i:03}" for i in range(120)])
    assert [len(call) for call in firing.calls] == [50, 50, 20]
    assert firing.keys() == [f"k{i:03}" for i in reversed(range(120))]


async def test_the_runner_sleeps_until_the_next_due_item_rather_than_its_idle_poll() -> None:
    store, firing, runner = make(utc_now, idle_poll_s=30.0)
    # Whole milliseconds, as stored: a due time between two of them is due from the first.
    soon = utc_now() + timedelta(seconds=0.3)
    due_at = soon.replace(microsecond=soon.microsecond // 1000 * 1000)
    await store.schedule([DueWork("k", "sla", due_at)])
    async with running(runner):
        [(_, fired_at)] = await eventually(lambda: _fired(firing), bool, timeout_s=5)
    # Far below the 30 s idle poll (the bound leaves room for a loaded machine).
    assert timedelta(0) <= fired_at - due_at < timedelta(seconds=5)


async def _fired(firing: Firing) -> list[tuple[str, datetime]]:
    return list(firing.fired)


async def test_wake_rechecks_at_once_when_something_sooner_was_scheduled() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock, idle_poll_s=60.0)
    async with running(runner):
        await asyncio.sleep(0.1)  # the runner found nothing and sleeps for a minute
        await store.schedule([DueWork("k", "sla", NOW)])
        started = time.monotonic()
        runner.wake()
        await fired_keys(firing, ["k"])
        assert time.monotonic() - started < 5.0  # not the minute it was sleeping for


async def test_a_failed_item_is_retried_after_its_back_off_and_others_are_not_held_up() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock, retry_backoff_s=5.0)
    firing.failing = {"bad"}
    await store.schedule([DueWork(key, "sla", NOW) for key in ("a", "bad", "c")])
    async with running(runner):
        await fired_keys(firing, ["a", "c"])
        assert store.items["bad"].attempts == 1
        assert store.items["bad"].ready_at == NOW + timedelta(seconds=5)
        clock.advance(4.9)
        await asyncio.sleep(0.1)
        assert sorted(firing.keys()) == ["a", "c"]
        firing.failing = set()
        clock.advance(0.1)
        await fired_keys(firing, ["a", "bad", "c"])


async def test_back_off_doubles_with_each_attempt() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock, retry_backoff_s=5.0, max_attempts=10)
    firing.failing = {"bad"}
    await store.schedule([DueWork("bad", "sla", NOW)])
    async with running(runner):
        for attempts, wait in ((1, 5), (2, 10), (3, 20)):

            async def probe() -> int:
                return store.items["bad"].attempts

            await eventually(probe, lambda n, a=attempts: n == a, timeout_s=5)  # type: ignore[misc]
            assert store.items["bad"].ready_at == clock.now + timedelta(seconds=wait)
            clock.advance(wait)


async def test_an_item_failing_its_last_attempt_is_parked_and_never_fired_again() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock, retry_backoff_s=1.0, max_attempts=3)
    firing.failing = {"bad"}
    await store.schedule([DueWork("bad", "sla", NOW, {"lead": "L1"}), DueWork("ok", "sla", NOW)])
    async with running(runner):
        for _ in range(3):
            await asyncio.sleep(0.1)
            clock.advance(3600)
        parked = await eventually(
            lambda: store.parked(kinds={"sla"}), lambda found: len(found) == 1, timeout_s=5
        )
        calls_when_parked = sum("bad" in call for call in firing.calls)
        clock.advance(3600 * 24)
        await asyncio.sleep(0.1)
    assert firing.keys() == ["ok"]
    assert [(p.work.key, p.work.payload, p.attempts, p.error) for p in parked] == [
        ("bad", {"lead": "L1"}, 3, "ValueError('bad template')")
    ]
    assert sum("bad" in call for call in firing.calls) == calls_when_parked
    assert [c for c in firing.calls if c == ["bad"]] == [["bad"]] * 3


async def test_an_unreachable_database_is_not_counted_as_an_attempt() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock, retry_backoff_s=5.0, max_attempts=2)
    firing.failing = {"k"}
    firing.error = AutoReconnect("connection refused")
    await store.schedule([DueWork("k", "sla", NOW)])
    async with running(runner):
        for _ in range(4):
            await asyncio.sleep(0.05)
            clock.advance(10)
        assert store.items["k"].attempts == 0
        assert await store.parked(kinds={"sla"}) == []
        firing.failing = set()
        clock.advance(10)
        await fired_keys(firing, ["k"])


class UnreachableDueWork(InMemoryDueWork):
    """The in-memory store, with a database that can be down: claims fail meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def claim(self, **options: Any) -> list[ClaimedWork]:
        if self.down:
            raise AutoReconnect("connection refused")
        return await super().claim(**options)


async def test_the_runner_outlives_a_database_outage_and_fires_when_it_is_back() -> None:
    clock = MovableClock()
    store = UnreachableDueWork()
    firing = Firing(store, clock)
    runner = DueWorkRunner(store, kinds={"sla"}, fire=firing, clock=clock, idle_poll_s=0.01)
    store.down = True
    await store.schedule([DueWork("k", "sla", NOW)])
    async with running(runner) as task:
        await asyncio.sleep(0.2)  # several failed rounds
        assert firing.fired == []
        assert not task.done()
        store.down = False
        await fired_keys(firing, ["k"])


async def test_a_lost_lease_gives_the_batch_back_without_an_attempt() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock)
    firing.failing = {"k"}
    firing.error = LeaseLost(["k"])
    await store.schedule([DueWork("k", "sla", NOW)])
    async with running(runner):
        await eventually(lambda: _calls(firing), lambda n: n >= 3, timeout_s=5)
        firing.failing = set()
        await fired_keys(firing, ["k"])
    assert all(call == ["k"] for call in firing.calls)  # never split up: not the item's fault


async def _calls(firing: Firing) -> int:
    return len(firing.calls)


async def test_stop_is_prompt_while_the_runner_sleeps() -> None:
    _, _, runner = make(MovableClock(), idle_poll_s=60.0)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await asyncio.wait_for(runner.stop(), timeout=5)
    assert time.monotonic() - started < 5.0  # not the minute it was sleeping for
    assert task.done()
    await task


async def test_a_stop_before_the_run_began_is_not_lost() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock, idle_poll_s=60.0)
    await store.schedule([DueWork("k", "sla", NOW)])
    task = asyncio.create_task(runner.run())
    await runner.stop()  # the task has not started yet
    await asyncio.wait_for(task, timeout=1)
    assert firing.fired == []


async def test_stop_lets_the_batch_in_hand_commit() -> None:
    clock = MovableClock()
    store, firing, runner = make(clock)
    entered = asyncio.Event()
    release = asyncio.Event()
    plain = firing.__call__

    async def slow_fire(batch: list[ClaimedWork]) -> None:
        entered.set()
        await release.wait()
        await plain(batch)

    runner._fire = slow_fire  # a slow fire, to stop in the middle of one
    await store.schedule([DueWork("k", "sla", NOW)])
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(entered.wait(), timeout=5)
    stopping = asyncio.create_task(runner.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, timeout=5)
    await task
    assert firing.keys() == ["k"]
    assert store.items == {}


async def test_stop_returns_after_its_grace_when_a_database_call_hangs() -> None:
    clock = MovableClock()
    store, _, runner = make(clock)
    entered = asyncio.Event()

    async def hanging_fire(batch: list[ClaimedWork]) -> None:
        entered.set()
        await asyncio.Event().wait()  # a database that never answers

    runner._fire = hanging_fire
    await store.schedule([DueWork("k", "sla", NOW)])
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(entered.wait(), timeout=5)
    await asyncio.wait_for(runner.stop(grace_s=0.2), timeout=5)  # shutdown is not held
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class _ClaimSwallowingTheCancel(InMemoryDueWork):
    """A claim in flight when the task is cancelled ends in a connection error instead."""

    def __init__(self) -> None:
        super().__init__()
        self.claiming = CancelSwallowed(AutoReconnect("connection closed while cancelling"))

    async def claim(self, **options: Any) -> list[ClaimedWork]:
        await self.claiming.call()
        return await super().claim(**options)


async def test_a_cancelled_runner_ends_even_when_the_driver_swallows_the_cancel() -> None:
    store = _ClaimSwallowingTheCancel()
    firing = Firing(store, utc_now)
    runner = DueWorkRunner(store, kinds={"sla"}, fire=firing, clock=utc_now, idle_poll_s=30.0)
    # Without the stop check the runner takes the error for an outage and pauses 30 s.
    await store.claiming.cancel_once_started(asyncio.create_task(runner.run()))
