"""Composition root of analytics: the event store, its roll-ups, the reports and dashboard."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.clock import Clock, system_clock
from leadflow.chassis.lease import Lease
from leadflow.chassis.tasks import cancel_and_wait
from services.analytics import api
from services.analytics.handlers import register_handlers
from services.analytics.settings import Settings
from services.analytics.store import MongoAnalyticsStore
from services.analytics.usecases import CompactRollups, RecordEvents

SERVICE = "analytics"


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings, clock=clock)
    store = MongoAnalyticsStore(
        chassis.database, chassis.ledger, clock=clock, month_zone=settings.report_timezone
    )
    register_handlers(chassis, RecordEvents(store, clock=clock, parts=settings.record_parts))
    lease = Lease(
        chassis.leases, "analytics-compaction", ttl_s=settings.outbox_lease_s, clock=clock
    )
    compactor = CompactRollups(store, lease, interval_s=settings.compaction_interval_s)
    background: list[asyncio.Task[None]] = []

    async def startup() -> None:
        await store.ensure_indexes()
        background.append(asyncio.create_task(compactor.run(), name="analytics-compaction"))

    async def shutdown() -> None:
        await cancel_and_wait(background)
        await compactor.stop()

    return chassis.build_app(
        title="leadflow analytics",
        description="Records every lifecycle event once and serves the reports managers "
        "run the business on, as JSON or CSV, and a dashboard at /dashboard.",
        version=__version__,
        routers=[api.router, api.dashboard_router],
        startup=startup,
        shutdown=shutdown,
        store=store,
    )
