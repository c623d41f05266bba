"""Composition root of analytics: the event store and the reports built on it."""

from __future__ import annotations

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from services.analytics import api
from services.analytics.handlers import register_handlers
from services.analytics.settings import Settings
from services.analytics.store import MongoAnalyticsStore

SERVICE = "analytics"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings)
    store = MongoAnalyticsStore(chassis.database, chassis.ledger)
    register_handlers(chassis.kafka, store, settings.report_timezone)
    return chassis.build_app(
        title="leadflow analytics",
        description="Records every lifecycle event once and serves the reports managers "
        "run the business on, as JSON or CSV.",
        version=__version__,
        routers=[api.router],
        startup=store.ensure_indexes,
        store=store,
    )
