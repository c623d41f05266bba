"""Composition root of analytics: the event store, its roll-ups, the reports and dashboard."""

from __future__ import annotations

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.clock import Clock, system_clock
from services.analytics import api
from services.analytics.handlers import register_handlers
from services.analytics.settings import Settings
from services.analytics.store import MongoAnalyticsStore
from services.analytics.usecases import RecordEvents

SERVICE = "analytics"


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings, clock=clock)
    store = MongoAnalyticsStore(chassis.database, chassis.ledger)
    register_handlers(chassis, RecordEvents(store, clock=clock))
    return chassis.build_app(
        title="leadflow analytics",
        description="Records every lifecycle event once and serves the reports managers "
        "run the business on, as JSON or CSV, and a dashboard at /dashboard.",
        version=__version__,
        routers=[api.router, api.dashboard_router],
        startup=store.ensure_indexes,
        store=store,
    )
