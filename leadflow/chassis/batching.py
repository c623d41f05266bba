"""Group commit: requests that arrive together are stored in one transaction.

An HTTP request that accepts one lead would otherwise be one transaction, and the database
does a few hundred of those a second but thousands of documents a second in bulk. A
`GroupCommit` queues each request; one worker takes everything queued (up to `max_batch`)
and commits it in one call, then answers every waiting request. Nothing waits for a timer:
while one batch is being committed the next one gathers, so a lone request goes at once
and a burst goes in a few large transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog

from leadflow.chassis.tasks import cancel_and_wait, stop_requested

log = structlog.get_logger(__name__)

I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")

CommitBatch = Callable[[list[I]], Awaitable[Sequence[R | Exception]]]


class StoppingError(Exception):
    """The service is shutting down: the request was not committed; send it again."""


class GroupCommit(Generic[I, R]):
    def __init__(self, commit_batch: CommitBatch[I, R], *, max_batch: int, name: str) -> None:
        self._commit_batch = commit_batch
        self._max_batch = max_batch
        self._name = name
        self._queue: asyncio.Queue[tuple[I, asyncio.Future[R]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False

    async def submit(self, item: I) -> R:
        """Commit `item` with whatever else is waiting; its result, or its own error."""
        if self._stopping:
            raise StoppingError(f"{self._name} is stopping")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=f"group-commit-{self._name}")
        return await future

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Commit what is queued (within `timeout_s`), then refuse new requests."""
        self._stopping = True
        if self._worker is not None and not self._worker.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout=timeout_s)
            await cancel_and_wait([self._worker])
        while not self._queue.empty():  # not committed in time: each caller is told
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(StoppingError(f"{self._name} stopped"))

    async def _run(self) -> None:
        while not stop_requested():
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        waiting = [(item, future) for item, future in batch if not future.cancelled()]
        if not waiting:
            return
        try:
            results = await self._commit_batch([item for item, _ in waiting])
        except asyncio.CancelledError:
            for _, future in waiting:
                future.cancel()
            raise
        except Exception as error:  # noqa: BLE001 - every waiting request gets the error
            for _, future in waiting:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(waiting, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
