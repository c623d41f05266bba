"""Run a service app in-process, its lifespan included, and talk to it over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from shared.settings import ServiceSettings
from tests.support.infra import Infra

S = TypeVar("S", bound=ServiceSettings)
log = logging.getLogger(__name__)


QUICK_JOIN = {"consumer_session_timeout_ms": 3000, "consumer_heartbeat_interval_ms": 500}
"""The local broker holds a new member's join for half the session timeout: 1.5 s for every
service a test starts instead of 5 s."""


def quick_join_environment(*services: str) -> dict[str, str]:
    """`QUICK_JOIN` as the environment of service processes a test starts."""
    return {
        f"LEADFLOW_{service.upper()}_{name.upper()}": str(value)
        for service in services
        for name, value in QUICK_JOIN.items()
    }


def settings_for(cls: type[S], infra: Infra, run_id: str, **overrides: Any) -> S:
    """Settings pointing at the test infra, with databases and groups unique to this run (a
    database given in `overrides` brings its own consumer group)."""
    defaults = cls()
    values: dict[str, Any] = {
        "kafka_bootstrap": infra.kafka_bootstrap,
        "mongo_url": infra.mongo_url,
        "database": f"{defaults.database}_{run_id}",
        "identity_database": f"leadflow_identity_{run_id}",
        "consumer_group": f"{defaults.database}-{run_id}",
        "log_json": False,
        "log_level": "WARNING",
        "outbox_poll_interval_s": 0.2,
        "consumer_retry_backoff_s": 0.05,
        **QUICK_JOIN,
    }
    values.update(overrides)
    if "database" in overrides and "consumer_group" not in overrides:
        # An app with a database of its own is a service of its own: its own group too, or it
        # would split the partitions with every other app of this run.
        values["consumer_group"] = f"{overrides['database']}-group"
    return cls(**values)


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        response = await client.get("/readyz")
        if response.status_code == 200:
            return
        last = response.json()
        await asyncio.sleep(0.2)
    raise TimeoutError(f"service not ready after {timeout_s}s: {last}")


SLOW_SHUTDOWN_S = 20.0
"""A shutdown still running after this long is reported with every task's stack."""


async def report_slow_shutdown(after_s: float) -> None:
    """Wait `after_s`, then log where every task of the loop is: what a stop waits on."""
    await asyncio.sleep(after_s)
    stacks = io.StringIO()
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.print_stack(limit=12, file=stacks)
    log.warning("shutdown still running after %.0fs:\n%s", after_s, stacks.getvalue())


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    watchdog: asyncio.Task[None] | None = None
    try:
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                await wait_ready(client)
                yield client
            watchdog = asyncio.create_task(report_slow_shutdown(SLOW_SHUTDOWN_S))
    finally:
        if watchdog is not None:
            watchdog.cancel()


T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout_s: float = 20.0,
    interval_s: float = 0.1,
) -> T:
    """Poll `probe` until `accept` holds; returns the accepted value or fails with the last."""
    deadline = time.monotonic() + timeout_s
    value = await probe()
    while not accept(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s}s; last value: {value!r}")
        await asyncio.sleep(interval_s)
        value = await probe()
    return value
