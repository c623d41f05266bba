"""An in-memory stand-in for the chassis' `EventLedger`, for the in-memory stores.

It keeps the ledger's promises: a unit of work commits entirely or not at all (the
store's tables are restored on an error), units of work run one at a time (as the
database's transactions isolate them), handled event ids are remembered, and the events
a unit of work returns are appended to the outbox in commit order.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from shared.events import Event

T = TypeVar("T")
E = TypeVar("E", bound=Event)


class InMemoryLedger:
    def __init__(self, tables: Any) -> None:
        """`tables`: the store's state, a deep-copyable object restored on an error."""
        self.tables = tables
        self.inbox: set[str] = set()
        self.outbox: list[Event] = []
        self._lock = asyncio.Lock()

    async def commit(self, work: Callable[[], Awaitable[tuple[T, Sequence[Event]]]]) -> T:
        async with self._lock:
            saved = copy.deepcopy(self.tables)
            try:
                result, events = await work()
            except BaseException:
                self._restore(saved)
                raise
            self.outbox.extend(events)
            return result

    async def commit_batch(
        self,
        consumed: Sequence[E],
        work: Callable[[list[E]], Awaitable[tuple[T, Sequence[Event]]]],
    ) -> T | None:
        async with self._lock:
            fresh: list[E] = []
            seen = set(self.inbox)
            for event in consumed:
                if str(event.event_id) not in seen:
                    seen.add(str(event.event_id))
                    fresh.append(event)
            if not fresh:
                return None
            saved = copy.deepcopy(self.tables)
            try:
                result, events = await work(fresh)
            except BaseException:
                self._restore(saved)
                raise
            self.inbox.update(str(e.event_id) for e in fresh)
            self.outbox.extend(events)
            return result

    def _restore(self, saved: Any) -> None:
        # In place: the store holds a reference to the same tables object.
        self.tables.__dict__.update(saved.__dict__)
