"""The live feed: each listener gets its own person's entries once, in order, resumes
after a `Last-Event-ID`, and is let go (to reconnect and catch up) when it lags too far."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

import pytest

from services.assignment.notifications.rules import FeedEntry
from services.assignment.notifications.usecases import LiveFeed, StreamOverflowError

pytestmark = pytest.mark.unit

AT = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


class Feed:
    """Entries numbered in commit order, as `notification_feed` keeps them."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, FeedEntry]] = []

    def commit(self, person_id: str, lead_id: str) -> int:
        number = len(self.entries) + 1
        self.entries.append((number, FeedEntry(person_id, "lead-assigned", lead_id, AT)))
        return number

    async def feed_after(
        self, position: int, *, person_id: str | None = None, limit: int = 500
    ) -> list[tuple[int, FeedEntry]]:
        found = [
            (n, e)
            for n, e in self.entries
            if n > position and (person_id is None or e.person_id == person_id)
        ]
        return found[:limit]

    async def feed_position(self) -> int:
        return len(self.entries)


async def take(stream: AsyncGenerator[tuple[int, FeedEntry]], count: int) -> list[str]:
    return [(await asyncio.wait_for(anext(stream), timeout=5))[1].lead_id for _ in range(count)]


@pytest.fixture
async def feed() -> AsyncGenerator[tuple[Feed, LiveFeed]]:
    source = Feed()
    live = LiveFeed(source, poll_interval_s=0.01, listener_backlog=5)
    running = asyncio.create_task(live.run())
    yield source, live
    await live.stop()
    await running


async def test_each_listener_gets_only_its_own_entries_in_commit_order(
    feed: tuple[Feed, LiveFeed],
) -> None:
    source, live = feed
    rita, sam = live.follow("rita", after=None), live.follow("sam", after=None)
    first = asyncio.ensure_future(take(rita, 2))
    other = asyncio.ensure_future(take(sam, 1))
    await asyncio.sleep(0.05)
    for person, lead in [("rita", "l1"), ("sam", "l2"), ("rita", "l3")]:
        source.commit(person, lead)

    assert await first == ["l1", "l3"]
    assert await other == ["l2"]
    await rita.aclose()
    await sam.aclose()
    assert live.listeners == 0


async def test_a_listener_resuming_after_an_id_gets_what_it_missed_then_what_follows(
    feed: tuple[Feed, LiveFeed],
) -> None:
    source, live = feed
    seen = source.commit("rita", "l1")
    source.commit("rita", "l2")
    source.commit("sam", "other")
    resumed = live.follow("rita", after=seen)

    missed = await take(resumed, 1)
    source.commit("rita", "l3")
    then = await take(resumed, 1)
    await resumed.aclose()

    assert (missed, then) == (["l2"], ["l3"])


async def test_a_listener_that_lags_too_far_is_let_go(feed: tuple[Feed, LiveFeed]) -> None:
    source, live = feed
    slow = live.follow("rita", after=None)
    first = asyncio.ensure_future(take(slow, 1))
    await asyncio.sleep(0.05)
    for i in range(20):  # more than its backlog of 5, while it reads nothing
        source.commit("rita", f"l{i}")
        await asyncio.sleep(0.02)

    assert await first == ["l0"]
    with pytest.raises(StreamOverflowError):
        await take(slow, 20)
