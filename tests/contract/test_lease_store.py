"""Named leases on the real server: holders racing for a lease never both hold it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from leadflow.chassis.store import LeaseStore
from tests.contract.conftest import MongoParts

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TTL = timedelta(seconds=30)


async def test_holders_racing_for_a_new_lease_give_it_to_one(parts: MongoParts) -> None:
    leases = LeaseStore(parts.database)
    # Eight replicas starting at once on 20 leases never taken before: the race of creating
    # the lease document is met every time, not once.
    for n in range(20):
        name = f"relay-{n}"
        taken = await asyncio.gather(*(leases.take(name, f"r{i}", NOW, TTL) for i in range(8)))
        holders = [f"r{i}" for i, won in enumerate(taken) if won]
        assert len(holders) == 1, f"{name}: held by {holders}"
        assert (await leases.holder(name) or {}).get("holder") == holders[0]


async def test_a_lease_is_renewed_by_its_holder_and_taken_over_once_it_lapses(
    parts: MongoParts,
) -> None:
    leases = LeaseStore(parts.database)
    assert await leases.take("relay", "r0", NOW, TTL)
    assert not await leases.take("relay", "r1", NOW + timedelta(seconds=10), TTL)
    assert await leases.take("relay", "r0", NOW + timedelta(seconds=20), TTL)
    assert not await leases.take("relay", "r1", NOW + timedelta(seconds=49), TTL)
    assert await leases.take("relay", "r1", NOW + timedelta(seconds=50), TTL)
    await leases.release("relay", "r0")  # not its holder any more: changes nothing
    assert not await leases.take("relay", "r0", NOW + timedelta(seconds=51), TTL)
    await leases.release("relay", "r1")
    assert await leases.take("relay", "r0", NOW + timedelta(seconds=52), TTL)
