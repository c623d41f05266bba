"""Rate limit of public form posts, per form key and client address, with counters in
MongoDB so every intake replica counts against the same limit (the `limits` library).

Why the synchronous `limits.storage.MongoDBStorage` on a worker thread, and not
`limits.aio.storage.MongoDBStorage`: the async storage is built on motor
(`DEPENDENCIES = ["motor.motor_asyncio", "pymongo"]` in limits 5.8), which this project does
not install (see README, "Why PyMongo's async API and not motor"). With motor installed it
works against SecantusDB (fixed and moving windows checked); without it, it cannot be
constructed. The synchronous storage uses PyMongo, which we have; its fixed-window hit is one
`find_one_and_update` by `_id`. (The sliding-window-counter strategy fails on SecantusDB:
its `$subtract` of an aware and a naive datetime is an internal error there.)
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, MongoDBStorage, Storage
from limits.strategies import FixedWindowRateLimiter


class FormRateLimit(Protocol):
    async def hit(self, form_key: str, client: str) -> bool:
        """Count one post; False when the form and client are over the limit."""
        ...

    def close(self) -> None: ...


class _SharedCounters(MongoDBStorage):
    """limits' MongoDB storage, but closing it never opens a client it has not used: the
    library's `__del__` reads its lazy `storage` property, which connects, so a process that
    built an app but took no form post (the CLI writing AsyncAPI docs) hung at exit."""

    def close_if_open(self) -> None:
        if self._storage is not None:
            self._storage.close()

    def __del__(self) -> None:
        self.close_if_open()


class LimitsFormRateLimit:
    def __init__(self, storage: Storage, limit: str) -> None:
        self._storage = storage
        self._limiter = FixedWindowRateLimiter(storage)
        self._item: RateLimitItem = parse(limit)

    @classmethod
    def on_mongodb(cls, url: str, database: str, limit: str) -> LimitsFormRateLimit:
        """Counters in `database`.`form_rate_counters`, shared by every replica."""
        storage = _SharedCounters(
            url,
            database_name=database,
            counter_collection_name="form_rate_counters",
            # As the services' own client: an unreachable database is a 503 within seconds
            # (PyMongo's ConnectionFailure, mapped by the chassis), not a thread held 30 s.
            serverSelectionTimeoutMS=5000,
            tz_aware=True,
        )
        return cls(storage, limit)

    @classmethod
    def in_memory(cls, limit: str) -> LimitsFormRateLimit:
        return cls(MemoryStorage(), limit)

    async def hit(self, form_key: str, client: str) -> bool:
        # PyMongo's synchronous client blocks: keep it off the event loop.
        return await asyncio.to_thread(self._limiter.hit, self._item, "form", form_key, client)

    def close(self) -> None:
        if isinstance(self._storage, _SharedCounters):
            self._storage.close_if_open()
