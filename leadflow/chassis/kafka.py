"""Kafka plumbing every service needs: the broker, topics, the batch consumer, log checks.

Consumers start new groups from `earliest` (a new group would otherwise skip what was
published before its first partition assignment) and commit after handling, so a crash
re-delivers; handlers are idempotent on `event_id`, which makes re-delivery harmless.

A broker that loses part of its log (the local one can, when it is killed) is handled on
both sides: the outbox relay publishes again what the log lost (`lost_from`), and a
consumer whose group position lies beyond what the log holds starts its partition again
from the beginning (`rewound`), so the events published again are not skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, OffsetOutOfRangeError, TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy
from pydantic import TypeAdapter

from leadflow.chassis.consumer import BatchPipeline, GroupMembership, HandleBatch, Record
from leadflow.chassis.store import LogPosition
from leadflow.chassis.tasks import stop_requested
from shared.events import Event
from shared.settings import ServiceSettings
from shared.topics import ALL_TOPICS, EVENT_ON, dead_letter_topic, owned_by

log = structlog.get_logger(__name__)

Message = tuple[str, bytes, bytes | None, dict[str, str]]
PUBLISH_TIMEOUT_S = 60.0


async def ensure_topics(
    bootstrap: str,
    partitions: int,
    topics: Iterable[str] = ALL_TOPICS,
    *,
    retention: timedelta = timedelta(days=7),
) -> list[str]:
    """Create every topic and its dead-letter topic with `partitions` partitions and an
    explicit `retention.ms`.

    Producing to a missing topic would auto-create it with the broker's defaults, so topics
    are made explicitly first. Returns the topics that were newly created.
    """
    wanted = [name for topic in topics for name in (topic, dead_letter_topic(topic))]
    config = {"retention.ms": str(int(retention.total_seconds() * 1000))}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            t, num_partitions=partitions, replication_factor=1, topic_configs=config
                        )
                        for t in missing
                    ]
                )
            except TopicAlreadyExistsError:
                # Another service created some of them first; that is the outcome we want.
                log.debug("topics already exist", topics=missing)
        return missing
    finally:
        await admin.close()


class KafkaRuntime:
    """One service's broker, its batch consumer, topic set-up and log checks."""

    def __init__(self, service: str, settings: ServiceSettings) -> None:
        self.service = service
        self.settings = settings
        self.group_id = settings.consumer_group or f"leadflow-{service}"
        self.membership: GroupMembership | None = None
        self.pipeline: BatchPipeline | None = None
        self.connected = asyncio.Event()
        self.broker = KafkaBroker(
            settings.kafka_bootstrap,
            client_id=f"leadflow-{service}",
            acks="all",
            enable_idempotence=False,  # fails on the local broker; consumers de-duplicate
            linger_ms=settings.producer_linger_ms,
            max_batch_size=settings.producer_max_batch_bytes,
            # The chassis parses each record itself (see `consume`); faststream only
            # delivers the raw batch and documents the payload from the annotation.
            apply_types=False,
            graceful_timeout=10.0,
            logger=logging.getLogger(f"leadflow.{service}.kafka"),
            log_level=logging.DEBUG,
            description=f"leadflow {service} service",
        )
        self._subscriber: Any = None
        self._document_publications()

    def _document_publications(self) -> None:
        """Declare what this service publishes, so its AsyncAPI document shows it.

        Events leave through the outbox relay, not through these publishers.
        """
        for topic in owned_by(self.service):
            self.broker.publisher(
                topic,
                title=f"to_{topic.split('.')[1].replace('-', '_')}",
                schema=EVENT_ON[topic],
                description=(EVENT_ON[topic].__doc__ or "").strip() or None,
            )

    def consume(
        self,
        topics: Sequence[str],
        events: Any,
        handle: HandleBatch,
        *,
        title: str,
        pipeline_options: dict[str, Any],
    ) -> BatchPipeline:
        """Subscribe this service's consumer group to `topics`, in batches, once per service.

        `events` is the type of what the topics carry (a union discriminated by
        `event_type`); each record is validated against it on its own. One subscriber per
        service: each is its own group member, and on a new group each member's first
        partition assignment takes seconds, one after another.
        """
        if self.pipeline is not None:
            raise RuntimeError(f"{self.service} already consumes; use one subscriber")
        adapter: TypeAdapter[Event] = TypeAdapter(events)
        pipeline = BatchPipeline(
            self.service,
            parse=adapter.validate_json,
            handle=handle,
            publish=self.publish,
            max_attempts=self.settings.consumer_max_attempts,
            backoff_s=self.settings.consumer_retry_backoff_s,
            commit_interval_s=self.settings.consumer_commit_interval_ms / 1000,
            **pipeline_options,
        )
        membership = GroupMembership()
        membership.on_assigned = self._on_assigned
        membership.on_revoked = self._on_revoked
        subscriber = self.broker.subscriber(
            *topics,
            group_id=self.group_id,
            batch=True,
            max_records=self.settings.consumer_batch_max,
            batch_timeout_ms=self.settings.consumer_batch_wait_ms,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.consumer_fetch_max_wait_ms,
            session_timeout_ms=self.settings.consumer_session_timeout_ms,
            heartbeat_interval_ms=self.settings.consumer_heartbeat_interval_ms,
            ack_policy=AckPolicy.MANUAL,  # the pipeline commits or hands the batch back
            listener=membership,
            decoder=_raw_records,
            title=title,
        )

        async def on_batch(records: tuple[Record, ...]) -> None:
            consumer: AIOKafkaConsumer | None = subscriber.consumer
            if consumer is None:
                raise RuntimeError("a batch arrived on a subscriber that is not started")
            await pipeline.consume(records, consumer)

        # faststream documents the payload (AsyncAPI) from this annotation.
        on_batch.__annotations__["records"] = list[events]
        subscriber(on_batch)
        self._subscriber = subscriber
        self.membership = membership
        self.pipeline = pipeline
        return pipeline

    async def _on_revoked(self, partitions: set[Any]) -> None:
        """Before partitions go to another member: commit what was handled on them."""
        consumer = self._subscriber.consumer if self._subscriber is not None else None
        if consumer is not None and self.pipeline is not None:
            await self.pipeline.commit(consumer, only=partitions)

    async def _on_assigned(self, partitions: set[Any]) -> None:
        consumer = self._subscriber.consumer if self._subscriber is not None else None
        if consumer is None or self.pipeline is None:
            return
        self.pipeline.take_over(consumer, partitions)
        try:
            rewound = await self.rewound(consumer, partitions)
        except KafkaError as error:
            log.warning("could not check the log behind assigned partitions", error=repr(error))
            return
        for partition in rewound:
            log.warning(
                "the log is shorter than this group's position: reading the partition again "
                "from its start (handled events are recognised)",
                topic=partition.topic,
                partition=partition.partition,
            )
        if rewound:
            await consumer.seek_to_beginning(*rewound)

    async def rewound(
        self, consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
    ) -> list[TopicPartition]:
        """Partitions whose committed position points past the last record the log holds."""
        positions: list[LogPosition] = []
        handled = self.pipeline.last_handled if self.pipeline is not None else {}
        for partition in partitions:
            committed = await consumer.committed(partition)
            if not committed:
                continue
            # If this member handled the record before the position, it must be that very
            # record (a broker that restarted empty gives the same offsets to new records);
            # otherwise any record there will do.
            offset, event_id = handled.get(partition, (committed - 1, None))
            if offset != committed - 1:
                event_id = None
            positions.append(
                LogPosition(partition.topic, partition.partition, committed - 1, event_id)
            )
        missing = await self.lost_from(positions)
        return [TopicPartition(p.topic, p.partition) for p in missing]

    async def publish(
        self, topic: str, payload: bytes, key: bytes | None, headers: dict[str, str]
    ) -> None:
        await self.broker.publish(payload, topic, key=key, headers=headers)

    async def publish_batch(self, messages: Sequence[Message]) -> list[LogPosition | None]:
        """Publish in order without waiting for each acknowledgement, then wait for all;
        returns where each message went."""
        pending = [
            await self.broker.publish(payload, topic, key=key, headers=headers, no_confirm=True)
            for topic, payload, key, headers in messages
        ]
        # Bounded: a broker that never answers must not hold the relay (it retries, and
        # the consumers drop the copies of what did go out).
        acknowledged = await asyncio.wait_for(asyncio.gather(*pending), timeout=PUBLISH_TIMEOUT_S)
        return [
            LogPosition(meta.topic, meta.partition, meta.offset, headers.get("event-id"))
            if getattr(meta, "offset", None) is not None
            else None
            for meta, (_, _, _, headers) in zip(acknowledged, messages, strict=True)
        ]

    async def lost_from(
        self, furthest: Sequence[LogPosition], *, timeout_s: float = 5.0
    ) -> list[LogPosition]:
        """Of `furthest` (a record known to have been in the log, per partition), the
        partitions where it is gone, each with the first offset that may be missing.

        The record is fetched back: present (the same event id at that offset), or gone
        (out of range, another record written over it, or nothing there in `timeout_s`).
        The broker's reported log end is not enough on its own: the local broker's lags
        behind what it holds.
        """
        if not furthest:
            return []
        probe = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="none",
            client_id=f"leadflow-{self.service}-log-check-{uuid.uuid4().hex[:6]}",
            fetch_max_wait_ms=200,
        )
        await probe.start()
        try:
            wanted = {TopicPartition(p.topic, p.partition): p for p in furthest}
            present = await _fetch_present(probe, wanted, timeout_s)
            gone = [tp for tp in wanted if tp not in present]
            if not gone:
                return []
            ends = await probe.end_offsets(gone)
            # From the record before the (possibly lagging) reported end: what follows may
            # be missing or written over; republishing a few extra costs only duplicates.
            return [
                LogPosition(tp.topic, tp.partition, max(0, min(wanted[tp].offset, ends[tp] - 1)))
                for tp in gone
            ]
        finally:
            await probe.stop()

    async def connect(self, *, retry_s: float = 1.0) -> None:
        """Create topics and start the broker, retrying until Kafka answers."""
        while not stop_requested():
            try:
                created = await ensure_topics(
                    self.settings.kafka_bootstrap,
                    self.settings.topic_partitions,
                    retention=timedelta(hours=self.settings.topic_retention_hours),
                )
                if created:
                    log.info("created topics", count=len(created))
                await self.broker.start()
            except (KafkaError, OSError) as error:
                log.warning("kafka not reachable yet", error=repr(error), retry_in_s=retry_s)
                await self.broker.stop()
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, 10.0)
            else:
                self.connected.set()
                return

    async def close(self) -> None:
        consumer = self._subscriber.consumer if self._subscriber is not None else None
        if self.pipeline is not None:
            await self.pipeline.stop(consumer)
        await self.broker.stop()  # waits for the batch in hand, which commits at once

    async def ready(self) -> dict[str, bool]:
        if not self.connected.is_set():
            return {"kafka": False, "consumer_group": False}
        reachable = await self.broker.ping(timeout=2.0)
        joined = self.membership is None or self.membership.joined.is_set()
        return {"kafka": reachable, "consumer_group": joined}

    @property
    def consumes(self) -> bool:
        return self.membership is not None


