"""Background loops and how they end.

A service's background loops (the outbox relay, due work, compaction, the live feed)
outlive any error a round meets, and end when their task is cancelled on shutdown. A
library cleaning up a request in flight may turn the `CancelledError` it was sent into an
error of its own, or drop it: a loop that only relied on the exception would then log it
as an outage and run on, and the shutdown that awaits it would never end. So every such
loop also asks `stop_requested()` each round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def stop_requested() -> bool:
    """Whether the running task has been asked to stop (`Task.cancel()`), whether or not
    the `CancelledError` reached the caller."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until each has ended. A task that ended in an error other
    than its cancellation has it logged; a cancellation of the caller itself still reaches
    the caller (awaiting a task under `suppress(CancelledError)` would swallow it)."""
    waiting = list(tasks)
    for task in waiting:
        task.cancel()
    if not waiting:
        return
    await asyncio.wait(waiting)
    for task in waiting:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", task=task.get_name(), error=repr(task.exception()))
