"""Composition root of nurture: sequences that keep not-yet-ready leads warm."""

from __future__ import annotations

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from services.nurture import api, handlers
from services.nurture.rules import DEFAULT_SEQUENCES
from services.nurture.settings import Settings
from services.nurture.store import MongoNurtureStore
from shared.events import utc_now

SERVICE = "nurture"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings)
    store = MongoNurtureStore(
        chassis.database, chassis.ledger, default_timezone=settings.default_timezone
    )
    handlers.register(chassis.kafka, store)

    async def startup() -> None:
        await store.ensure_indexes()
        await store.seed_sequences(DEFAULT_SEQUENCES, utc_now())

    return chassis.build_app(
        title="leadflow nurture",
        description="Email/SMS sequences for leads that are not ready to buy: enrollment on "
        "loss level 2/3 or by marketing, stopped when sales takes the lead again.",
        version=__version__,
        routers=[api.router],
        startup=startup,
        store=store,
    )
