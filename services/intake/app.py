"""Composition root of intake: the front door for leads."""

from __future__ import annotations

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from services.intake import api
from services.intake.settings import Settings
from services.intake.store import MongoIntakeStore

SERVICE = "intake"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings)
    store = MongoIntakeStore(chassis.database, chassis.ledger)
    return chassis.build_app(
        title="leadflow intake",
        description="Accepts leads from forms, ad platforms and front desks; normalises, "
        "de-duplicates and publishes them.",
        version=__version__,
        routers=[api.router],
        startup=store.ensure_indexes,
        store=store,
    )
