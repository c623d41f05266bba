"""Composition root of assignment: routing leads to reps and the sales workflow."""

from __future__ import annotations

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from services.assignment import api
from services.assignment.handlers import register_handlers
from services.assignment.rules import Clock
from services.assignment.settings import Settings
from services.assignment.store import MongoAssignmentStore
from shared.events import utc_now

SERVICE = "assignment"


def create_app(settings: Settings | None = None, *, clock: Clock = utc_now) -> FastAPI:
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings)
    store = MongoAssignmentStore(chassis.database, chassis.ledger)
    register_handlers(chassis.kafka, store, clock)
    return chassis.build_app(
        title="leadflow assignment",
        description="Routes each lead to the right rep within seconds and runs the sales "
        "workflow: pools, reps, round robin, loss and return to pool.",
        version=__version__,
        routers=[api.router],
        startup=store.ensure_indexes,
        store=store,
        clock=clock,
    )
