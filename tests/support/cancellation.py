"""A call in flight whose cancellation a client turns into an error of its own."""

from __future__ import annotations

import asyncio


class CancelSwallowed:
    """`call()` waits until cancelled, then raises `error` instead of the CancelledError,
    as a client cleaning up its request may (the task's stop request stays pending)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.started = asyncio.Event()

    async def call(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise self.error from None

    async def cancel_once_started(self, task: asyncio.Task[None]) -> None:
        """Cancel `task` once its call is in flight; fails unless the task ends within 2 s."""
        async with asyncio.timeout(5):
            await self.started.wait()
        task.cancel()
        async with asyncio.timeout(2):
            await asyncio.gather(task, return_exceptions=True)
