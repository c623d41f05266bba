"""A service's Kafka consumer: event batches to its use cases, poison parked, outages waited out.

The subscriber takes up to `consumer_batch_max` records at a time (or what arrived within
`consumer_batch_wait_ms`). Each record is parsed on its own, so a record that is not a
valid event is parked on `<topic>.dlq` at once and cannot fail the others. The valid events
go to the service's handler in one call, in the order Kafka delivered them (per partition,
so per lead). Then the batch's offsets are committed.

- **A poison event is isolated.** If the handler fails on a batch, the batch is split in
  halves and each half handled on its own, down to the single event that fails; that one is
  retried `consumer_max_attempts` times and then parked. Halves that succeeded are not
  handled twice: the inbox remembers them.
- **A dependency outage pauses the consumer.** While MongoDB (or Kafka, for the dead-letter
  topic) is unreachable nothing is parked: the batch is handed back (its partitions seek
  back to its first offsets), every assigned partition is paused, and a background check
  resumes them once the database answers. The consumer keeps polling meanwhile, so it stays
  in its group and the process still stops at once on SIGTERM.
- **Replays past the inbox horizon are dropped.** An event id is remembered for
  `handled_retention` (longer than any topic's retention); a record older than that can
  only be a replay the inbox can no longer recognise, so it is logged and skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from leadflow.chassis.store import DEPENDENCY_DOWN
from shared.events import Event
from shared.topics import dead_letter_topic

log = structlog.get_logger(__name__)

EVENTS_CONSUMED = Counter(
    "leadflow_events_consumed_total",
    "Events taken off Kafka, by outcome (handled, dead_lettered, too_old)",
    ["service", "topic", "outcome"],
)
BATCH_SIZE = Histogram(
    "leadflow_consumer_batch_size",
    "Records per consumed batch",
    ["service"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
BATCH_SECONDS = Histogram(
    "leadflow_consumer_batch_seconds", "Time to handle one consumed batch", ["service"]
)

HandleBatch = Callable[[list[Event]], Awaitable[None]]
ParseEvent = Callable[[bytes], Event]
Publish = Callable[[str, bytes, bytes | None, dict[str, str]], Awaitable[None]]

# Kafka being unreachable while parking a message is an outage too, not a poison message.
OUTAGE: tuple[type[Exception], ...] = (*DEPENDENCY_DOWN, KafkaError, OSError)


class Record(Protocol):
    """The parts of a Kafka consumer record the pipeline reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


class PartitionControl(Protocol):
    """The parts of aiokafka's consumer the pipeline drives."""

    def assignment(self) -> set[TopicPartition]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


@dataclass(frozen=True, slots=True)
class _Item:
    record: Record
    event: Event


class Outage(Exception):  # noqa: N818 - a state of the world, not a bug
    """A dependency is unreachable; the batch is handed back and retried after a pause."""


