"""The outbox relay and its lease on in-memory parts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from leadflow.chassis.lease import Lease
from leadflow.chassis.outbox import Message, OutboxRelay
from leadflow.chassis.store import LogPosition, OutboxRecord
from tests.support.cancellation import CancelSwallowed

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TOPIC = "intake.lead-received.v1"


class FakeLeases:
    """The lease document's rules, in memory: one holder until it expires."""

    def __init__(self) -> None:
        self.documents: dict[str, tuple[str, datetime]] = {}

    async def take(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        current = self.documents.get(name)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self.documents[name] = (holder, now + ttl)
        return True

    async def release(self, name: str, holder: str) -> None:
        if self.documents.get(name, ("", NOW))[0] == holder:
            del self.documents[name]


class FakeOutbox:
    def __init__(self, count: int) -> None:
        # Sequence numbers deliberately out of insertion order: commit order wins.
        self.records = [
            OutboxRecord(f"r{i}", TOPIC, f"L{i}", f"e{i}", "lead-received", b"{}", sequence=i)
            for i in reversed(range(count))
        ]
        self.positions: dict[str, LogPosition] = {}

    async def pending(self, limit: int) -> list[OutboxRecord]:
        waiting = [r for r in self.records if r.record_id not in self.positions]
        return sorted(waiting, key=lambda r: r.sequence)[:limit]

    async def mark_published(
        self, published: Sequence[tuple[OutboxRecord, LogPosition | None]], now: datetime
    ) -> None:
        for record, position in published:
            assert position is not None
            self.positions[str(record.record_id)] = position

    async def log_positions(self) -> list[LogPosition]:
        furthest: dict[tuple[str, int], LogPosition] = {}
        for position in self.positions.values():
            key = (position.topic, position.partition)
            if key not in furthest or furthest[key].offset < position.offset:
                furthest[key] = position
        return list(furthest.values())

    async def forget_published(self, older_than: datetime) -> int:
        return 0

    def reload_position(self) -> None:
        return None

    async def republish_from(self, topic: str, partition: int, offset: int) -> int:
        lost = [
            record_id
            for record_id, p in self.positions.items()
            if (p.topic, p.partition) == (topic, partition) and p.offset >= offset
        ]
        for record_id in lost:
            del self.positions[record_id]
        return len(lost)


class FakeKafka:
    """One partition; `failures` publish attempts fail first; `log` is what it holds."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.log: list[Message] = []
        self.sent = 0

    async def publish_batch(self, messages: Sequence[Message]) -> list[LogPosition | None]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("kafka is down")
        positions: list[LogPosition | None] = []
        for message in messages:
            self.log.append(message)
            positions.append(LogPosition(message[0], 0, len(self.log) - 1))
        self.sent += len(messages)
        return positions

    async def lost_from(self, furthest: Sequence[LogPosition]) -> list[LogPosition]:
        return [replace(p, offset=len(self.log)) for p in furthest if p.offset >= len(self.log)]

    def published_keys(self) -> list[bytes | None]:
        return [message[2] for message in self.log]


def relay_for(
    outbox: FakeOutbox,
    kafka: FakeKafka,
    leases: FakeLeases | None = None,
    *,
    batch_size: int = 2,
    ttl_s: float = 0.3,
) -> OutboxRelay:
    clock = datetime.now  # the lease compares wall-clock expiry across relays
    lease = Lease(leases or FakeLeases(), "outbox-relay", ttl_s=ttl_s, clock=lambda: clock(UTC))
    return OutboxRelay(
        "test",
        outbox,
        kafka,
        lease,
        poll_interval_s=0.01,
        batch_size=batch_size,
        max_backoff_s=0.02,
        clock=lambda: NOW,
    )


async def run_until(
    condition: Callable[[], bool], *relays: OutboxRelay, timeout_s: float = 5.0
) -> None:
    ready = asyncio.Event()
    ready.set()
    tasks = [asyncio.create_task(relay.run(ready)) for relay in relays]
    try:
        for _ in range(int(timeout_s / 0.01)):
            if condition():
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"not reached within {timeout_s}s")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_relay_publishes_in_commit_order_keyed_by_lead() -> None:
    outbox, kafka = FakeOutbox(5), FakeKafka()
    await run_until(lambda: kafka.sent == 5, relay_for(outbox, kafka))
    assert kafka.published_keys() == [b"L0", b"L1", b"L2", b"L3", b"L4"]
    assert kafka.log[0][3]["event-id"] == "e0"


async def test_events_wait_in_the_outbox_while_kafka_is_down() -> None:
    outbox, kafka = FakeOutbox(3), FakeKafka(failures=3)
    await run_until(lambda: kafka.sent == 3, relay_for(outbox, kafka, batch_size=10))
    assert kafka.published_keys() == [b"L0", b"L1", b"L2"]


async def test_two_replicas_relay_through_one_lease_and_publish_nothing_twice() -> None:
    outbox, kafka, leases = FakeOutbox(40), FakeKafka(), FakeLeases()
    first, second = relay_for(outbox, kafka, leases), relay_for(outbox, kafka, leases)
    await run_until(lambda: kafka.sent == 40, first, second)
    assert kafka.published_keys() == [f"L{i}".encode() for i in range(40)]
    assert sum(relay.lease.held() for relay in (first, second)) == 1


async def test_a_replica_takes_over_within_the_lease_when_the_holder_dies() -> None:
    outbox, kafka, leases = FakeOutbox(2), FakeKafka(), FakeLeases()
    holder = relay_for(outbox, kafka, leases)
    await run_until(lambda: kafka.sent == 2, holder)  # the task is cancelled: it "died"
    assert "outbox-relay" in leases.documents  # not released: the lease must lapse
    outbox.records.append(OutboxRecord("late", TOPIC, "L9", "e9", "lead-received", b"{}", 9))
    successor = relay_for(outbox, kafka, leases)
    started = asyncio.get_running_loop().time()
    await run_until(lambda: kafka.sent == 3, successor)
    assert asyncio.get_running_loop().time() - started < 1.0  # within seconds (ttl 0.3 s)
    assert kafka.published_keys()[-1] == b"L9"


async def test_a_stopped_relay_hands_the_lease_over_at_once() -> None:
    leases = FakeLeases()
    relay = relay_for(FakeOutbox(0), FakeKafka(), leases, ttl_s=60)
    assert await relay.lease.hold()
    await relay.stop()
    other = relay_for(FakeOutbox(0), FakeKafka(), leases, ttl_s=60)
    assert await other.lease.hold()


async def test_what_the_log_lost_is_published_again() -> None:
    outbox, kafka = FakeOutbox(6), FakeKafka()
    relay = relay_for(outbox, kafka, batch_size=10)
    await run_until(lambda: kafka.sent == 6, relay)
    del kafka.log[3:]  # the broker came back without its last three records
    assert await relay.audit_log() == 3
    await run_until(lambda: kafka.sent == 9, relay)
    assert kafka.published_keys() == [b"L0", b"L1", b"L2", b"L3", b"L4", b"L5"]


async def test_a_lease_is_renewed_before_it_expires_and_lost_when_taken() -> None:
    leases, wall = FakeLeases(), [NOW]
    ticks = [0.0]
    lease = Lease(leases, "x", ttl_s=10, clock=lambda: wall[0], monotonic=lambda: ticks[0])
    other = Lease(leases, "x", ttl_s=10, clock=lambda: wall[0], monotonic=lambda: ticks[0])
    assert await lease.hold()
    assert not await other.hold()
    ticks[0], wall[0] = 5.0, NOW + timedelta(seconds=5)
    assert await lease.hold()  # renewed: valid until 15 s
    ticks[0], wall[0] = 12.0, NOW + timedelta(seconds=12)
    assert not await other.hold()
    ticks[0], wall[0] = 30.0, NOW + timedelta(seconds=30)  # the holder stopped renewing
    assert not lease.held()
    assert await other.hold()
    assert not await lease.hold()


async def test_offsets_given_out_again_after_a_restart_requeue_what_was_written_over() -> None:
    outbox, kafka = FakeOutbox(4), FakeKafka()
    relay = relay_for(outbox, kafka, batch_size=10)
    await run_until(lambda: kafka.sent == 4, relay)
    kafka.log.clear()  # a broker that restarted at offset 0 over its old records
    outbox.records.append(OutboxRecord("new", TOPIC, "L9", "e9", "lead-received", b"{}", 9))
    await run_until(lambda: len(kafka.log) >= 6, relay)
    # The new record took offset 0 again: the four before it went out again (and the new
    # one with them, its batch having been written over too).
    assert kafka.published_keys() == [b"L9", b"L0", b"L1", b"L2", b"L3", b"L9"]


class KafkaSwallowingTheCancel(FakeKafka):
    """A publish in flight when the task is cancelled ends in a connection error instead."""

    def __init__(self) -> None:
        super().__init__()
        self.publishing = CancelSwallowed(ConnectionError("connection closed while cancelling"))

    async def publish_batch(self, messages: Sequence[Message]) -> list[LogPosition | None]:
        await self.publishing.call()
        return await super().publish_batch(messages)


async def test_a_cancelled_relay_ends_even_when_the_client_swallows_the_cancel() -> None:
    kafka = KafkaSwallowingTheCancel()
    ready = asyncio.Event()
    ready.set()
    # Without the stop check the relay takes the error for an outage and publishes again.
    await kafka.publishing.cancel_once_started(
        asyncio.create_task(relay_for(FakeOutbox(3), kafka).run(ready))
    )
    assert kafka.sent == 0
