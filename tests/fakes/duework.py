"""An in-memory `DueWorkStore`, held to the same contract tests as `MongoDueWork`.

Every method runs without awaiting in between, so each is atomic as the database's
per-document updates (and `finish`'s transaction) are. `session` is accepted and ignored:
the in-memory ledger restores a service's tables when its unit of work raises, and
`finish` checks every token before deleting anything, so a `LeaseLost` changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from leadflow.chassis.duework import (
    DEAD,
    PENDING,
    ClaimedWork,
    DueWork,
    LeaseLost,
    ParkedWork,
)


@dataclass
class _Item:
    work: DueWork
    ready_at: datetime
    status: str = PENDING
    attempts: int = 0
    token: str | None = None
    error: str = ""
    parked_at: datetime | None = None


class InMemoryDueWork:
    def __init__(self) -> None:
        self.items: dict[str, _Item] = {}

    async def ensure_indexes(self) -> None:
        return None

    async def schedule(self, items: Sequence[DueWork], *, session: Any = None) -> None:
        for work in items:
            if work.due_at.tzinfo is None:
                raise ValueError(f"due work needs aware UTC datetimes, got {work.due_at!r}")
            stored = DueWork(work.key, work.kind, _to_millis(work.due_at), dict(work.payload))
            self.items[work.key] = _Item(stored, stored.due_at)

    async def cancel(self, keys: Collection[str], *, session: Any = None) -> None:
        for key in keys:
            self.items.pop(key, None)

    async def claim(
        self,
        *,
        kinds: Collection[str],
        now: datetime,
        limit: int,
        lease: timedelta,
        token: str,
    ) -> list[ClaimedWork]:
        now = _to_millis(now)
        ready = sorted(
            (
                item
                for item in self.items.values()
                if item.status == PENDING and item.work.kind in kinds and item.ready_at <= now
            ),
            key=lambda item: (item.ready_at, item.work.key),
        )[:limit]
        until = _to_millis(now + lease)
        for item in ready:
            item.ready_at = until
            item.token = token
        return sorted(
            (ClaimedWork(item.work, item.attempts, token) for item in ready),
            key=lambda c: (c.work.due_at, c.work.key),
        )

    async def finish(self, claimed: Sequence[ClaimedWork], *, session: Any = None) -> None:
        lost = [c.work.key for c in claimed if not self._holds(c)]
        if lost:
            raise LeaseLost(lost)
        for c in claimed:
            del self.items[c.work.key]

    async def release(
        self, claimed: Sequence[ClaimedWork], *, retry_at: datetime, failed: bool = True
    ) -> None:
        for c in claimed:
            if self._holds(c):
                item = self.items[c.work.key]
                item.ready_at = _to_millis(retry_at)
                item.token = None
                item.attempts += 1 if failed else 0

    async def park(self, claimed: Sequence[ClaimedWork], *, error: str, now: datetime) -> None:
        for c in claimed:
            if self._holds(c):
                item = self.items[c.work.key]
                item.status = DEAD
                item.token = None
                item.attempts += 1
                item.error = error
                item.parked_at = _to_millis(now)

    async def parked(self, *, kinds: Collection[str], limit: int = 100) -> list[ParkedWork]:
        dead = [
            ParkedWork(item.work, item.attempts, item.error, item.parked_at)
            for item in self.items.values()
            if item.status == DEAD and item.work.kind in kinds and item.parked_at is not None
        ]
        return sorted(dead, key=lambda p: (p.parked_at, p.work.key))[:limit]

    async def next_due(
        self, *, kinds: Collection[str], before: datetime | None = None
    ) -> datetime | None:
        times = [
            item.ready_at
            for item in self.items.values()
            if item.status == PENDING
            and item.work.kind in kinds
            and (before is None or item.ready_at < before)
        ]
        return min(times, default=None)

    def _holds(self, claimed: ClaimedWork) -> bool:
        item = self.items.get(claimed.work.key)
        return item is not None and item.status == PENDING and item.token == claimed.token


def _to_millis(moment: datetime) -> datetime:
    # As BSON stores it, so both stores hand back the same instants.
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