class BatchPipeline:
    def __init__(
        self,
        service: str,
        *,
        parse: ParseEvent,
        handle: HandleBatch,
        publish: Publish,
        dependencies_up: Callable[[], Awaitable[bool]],
        max_attempts: int,
        backoff_s: float,
        handled_retention: timedelta,
        clock: Callable[[], datetime],
        commit_interval_s: float = 0.0,
        max_pause_check_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self._parse = parse
        self._handle = handle
        self._publish = publish
        self._dependencies_up = dependencies_up
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._handled_retention = handled_retention
        self._clock = clock
        self._max_pause_check_s = max_pause_check_s
        self._resume_task: asyncio.Task[None] | None = None
        # Offsets are committed at most every `commit_interval_s`: each commit is a write
        # per partition on the broker, and handled events a crash makes Kafka deliver
        # again are recognised by the inbox anyway.
        self._commit_interval_s = commit_interval_s
        self._monotonic = monotonic
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = float("-inf")
        self.last_handled: dict[TopicPartition, tuple[int, str | None]] = {}
        """Per partition, the offset and event id of the last record handled, so that a
        log that hands out the same offsets again can be told from the one handled."""
        self._stopping = False

    @property
    def paused(self) -> bool:
        return self._resume_task is not None and not self._resume_task.done()

    async def consume(self, records: Sequence[Record], consumer: PartitionControl) -> None:
        """Handle one batch from `consumer` and commit it, or hand it back on an outage."""
        if not records:
            return
        BATCH_SIZE.labels(self.service).observe(len(records))
        with BATCH_SECONDS.labels(self.service).time():
            try:
                items, invalid = self._parse_all(records)
                if items:
                    await self._handle_isolating(items)
                # After the valid ones: a parked record means everything before it in its
                # partition has been handled.
                for record, reason in invalid:
                    await self._park(record, reason, 1)
            except Outage as outage:
                self._hand_back(records, consumer, outage)
                return
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            if record.offset + 1 > self._uncommitted.get(partition, 0):
                self._uncommitted[partition] = record.offset + 1
                self.last_handled[partition] = (record.offset, _event_id_of(record))
        if self._stopping or self._monotonic() - self._committed_at >= self._commit_interval_s:
            await self.commit(consumer)

    def take_over(self, consumer: PartitionControl, partitions: set[TopicPartition]) -> None:
        """Partitions were (re)assigned: they start from the group's committed position,
        so offsets handled before and not committed are not this member's to commit any
        more (a broker that came back empty must not be handed the old log's offsets);
        newly assigned partitions stay paused while an outage lasts."""
        for partition in partitions:
            self._uncommitted.pop(partition, None)
        if self.paused and partitions:
            consumer.pause(*partitions)

    async def stop(self, consumer: PartitionControl | None = None) -> None:
        """Commit what was handled; from now on every batch commits as soon as it is done."""
        self._stopping = True
        if self._resume_task is not None:
            self._resume_task.cancel()
        if consumer is not None:
            await self.commit(consumer)

    # --- parsing ---------------------------------------------------------------------------

    def _parse_all(self, records: Sequence[Record]) -> tuple[list[_Item], list[tuple[Record, str]]]:
        """The records that are events, and those that are not with why."""
        items: list[_Item] = []
        invalid: list[tuple[Record, str]] = []
        horizon = self._clock() - self._handled_retention
        for record in records:
            try:
                event = self._parse(record.value or b"")
            except ValidationError as error:
                invalid.append((record, _why_invalid(error)))
                continue
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                invalid.append((record, f"not JSON: {error}"))
                continue
            if record.timestamp and record.timestamp / 1000 < horizon.timestamp():
                EVENTS_CONSUMED.labels(self.service, record.topic, "too_old").inc()
                log.warning(
                    "event older than the inbox remembers: a replay, skipped",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    event_id=str(event.event_id),
                )
                continue
            items.append(_Item(record, event))
        return items, invalid

    # --- handling ---------------------------------------------------------------------------

    async def _handle_isolating(self, items: list[_Item]) -> None:
        try:
            await self._handle([item.event for item in items])
        except OUTAGE as error:
            raise Outage(repr(error)) from error
        except Exception as error:  # noqa: BLE001 - any failure is isolated, retried, parked
            if len(items) == 1:
                await self._retry_or_park(items[0], error)
                return
            log.info(
                "batch failed; handling its halves apart",
                events=len(items),
                error=f"{type(error).__name__}: {error}",
            )
            middle = len(items) // 2
            await self._handle_isolating(items[:middle])
            await self._handle_isolating(items[middle:])
            return
        for item in items:
            EVENTS_CONSUMED.labels(self.service, item.record.topic, "handled").inc()

    async def _retry_or_park(self, item: _Item, first_error: Exception) -> None:
        error: Exception = first_error
        for attempt in range(2, self._max_attempts + 1):
            log.warning(
                "event handling failed",
                topic=item.record.topic,
                offset=item.record.offset,
                attempt=attempt - 1,
                error=f"{type(error).__name__}: {error}",
            )
            await asyncio.sleep(self._backoff_s * 2 ** (attempt - 2))
            try:
                await self._handle([item.event])
            except OUTAGE as outage:
                raise Outage(repr(outage)) from outage
            except Exception as again:  # noqa: BLE001 - retried, then parked
                error = again
            else:
                EVENTS_CONSUMED.labels(self.service, item.record.topic, "handled").inc()
                return
        await self._park(item.record, f"{type(error).__name__}: {error}", self._max_attempts)

    async def _park(self, record: Record, reason: str, attempts: int) -> None:
        headers = {
            "x-dlq-error": reason[:4000],
            "x-dlq-original-topic": record.topic,
            "x-dlq-partition": str(record.partition),
            "x-dlq-offset": str(record.offset),
            "x-dlq-attempts": str(attempts),
            "x-dlq-service": self.service,
        }
        try:
            await self._publish(
                dead_letter_topic(record.topic), record.value or b"", record.key, headers
            )
        except OUTAGE as error:
            raise Outage(repr(error)) from error
        EVENTS_CONSUMED.labels(self.service, record.topic, "dead_lettered").inc()
        log.error(
            "event parked on dead-letter topic",
            topic=record.topic,
            offset=record.offset,
            error=reason,
        )

    # --- offsets and pausing ---------------------------------------------------------------

    async def commit(
        self, consumer: PartitionControl, only: set[TopicPartition] | None = None
    ) -> None:
        """Commit the handled offsets not committed yet (of `only` those partitions)."""
        assigned = consumer.assignment()
        offsets = {
            partition: offset
            for partition, offset in self._uncommitted.items()
            if partition in assigned and (only is None or partition in only)
        }
        for partition in [p for p in self._uncommitted if p not in assigned or p in offsets]:
            del self._uncommitted[partition]
        self._committed_at = self._monotonic()
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as error:
            # A rebalance took the partitions away; the next owner re-reads a few events,
            # which the inbox recognises.
            log.warning("could not commit offsets", error=repr(error))

    def _hand_back(
        self, records: Sequence[Record], consumer: PartitionControl, outage: Outage
    ) -> None:
        earliest: dict[TopicPartition, int] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            earliest[partition] = min(earliest.get(partition, record.offset), record.offset)
        assigned = consumer.assignment()
        for partition, offset in earliest.items():
            if partition in assigned:
                consumer.seek(partition, offset)
        consumer.pause(*assigned)
        log.warning("dependency unreachable; consumer paused", error=str(outage))
        if not self.paused:
            self._resume_task = asyncio.create_task(
                self._resume_when_up(consumer), name=f"{self.service}-consumer-resume"
            )

    async def _resume_when_up(self, consumer: PartitionControl) -> None:
        wait_s = max(self._backoff_s, 0.1)
        while True:
            await asyncio.sleep(wait_s)
            if await self._dependencies_up():
                consumer.resume(*consumer.assignment())
                log.info("dependencies reachable again; consumer resumed")
                return
            wait_s = min(wait_s * 2, self._max_pause_check_s)


def _event_id_of(record: Record) -> str | None:
    for key, value in getattr(record, "headers", None) or ():
        if key == "event-id":
            return bytes(value).decode(errors="replace")
    return None


def _why_invalid(error: ValidationError) -> str:
    problems = error.errors(include_url=False)
    if problems and all(problem["type"] == "json_invalid" for problem in problems):
        return f"not JSON: {problems[0]['msg']}"
    return f"invalid event: {problems}"


class GroupMembership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Remembers whether a consumer has joined its group, and keeps an outage's pause."""

    def __init__(self) -> None:
        self.joined = asyncio.Event()
        self.partitions: set[Any] = set()
        self.on_assigned: Callable[[set[Any]], Awaitable[None]] | None = None
        self.on_revoked: Callable[[set[Any]], Awaitable[None]] | None = None

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.on_revoked is not None:
            await self.on_revoked(set(revoked))
        self.partitions -= set(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.partitions |= set(assigned)
        if self.on_assigned is not None:
            await self.on_assigned(set(assigned))
        self.joined.set()
