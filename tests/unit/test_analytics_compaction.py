"""The background compaction keeps folding when a fold of its full size is too slow."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from pymongo.errors import AutoReconnect, ExecutionTimeout

from leadflow.chassis.lease import Lease
from services.analytics.store import AnalyticsStore
from services.analytics.usecases import CompactRollups
from tests.support.cancellation import CancelSwallowed

pytestmark = pytest.mark.unit


class _SlowServer:
    """Deltas waiting to be folded; a fold of more than `limit` times out."""

    def __init__(self, waiting: int, limit: int) -> None:
        self.waiting = waiting
        self.limit = limit
        self.asked: list[int] = []
        self.drained = asyncio.Event()

    async def compact(self, max_batches: int) -> int:
        self.asked.append(max_batches)
        if max_batches > self.limit:
            raise ExecutionTimeout("operation exceeded time limit")
        folded = min(max_batches, self.waiting)
        self.waiting -= folded
        if not self.waiting:
            self.drained.set()
        return folded


class _HeldLease:
    async def hold(self) -> bool:
        return True

    async def release(self) -> None:
        return None


async def test_a_fold_too_big_for_the_server_is_halved_until_it_passes() -> None:
    server = _SlowServer(waiting=500, limit=30)
    compactor = CompactRollups(
        cast(AnalyticsStore, server),
        cast(Lease, _HeldLease()),
        interval_s=0.001,
        max_batches=100,
    )
    task = asyncio.create_task(compactor.run())
    try:
        async with asyncio.timeout(5):
            await server.drained.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert compactor.folded == 500
    assert server.asked[:3] == [100, 50, 25]
    assert max(n for n in server.asked if n <= server.limit) == 25


class _ServerSwallowingTheCancel:
    """A fold in flight when the task is cancelled ends in a connection error instead."""

    def __init__(self) -> None:
        self.fold = CancelSwallowed(AutoReconnect("connection closed while cancelling"))

    async def compact(self, max_batches: int) -> int:
        await self.fold.call()
        return max_batches


async def test_a_cancelled_compaction_ends_even_when_the_driver_swallows_the_cancel() -> None:
    server = _ServerSwallowingTheCancel()
    compactor = CompactRollups(
        cast(AnalyticsStore, server), cast(Lease, _HeldLease()), interval_s=60, max_batches=10
    )
    # Without the stop check the loop logs an outage and sleeps its 60 s interval, and a
    # shutdown awaiting it hangs.
    await server.fold.cancel_once_started(asyncio.create_task(compactor.run()))
