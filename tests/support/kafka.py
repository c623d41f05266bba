"""Talk to the test broker directly: publish an event as a producer would, read a topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from shared.events import Event
from shared.topics import ALL_TOPICS, topic_for


async def publish_raw(
    bootstrap: str, topic: str, value: bytes, key: str, headers: dict[str, str] | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            value,
            key=key.encode(),
            headers=[(k, v.encode()) for k, v in (headers or {}).items()],
        )
    finally:
        await producer.stop()


async def publish_event(bootstrap: str, event: Event) -> None:
    await publish_raw(
        bootstrap,
        topic_for(event),
        event.model_dump_json().encode(),
        event.lead_id,
        {"content-type": "application/json"},
    )


async def read_topic(
    bootstrap: str, topic: str, *, until: int = 1, timeout_s: float = 20.0
) -> list[tuple[bytes, dict[str, str]]]:
    """Read `topic` from the beginning until `until` messages or `timeout_s` have passed."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-reader-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[tuple[bytes, dict[str, str]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < until and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                found.extend((r.value, {k: v.decode() for k, v in r.headers}) for r in records)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return found


async def read_all(bootstrap: str, topic: str) -> list[tuple[bytes, dict[str, str]]]:
    """Everything on `topic` up to its current end, without waiting for more."""
    return (await read_topics(bootstrap, [topic]))[topic]


async def partitions_of(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of the `topics` that exist, from fresh cluster metadata."""
    await consumer.topics()
    return [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]


async def read_topics(
    bootstrap: str, topics: Iterable[str]
) -> dict[str, list[tuple[bytes, dict[str, str]]]]:
    """Everything on each of `topics` up to its current end, through one consumer (a
    consumer per topic costs a connection and a metadata round trip each)."""
    wanted = list(topics)
    found: dict[str, list[tuple[bytes, dict[str, str]]]] = {topic: [] for topic in wanted}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, wanted)
        if not partitions:
            return found  # none of the topics exists (yet)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batches.items():
                found[tp.topic].extend(
                    (r.value, {k: v.decode() for k, v in r.headers}) for r in records
                )
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return found
    finally:
        await consumer.stop()


async def start_group_at_end(
    bootstrap: str, group: str, topics: Iterable[str] = ALL_TOPICS
) -> None:
    """Commit the current end of every partition of `topics` for the new consumer `group`,
    so a service started in it reads what is published from now on.

    The session's broker holds every earlier test's events, and a new group reads from the
    earliest offset: without this, a service a test starts late in the session first works
    through all of them. A group that is meant to replay (the replay tests) does not call it.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topics)
        if partitions:
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            await consumer.commit({tp: OffsetAndMetadata(ends[tp], "") for tp in partitions})
    finally:
        await consumer.stop()
