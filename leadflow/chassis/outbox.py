"""Relays the transactional outbox to Kafka: one relay per service, in commit order, in batches.

A use case commits its change and the events it implies in one MongoDB transaction; this
relay publishes those events afterwards and marks them published. If Kafka is down they
wait in the outbox and go out, in bulk, when it is back: an accepted lead is never lost.

- **One relay per service.** Every replica runs a relay, but only the holder of the
  service's `outbox-relay` lease publishes; when it dies another takes over within seconds.
- **Commit order.** Records are published by their per-service sequence number, taken in
  the committing transaction (see `EventLedger`).
- **A log that lost records is refilled.** Kafka's acknowledgement says where each record
  went; the relay remembers the furthest record per partition and checks, after a failure,
  on taking the lease and every `audit_interval_s`, that this very record (by event id) is
  still readable there. If the log went backwards (a broker that lost data, or one that
  hands out offsets again after a restart), everything published from the lost offset on
  is published again; consumers drop the copies they already handled. An acknowledgement
  at or below an offset acknowledged before is the same sign, seen at once.

A crash between publishing and marking re-publishes a few events, which consumers ignore
because they de-duplicate on `event_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import structlog
from prometheus_client import Counter, Gauge

from leadflow.chassis.lease import Lease
from leadflow.chassis.store import (
    PUBLISHED_RETENTION,
    LogPosition,
    OutboxRecord,
    furthest_positions,
)
from leadflow.chassis.tasks import stop_requested

log = structlog.get_logger(__name__)

OUTBOX_PUBLISHED = Counter(
    "leadflow_outbox_published_total", "Events relayed from the outbox to Kafka", ["service"]
)
OUTBOX_FAILURES = Counter(
    "leadflow_outbox_failures_total",
    "Relay rounds that failed (Kafka or MongoDB down)",
    ["service"],
)
OUTBOX_REPUBLISHED = Counter(
    "leadflow_outbox_republished_total",
    "Events queued again because the Kafka log lost them",
    ["service"],
)
OUTBOX_BACKLOG = Gauge(
    "leadflow_outbox_backlog", "Events committed but not yet published", ["service"]
)

Message = tuple[str, bytes, bytes | None, dict[str, str]]


class Outbox(Protocol):
    async def pending(self, limit: int) -> list[OutboxRecord]: ...
    async def mark_published(
        self, published: Sequence[tuple[OutboxRecord, LogPosition | None]], now: datetime
    ) -> None: ...
    async def log_positions(self) -> list[LogPosition]: ...
    async def republish_from(self, topic: str, partition: int, offset: int) -> int: ...
    async def forget_published(self, older_than: datetime) -> int: ...
    def reload_position(self) -> None: ...


class EventLog(Protocol):
    """The Kafka side of the relay."""

    async def publish_batch(self, messages: Sequence[Message]) -> list[LogPosition | None]:
        """Publish in order; where each message went (None if the broker did not say)."""
        ...

    async def lost_from(self, furthest: Sequence[LogPosition]) -> list[LogPosition]:
        """For each partition whose furthest published record is gone, the first offset
        that is missing (everything from there on must be published again)."""
        ...


def as_message(record: OutboxRecord) -> Message:
    headers = {
        "content-type": "application/json",
        "event-type": record.event_type,
        "event-id": record.event_id,
    }
    return record.topic, record.payload, record.key.encode(), headers


class OutboxRelay:
    def __init__(
        self,
        service: str,
        outbox: Outbox,
        event_log: EventLog,
        lease: Lease,
        *,
        poll_interval_s: float,
        batch_size: int,
        audit_interval_s: float = 30.0,
        max_backoff_s: float = 2.0,
        clock: Callable[[], datetime],
    ) -> None:
        self._service = service
        self._outbox = outbox
        self._log = event_log
        self._lease = lease
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._audit_interval_s = audit_interval_s
        self._max_backoff_s = max_backoff_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._next_audit = 0.0  # audit as soon as the lease is first held
        self._furthest: dict[tuple[str, int], LogPosition] = {}

    @property
    def lease(self) -> Lease:
        return self._lease

    def nudge(self) -> None:
        """Something was committed: relay now rather than at the next poll."""
        self._wake.set()

    def audit_soon(self) -> None:
        """The broker may have restarted: check its log before the next batch."""
        self._next_audit = 0.0
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch of pending events; returns how many went out."""
        records = await self._outbox.pending(self._batch_size)
        if not records or not self._lease.held():
            return 0
        positions = await self._log.publish_batch([as_message(r) for r in records])
        if await self._requeue_overwritten(positions):
            return len(records)  # the relay moved back: this batch goes out again too
        await self._outbox.mark_published(list(zip(records, positions, strict=True)), self._clock())
        for position in furthest_positions(positions):
            self._furthest[(position.topic, position.partition)] = position
        OUTBOX_PUBLISHED.labels(self._service).inc(len(records))
        return len(records)

    async def _requeue_overwritten(self, positions: Sequence[LogPosition | None]) -> bool:
        """A partition that acknowledges an offset it had already given out lost what was
        there: publish those records again. True if anything was requeued."""
        lowest: dict[tuple[str, int], int] = {}
        for position in positions:
            if position is not None:
                key = (position.topic, position.partition)
                lowest[key] = min(lowest.get(key, position.offset), position.offset)
        requeued = False
        for (topic, partition), offset in lowest.items():
            known = self._furthest.get((topic, partition))
            if known is not None and offset <= known.offset:
                await self._requeue(LogPosition(topic, partition, offset))
                requeued = True
        return requeued

    async def audit_log(self) -> int:
        """Queue again whatever the log lost; returns how many events will be republished."""
        furthest = await self._outbox.log_positions()
        lost = await self._log.lost_from(furthest)
        self._furthest = {(p.topic, p.partition): p for p in furthest}
        queued = 0
        for position in lost:
            queued += await self._requeue(position)
        await self._outbox.forget_published(self._clock() - PUBLISHED_RETENTION)
        return queued

    async def _requeue(self, position: LogPosition) -> int:
        count = await self._outbox.republish_from(
            position.topic, position.partition, position.offset
        )
        self._furthest.pop((position.topic, position.partition), None)
        log.warning(
            "kafka log lost published events; publishing them again",
            topic=position.topic,
            partition=position.partition,
            from_offset=position.offset,
            events=count,
        )
        OUTBOX_REPUBLISHED.labels(self._service).inc(count)
        return count

    async def run(self, ready: asyncio.Event) -> None:
        await ready.wait()
        backoff_s = self._poll_interval_s
        while not stop_requested():
            self._wake.clear()
            try:
                was_holding = self._lease.held()
                if not await self._lease.hold():
                    # Another replica relays; be ready to take over when its lease lapses.
                    await self._idle(self._lease.ttl_s / 3)
                    continue
                if not was_holding:
                    self._outbox.reload_position()  # another replica may have relayed
                    self._next_audit = 0.0
                if time.monotonic() >= self._next_audit:
                    await self.audit_log()
                    self._next_audit = time.monotonic() + self._audit_interval_s
                published = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the relay outlives any outage
                OUTBOX_FAILURES.labels(self._service).inc()
                log.warning(
                    "outbox relay failed; events stay queued",
                    error=repr(error),
                    retry_in_s=backoff_s,
                )
                self._next_audit = 0.0  # Kafka may come back with a shorter log
                if not stop_requested():
                    await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)
                continue
            backoff_s = self._poll_interval_s
            if published == self._batch_size:
                continue  # more are waiting
            # Poll as well: another replica's commits do not wake this one.
            await self._idle(self._poll_interval_s)

    async def _idle(self, timeout_s: float) -> None:
        if stop_requested():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout_s)

    async def stop(self) -> None:
        """Hand the lease over at once (the task itself is cancelled by its owner)."""
        await self._lease.release()