async def _raw_records(message: Any, _: Callable[..., Awaitable[Any]]) -> Any:
    """faststream decoder: hand the batch's records over untouched."""
    return message.raw_message


async def _fetch_present(
    probe: AIOKafkaConsumer, wanted: dict[TopicPartition, LogPosition], timeout_s: float
) -> set[TopicPartition]:
    """The partitions whose wanted record can be read back at its offset."""
    probe.assign(list(wanted))
    for partition, position in wanted.items():
        probe.seek(partition, position.offset)
    present: set[TopicPartition] = set()
    waiting = set(wanted)
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        try:
            batches = await probe.getmany(*waiting, timeout_ms=200, max_records=len(waiting) * 50)
        except OffsetOutOfRangeError as error:
            # The wanted offset lies beyond the log: those partitions lost it.
            waiting -= set(error.args[0]) if error.args else set()
            continue
        for partition, records in batches.items():
            if any(_is(record, wanted[partition]) for record in records):
                present.add(partition)
            waiting.discard(partition)
    return present


def _is(record: Any, position: LogPosition) -> bool:
    if record.offset != position.offset:
        return False
    if position.event_id is None:
        return True
    headers = {key: value for key, value in record.headers or ()}
    return bool(headers.get("event-id", b"").decode() == position.event_id)
