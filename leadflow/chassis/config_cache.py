"""Hot configuration (reps, pools, rules, sequences) read once and kept until it changes.

Every change to a cached configuration also increments its version document, in the same
transaction. A reader checks that one small document at most every `max_age_s` and reloads
the configuration only when the version moved, so routing a batch of leads costs no
configuration reads at all, and a change made on another replica is seen within
`max_age_s`. A change made through this replica invalidates the cache at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class VersionedCache(Generic[T]):
    def __init__(
        self,
        read_version: Callable[[], Awaitable[int]],
        load: Callable[[], Awaitable[T]],
        *,
        max_age_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_version = read_version
        self._load = load
        self._max_age_s = max_age_s
        self._monotonic = monotonic
        self._value: T | None = None
        self._version: int | None = None
        self._checked_at = float("-inf")
        self._generation = 0
        self.loads = 0

    async def get(self) -> T:
        """The current configuration; one version read at most every `max_age_s`."""
        now = self._monotonic()
        if self._value is not None and now - self._checked_at < self._max_age_s:
            return self._value
        generation = self._generation
        version = await self._read_version()
        if self._value is None or version != self._version:
            value = await self._load()
            self.loads += 1
        else:
            value = self._value
        if generation == self._generation:
            self._value, self._version, self._checked_at = value, version, now
        else:
            # Invalidated while we read: what we read may predate the change, so keep
            # nothing from this round as current; the next call reads again.
            self._value, self._version = value, None
        return value

    def invalidate(self) -> None:
        """This replica changed the configuration: read it again on next use (also when a
        read is in flight: it may have read the version before the change committed)."""
        self._generation += 1
        self._checked_at = float("-inf")
