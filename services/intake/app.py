"""Composition root of intake: the front door for leads."""

from __future__ import annotations

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.batching import GroupCommit
from leadflow.chassis.clock import Clock, system_clock
from services.intake import api
from services.intake.settings import Settings
from services.intake.store import MongoIntakeStore
from services.intake.usecases import AcceptLeads, AcceptSubmissions
from services.intake.webhooks import api as webhooks_api

SERVICE = "intake"

ACCEPT_MAX_BATCH = 500
"""Most leads accepted in one transaction (a burst beyond it goes in several)."""


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings, clock=clock)
    store = MongoIntakeStore(chassis.database, chassis.ledger)
    accept_leads = AcceptLeads(store)
    lead_acceptor: api.LeadAcceptor = GroupCommit(
        accept_leads, max_batch=ACCEPT_MAX_BATCH, name="accept-leads"
    )
    # The batch entry point of every channel (see AcceptSubmissions).
    accept_submissions = AcceptSubmissions(
        accept_leads, default_region=settings.default_region, clock=clock
    )
    return chassis.build_app(
        title="leadflow intake",
        description="Accepts leads from forms, ad platforms and front desks; normalises, "
        "de-duplicates and publishes them.",
        version=__version__,
        routers=[api.router, webhooks_api.router],
        startup=store.ensure_indexes,
        # Before the chassis closes the database the committer writes to.
        shutdown=lead_acceptor.stop,
        store=store,
        lead_acceptor=lead_acceptor,
        accept_submissions=accept_submissions,
    )
