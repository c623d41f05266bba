"""Relays the transactional outbox to Kafka.

A use case commits its change and the events it implies in one MongoDB transaction; this
relay publishes those events afterwards, in commit order, and marks them published. If
Kafka is down the events wait in the outbox and go out when it is back: an accepted lead is
never lost. A crash between publishing and marking re-publishes a few events, which
consumers ignore because they de-duplicate on `event_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import structlog
from prometheus_client import Counter, Gauge

from leadflow.chassis.store import OutboxRecord

log = structlog.get_logger(__name__)

OUTBOX_PUBLISHED = Counter(
    "leadflow_outbox_published_total", "Events relayed from the outbox to Kafka", ["service"]
)
OUTBOX_FAILURES = Counter(
    "leadflow_outbox_failures_total",
    "Relay rounds that failed (Kafka or MongoDB down)",
    ["service"],
)
OUTBOX_BACKLOG = Gauge(
    "leadflow_outbox_backlog", "Events committed but not yet published", ["service"]
)


class Outbox(Protocol):
    async def pending(self, limit: int) -> list[OutboxRecord]: ...
    async def mark_published(self, record_ids: Sequence[object], now: datetime) -> None: ...


PublishBatch = Callable[[list[tuple[str, bytes, bytes | None, dict[str, str]]]], Awaitable[None]]


def as_message(record: OutboxRecord) -> tuple[str, bytes, bytes | None, dict[str, str]]:
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
        ledger: Outbox,
        publish_batch: PublishBatch,
        *,
        poll_interval_s: float,
        batch_size: int,
        max_backoff_s: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._service = service
        self._ledger = ledger
        self._publish_batch = publish_batch
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._max_backoff_s = max_backoff_s
        self._clock = clock
        self._wake = asyncio.Event()

    def nudge(self) -> None:
        """Something was committed: relay now rather than at the next poll."""
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch of pending events; returns how many went out."""
        records = await self._ledger.pending(self._batch_size)
        if not records:
            return 0
        await self._publish_batch([as_message(r) for r in records])
        await self._ledger.mark_published([r.record_id for r in records], self._clock())
        OUTBOX_PUBLISHED.labels(self._service).inc(len(records))
        return len(records)

    async def run(self, ready: asyncio.Event) -> None:
        await ready.wait()
        backoff_s = self._poll_interval_s
        while True:
            self._wake.clear()
            try:
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
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)
                continue
            backoff_s = self._poll_interval_s
            if published == self._batch_size:
                continue  # more are waiting
            # Poll as well: another replica's commits do not wake this one.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)
