"""A lease held by one replica at a time: the outbox relay's, a scheduler's.

The holder renews it well before it expires; when the holder dies (or is cut off from the
database) the lease lapses and another replica takes it within `ttl`. The holder trusts
its lease only for `ttl - margin` after the renewal that granted it, measured on its own
monotonic clock, so a slow database answer cannot make two replicas act at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)


class Leases(Protocol):
    async def take(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool: ...
    async def release(self, name: str, holder: str) -> None: ...


class Lease:
    def __init__(
        self,
        leases: Leases,
        name: str,
        *,
        ttl_s: float,
        clock: Callable[[], datetime],
        holder: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.holder = holder or uuid.uuid4().hex
        self._leases = leases
        self._ttl_s = ttl_s
        self._clock = clock
        self._monotonic = monotonic
        self._valid_until = 0.0

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def held(self) -> bool:
        """Whether this replica may act on the lease right now."""
        return self._monotonic() < self._valid_until

    async def hold(self) -> bool:
        """Take the lease, or renew it when a third of its time is gone; True if held."""
        started = self._monotonic()
        if self._valid_until - started > self._ttl_s * 2 / 3:
            return True
        was_held = self.held()
        taken = await self._leases.take(
            self.name, self.holder, self._clock(), timedelta(seconds=self._ttl_s)
        )
        # Counted from before the request: the database may have granted it any time since.
        self._valid_until = started + self._ttl_s * 0.8 if taken else 0.0
        if taken != was_held:
            log.info("lease taken" if taken else "lease lost", lease=self.name, holder=self.holder)
        return taken

    async def release(self) -> None:
        """Give the lease up now (on shutdown), so another replica need not wait it out."""
        if self._valid_until:
            self._valid_until = 0.0
            await self._leases.release(self.name, self.holder)
