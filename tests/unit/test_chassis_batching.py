"""Group commit and the configuration cache on in-memory parts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from leadflow.chassis.batching import GroupCommit, StoppingError
from leadflow.chassis.config_cache import VersionedCache
from tests.support.cancellation import CancelSwallowed

pytestmark = pytest.mark.unit


class Committer:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def commit(self, items: list[int]) -> Sequence[int | Exception]:
        self.batches.append(items)
        await asyncio.sleep(0.01)  # a transaction takes a while; more requests gather
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_requests_arriving_together_are_committed_together() -> None:
    committer = Committer()
    group = GroupCommit(committer.commit, max_batch=50, name="test")
    results = await asyncio.gather(*(group.submit(i) for i in range(100)), return_exceptions=True)
    await group.stop()
    assert [r for r in results if isinstance(r, int)] == [i * 10 for i in range(0, 100, 2)]
    assert [str(r) for r in results if isinstance(r, Exception)] == [
        f"odd {i}" for i in range(1, 100, 2)
    ]
    assert sorted(i for batch in committer.batches for i in batch) == list(range(100))
    assert len(committer.batches) <= 4  # not 100 transactions
    assert max(len(batch) for batch in committer.batches) <= 50


async def test_a_lone_request_is_committed_at_once() -> None:
    committer = Committer()
    group = GroupCommit(committer.commit, max_batch=50, name="test")
    assert await asyncio.wait_for(group.submit(2), timeout=1) == 20
    await group.stop()


async def test_a_failed_commit_fails_every_request_in_it_and_the_next_one_works() -> None:
    calls = []

    async def commit(items: list[int]) -> Sequence[int | Exception]:
        calls.append(items)
        if len(calls) == 1:
            raise ConnectionError("database down")
        return items

    group = GroupCommit(commit, max_batch=10, name="test")
    with pytest.raises(ConnectionError):
        await group.submit(1)
    assert await group.submit(2) == 2
    await group.stop()


async def test_configuration_is_read_once_until_its_version_moves() -> None:
    version, ticks = [1], [0.0]
    loaded: list[int] = []
    version_reads = [0]

    async def read_version() -> int:
        version_reads[0] += 1
        return version[0]

    async def load() -> str:
        loaded.append(version[0])
        return f"config v{version[0]}"

    cache = VersionedCache(read_version, load, max_age_s=1.0, monotonic=lambda: ticks[0])
    for _ in range(100):
        assert await cache.get() == "config v1"
    assert (loaded, version_reads[0]) == ([1], 1)
    ticks[0] = 2.0
    assert await cache.get() == "config v1"  # version checked, unchanged: not reloaded
    assert (loaded, version_reads[0]) == ([1], 2)
    version[0] = 2  # another replica changed it
    assert await cache.get() == "config v1"  # within max_age: not looked at yet
    ticks[0] = 3.5
    assert await cache.get() == "config v2"
    version[0] = 3  # this replica changed it
    cache.invalidate()
    assert await cache.get() == "config v3"
    assert loaded == [1, 2, 3]


async def test_stopping_commits_what_is_queued_then_refuses_new_requests() -> None:
    committer = Committer()
    group = GroupCommit(committer.commit, max_batch=5, name="test")
    pending = [asyncio.create_task(group.submit(i)) for i in range(0, 40, 2)]
    await asyncio.sleep(0)  # queued
    await group.stop()
    assert [await task for task in pending] == [i * 10 for i in range(0, 40, 2)]
    with pytest.raises(StoppingError):
        await group.submit(2)


async def test_a_change_made_while_the_configuration_is_being_read_is_seen_next() -> None:
    version = [1]
    reading = asyncio.Event()
    release = asyncio.Event()

    async def read_version() -> int:
        return version[0]

    async def load() -> str:
        value = f"config v{version[0]}"
        if not reading.is_set():
            reading.set()
            await release.wait()  # the change commits while this read is in flight
        return value

    cache = VersionedCache(read_version, load, max_age_s=60.0)
    first = asyncio.create_task(cache.get())
    await reading.wait()
    version[0] = 2  # this replica changed the configuration ...
    cache.invalidate()  # ... and invalidated the cache before the read came back
    release.set()
    assert await first == "config v1"
    assert await cache.get() == "config v2"


async def test_stopping_ends_even_when_the_commit_in_flight_swallows_the_cancel() -> None:
    commit_in_flight = CancelSwallowed(ConnectionError("connection closed while cancelling"))

    async def commit(items: list[int]) -> Sequence[int | Exception]:
        await commit_in_flight.call()
        return items

    group = GroupCommit(commit, max_batch=10, name="test")
    request = asyncio.create_task(group.submit(1))
    async with asyncio.timeout(5):
        await commit_in_flight.started.wait()
    # Not committed within 0.1 s: the worker is cancelled. Without the stop check it takes
    # the error for a failed commit and waits for the next request for ever.
    async with asyncio.timeout(2):
        await group.stop(timeout_s=0.1)
    with pytest.raises(ConnectionError):
        await request
