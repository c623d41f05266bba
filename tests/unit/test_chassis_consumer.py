"""The batch consumer pipeline on in-memory parts: poison isolated, order kept, outages paused."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import pytest
from aiokafka import TopicPartition
from pydantic import Field, TypeAdapter
from pymongo.errors import ConnectionFailure

from leadflow.chassis.consumer import BatchPipeline
from shared.events import Attribution, Contact, Event, LeadLostV1, LeadReceivedV1

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TOPIC = "intake.lead-received.v1"
Consumed = Annotated[LeadReceivedV1 | LeadLostV1, Field(discriminator="event_type")]
PARSE = TypeAdapter[Event](Consumed).validate_json


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int = int(NOW.timestamp() * 1000)
    headers: tuple[tuple[str, bytes], ...] = ()


class FakeConsumer:
    def __init__(self, partitions: set[TopicPartition]) -> None:
        self.assigned = set(partitions)
        self.paused: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused -= set(partitions)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)


def received(lead_id: str) -> bytes:
    event = LeadReceivedV1(
        lead_id=lead_id,
        occurred_at=NOW,
        contact=Contact(name="x"),
        attribution=Attribution(source="s", channel="web_form"),
    )
    return event.model_dump_json().encode()


def records(*values: bytes, partition: int = 0) -> list[FakeRecord]:
    return [FakeRecord(TOPIC, partition, offset, value) for offset, value in enumerate(values)]


class Harness:
    def __init__(self, *, fail_on: frozenset[str] = frozenset(), max_attempts: int = 3) -> None:
        self.fail_on = set(fail_on)
        self.calls: list[list[str]] = []
        self.handled: list[str] = []
        self.parked: list[tuple[str, bytes, dict[str, str]]] = []
        self.database_up = True
        self.outages = 0
        self.pipeline = BatchPipeline(
            "test",
            parse=PARSE,
            handle=self.handle,
            publish=self.publish,
            dependencies_up=self.up,
            max_attempts=max_attempts,
            backoff_s=0,
            handled_retention=timedelta(days=8),
            clock=lambda: NOW,
            max_pause_check_s=0.01,
        )

    async def handle(self, events: list[Event]) -> None:
        ids = [event.lead_id for event in events]
        self.calls.append(ids)
        if self.outages:
            self.outages -= 1
            raise ConnectionFailure("mongo is restarting")
        if self.fail_on & set(ids):
            raise RuntimeError("database on fire")
        self.handled.extend(ids)  # one transaction: all of the batch, or nothing

    async def publish(
        self, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]
    ) -> None:
        self.parked.append((topic, value, headers))

    async def up(self) -> bool:
        return self.database_up


async def test_a_batch_is_handled_in_one_call_in_order_and_committed() -> None:
    harness = Harness()
    consumer = FakeConsumer({TopicPartition(TOPIC, 0)})
    batch = records(*(received(f"L{i}") for i in range(5)))
    await harness.pipeline.consume(batch, consumer)
    assert harness.calls == [["L0", "L1", "L2", "L3", "L4"]]
    assert consumer.committed == {TopicPartition(TOPIC, 0): 5}


async def test_a_poison_event_is_isolated_and_only_it_is_parked() -> None:
    harness = Harness(fail_on=frozenset({"L5"}))
    consumer = FakeConsumer({TopicPartition(TOPIC, 0)})
    batch = records(*(received(f"L{i}") for i in range(8)))
    await harness.pipeline.consume(batch, consumer)
    assert harness.handled == ["L0", "L1", "L2", "L3", "L4", "L6", "L7"]  # order kept
    assert [call for call in harness.calls if call == ["L5"]] == [["L5"]] * 3  # 3 attempts
    [(topic, _, headers)] = harness.parked
    assert topic == "intake.lead-received.v1.dlq"
    assert headers["x-dlq-error"] == "RuntimeError: database on fire"
    assert headers["x-dlq-offset"] == "5"
    assert headers["x-dlq-attempts"] == "3"
    assert consumer.committed == {TopicPartition(TOPIC, 0): 8}


async def test_records_that_are_not_events_are_parked_without_failing_the_batch() -> None:
    harness = Harness()
    consumer = FakeConsumer({TopicPartition(TOPIC, 0)})
    bad_level = b'{"lead_id": "L9", "level": 7, "event_type": "lead-lost"}'
    batch = records(received("L0"), b"{not json", bad_level, received("L3"))
    await harness.pipeline.consume(batch, consumer)
    assert harness.calls == [["L0", "L3"]]
    errors = [headers["x-dlq-error"] for _, _, headers in harness.parked]
    assert errors[0].startswith("not JSON")
    assert "level" in errors[1]
    assert [headers["x-dlq-attempts"] for _, _, headers in harness.parked] == ["1", "1"]


async def test_an_unreachable_database_pauses_the_consumer_and_hands_the_batch_back() -> None:
    harness = Harness()
    harness.outages = 1
    harness.database_up = False
    partitions = {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}
    consumer = FakeConsumer(partitions)
    batch = [*records(received("A"), received("B")), FakeRecord(TOPIC, 1, 7, received("C"))]
    batch[0].offset, batch[1].offset = 3, 4
    await harness.pipeline.consume(batch, consumer)
    assert harness.parked == []  # an outage is not poison
    assert consumer.committed == {}
    assert consumer.positions == {TopicPartition(TOPIC, 0): 3, TopicPartition(TOPIC, 1): 7}
    assert consumer.paused == partitions
    assert harness.pipeline.paused
    harness.database_up = True
    for _ in range(100):
        if not consumer.paused:
            break
        await asyncio.sleep(0.01)
    assert consumer.paused == set()
    await harness.pipeline.consume(batch, consumer)  # delivered again after the seek
    assert harness.handled == ["A", "B", "C"]


async def test_partitions_assigned_during_an_outage_stay_paused() -> None:
    harness = Harness()
    harness.outages = 1
    harness.database_up = False
    consumer = FakeConsumer({TopicPartition(TOPIC, 0)})
    await harness.pipeline.consume(records(received("A")), consumer)
    new = {TopicPartition(TOPIC, 3)}
    consumer.assigned |= new
    harness.pipeline.take_over(consumer, new)
    assert TopicPartition(TOPIC, 3) in consumer.paused
    await harness.pipeline.stop()


async def test_an_outage_while_bisecting_hands_the_whole_batch_back() -> None:
    harness = Harness(fail_on=frozenset({"L1"}))
    consumer = FakeConsumer({TopicPartition(TOPIC, 0)})

    async def handle(events: list[Event]) -> None:
        ids = [event.lead_id for event in events]
        harness.calls.append(ids)
        if "L3" in ids and "L1" not in ids:
            raise ConnectionFailure("gone mid-way")
        if "L1" in ids:
            raise RuntimeError("poison")
        harness.handled.extend(ids)

    harness.pipeline._handle = handle
    harness.database_up = False
    await harness.pipeline.consume(records(*(received(f"L{i}") for i in range(4))), consumer)
    assert harness.handled == ["L0"]  # committed before the outage; the inbox will skip it
    assert len(harness.parked) == 1  # the poison one, found before the outage
    assert consumer.committed == {}
    assert consumer.positions == {TopicPartition(TOPIC, 0): 0}
    await harness.pipeline.stop()


async def test_a_record_older_than_the_inbox_remembers_is_skipped() -> None:
    harness = Harness()
    consumer = FakeConsumer({TopicPartition(TOPIC, 0)})
    old = FakeRecord(TOPIC, 0, 0, received("ancient"))
    old.timestamp = int((NOW - timedelta(days=9)).timestamp() * 1000)
    await harness.pipeline.consume([old, FakeRecord(TOPIC, 0, 1, received("new"))], consumer)
    assert harness.handled == ["new"]
    assert consumer.committed == {TopicPartition(TOPIC, 0): 2}


def committing_every(seconds: float, harness: Harness, ticks: list[float]) -> BatchPipeline:
    """A pipeline on `harness` that commits at most every `seconds` of `ticks[0]`."""
    return BatchPipeline(
        "test",
        parse=PARSE,
        handle=harness.handle,
        publish=harness.publish,
        dependencies_up=harness.up,
        max_attempts=3,
        backoff_s=0,
        handled_retention=timedelta(days=8),
        clock=lambda: NOW,
        commit_interval_s=seconds,
        monotonic=lambda: ticks[0],
    )


async def test_offsets_are_committed_at_most_once_per_interval_and_at_stop() -> None:
    harness = Harness()
    ticks = [0.0]
    pipeline = committing_every(1.0, harness, ticks)
    partition = TopicPartition(TOPIC, 0)
    consumer = FakeConsumer({partition})
    commits: list[dict[TopicPartition, int]] = []
    original = consumer.commit

    async def counting(offsets: dict[TopicPartition, int]) -> None:
        commits.append(dict(offsets))
        await original(offsets)

    consumer.commit = counting  # type: ignore[method-assign]
    await pipeline.consume([FakeRecord(TOPIC, 0, 0, received("a"))], consumer)
    ticks[0] = 0.5
    await pipeline.consume([FakeRecord(TOPIC, 0, 1, received("b"))], consumer)
    assert commits == [{partition: 1}]  # the second batch waits for the interval
    ticks[0] = 1.2
    await pipeline.consume([FakeRecord(TOPIC, 0, 2, received("c"))], consumer)
    assert commits == [{partition: 1}, {partition: 3}]
    ticks[0] = 1.3
    await pipeline.consume([FakeRecord(TOPIC, 0, 3, received("d"))], consumer)
    await pipeline.stop(consumer)
    assert commits[-1] == {partition: 4}  # nothing handled is left uncommitted at stop
    assert harness.handled == ["a", "b", "c", "d"]


async def test_reassigned_partitions_drop_offsets_handled_before_and_remember_the_last_event() -> (
    None
):
    harness = Harness()
    ticks = [0.0]
    pipeline = committing_every(60.0, harness, ticks)
    partition = TopicPartition(TOPIC, 0)
    consumer = FakeConsumer({partition})
    first = FakeRecord(TOPIC, 0, 7, received("a"), headers=(("event-id", b"e-7"),))
    await pipeline.consume([first], consumer)  # committed: the first commit is due at once
    await pipeline.consume([FakeRecord(TOPIC, 0, 8, received("b"))], consumer)
    assert consumer.committed == {partition: 8}
    assert pipeline.last_handled[partition] == (8, None)
    # The broker came back empty and the group was joined again: offset 9 belongs to the
    # old log and must not be committed into the new one.
    pipeline.take_over(consumer, {partition})
    await pipeline.stop(consumer)
    assert consumer.committed == {partition: 8}
