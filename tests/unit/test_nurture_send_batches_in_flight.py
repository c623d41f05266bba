"""Send batches in flight together on one replica (the runner's `in_flight`): their commits
go one at a time, batches that finished sending meanwhile commit in one transaction, and a
batch whose commit fails (a lost lease) fails alone while the others commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from leadflow.chassis.duework import ClaimedWork, LeaseLost
from services.nurture.rules import SEND_KIND, EnrollmentStatus
from services.nurture.store import Work
from shared.events import Event, MessageSentV1
from tests.unit.test_nurture_sending import World, email

pytestmark = pytest.mark.unit


async def three_batches(world: World) -> list[list[ClaimedWork]]:
    sequence_id = await world.sequence(email(0))
    for lead_id in ("a", "b", "c"):
        await world.lead(lead_id)
        await world.enroll(lead_id, sequence_id)
    return [
        await world.store.due.claim(
            kinds={SEND_KIND},
            now=world.clock.now,
            limit=1,
            lease=timedelta(seconds=30),
            token=token,
        )
        for token in ("t1", "t2", "t3")
    ]


def slow_commits(world: World) -> list[int]:
    """Every transaction takes a moment (as on a real server); returns, as it grows, how
    many events each transaction that published any published."""
    published: list[int] = []
    original = world.store.commit

    async def commit(work: Work[Any]) -> Any:
        async def counted(transaction: Any) -> tuple[Any, Sequence[Event]]:
            result, events = await work(transaction)
            if events:
                published.append(len(events))
            return result, events

        await asyncio.sleep(0.05)
        return await original(counted)

    world.store.commit = commit  # type: ignore[method-assign]
    return published


async def test_batches_sent_while_another_commits_are_committed_together() -> None:
    world = World()
    batches = await three_batches(world)
    published = slow_commits(world)
    fire = world.replica()._fire
    results = await asyncio.gather(*(fire(b) for b in batches), return_exceptions=True)
    assert results == [None, None, None]
    # The first commits alone; the two that were sent while it committed, together.
    assert published == [1, 2]
    assert len(world.published(MessageSentV1)) == 3
    for lead_id in ("a", "b", "c"):
        assert (await world.enrollment(lead_id)).status is EnrollmentStatus.COMPLETED


async def test_a_batch_whose_lease_was_lost_fails_alone() -> None:
    world = World()
    batches = await three_batches(world)
    published = slow_commits(world)
    # The third batch's timer is taken away (cancelled) while it is in hand.
    await world.store.due.cancel([batches[2][0].work.key])
    fire = world.replica()._fire
    results = await asyncio.gather(*(fire(b) for b in batches), return_exceptions=True)
    assert results[:2] == [None, None]
    assert isinstance(results[2], LeaseLost)
    # Tried together with the third, then each on its own: only the second commits.
    assert published == [1, 1]
    first, second, lost = (lead_of(world, batch) for batch in batches)
    assert {e.lead_id for e in world.published(MessageSentV1)} == {first, second}
    assert (await world.enrollment(second)).status is EnrollmentStatus.COMPLETED
    assert (await world.enrollment(lost)).current_step == 0  # not moved on by a lost commit


def lead_of(world: World, batch: list[ClaimedWork]) -> str:
    [claimed] = batch
    return world.store.tables.enrollments[str(claimed.work.payload["enrollment_id"])].lead_id
