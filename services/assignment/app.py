"""Composition root of assignment: routing leads to reps and the sales workflow."""

from __future__ import annotations

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.clock import Clock, system_clock
from services.assignment import api
from services.assignment.handlers import register_handlers
from services.assignment.settings import Settings
from services.assignment.store import MongoAssignmentStore
from services.assignment.usecases import ManageTeam, RouteLeads, configuration_cache
from services.assignment.workflow import WorkLeads

SERVICE = "assignment"


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings, clock=clock)
    store = MongoAssignmentStore(chassis.database, chassis.ledger)
    configuration = configuration_cache(store, max_age_s=settings.configuration_max_age_s)
    register_handlers(chassis, RouteLeads(store, configuration, clock=clock))
    return chassis.build_app(
        title="leadflow assignment",
        description="Routes each lead to the right rep within seconds and runs the sales "
        "workflow: pools, reps, round robin, loss and return to pool.",
        version=__version__,
        routers=[api.router],
        startup=store.ensure_indexes,
        store=store,
        team=ManageTeam(store, configuration, clock=clock),
        leads=WorkLeads(store, configuration),
        configuration=configuration,
    )
